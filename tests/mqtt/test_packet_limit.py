"""A broker's Maximum Packet Size and the provisioning replies that would exceed it.

Mosquitto with ``max_packet_size`` disconnects a client that publishes a larger packet (0x95
Packet too large): a 0x20000 partition's reply (~175 KB of base64) used to get the agent
dropped, and the requester got no answer at all. The responder now answers ``internal_error``
naming the limit, on the same session.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from firmware_contracts.topics import Topics
from tests.mqtt.conftest import MakeBroker
from tests.support.agent import agent_settings, running_agent
from tests.support.mqtt import Observer, observe, payload_of

pytestmark = pytest.mark.timeout(60)

TOPICS = Topics("iot")
LIMIT = 100_000
TOO_BIG = 0x20000  # its reply's base64 alone is 174,764 bytes
FITS = 0x5000


@dataclass
class LimitedFleet:
    url: str
    config_dir: Path
    secrets_dir: Path


@pytest.fixture
def limited_fleet(make_broker: MakeBroker, tmp_path: Path) -> LimitedFleet:
    config_dir, secrets_dir = tmp_path / "configs", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (config_dir / "kitchen-01.json").write_text("{}")
    fleet = {"token_url": "https://t.example.invalid", "base_url": "https://b.example.invalid"}
    (secrets_dir / "_fleet.json").write_text(json.dumps(fleet))
    device = {"client_id": "iotdevice-kitchen-01", "client_secret": "KITCHEN-SECRET-p4ck3t"}
    (secrets_dir / "kitchen-01.json").write_text(json.dumps(device))
    broker = make_broker(f"max_packet_size {LIMIT}")
    return LimitedFleet(broker.url, config_dir, secrets_dir)


async def ask(responses: Observer, request_id: str, partition_size: int) -> None:
    request = {"request_id": request_id, "partition_size": partition_size}
    await responses.client.publish(
        TOPICS.provision_request("kitchen-01"), json.dumps(request).encode(), qos=1
    )


async def reply_to(responses: Observer, request_id: str) -> dict[str, Any]:
    message = await responses.first(
        lambda m: json.loads(payload_of(m)).get("request_id") == request_id
    )
    document: dict[str, Any] = json.loads(payload_of(message))
    return document


async def test_a_reply_over_the_brokers_packet_limit_is_an_error_naming_the_limit(
    limited_fleet: LimitedFleet,
) -> None:
    settings = agent_settings(
        limited_fleet.url, limited_fleet.config_dir, limited_fleet.secrets_dir
    )
    async with (
        running_agent(settings),
        observe(limited_fleet.url, TOPICS.provision_response("kitchen-01"), qos=1) as responses,
    ):
        await ask(responses, "r-big", TOO_BIG)
        reply = await reply_to(responses, "r-big")

    assert ("error", "internal_error") == (reply["status"], reply["error"]["code"])
    assert "maximum packet size of 100,000 bytes" in reply["error"]["message"]


async def test_an_oversized_reply_does_not_cost_the_agent_its_session(
    limited_fleet: LimitedFleet,
) -> None:
    settings = agent_settings(
        limited_fleet.url, limited_fleet.config_dir, limited_fleet.secrets_dir
    )
    logs: list[MutableMapping[str, Any]]
    with structlog.testing.capture_logs() as logs:
        async with (
            running_agent(settings),
            observe(limited_fleet.url, TOPICS.provision_response("kitchen-01"), qos=1) as responses,
        ):
            await ask(responses, "r-big", TOO_BIG)
            await ask(responses, "r-small", FITS)
            small = await reply_to(responses, "r-small")

    assert "ok" == small["status"]
    assert 1 == len([entry for entry in logs if entry["event"] == "broker_connected"])
    assert [] == [entry for entry in logs if entry["event"] == "broker_sent_disconnect"]
