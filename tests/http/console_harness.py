"""A fleet for the console's tests: real Mosquitto, the real agent serving the console on its
HTTP listener (port 0), optionally a simulated station, and an HTTP client with a session.

Secrets hold values no answer may ever show (``CLIENT_SECRET``, ``WIFI_PASSWORD``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from broker_agent.app import Agent
from broker_agent.settings import StationSettings
from broker_agent.station.station import Station
from tests.support.agent import agent_settings, running_agent
from tests.support.mqtt import client_for
from tests.support.station import running_station

CLIENT_SECRET = "client-secret-never-shown-7f3a"
WIFI_PASSWORD = "wifi-password-never-shown-91c2"
SCHEMA = {
    "type": "object",
    "required": ["telemetry_interval_s"],
    "properties": {
        "telemetry_interval_s": {"type": "integer", "minimum": 5},
        "led": {"type": "object", "properties": {"brightness": {"type": "integer"}}},
    },
}
DEVICES = ("garage-door", "greenhouse-02", "kitchen-01")
T = TypeVar("T")


def write_fleet(root: Path, devices: tuple[str, ...] = DEVICES) -> tuple[Path, Path]:
    configs, secrets = root / "configs", root / "secrets"
    configs.mkdir()
    secrets.mkdir()
    (configs / "_schema.json").write_text(json.dumps(SCHEMA))
    for index, device_id in enumerate(devices):
        (configs / f"{device_id}.json").write_text(json.dumps({"telemetry_interval_s": 30 + index}))
    (secrets / "_fleet.json").write_text(
        json.dumps(
            {
                "token_url": "https://auth.invalid/token",
                "base_url": "https://api.invalid/",
                "wifi_ssid": "bench-wifi",
                "wifi_password": WIFI_PASSWORD,
            }
        )
    )
    for device_id in devices:
        (secrets / f"{device_id}.json").write_text(
            json.dumps({"client_id": f"{device_id}-client", "client_secret": CLIENT_SECRET})
        )
    return configs, secrets


async def publish_ack(broker_url: str, device_id: str, sha256: str, ok: bool = True) -> None:
    """What firmware publishes after applying a config (6.1): its retained ack and online
    status (with a secret-looking field of its own, which the console must hide)."""
    error = None if ok else {"code": "apply_failed", "message": "LED driver missing"}
    ack = {"sha256": sha256, "ok": ok, "error": error, "ts": "2026-12-01T10:00:00Z"}
    async with client_for(broker_url) as client:
        topic = f"iot/devices/{device_id}/config/applied"
        await client.publish(topic, json.dumps(ack), qos=1, retain=True)
        status = {"state": "online", "fw_version": "1.4.2", "wifi_password": "from-firmware"}
        topic = f"iot/devices/{device_id}/status"
        await client.publish(topic, json.dumps(status), qos=1, retain=True)


@dataclass
class ConsoleFleet:
    broker_url: str
    configs: Path
    agent: Agent
    http: httpx.AsyncClient
    station: Station | None
    csrf: str

    @property
    def url(self) -> str:
        return str(self.http.base_url)

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf, **extra}

    async def device(self, device_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/devices/{device_id}")
        assert 200 == response.status_code, response.text
        found: dict[str, Any] = response.json()
        return found


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """The first non-None, non-False result of ``probe`` (an HTTP read, polled)."""
    async with asyncio.timeout(timeout):
        while True:
            found = await probe()
            if found is not None and found is not False:
                return found
            await asyncio.sleep(interval)


@asynccontextmanager
async def console_fleet(
    broker_url: str,
    root: Path,
    *,
    simulate: int = 0,
    provision_timeout_s: float = 10.0,
    listen: str = "127.0.0.1:0",
    login: tuple[str, str] | None = None,
    **agent_extra: Any,
) -> AsyncIterator[ConsoleFleet]:
    """The agent (console on, listening on ``listen``) and, with ``simulate``, station
    ``bench-1``; entered once the console has seen every device, logged in with ``login``."""
    configs, secrets = write_fleet(root)
    settings = agent_settings(broker_url, configs, secrets, http_listen=listen, **agent_extra)
    async with AsyncExitStack() as stack:
        agent = await stack.enter_async_context(running_agent(settings))
        station = None
        if simulate:
            station = await stack.enter_async_context(
                running_station(
                    StationSettings(
                        broker_url=broker_url,
                        station_id="bench-1",
                        simulate=simulate,
                        http_listen="",
                        provision_timeout_s=provision_timeout_s,
                        manufacturing_log=root / "manufacturing.jsonl",
                    )
                )
            )
        assert agent.http is not None and agent.http.port is not None
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http.port}", timeout=15)
        )
        if login is not None:
            user, password = login
            answer = await http.post("/api/login", json={"username": user, "password": password})
            assert 200 == answer.status_code, answer.text
        session = (await http.get("/api/session")).json()

        async def all_seen() -> bool:
            page = (await http.get("/api/devices")).json()
            return bool(page["total"] == len(DEVICES))

        await eventually(all_seen)
        if station is not None:

            async def station_seen() -> bool:
                stations = (await http.get("/api/stations")).json()["stations"]
                return any(s["state"] == "online" and s["ports"] for s in stations)

            await eventually(station_seen)
        yield ConsoleFleet(broker_url, configs, agent, http, station, session["csrf_token"])
