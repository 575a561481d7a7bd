"""The console's REST API over real HTTP, against a real Mosquitto, the real agent (serving the
console on its listener) and, for flash jobs, a station with simulated boards.

Every write goes through MQTT (config/set) to the agent, which writes the file: the tests read
the file back to prove it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker_agent.commands.console import run_console
from broker_agent.http.server import HttpServer
from broker_agent.settings import ConsoleSettings, StationSettings
from tests.http.console_harness import ConsoleFleet, console_fleet, eventually, publish_ack
from tests.support.broker import Broker
from tests.support.service import running
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(60)


async def test_devices_are_paged_filtered_and_counted_on_the_server(
    broker: Broker, tmp_path: Path
) -> None:
    async with console_fleet(broker.url, tmp_path) as fleet:
        first = (await fleet.http.get("/api/devices", params={"per_page": 2})).json()
        second = (await fleet.http.get("/api/devices", params={"per_page": 2, "page": 2})).json()
        searched = (await fleet.http.get("/api/devices", params={"q": "GREEN"})).json()
        kitchen = await fleet.device("kitchen-01")
        await publish_ack(broker.url, "kitchen-01", kitchen["sha256"])

        async def in_sync() -> dict[str, Any] | None:
            page = (await fleet.http.get("/api/devices", params={"state": "in_sync"})).json()
            return page if page["total"] == 1 else None

        synced = await eventually(in_sync)
        online = (await fleet.http.get("/api/devices", params={"presence": "online"})).json()
        missing = await fleet.http.get("/api/devices/nobody")
        bad = await fleet.http.get("/api/devices/Not_An_Id")
    assert ["garage-door", "greenhouse-02"] == [d["device_id"] for d in first["items"]]
    assert (["kitchen-01"], 3) == ([d["device_id"] for d in second["items"]], second["total"])
    assert ["greenhouse-02"] == [d["device_id"] for d in searched["items"]]
    assert {"pending": 3, "devices": 3} == {
        k: v for k, v in first["counts"].items() if k in ("pending", "devices")
    }
    assert ["kitchen-01"] == [d["device_id"] for d in synced["items"]]
    assert (1, 2) == (synced["counts"]["in_sync"], synced["counts"]["pending"])
    assert ["kitchen-01"] == [d["device_id"] for d in online["items"]]
    assert (404, "unknown_device") == (missing.status_code, missing.json()["error"]["code"])
    assert 422 == bad.status_code


async def test_a_config_edit_goes_pending_then_in_sync_when_the_device_acks(
    broker: Broker, tmp_path: Path
) -> None:
    async with console_fleet(broker.url, tmp_path) as fleet:
        before = await fleet.device("kitchen-01")
        await publish_ack(broker.url, "kitchen-01", before["sha256"])
        await eventually(lambda: _state_is(fleet, "kitchen-01", "in_sync"))
        async with fleet.http.stream("GET", "/api/events") as stream:
            lines = stream.aiter_lines()
            assert "event: hello" == await anext(lines)
            saved = await fleet.http.put(
                "/api/devices/kitchen-01/config",
                json={"telemetry_interval_s": 120, "led": {"brightness": 10}},
                headers=fleet.headers(**{"If-Match": f'"{before["sha256"]}"'}),
            )
            new_sha = saved.json()["sha256"]
            pending = await fleet.device("kitchen-01")
            acked_at = time.monotonic()
            await publish_ack(broker.url, "kitchen-01", new_sha)
            seen_in = await _update_naming(lines, "kitchen-01", after=acked_at)
        after = await eventually(lambda: _state_is(fleet, "kitchen-01", "in_sync"))
    assert 200 == saved.status_code
    assert f'"{new_sha}"' == saved.headers["ETag"]
    assert {"telemetry_interval_s": 120, "led": {"brightness": 10}} == json.loads(
        (fleet.configs / "kitchen-01.json").read_text()
    )
    assert ("pending", new_sha) == (pending["state"], pending["sha256"])
    assert seen_in < 1.0  # the row changes within a second of the ack
    assert (new_sha, True) == (after["ack"]["sha256"], after["ack"]["ok"])
    assert "(hidden)" == after["status"]["wifi_password"]  # a firmware's own secret-like field


async def test_writes_explain_schema_violations_conflicts_and_deletes(
    broker: Broker, tmp_path: Path
) -> None:
    async with console_fleet(broker.url, tmp_path) as fleet:
        current = await fleet.device("garage-door")
        url = "/api/devices/garage-door/config"
        wrong = {"telemetry_interval_s": 1, "led": {"brightness": "x"}}
        invalid = await fleet.http.put(url, json=wrong, headers=fleet.headers())
        stale = await fleet.http.put(
            url,
            json={"telemetry_interval_s": 50},
            headers=fleet.headers(**{"If-Match": "0" * 64}),
        )
        exists = await fleet.http.put(
            url, json={"telemetry_interval_s": 50}, headers=fleet.headers(**{"If-None-Match": "*"})
        )
        merged = await fleet.http.patch(
            url,
            content=b'{"led": {"brightness": 7}}',
            headers=fleet.headers(**{"Content-Type": "application/merge-patch+json"}),
        )
        not_json = await fleet.http.put(url, content=b"{nope", headers=fleet.headers())
        deleted = await fleet.http.delete(
            url, headers=fleet.headers(**{"If-Match": merged.json()["sha256"]})
        )
        gone = await eventually(lambda: _gone(fleet.http, "garage-door"))
    assert 422 == invalid.status_code
    assert "schema_violation" == invalid.json()["error"]["code"]
    assert {"$.led.brightness", "$.telemetry_interval_s"} == {
        v["path"] for v in invalid.json()["violations"]
    }
    assert (409, "conflict") == (stale.status_code, stale.json()["error"]["code"])
    assert current["sha256"] in stale.json()["error"]["message"]  # names the current sha256
    assert 409 == exists.status_code
    assert 200 == merged.status_code
    assert 400 == not_json.status_code
    assert (200, None) == (deleted.status_code, deleted.json()["sha256"])
    assert gone
    assert not (fleet.configs / "garage-door.json").exists()


async def test_provisioning_answers_in_the_old_systems_shape(
    broker: Broker, tmp_path: Path
) -> None:
    async with console_fleet(broker.url, tmp_path) as fleet:
        ok = await fleet.http.get(
            "/api/devices/kitchen-01/provisioning", params={"partition_size": 20480}
        )
        unknown = await fleet.http.get(
            "/api/devices/nobody/provisioning", params={"partition_size": 20480}
        )
        small = await fleet.http.get(
            "/api/devices/kitchen-01/provisioning", params={"partition_size": 100}
        )
    assert 200 == ok.status_code
    assert {"size", "data"} == set(ok.json())
    assert 20480 == ok.json()["size"] == len(base64.b64decode(ok.json()["data"]))
    assert "no-store" == ok.headers["Cache-Control"]
    assert (404, "unknown_device") == (unknown.status_code, unknown.json()["error"]["code"])
    assert 422 == small.status_code


async def test_a_flash_job_started_from_the_api_reaches_100(broker: Broker, tmp_path: Path) -> None:
    async with console_fleet(broker.url, tmp_path, simulate=1) as fleet:
        stations = (await fleet.http.get("/api/stations")).json()["stations"]
        port = stations[0]["ports"][0]["port"]
        started = await fleet.http.post(
            "/api/stations/bench-1/jobs",
            json={"device_id": "kitchen-01", "port": port, "expected_mac": "24:0a:c4:00:00:01"},
            headers=fleet.headers(),
        )
        request_id = started.json()["request_id"]
        job = await eventually(lambda: _final_job(fleet.http, request_id), timeout=20)
        listed = (await fleet.http.get("/api/stations")).json()["stations"][0]
        refused = await fleet.http.post(
            "/api/stations/bench-1/jobs", json={"device_id": "kitchen-01"}
        )  # no CSRF token
    assert 202 == started.status_code
    assert ("ok", "done", 100) == (job["status"], job["phase"], job["progress"])
    assert "24:0a:c4:00:00:01" == job["chip"]["mac"]
    assert request_id == listed["jobs"][0]["request_id"]
    assert [False] == [p["busy"] for p in listed["ports"]]
    assert 403 == refused.status_code


async def test_a_failed_job_carries_its_code_and_the_operators_hint(
    broker: Broker, tmp_path: Path
) -> None:
    async with console_fleet(broker.url, tmp_path, simulate=1) as fleet:
        started = await fleet.http.post(
            "/api/stations/bench-1/jobs", json={"device_id": "nobody"}, headers=fleet.headers()
        )
        job = await eventually(lambda: _final_job(fleet.http, started.json()["request_id"]))
    assert ("error", "provisioning_failed") == (job["status"], job["error"]["code"])
    assert "unknown_device" == job["error"]["cause"]["code"]
    assert job["hint"].startswith("act on the cause")


async def test_the_standalone_console_cancels_a_running_job(broker: Broker, tmp_path: Path) -> None:
    """``broker-agent console`` with no agent on the broker: a job waits in fetching_nvs for an
    image that never comes, until the console cancels it."""
    servers: list[HttpServer] = []
    settings = ConsoleSettings(broker_url=broker.url, http_listen="127.0.0.1:0")
    station = StationSettings(
        broker_url=broker.url,
        station_id="bench-1",
        simulate=1,
        http_listen="",
        manufacturing_log=tmp_path / "log.jsonl",
    )
    async with (
        running_station(station),
        running(run_console(settings, servers.append), _listening(servers), name="console"),
        httpx.AsyncClient(base_url=str(servers[0].url), timeout=10) as http,
    ):
        csrf = {"X-CSRF-Token": (await http.get("/api/session")).json()["csrf_token"]}

        async def station_seen() -> bool:
            return bool((await http.get("/api/stations")).json()["stations"])

        await eventually(station_seen)
        started = await http.post(
            "/api/stations/bench-1/jobs", json={"device_id": "kitchen-01"}, headers=csrf
        )
        request_id = started.json()["request_id"]

        async def fetching() -> bool:
            job = (await http.get(f"/api/jobs/{request_id}")).json()
            return bool(job["phase"] == "fetching_nvs")

        await eventually(fetching)
        cancel = await http.delete(f"/api/stations/bench-1/jobs/{request_id}", headers=csrf)
        job = await eventually(lambda: _final_job(http, request_id))
        ready = await http.get("/readyz")
        health = (await http.get("/healthz")).json()
    assert 202 == cancel.status_code
    assert ("error", "aborted", "fetching_nvs") == (
        job["status"],
        job["error"]["code"],
        job["phase"],
    )
    assert "retry when ready" == job["hint"]
    assert (200, "console") == (ready.status_code, health["service"])


async def _listening(servers: list[HttpServer]) -> None:
    while not servers:  # noqa: ASYNC110 - run_console reports its server through a callback
        await asyncio.sleep(0.01)


async def test_recent_events_are_newest_first_and_filtered(broker: Broker, tmp_path: Path) -> None:
    async with console_fleet(broker.url, tmp_path) as fleet:
        (fleet.configs / "broken.json").write_text("{")

        async def rejected() -> list[dict[str, Any]] | None:
            found = (
                await fleet.http.get("/api/events/recent", params={"event": "config_rejected"})
            ).json()["events"]
            return found or None

        events = await rejected_events(rejected)
        everything = (await fleet.http.get("/api/events/recent")).json()["events"]
    assert "broken.json" == events[0]["file"]
    assert "invalid_json" == events[0]["error"]["code"]
    assert everything[0]["ts"] >= everything[-1]["ts"]


async def rejected_events(probe: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await eventually(probe)
    return found


# -- helpers -------------------------------------------------------------------------------


async def _state_is(fleet: ConsoleFleet, device_id: str, state: str) -> dict[str, Any] | None:
    device = await fleet.device(device_id)
    return device if device["state"] == state else None


async def _gone(http: httpx.AsyncClient, device_id: str) -> bool:
    response = await http.get(f"/api/devices/{device_id}")
    return response.status_code == 404 or response.json()["state"] == "unmanaged"


async def _final_job(http: httpx.AsyncClient, request_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = (await http.get(f"/api/jobs/{request_id}")).json()
    return job if job.get("final") else None


async def _update_naming(lines: Any, device_id: str, *, after: float) -> float:
    """Seconds from ``after`` until an ``update`` event names ``device_id``."""
    async for line in lines:
        if line.startswith("data:") and device_id in json.loads(line[5:]).get("devices", []):
            return time.monotonic() - after
    raise AssertionError("the event stream ended")
