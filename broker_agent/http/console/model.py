"""What the console knows, from the broker's retained state and live streams. Pure: no I/O.

Fed one MQTT message at a time by ``console/client.py``: the retained ``config``,
``config/applied`` and ``status`` of every device (the fleet state itself is the shared
``fleet.state.FleetView``, so the console computes exactly what the agent and ``status``
compute, contract 6.2), the agents' status and events, the stations' status and every flash
job's event stream.

Queries are answered from memory and filtered on the server: ``devices(...)`` scans the fleet
once per request (10,000 devices: a few ms, measured in tests/http/test_console_api.py) over a
sorted id list that is rebuilt only when a device appears or disappears.

Live updates: every change marks the device (or station, or job) dirty; ``Changes`` hands
the console's event streams one batch at most every ``FLUSH_INTERVAL_S``, so a burst of 10,000
acks costs each open page one message, not 10,000.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from broker_agent.fleet.state import Device, FleetView
from broker_agent.http.console.hints import hint_for
from firmware_contracts.codes import FlashStatus
from firmware_contracts.json_rules import loads_strict

RECENT_EVENTS = 1000
RECENT_JOBS_PER_STATION = 20
FLUSH_INTERVAL_S = 0.2
MAX_CHANGED_IDS = 200  # more changed devices than this in one batch: pages simply reload
_SECRET_WORDS = ("secret", "password", "passwd", "token", "key", "credential")


def redacted(document: dict[str, Any]) -> dict[str, Any]:
    """A firmware's free-form status fields, with anything named like a secret hidden."""
    return {
        name: "(hidden)" if any(word in name.lower() for word in _SECRET_WORDS) else value
        for name, value in document.items()
    }


def _json(payload: bytes) -> dict[str, Any] | None:
    """A retained or live payload's JSON object under the contract's rules (6.5), or None.

    Strict, because what a device publishes reaches the API's answers: a lone surrogate
    (``"\\ud800"``) that plain ``json.loads`` accepts made every answer holding it fail to
    encode (a 500 for the fleet page), and ``NaN`` is no JSON a browser can read.
    """
    try:
        document = loads_strict(payload)
    except (ValueError, RecursionError):  # StrictJsonError is a ValueError
        return None
    return document if isinstance(document, dict) else None


@dataclass
class Job:
    """One flash job as the console saw it: the latest event of its stream."""

    request_id: str
    station_id: str
    device_id: str | None
    port: str | None
    status: str = "requested"  # until the station's first event: requested by this console
    phase: str = "connecting"
    progress: int = 0
    error: dict[str, Any] | None = None
    chip: dict[str, Any] | None = None
    md5: str | None = None
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def final(self) -> bool:
        return self.status in (FlashStatus.OK.value, FlashStatus.ERROR.value)

    def apply(self, event: dict[str, Any]) -> None:
        self.status = str(event.get("status", self.status))
        self.phase = str(event.get("phase", self.phase))
        progress = event.get("progress")
        if isinstance(progress, int):
            self.progress = progress
        for name in ("device_id", "port", "chip", "md5", "error"):
            if event.get(name) is not None:
                setattr(self, name, event[name])
        self.updated = time.time()


@dataclass
class Station:
    station_id: str
    status: dict[str, Any]
    jobs: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_JOBS_PER_STATION))


class Changes:
    """Dirty marks, handed out in batches to every open event stream (each has a queue)."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.stations: set[str] = set()
        self.jobs: set[str] = set()
        self.events: list[dict[str, Any]] = []
        self._streams: set[asyncio.Queue[dict[str, Any]]] = set()
        self.pending = asyncio.Event()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self._streams.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._streams.discard(queue)

    def take(self) -> dict[str, Any] | None:
        if not (self.devices or self.stations or self.jobs or self.events):
            return None
        batch = {
            "devices": sorted(self.devices)[:MAX_CHANGED_IDS],
            "devices_truncated": len(self.devices) > MAX_CHANGED_IDS,
            "stations": sorted(self.stations),
            "jobs": sorted(self.jobs),
            "events": self.events,
        }
        self.devices, self.stations, self.jobs, self.events = set(), set(), set(), []
        return batch

    def deliver(self, batch: dict[str, Any]) -> None:
        for queue in list(self._streams):
            if queue.full():  # a stalled page: its backlog becomes one "reload everything"
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({**batch, "devices_truncated": True, "reload": True})
            else:
                queue.put_nowait(batch)


class ConsoleModel:
    def __init__(self, grace_s: float) -> None:
        self.view = FleetView(grace_s)
        self.configs: dict[str, bytes] = {}
        self.acks: dict[str, bytes] = {}
        self.statuses: dict[str, bytes] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.stations: dict[str, Station] = {}
        self.jobs: dict[str, Job] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.changes = Changes()
        self._sorted: list[str] | None = None

    # -- inputs ------------------------------------------------------------------------------
    def on_config(self, device_id: str, payload: bytes) -> None:
        self._store(self.configs, device_id, payload)
        self._fleet_input(device_id, self.view.on_config, payload)

    def on_ack(self, device_id: str, payload: bytes) -> None:
        self._store(self.acks, device_id, payload)
        self._fleet_input(device_id, self.view.on_ack, payload)

    def on_status(self, device_id: str, payload: bytes) -> None:
        self._store(self.statuses, device_id, payload)
        self._fleet_input(device_id, self.view.on_status, payload)

    def on_agent_status(self, agent_id: str, payload: bytes) -> None:
        document = _json(payload)
        if document is None:
            self.agents.pop(agent_id, None)
        else:
            self.agents[agent_id] = document

    def on_agent_event(self, agent_id: str, payload: bytes) -> None:
        document = _json(payload)
        if document is None:
            return
        event = {"agent_id": agent_id, **document}
        self.events.append(event)
        self.changes.events.append(event)
        self._mark()

    def on_station_status(self, station_id: str, payload: bytes) -> None:
        document = _json(payload)
        if document is None:
            return
        station = self.stations.get(station_id)
        if station is None:
            self.stations[station_id] = Station(station_id, document)
        else:
            station.status = document
        self.changes.stations.add(station_id)
        self._mark()

    def on_flash_event(self, station_id: str, payload: bytes) -> None:
        event = _json(payload)
        request_id = event.get("request_id") if event is not None else None
        if event is None or not isinstance(request_id, str):
            return
        job = self.jobs.get(request_id)
        if job is None or job.station_id != station_id:
            job = self.job_requested(
                station_id, request_id, event.get("device_id"), event.get("port")
            )
        job.apply(event)
        self.changes.jobs.add(request_id)
        self._mark()

    def job_requested(self, station_id: str, request_id: str, device_id: Any, port: Any) -> Job:
        job = Job(
            request_id,
            station_id,
            device_id if isinstance(device_id, str) else None,
            port if isinstance(port, str) else None,
        )
        self.jobs[request_id] = job
        station = self.stations.get(station_id)
        if station is None:
            station = self.stations[station_id] = Station(station_id, {"state": "unknown"})
        if len(station.jobs) == station.jobs.maxlen:
            self.jobs.pop(station.jobs[0], None)
        station.jobs.append(request_id)
        self.changes.jobs.add(request_id)
        self._mark()
        return job

    def reset_fleet(self) -> None:
        """A new session re-reads everything retained (devices deleted meanwhile disappear)."""
        self.view.clear()
        self.configs.clear()
        self.acks.clear()
        self.statuses.clear()
        self._sorted = None

    def _store(self, table: dict[str, bytes], device_id: str, payload: bytes) -> None:
        if payload:
            table[device_id] = payload
        else:
            table.pop(device_id, None)

    def _fleet_input(
        self, device_id: str, update: Callable[[str, bytes], None], payload: bytes
    ) -> None:
        known = device_id in self.view.devices
        update(device_id, payload)
        if known != (device_id in self.view.devices):
            self._sorted = None
        self.changes.devices.add(device_id)
        self._mark()

    def _mark(self) -> None:
        self.changes.pending.set()

    # -- queries -----------------------------------------------------------------------------
    def sorted_ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.view.devices)
        return self._sorted

    def devices(
        self,
        *,
        state: str | None = None,
        presence: str | None = None,
        search: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of device rows, sorted by id, after the filters; and the filtered total."""
        self.view.advance()
        now = time.time()
        needle = (search or "").strip().lower()
        devices = self.view.devices
        matched = 0
        page: list[dict[str, Any]] = []
        for device_id in self.sorted_ids():
            device = devices.get(device_id)
            if device is None or (needle and needle not in device_id):
                continue
            if state and (device.state is None or device.state.value != state):
                continue
            if presence and device.shown_presence.value != presence:
                continue
            if offset <= matched < offset + limit:
                page.append(self.row(device, now))
            matched += 1
        return page, matched

    def row(self, device: Device, now: float) -> dict[str, Any]:
        status = _json(self.statuses.get(device.device_id, b"")) or {}
        ack = device.ack
        return {
            "device_id": device.device_id,
            "state": device.state.value if device.state else None,
            "presence": device.shown_presence.value,
            "sha256": device.config.sha256 if device.config else None,
            "age_s": _rounded(device.age_s(now)),
            "ack_ok": ack.ok if ack else None,
            "ack_sha256": ack.sha256 if ack else None,
            "ack_error": ack.error if ack else None,
            "fw_version": status.get("fw_version") if isinstance(status, dict) else None,
        }

    def device(self, device_id: str) -> dict[str, Any] | None:
        self.view.advance()
        found = self.view.devices.get(device_id)
        if found is None:
            return None
        detail = self.row(found, time.time())
        envelope = _json(self.configs.get(device_id, b""))
        detail["updated_at"] = envelope.get("updated_at") if envelope else None
        detail["config"] = envelope.get("config") if envelope else None
        ack = _json(self.acks.get(device_id, b""))
        detail["ack"] = (
            {name: ack.get(name) for name in ("sha256", "ok", "error", "ts")} if ack else None
        )
        status = _json(self.statuses.get(device_id, b""))
        detail["status"] = redacted(status) if status else None
        return detail

    def counts(self) -> dict[str, int]:
        self.view.advance()
        counts = self.view.counts()
        counts["devices"] = len(self.view)
        return counts

    def station_list(self) -> list[dict[str, Any]]:
        return [self.station(station_id) for station_id in sorted(self.stations)]

    def station(self, station_id: str) -> dict[str, Any]:
        station = self.stations[station_id]
        status = station.status
        ports = status.get("ports") if isinstance(status.get("ports"), list) else []
        return {
            "station_id": station_id,
            "state": status.get("state", "unknown"),
            "version": status.get("version"),
            "ports": [
                {
                    "port": p.get("port"),
                    "description": p.get("description"),
                    "busy": bool(p.get("busy")),
                }
                for p in ports or []
                if isinstance(p, dict)
            ],
            "jobs": [self.job(r) for r in reversed(station.jobs) if r in self.jobs],
        }

    def job(self, request_id: str) -> dict[str, Any]:
        job = self.jobs[request_id]
        error = job.error
        code = error.get("code") if isinstance(error, dict) else None
        return {
            "request_id": job.request_id,
            "station_id": job.station_id,
            "device_id": job.device_id,
            "port": job.port,
            "status": job.status,
            "phase": job.phase,
            "progress": job.progress,
            "final": job.final,
            "chip": job.chip,
            "md5": job.md5,
            "error": error,
            "hint": hint_for(code) if isinstance(code, str) else None,
            "started": job.started,
            "updated": job.updated,
        }

    def recent_events(
        self, *, event: str | None = None, search: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Newest first, filtered by event name and by a substring of the device id."""
        needle = (search or "").strip().lower()
        found: list[dict[str, Any]] = []
        for item in reversed(self.events):
            if event and item.get("event") != event:
                continue
            if needle and needle not in str(item.get("device_id") or "").lower():
                continue
            found.append(item)
            if len(found) >= limit:
                break
        return found

    def __iter__(self) -> Iterator[Device]:
        return iter(self.view)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
