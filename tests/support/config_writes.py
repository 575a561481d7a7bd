"""Config writes over MQTT (contract 6.3) from a writer's side, for tests.

``requester(url)`` is a writer's connection (the one MQTT collector, ``observe``, on the
config/set response topics); ``ask`` sends one write and returns the answer that follows it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from firmware_contracts.payloads import ConfigEnvelope, config_sha256
from tests.support.broker import Broker
from tests.support.mqtt import (
    Observer,
    client_for,
    observe,
    payload_of,
    retained_snapshot,
    v5_properties,
)

DEVICE = "dev-1"
SET = f"iot/devices/{DEVICE}/config/set"
RESPONSE = f"{SET}/response"


def write_file(config_dir: Path, config: dict[str, Any], device: str = DEVICE) -> str:
    (config_dir / f"{device}.json").write_text(json.dumps(config))
    return config_sha256(config)


@asynccontextmanager
async def requester(url: str, **kwargs: Any) -> AsyncIterator[Observer]:
    """A writer's connection: it publishes on ``.client`` and records every answer it gets."""
    client = client_for(url, **kwargs)
    async with observe(client, f"{RESPONSE}/#", RESPONSE, qos=1) as writer:
        yield writer


async def ask(
    writer: Observer,
    body: dict[str, Any] | bytes,
    *,
    device: str = DEVICE,
    retain: bool = False,
    response_topic: str | None = "",
) -> dict[str, Any]:
    """Send one write; the answer (on our own response topic unless told otherwise)."""
    if response_topic == "":
        response_topic = f"iot/devices/{device}/config/set/response/t/{secrets.token_hex(4)}"
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    correlation = secrets.token_bytes(8)
    next_answer = len(writer.messages)
    await writer.client.publish(
        f"iot/devices/{device}/config/set",
        payload,
        qos=1,
        retain=retain,
        properties=v5_properties(response_topic, correlation),
    )
    answer: dict[str, Any] = json.loads(payload_of(await writer.nth(next_answer)))
    return answer


async def retained_config(broker: Broker, device: str = DEVICE) -> ConfigEnvelope | None:
    topic = f"iot/devices/{device}/config"
    payload = (await retained_snapshot(broker.url, topic)).get(topic)
    return ConfigEnvelope.model_validate_json(payload) if payload else None
