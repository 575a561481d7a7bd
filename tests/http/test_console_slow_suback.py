"""The console's retained subscriptions wait as long as a large fleet's SUBACK takes.

A SUBACK arrives after the retained messages of the subscription before it; at 100,000
devices that is longer than aiomqtt's 10 s default, and the console timed out, reconnected and
read the flood again, forever. A proxy makes one SUBACK 10.5 s late instead of sending
100,000 messages."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from broker_agent.commands.console import run_console
from broker_agent.http.server import HttpServer
from broker_agent.settings import ConsoleSettings
from tests.support.broker import Broker
from tests.support.mqtt import client_for
from tests.support.mqtt_proxy import slow_suback_broker
from tests.support.service import running

pytestmark = pytest.mark.timeout(60)

LATE_S = 10.5  # past aiomqtt's 10 s default


async def test_the_console_connects_when_a_retained_suback_takes_longer_than_10_s(
    broker: Broker,
) -> None:
    async with client_for(broker.url) as device:
        await device.publish("iot/devices/dev-1/status", b'{"state":"online"}', retain=True)
    servers: list[HttpServer] = []
    async with slow_suback_broker(broker.url, "iot/devices/+/config/applied", LATE_S) as slow:
        settings = ConsoleSettings(
            broker_url=slow.url, http_listen="127.0.0.1:0", reconnect_min_s=0.05
        )

        async def connected() -> None:
            while not servers or not servers[0].app.state.console.client.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        async with (
            running(run_console(settings, servers.append), connected(), name="console", timeout=30),
            httpx.AsyncClient(base_url=str(servers[0].url), timeout=10) as http,
        ):
            page = (await http.get("/api/devices")).json()

    assert ["dev-1"] == [row["device_id"] for row in page["items"]]
