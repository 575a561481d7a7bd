"""What the station tests share: the bench (broker, agent, secrets, log), a running station,
simulated boards, an operator's MQTT v5 client, and the contract's rules for an event stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from broker_agent.settings import StationSettings
from broker_agent.simulator import BoardConfig, BoardServer, SimulatedBench, SimulatedBoard
from broker_agent.station.station import Station
from firmware_contracts.codes import FlashPhase
from firmware_contracts.payloads import FlashEvent
from firmware_contracts.topics import Topics
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import client_for, v5_properties

STATION = "bench-1"
TOPICS = Topics("iot")
REQUEST_TOPIC = TOPICS.flash_request(STATION)
CANCEL_TOPIC = TOPICS.flash_cancel(STATION)
RESPONSE_TOPIC = TOPICS.flash_response(STATION)
STATUS_TOPIC = TOPICS.station_status(STATION)
PHASES = [phase.value for phase in FlashPhase]
NVS_OFFSET, NVS_SIZE = 0x9000, 0x5000

FLEET = {
    "token_url": "https://auth.example.invalid/token",
    "base_url": "https://api.example.invalid/",
    "mqtt_url": "mqtts://mqtt.example.invalid:8883",
}
DEVICES = {
    f"{name}": {"client_id": f"iotdevice-{name}", "client_secret": f"SECRET-{name}-q9w8e7"}
    for name in ("kitchen-01", "dev-1", "dev-2", "dev-3", "dev-4")
}


def credentials(device_id: str) -> dict[str, str]:
    return {"device_key": device_id, **FLEET, **DEVICES[device_id]}


# -- fixtures and helpers ------------------------------------------------------------------


@dataclass
class Bench:
    broker: Broker
    config_dir: Path
    secrets_dir: Path
    log_path: Path

    def station_settings(self, **extra: Any) -> StationSettings:
        extra.setdefault("station_id", STATION)
        extra.setdefault("provision_timeout_s", 5.0)
        extra.setdefault("port_scan_interval_s", 0.2)
        extra.setdefault("reconnect_min_s", 0.05)
        extra.setdefault("reconnect_max_s", 0.5)
        extra.setdefault("http_listen", "")  # tests run side by side: no fixed HTTP port
        return StationSettings(broker_url=self.broker.url, manufacturing_log=self.log_path, **extra)

    def agent(self) -> Any:
        return running_agent(agent_settings(self.broker.url, self.config_dir, self.secrets_dir))

    def log_lines(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


def make_bench(broker: Broker, tmp_path: Path) -> Bench:
    config_dir, secrets_dir = tmp_path / "configs", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (secrets_dir / "_fleet.json").write_text(json.dumps(FLEET))
    for device, values in DEVICES.items():
        (secrets_dir / f"{device}.json").write_text(json.dumps(values))
    return Bench(broker, config_dir, secrets_dir, tmp_path / "logs" / "manufacturing.jsonl")


@contextmanager
def boards(*configs: BoardConfig) -> Iterator[list[BoardServer]]:
    servers = [BoardServer(SimulatedBoard(config)).start() for config in configs]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@dataclass(frozen=True)
class Plugged:
    """A board on a station's simulated bench, as a test sees it."""

    url: str
    board: SimulatedBoard


def simulated(station: Station) -> list[Plugged]:
    """The boards plugged into the station's bench (``--simulate``), oldest first."""
    bench = station.bench
    assert bench is not None, "the station has no simulated bench (simulate=0)"
    return [Plugged(url, bench.board(url)) for url in bench.ports()]


def nvs_region(server: BoardServer | Plugged) -> bytes:
    return bytes(server.board.flash[NVS_OFFSET : NVS_OFFSET + NVS_SIZE])


@dataclass
class Received:
    topic: str
    event: dict[str, Any]
    correlation: bytes | None


@dataclass
class Commander:
    """An operator's MQTT v5 client: sends flash commands and collects every job event."""

    client: aiomqtt.Client
    received: list[Received] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def send(
        self,
        command: dict[str, Any] | bytes,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        retain: bool = False,
    ) -> None:
        props = v5_properties(response_topic, correlation)
        body = command if isinstance(command, bytes) else json.dumps(command).encode()
        await self.client.publish(REQUEST_TOPIC, body, qos=1, retain=retain, properties=props)

    async def cancel(self, request_id: str) -> None:
        await self.client.publish(CANCEL_TOPIC, json.dumps({"request_id": request_id}), qos=1)

    def events(self, request_id: str) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.event.get("request_id") == request_id]

    def finals(self) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.event["status"] in ("ok", "error")]

    async def wait(self, predicate: Any, timeout: float = 15.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    async def final(self, request_id: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The job's events once its final one arrived."""

        def done() -> bool:
            return any(e["status"] in ("ok", "error") for e in self.events(request_id))

        await self.wait(done, timeout)
        return self.events(request_id)

    async def phase(self, request_id: str, phase: str) -> None:
        await self.wait(lambda: any(e["phase"] == phase for e in self.events(request_id)))

    async def run(self, command: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        await self.send(command, **kwargs)
        return await self.final(command["request_id"])


@asynccontextmanager
async def commander(url: str, *extra_filters: str) -> AsyncIterator[Commander]:
    async with client_for(url) as client:
        operator = Commander(client)
        for topic_filter in (RESPONSE_TOPIC, STATUS_TOPIC, *extra_filters):
            await client.subscribe(topic_filter, qos=1)

        async def pump() -> None:
            async for message in client.messages:
                payload = bytes(message.payload)
                if not payload:
                    continue
                document = json.loads(payload)
                async with operator.changed:
                    if str(message.topic) == STATUS_TOPIC:
                        operator.statuses.append(document)
                    else:
                        correlation = getattr(message.properties, "CorrelationData", None)
                        operator.received.append(
                            Received(str(message.topic), document, correlation)
                        )
                    operator.changed.notify_all()

        task = asyncio.create_task(pump(), name="commander")
        try:
            yield operator
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def assert_stream(events: list[dict[str, Any]], *, ok: bool) -> None:
    """The contract's rules for one job's event stream."""
    for event in events:
        FlashEvent.model_validate(event)
    statuses = [event["status"] for event in events]
    assert "accepted" == statuses[0]
    assert (0, "connecting") == (events[0]["progress"], events[0]["phase"])
    finals = [status for status in statuses if status in ("ok", "error")]
    assert ["ok" if ok else "error"] == finals
    assert statuses[-1] == finals[0]
    assert set(statuses[1:-1]) <= {"in_progress"}
    progress = [event["progress"] for event in events]
    assert sorted(progress) == progress
    assert all(value < 100 for value in progress[:-1])
    order = [PHASES.index(event["phase"]) for event in events]
    assert sorted(order) == order
    final = events[-1]
    if ok:
        assert (100, "done") == (final["progress"], final["phase"])
        assert "verifying" == events[-2]["phase"]  # ok only after the MD5 check
    else:
        assert "error" not in [e.get("status") for e in events[:-1]]
        assert events[-2]["progress"] == final["progress"]  # progress <= last reported


def coded(events: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [e for e in events if e["status"] == "error" and e["error"]["code"] == code]


def single_error(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A command refused before a job started: one error event and nothing else."""
    assert 1 == len(events), events
    event = events[0]
    assert ("error", "connecting", 0) == (event["status"], event["phase"], event["progress"])
    return event


# -- zero-touch jobs ---------------------------------------------------------------------


def auto_finals(operator: Commander) -> list[dict[str, Any]]:
    return [e for e in operator.finals() if e["request_id"].startswith("auto-")]


async def next_auto_final(operator: Commander, seen: int) -> dict[str, Any]:
    """The final event of the next zero-touch job, and check its whole stream."""
    await operator.wait(lambda: len(auto_finals(operator)) > seen, timeout=30)
    final = auto_finals(operator)[seen]
    events = operator.events(final["request_id"])
    assert_stream(events, ok=final["status"] == "ok")
    return final


def bench_of(station: Station) -> SimulatedBench:
    assert station.bench is not None
    return station.bench
