"""Provisioning from a station's side, for tests: a fleet on disk and an MQTT v5 requester.

``requester(broker)`` sends provisioning requests and reads every response through the one MQTT
collector (``observe``); ``ok_image``/``error_of`` check a reply against the contract.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from broker_agent.settings import AgentSettings
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import NVS_NAMESPACE
from firmware_contracts.payloads import ProvisionError, ProvisionOk
from firmware_contracts.topics import Topics
from tests.support.agent import agent_settings
from tests.support.broker import Broker
from tests.support.mqtt import (
    Observer,
    client_for,
    correlation_of,
    observe,
    payload_of,
    v5_properties,
)
from tests.support.nvs_parser import parse_nvs

TOPICS = Topics("iot")
FLEET = {
    "token_url": "https://auth.example.invalid/token",
    "base_url": "https://api.example.invalid/",
    "wifi_ssid": "fleet-wifi",
    "wifi_password": "FLEET-WIFI-PASSWORD-q1w2e3",
}
KITCHEN = {"client_id": "iotdevice-kitchen-01", "client_secret": "KITCHEN-SECRET-z9y8x7"}
SECRETS = ("FLEET-WIFI-PASSWORD-q1w2e3", "KITCHEN-SECRET-z9y8x7")


@dataclass
class Fleet:
    broker: Broker
    config_dir: Path
    secrets_dir: Path

    def settings(self, **extra: Any) -> AgentSettings:
        return agent_settings(self.broker.url, self.config_dir, self.secrets_dir, **extra)


def make_fleet(broker: Broker, tmp_path: Path) -> Fleet:
    """kitchen-01 (fleet values and its own credentials), garage-door (nulls wifi_ssid), lonely
    (a config, no credentials), all under ``tmp_path``."""
    config_dir, secrets_dir = tmp_path / "configs", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    for device in ("kitchen-01", "garage-door", "lonely"):
        (config_dir / f"{device}.json").write_text('{"telemetry_interval_s": 30}')
    (secrets_dir / "_fleet.json").write_text(json.dumps(FLEET))
    (secrets_dir / "kitchen-01.json").write_text(json.dumps(KITCHEN))
    (secrets_dir / "garage-door.json").write_text(
        json.dumps({"client_id": "gd", "client_secret": "GARAGE-SECRET-1", "wifi_ssid": None})
    )
    return Fleet(broker, config_dir, secrets_dir)


@dataclass
class Reply:
    topic: str
    document: dict[str, Any]
    correlation: bytes | None
    retain: bool
    properties: Any

    @classmethod
    def of(cls, message: aiomqtt.Message) -> Reply:
        document = json.loads(payload_of(message))
        return cls(
            str(message.topic),
            document,
            correlation_of(message),
            message.retain,
            message.properties,
        )


@dataclass
class Requester:
    """A station's side of provisioning: requests go out on its observer's connection, and
    every provisioning response that observer received reads back as a ``Reply``."""

    responses: Observer

    @property
    def replies(self) -> list[Reply]:
        return [Reply.of(message) for message in self.responses.messages]

    async def send(
        self,
        device_id: str,
        payload: bytes | dict[str, Any],
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        retain: bool = False,
        topic: str | None = None,
    ) -> None:
        props = v5_properties(response_topic, correlation)
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        await self.responses.client.publish(
            topic or TOPICS.provision_request(device_id),
            body,
            qos=1,
            retain=retain,
            properties=props,
        )

    async def wait(self, count: int, timeout: float = 10.0) -> list[Reply]:
        await self.responses.wait_for(lambda: len(self.responses.messages) >= count, timeout)
        return self.replies

    async def ask(self, device_id: str, payload: bytes | dict[str, Any], **kwargs: Any) -> Reply:
        correlation = secrets.token_bytes(8)
        await self.send(device_id, payload, correlation=correlation, **kwargs)
        return Reply.of(await self.responses.first(lambda m: correlation_of(m) == correlation))


@asynccontextmanager
async def requester(
    broker: Broker, protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5
) -> AsyncIterator[Requester]:
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no 40 ms Nagle stalls per request
    client = client_for(broker.url, protocol=protocol, socket_options=nodelay)
    responses = "iot/provision/+/response/#"  # also matches .../response itself
    async with observe(client, responses, qos=1) as observer:
        yield Requester(observer)


def ok_image(reply: Reply) -> tuple[ProvisionOk, dict[str, str]]:
    ok = ProvisionOk.model_validate(reply.document)
    data = base64.b64decode(ok.data)
    assert ok.partition_size == len(data)
    parsed = parse_nvs(data)
    assert [NVS_NAMESPACE] == list(parsed.namespaces)
    return ok, parsed.strings(NVS_NAMESPACE)


def error_of(reply: Reply) -> tuple[str, ProvisionErrorCode, str]:
    error = ProvisionError.model_validate(reply.document)
    return error.request_id, error.error.code, error.error.message
