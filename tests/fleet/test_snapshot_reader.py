"""The retained snapshot reader (broker_agent/mqtt/retained.py) against a real Mosquitto."""

from __future__ import annotations

import pytest

from broker_agent.broker.process import free_port
from broker_agent.errors import BrokerUnavailableError
from broker_agent.mqtt.retained import read_retained
from broker_agent.settings import MqttSettings
from tests.support.broker import Broker
from tests.support.mqtt import client_for

pytestmark = pytest.mark.timeout(60)

SETTINGS = MqttSettings()


async def snapshot(url: str, *filters: str) -> dict[str, bytes]:
    seen: dict[str, bytes] = {}
    await read_retained(
        SETTINGS, url, filters, seen.__setitem__, client_id="snap", marker_topic="test/marker"
    )
    return seen


async def retain(broker: Broker, messages: dict[str, bytes]) -> None:
    async with client_for(broker.url) as client:
        for topic, payload in messages.items():
            await client.publish(topic, payload, qos=1, retain=True)


async def test_reads_every_retained_message_under_its_filters(broker: Broker) -> None:
    messages = {f"iot/devices/d-{i}/status": b'{"state":"online"}' for i in range(2000)}
    await retain(broker, {**messages, "iot/other/x": b"not asked for"})
    assert messages == await snapshot(broker.url, "iot/devices/+/status")


async def test_payload_larger_than_a_read_chunk_arrives_whole(broker: Broker) -> None:
    big = b"x" * 700_000  # spans several 256 KiB reads, and a 3-byte remaining length
    await retain(broker, {"bulk/big": big, "bulk/small": b"{}"})
    found = await snapshot(broker.url, "bulk/#")
    assert (big, b"{}") == (found["bulk/big"], found["bulk/small"])


async def test_empty_broker_returns_at_the_marker(broker: Broker) -> None:
    assert {} == await snapshot(broker.url, "iot/devices/+/config")


async def test_a_dead_url_in_a_list_is_skipped(broker: Broker) -> None:
    await retain(broker, {"iot/devices/d-1/status": b"{}"})
    urls = f"mqtt://127.0.0.1:{free_port()},{broker.url}"
    assert {"iot/devices/d-1/status": b"{}"} == await snapshot(urls, "iot/devices/+/status")


async def test_no_broker_is_broker_unavailable() -> None:
    with pytest.raises(BrokerUnavailableError):
        await snapshot(f"mqtt://127.0.0.1:{free_port()}", "#")
