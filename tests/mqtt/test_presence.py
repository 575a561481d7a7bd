"""The retained online status expires unless refreshed, so a lost will cannot keep it for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from broker_agent.mqtt import Connection, Message, Presence, make_connection
from broker_agent.settings import MqttSettings, StationSettings
from tests.mqtt.conftest import MakeBroker
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.station import running_station

SETTINGS = MqttSettings()
TOPIC = "iot/agents/t/status"


async def retained(url: str, topic: str) -> Message | None:
    """What a new subscriber gets as the retained message on ``topic``."""
    seen: list[Message] = []
    marker = asyncio.Event()
    marker_topic = f"{topic}/_marker"

    def route(message: Message) -> None:
        if message.topic == marker_topic:
            marker.set()
        elif message.retain:
            seen.append(message)

    async with make_connection(SETTINGS, url, client_id="t-reader", route=route) as reader:
        await reader.subscribe(topic, qos=1)
        await reader.subscribe(marker_topic, qos=1)
        await reader.publish(marker_topic, b"", qos=1)
        await asyncio.wait_for(marker.wait(), 10)
    return seen[-1] if seen else None


@asynccontextmanager
async def announced(url: str, presence: Presence, *, refresh: bool) -> AsyncIterator[Connection]:
    async with make_connection(
        SETTINGS, url, client_id="t-presence", will=presence.will()
    ) as connection:
        await presence.announce(connection, b'{"state": "online"}')
        task = asyncio.create_task(presence.keep_fresh(connection), name="refresh-under-test")
        if not refresh:
            task.cancel()
        try:
            yield connection
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


async def test_online_carries_a_message_expiry(make_broker: MakeBroker) -> None:
    broker = make_broker()
    presence = Presence(TOPIC, b'{"state": "offline"}', expiry_s=300)

    async with announced(broker.url, presence, refresh=False):
        got = await retained(broker.url, TOPIC)

    assert got is not None and got.expiry_s is not None
    assert 290 <= got.expiry_s <= 300


async def test_online_expires_without_refresh(make_broker: MakeBroker) -> None:
    broker = make_broker()
    presence = Presence(TOPIC, b'{"state": "offline"}', expiry_s=1, refresh_s=0.3)

    async with announced(broker.url, presence, refresh=False):
        await asyncio.sleep(3.2)  # past the expiry, on Mosquitto's one-second clock (+1 s margin)
        assert await retained(broker.url, TOPIC) is None


async def test_refreshed_online_outlives_its_expiry(make_broker: MakeBroker) -> None:
    broker = make_broker()
    # Mosquitto counts expiry on a one-second clock: a 1 s expiry can end at once, so a
    # refresh every 0.3 s still left gaps (seen in CI); 3 s leaves every copy >= 2 s of life
    presence = Presence(TOPIC, b'{"state": "offline"}', expiry_s=3, refresh_s=0.3)

    async with announced(broker.url, presence, refresh=True):
        await asyncio.sleep(3.5)  # past the expiry of the first copy
        got = await retained(broker.url, TOPIC)

    assert got is not None and b'{"state": "online"}' == got.payload


async def test_the_agent_announces_with_the_configured_expiry(
    broker: Broker, tmp_path: Path
) -> None:
    (tmp_path / "configs").mkdir()
    settings = agent_settings(
        broker.url,
        tmp_path / "configs",
        presence_expiry_s=40,
        presence_refresh_s=15,
        http_listen="",  # no HTTP surface: its fixed default port may be taken
    )

    async with running_agent(settings):
        got = await retained(broker.url, f"{broker.root}/agents/test-agent/status")

    assert got is not None and got.expiry_s is not None
    assert 30 <= got.expiry_s <= 40


async def test_the_station_announces_with_the_configured_expiry(
    broker: Broker, tmp_path: Path
) -> None:
    settings = StationSettings(
        broker_url=broker.url,
        station_id="bench-expiry",
        manufacturing_log=tmp_path / "manufacturing.jsonl",
        presence_expiry_s=50,
        presence_refresh_s=20,
        http_listen="",
    )

    async with running_station(settings):
        got = await retained(broker.url, f"{broker.root}/stations/bench-expiry/status")

    assert got is not None and got.expiry_s is not None
    assert 40 <= got.expiry_s <= 50
