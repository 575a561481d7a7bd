"""The console with 10,000 devices retained on a real Mosquitto: it sees every one (QoS 0
subscriptions), and a filtered page over HTTP stays fast."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from broker_agent.commands.console import run_console
from broker_agent.http.server import HttpServer
from broker_agent.mqtt import OutgoingMessage, make_connection, publish_many
from broker_agent.settings import ConsoleSettings, MqttSettings
from firmware_contracts.payloads import config_sha256, utc_timestamp
from tests.http.console_harness import eventually
from tests.support.broker import Broker
from tests.support.service import running

pytestmark = pytest.mark.timeout(90)

FLEET = 10_000


async def retain_fleet(broker_url: str) -> None:
    """What an agent retains for 10,000 devices (envelopes as in contract section 1), published
    as the agent does (TCP_NODELAY, 128 in flight): ~1 s, where a plain aiomqtt client took 6 s
    (Nagle, notes/mosquitto-and-mqtt.md)."""
    now = utc_timestamp()
    messages = []
    for i in range(FLEET):
        config = {"telemetry_interval_s": 30 + i % 100}
        envelope = {
            "v": 1,
            "device_id": f"sensor-{i:05d}",
            "sha256": config_sha256(config),
            "updated_at": now,
            "config": config,
        }
        payload = json.dumps(envelope, separators=(",", ":")).encode()
        messages.append(OutgoingMessage(f"iot/devices/sensor-{i:05d}/config", payload, 1, True))
    async with make_connection(MqttSettings(), broker_url, client_id="fleet-loader") as connection:
        await publish_many(connection, messages)


async def test_ten_thousand_devices(broker: Broker, tmp_path: Path) -> None:
    await retain_fleet(broker.url)
    servers: list[HttpServer] = []
    settings = ConsoleSettings(broker_url=broker.url, http_listen="127.0.0.1:0")

    async def listening() -> None:
        while not servers:  # noqa: ASYNC110 - run_console reports its server by a callback
            await asyncio.sleep(0.01)

    async with (
        running(run_console(settings, servers.append), listening(), name="console"),
        httpx.AsyncClient(base_url=str(servers[0].url), timeout=10) as http,
    ):

        async def all_seen() -> bool:
            return bool((await http.get("/api/devices?per_page=1")).json()["total"] == FLEET)

        await eventually(all_seen, timeout=30, interval=0.2)
        timings = []
        for query in ("state=pending&q=sensor-09&page=3", "page=200", "q=sensor-00042"):
            started = time.perf_counter()
            answer = await http.get(f"/api/devices?{query}")
            timings.append(time.perf_counter() - started)
            assert 200 == answer.status_code
        last = (await http.get("/api/devices?page=200")).json()
        found = (await http.get("/api/devices?q=sensor-00042")).json()
    assert "sensor-09999" == last["items"][-1]["device_id"]
    assert ["sensor-00042"] == [d["device_id"] for d in found["items"]]
    assert FLEET == last["counts"]["pending"]
    assert max(timings) < 0.25, timings  # measured: 10-20 ms each over HTTP here
