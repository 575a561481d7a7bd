"""The flash station end to end: real Mosquitto, real agent, real esptool, simulated boards.

Every message the station publishes is also checked against the generated JSON Schemas by the
``broker`` fixture's conformance monitor.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from broker_agent.simulator import BoardConfig, Fault
from broker_agent.station.commands import JobRequest
from broker_agent.station.flasher import FlashProgress
from broker_agent.station.job import JobEventStream
from broker_agent.station.ports import is_candidate, scan_entries
from firmware_contracts.codes import FlashPhase
from firmware_contracts.payloads import FlashEvent
from tests.station.harness import (
    NVS_OFFSET,
    NVS_SIZE,
    REQUEST_TOPIC,
    RESPONSE_TOPIC,
    STATION,
    STATUS_TOPIC,
    TOPICS,
    Bench,
    assert_stream,
    boards,
    coded,
    commander,
    credentials,
    nvs_region,
    simulated,
    single_error,
)
from tests.support.broker import PROJECT
from tests.support.mqtt import client_for, eventually, retained_snapshot
from tests.support.nvs_parser import parse_nvs
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(60)


# -- the whole flow ------------------------------------------------------------------------


async def test_a_flash_command_writes_the_devices_credentials(bench: Bench) -> None:
    async with (
        bench.agent(),
        running_station(bench.station_settings(simulate=1)) as station,
        commander(bench.broker.url) as operator,
    ):
        board = simulated(station)[0]
        url = board.url
        events = await operator.run({"request_id": "job-42", "device_id": "kitchen-01"})
        await operator.wait(lambda: not operator.statuses[-1]["ports"][0]["busy"])
        image = nvs_region(board)
        busy_flags = [status["ports"][0]["busy"] for status in operator.statuses]

    assert_stream(events, ok=True)
    ok = events[-1]
    assert credentials("kitchen-01") == parse_nvs(image).strings("prov")
    assert hashlib.md5(image).hexdigest() == ok["md5"]
    assert {"type": "ESP32", "mac": "24:0a:c4:00:00:01"} == ok["chip"]
    assert {"offset": NVS_OFFSET, "size": NVS_SIZE} == ok["partition"]
    assert (url, "kitchen-01") == (ok["port"], ok["device_id"])  # the one candidate
    assert [False, True, False] == busy_flags[-3:]
    [line] = bench.log_lines()
    assert {
        "station_id": STATION,
        "request_id": "job-42",
        "device_id": "kitchen-01",
        "port": url,
        "chip": "ESP32",
        "mac": "24:0a:c4:00:00:01",
        "partition_offset": NVS_OFFSET,
        "partition_size": NVS_SIZE,
        "md5": ok["md5"],
        "result": "ok",
        "error_code": None,
    }.items() <= line.items()


async def test_events_go_to_the_v5_response_topic_with_the_correlation_data(bench: Bench) -> None:
    async with (
        bench.agent(),
        running_station(bench.station_settings(simulate=1)),
        commander(
            bench.broker.url, f"{RESPONSE_TOPIC}/#", "replies/#", "iot/devices/#"
        ) as operator,
    ):
        correlation = b"\x00corr\xff"
        command = {"request_id": "job-7", "device_id": "kitchen-01"}
        events = await operator.run(
            command, response_topic=f"{RESPONSE_TOPIC}/ops/job-7", correlation=correlation
        )
        received = [r for r in operator.received if r.event["request_id"] == "job-7"]
        refused = await operator.run(
            {"request_id": "job-8", "device_id": "kitchen-01"},
            response_topic="iot/devices/kitchen-01/config",
        )
        wildcard = await operator.run(
            {"request_id": "job-9", "device_id": "kitchen-01"}, response_topic="replies/+"
        )
        elsewhere = await operator.run(
            {"request_id": "job-10", "device_id": "kitchen-01"},
            response_topic="replies/ops/job-10",
        )
        topics_of_refusals = {
            r.topic
            for r in operator.received
            if r.event["request_id"] in ("job-8", "job-9", "job-10")
        }

    assert_stream(events, ok=True)
    assert {(f"{RESPONSE_TOPIC}/ops/job-7", correlation)} == {
        (r.topic, r.correlation) for r in received
    }
    assert "invalid_request" == single_error(refused)["error"]["code"]
    assert "invalid_request" == single_error(wildcard)["error"]["code"]
    assert "invalid_request" == single_error(elsewhere)["error"]["code"]
    assert {RESPONSE_TOPIC} == topics_of_refusals


async def test_four_boards_flash_in_parallel_with_independent_progress(bench: Bench) -> None:
    async with (
        bench.agent(),
        running_station(bench.station_settings(simulate=4)) as station,
        commander(bench.broker.url) as operator,
    ):
        jobs = {
            f"par-{index}": (f"dev-{index + 1}", server)
            for index, server in enumerate(simulated(station))
        }
        for request_id, (device, server) in jobs.items():
            await operator.send({"request_id": request_id, "device_id": device, "port": server.url})
        streams = {request_id: await operator.final(request_id) for request_id in jobs}
        images = {rid: nvs_region(server) for rid, (_, server) in jobs.items()}
        urls = {rid: server.url for rid, (_, server) in jobs.items()}
        order = [(r.event["request_id"], r.event["status"]) for r in operator.received]

    for request_id, (device, _) in jobs.items():
        assert_stream(streams[request_id], ok=True)
        assert credentials(device) == parse_nvs(images[request_id]).strings("prov")
        assert urls[request_id] == streams[request_id][-1]["port"]
    first_ok = next(i for i, (_, status) in enumerate(order) if status == "ok")
    accepted_before = {rid for rid, status in order[:first_ok] if status == "accepted"}
    assert set(jobs) == accepted_before  # all four were running at once
    assert 4 == len(bench.log_lines())


# -- refusals: one error event, no job -------------------------------------------------------


@pytest.mark.allow_contract_violations  # the malformed commands themselves
async def test_malformed_commands_are_refused_and_never_stop_the_station(bench: Bench) -> None:
    bad: list[tuple[bytes, str | None]] = [
        (b"not json", None),
        (b"[1, 2]", None),
        (json.dumps({"request_id": "m-1"}).encode(), "m-1"),
        (json.dumps({"request_id": "m-2", "device_id": "Kitchen 01"}).encode(), "m-2"),
        (json.dumps({"request_id": "m-3", "device_id": "kitchen-01", "x": 1}).encode(), "m-3"),
        (
            json.dumps({"request_id": "m-4", "device_id": "kitchen-01", "baud": "fast"}).encode(),
            "m-4",
        ),
        (
            json.dumps(
                {"request_id": "m-5", "device_id": "kitchen-01", "after": "reboot"}
            ).encode(),
            "m-5",
        ),
        (
            json.dumps(
                {"request_id": "m-6", "device_id": "kitchen-01", "expected_mac": "nope"}
            ).encode(),
            "m-6",
        ),
        (json.dumps({"request_id": "x" * 65, "device_id": "kitchen-01"}).encode(), None),
        (b"\xff\xfe", None),
        (b"{" * 5000, None),
    ]

    async with (
        bench.agent(),
        running_station(bench.station_settings(simulate=1)) as station,
        commander(bench.broker.url) as operator,
    ):
        before = nvs_region(simulated(station)[0])
        for payload, _ in bad:
            await operator.send(payload)
        await operator.wait(lambda: len(operator.finals()) == len(bad))
        refusals = list(operator.received)
        still_untouched = nvs_region(simulated(station)[0])
        events = await operator.run({"request_id": "good", "device_id": "kitchen-01"})

    assert len(bad) == len(refusals)
    for (_, request_id), received in zip(bad, refusals, strict=True):
        event = single_error([received.event])
        assert "invalid_request" == event["error"]["code"]
        if request_id is not None:
            assert request_id == event["request_id"]
        else:
            assert event["request_id"].startswith("station-")  # made up
    assert before == still_untouched
    assert_stream(events, ok=True)
    assert ["good"] == [line["request_id"] for line in bench.log_lines()]


async def test_port_selection_errors(bench: Bench) -> None:
    async with (
        running_station(bench.station_settings(simulate=2)) as station,
        commander(bench.broker.url) as operator,
    ):
        urls = [server.url for server in simulated(station)]
        several = await operator.run({"request_id": "p-1", "device_id": "kitchen-01"})
        missing = await operator.run(
            {"request_id": "p-2", "device_id": "kitchen-01", "port": "/dev/ttyUSB97"}
        )

    async with (
        running_station(bench.station_settings(station_id="bench-2")),
        client_for(bench.broker.url) as client,
    ):
        await client.subscribe(TOPICS.flash_response("bench-2"), qos=1)
        await client.publish(
            TOPICS.flash_request("bench-2"),
            json.dumps({"request_id": "p-3", "device_id": "kitchen-01"}),
            qos=1,
        )
        async for message in client.messages:
            none_attached = json.loads(bytes(message.payload))
            break

    required = single_error(several)["error"]
    assert "port_required" == required["code"]
    assert all(url in required["message"] for url in urls)
    not_found = single_error(missing)["error"]
    assert "port_not_found" == not_found["code"]
    assert "/dev/ttyUSB97" in not_found["message"]
    assert ("p-3", "port_required") == (
        none_attached["request_id"],
        none_attached["error"]["code"],
    )
    assert [] == bench.log_lines()


async def test_port_busy_and_cancel_then_the_board_is_usable_again(bench: Bench) -> None:
    """No agent at first: the first job waits for its image, holding the port."""

    async with (
        running_station(bench.station_settings(simulate=1, provision_timeout_s=20)) as station,
        commander(bench.broker.url) as operator,
    ):
        board = simulated(station)[0]
        await operator.send({"request_id": "hold", "device_id": "kitchen-01"})
        await operator.phase("hold", "fetching_nvs")
        await operator.wait(lambda: operator.statuses[-1]["ports"][0]["busy"])
        busy = await operator.run({"request_id": "second", "device_id": "kitchen-01"})
        await operator.send(
            {"request_id": "hold", "device_id": "dev-1", "port": "socket://127.0.0.1:9"}
        )
        await operator.wait(lambda: coded(operator.events("hold"), "invalid_request"))
        [duplicate] = coded(operator.events("hold"), "invalid_request")
        await operator.cancel("no-such-job")  # logged only
        started = time.monotonic()
        await operator.cancel("hold")
        await operator.wait(lambda: coded(operator.events("hold"), "aborted"))
        held = [e for e in operator.events("hold") if e is not duplicate]
        cancel_took = time.monotonic() - started
        untouched = nvs_region(board)
        async with bench.agent():
            again = await operator.run({"request_id": "again", "device_id": "kitchen-01"})
        image = nvs_region(board)
        stray = operator.events("no-such-job")

    assert "port_busy" == single_error(busy)["error"]["code"]
    assert "hold" in busy[0]["error"]["message"]
    assert "kitchen-01" == busy[0]["device_id"]
    assert "invalid_request" == single_error([duplicate])["error"]["code"]  # id in use
    assert "already running" in duplicate["error"]["message"]
    assert_stream(held, ok=False)
    assert ("aborted", "fetching_nvs") == (held[-1]["error"]["code"], held[-1]["phase"])
    assert cancel_took < 1  # the job runs in a worker process: cancel still answers at once
    assert b"\xff" * NVS_SIZE == untouched
    assert_stream(again, ok=True)
    assert credentials("kitchen-01") == parse_nvs(image).strings("prov")
    assert [] == stray
    assert [("hold", "error", "aborted"), ("again", "ok", None)] == [
        (line["request_id"], line["result"], line["error_code"]) for line in bench.log_lines()
    ]


# -- job errors ------------------------------------------------------------------------------


FAULTS: dict[str, tuple[Fault | None, str, str]] = {
    # request_id: (board fault, code, phase it fails in)
    "f-sync": (Fault.NO_ANSWER, "bootloader_not_entered", "connecting"),
    "f-table": (Fault.CORRUPT_TABLE_MD5, "partition_table_unreadable", "reading_partition_table"),
    "f-nvs": (Fault.NO_NVS_PARTITION, "nvs_partition_missing", "reading_partition_table"),
    "f-subtype": (Fault.WRONG_NVS_SUBTYPE, "nvs_subtype_mismatch", "reading_partition_table"),
    "f-stick": (Fault.WRITE_DOES_NOT_STICK, "verify_failed", "verifying"),
    "f-drop": (Fault.DROP_MID_WRITE, "write_failed", "writing"),
    "f-mac": (None, "mac_mismatch", "connecting"),
    "f-unknown": (None, "provisioning_failed", "fetching_nvs"),
}


async def test_every_board_fault_ends_in_its_error_code(bench: Bench) -> None:
    configs = [
        BoardConfig(mac=f"24:0a:c4:00:01:{index:02x}", faults=frozenset({f} if f else set()))
        for index, (f, _, _) in enumerate(FAULTS.values())
    ]

    with boards(*configs) as servers:
        async with (
            bench.agent(),
            running_station(bench.station_settings(), connect_attempts=1),
            commander(bench.broker.url) as operator,
        ):
            before = [bytes(server.board.flash) for server in servers]
            for request_id, server in zip(FAULTS, servers, strict=True):
                command = {"request_id": request_id, "device_id": "kitchen-01"}
                command["port"] = server.url
                if request_id == "f-mac":
                    command["expected_mac"] = "24:0A:C4:99:99:99"
                if request_id == "f-unknown":
                    command["device_id"] = "ghost-99"
                await operator.send(command)
            streams = {request_id: await operator.final(request_id) for request_id in FAULTS}
            after = [bytes(server.board.flash) for server in servers]

    for request_id, (_, code, phase) in FAULTS.items():
        events = streams[request_id]
        assert_stream(events, ok=False)
        error = events[-1]["error"]
        assert (request_id, code, phase) == (request_id, error["code"], events[-1]["phase"])
    assert "hold the BOOT button" in streams["f-sync"][-1]["error"]["message"]
    assert {"code": "unknown_device"} == {
        "code": streams["f-unknown"][-1]["error"]["cause"]["code"]
    }
    assert streams["f-unknown"][-1]["error"]["cause"]["message"]
    index = list(FAULTS)
    for unwritten in ("f-mac", "f-unknown", "f-sync", "f-table", "f-nvs", "f-subtype"):
        assert before[index.index(unwritten)] == after[index.index(unwritten)], unwritten
    logged = {line["request_id"]: line for line in bench.log_lines()}
    assert {rid: code for rid, (_, code, _) in FAULTS.items()} == {
        rid: line["error_code"] for rid, line in logged.items()
    }
    assert {"error"} == {line["result"] for line in logged.values()}
    assert "24:0a:c4:00:01:01" == logged["f-table"]["mac"]  # what was learnt on the way
    assert "24:0a:c4:00:01:06" in streams["f-mac"][-1]["error"]["message"]


async def test_provisioning_timeout_without_an_agent(bench: Bench) -> None:
    async with (
        running_station(bench.station_settings(simulate=1, provision_timeout_s=0.5)) as st,
        commander(bench.broker.url) as operator,
    ):
        events = await operator.run({"request_id": "t-1", "device_id": "kitchen-01"})
        untouched = nvs_region(simulated(st)[0])

    assert_stream(events, ok=False)
    assert ("provisioning_timeout", "fetching_nvs") == (
        events[-1]["error"]["code"],
        events[-1]["phase"],
    )
    assert b"\xff" * NVS_SIZE == untouched


# -- presence, retained commands, reconnects, the log -----------------------------------------


async def test_status_lists_the_ports_and_goes_offline_on_shutdown(bench: Bench) -> None:
    async with running_station(bench.station_settings(simulate=2)) as station:
        urls = [server.url for server in simulated(station)]
        online = json.loads((await retained_snapshot(bench.broker.url, STATUS_TOPIC))[STATUS_TOPIC])
    offline = json.loads((await retained_snapshot(bench.broker.url, STATUS_TOPIC))[STATUS_TOPIC])
    online, offline, urls = online, offline, urls

    assert ("online", STATION) == (online["state"], online["station_id"])
    assert online["version"]
    expected = [
        {
            "port": url,
            "description": "CP2102 USB to UART Bridge Controller (simulated ESP32)",
            "serial_number": f"240ac40000{index:02x}",  # the board's MAC, as native USB shows it
            "vid": 0x10C4,
            "pid": 0xEA60,
            "busy": False,
        }
        for index, url in enumerate(urls, start=1)
    ]
    assert sorted(expected, key=lambda port: str(port["port"])) == online["ports"]
    assert {"state": "offline", "station_id": STATION} == offline


async def test_stopping_the_station_aborts_its_jobs_and_reports_them(bench: Bench) -> None:
    async with commander(bench.broker.url) as operator:
        settings = bench.station_settings(simulate=1, provision_timeout_s=20)
        async with running_station(settings):
            await operator.send({"request_id": "cut", "device_id": "kitchen-01"})
            await operator.phase("cut", "fetching_nvs")
        events = await operator.final("cut")
        await operator.wait(lambda: operator.statuses[-1]["state"] == "offline")

    assert_stream(events, ok=False)
    assert ("aborted", "fetching_nvs") == (events[-1]["error"]["code"], events[-1]["phase"])
    assert ["aborted"] == [line["error_code"] for line in bench.log_lines()]


async def test_the_will_marks_a_killed_station_offline(bench: Bench, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_AGENT_")}
    env |= {"PYTHONPATH": str(PROJECT), "BROKER_AGENT_LOG_FORMAT": "json"}
    env["BROKER_AGENT_HTTP_LISTEN"] = ""  # no fixed port 8081 (tests run side by side)
    command = [
        sys.executable, "-m", "broker_agent.cli", "station", "--broker-url", bench.broker.url,
        "--station-id", STATION, "--simulate", "1", "--manufacturing-log", str(bench.log_path),
    ]  # fmt: skip
    log = (tmp_path / "station.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        async with client_for(bench.broker.url) as client:
            await client.subscribe(STATUS_TOPIC, qos=1)
            states: list[dict[str, Any]] = []
            async with asyncio.timeout(20):
                async for message in client.messages:
                    states.append(json.loads(bytes(message.payload)))
                    if states[-1]["state"] == "online":
                        process.send_signal(signal.SIGKILL)
                    if states[-1]["state"] == "offline":
                        break
        online, offline = states[-2], states[-1]
    finally:
        with suppress(ProcessLookupError):  # killed above, and already reaped
            process.kill()
        await asyncio.wait_for(process.wait(), 10)
        log.close()

    assert 1 == len(online["ports"]) and online["ports"][0]["port"].startswith("socket://")
    assert {"state": "offline", "station_id": STATION} == offline


async def test_a_retained_command_is_refused_cleared_and_never_run(bench: Bench) -> None:
    async with (
        running_station(bench.station_settings(simulate=1)) as station,
        commander(bench.broker.url) as operator,
    ):
        await operator.send({"request_id": "r-1", "device_id": "kitchen-01"}, retain=True)
        await operator.wait(lambda: len(operator.finals()) == 1)
        refused = list(operator.received)
        retained = await retained_snapshot(bench.broker.url, REQUEST_TOPIC)
        untouched = nvs_region(simulated(station)[0])

    assert "invalid_request" == single_error([r.event for r in refused])["error"]["code"]
    assert "retained" in refused[0].event["error"]["message"]
    assert {} == retained
    assert b"\xff" * NVS_SIZE == untouched


async def test_the_station_reconnects_after_a_broker_restart(bench: Bench) -> None:
    async with bench.agent(), running_station(bench.station_settings(simulate=1)) as station:
        await asyncio.to_thread(bench.broker.stop)

        async def offline() -> bool:
            return not station.online.is_set()

        await eventually(offline)
        await asyncio.to_thread(bench.broker.start)
        await asyncio.wait_for(station.online.wait(), 15)
        async with commander(bench.broker.url) as operator:
            events = await operator.run({"request_id": "after", "device_id": "kitchen-01"})
    assert_stream(events, ok=True)


async def test_the_manufacturing_log_survives_restarts_and_holds_no_secrets(bench: Bench) -> None:
    async def one_job(request_id: str, device_id: str) -> None:
        async with (
            running_station(bench.station_settings(simulate=1)),
            commander(bench.broker.url) as operator,
        ):
            await operator.run({"request_id": request_id, "device_id": device_id})

    async with bench.agent():
        await one_job("first", "kitchen-01")
        await one_job("second", "ghost-99")

    text = bench.log_path.read_text()
    lines = bench.log_lines()
    assert [("first", "ok", None), ("second", "error", "provisioning_failed")] == [
        (line["request_id"], line["result"], line["error_code"]) for line in lines
    ]
    for secret in ("SECRET-kitchen-01", "iotdevice-kitchen-01", "auth.example.invalid"):
        assert secret not in text
    assert lines[0]["ts"].endswith("Z")


# -- the pure parts ---------------------------------------------------------------------------


def port_entry(device: str, vid: int | None, pid: int | None, **extra: Any) -> SimpleNamespace:
    values = {"description": "n/a", "serial_number": None, **extra}
    return SimpleNamespace(device=device, vid=vid, pid=pid, **values)


def test_candidate_ports_are_known_bridges_and_espressif_usb() -> None:
    scan = scan_entries(
        [
            port_entry("/dev/ttyUSB1", 0x1A86, 0x7523, description="USB Serial"),
            port_entry("/dev/ttyUSB0", 0x10C4, 0xEA60, description="CP2102", serial_number="0001"),
            port_entry("/dev/ttyACM0", 0x303A, 0x1001, description="USB JTAG/serial debug unit"),
            port_entry("/dev/ttyACM1", 0x2341, 0x0043, description="Arduino Uno"),
            port_entry("/dev/ttyS0", None, None),
        ]
    )

    assert ["/dev/ttyACM0", "/dev/ttyUSB0", "/dev/ttyUSB1"] == [p.port for p in scan.candidates]
    assert ("CP2102", "0001", 0x10C4, 0xEA60, False) == (
        scan.candidates[1].description,
        scan.candidates[1].serial_number,
        scan.candidates[1].vid,
        scan.candidates[1].pid,
        scan.candidates[1].busy,
    )
    assert scan.is_attached("/dev/ttyACM1") and scan.is_attached("/dev/ttyS0")
    assert not scan.is_attached("/dev/ttyUSB9")
    assert is_candidate(0x0403, 0x6015) and not is_candidate(0x0403, 0x1234)


def test_byte_progress_is_throttled_but_phase_changes_never_are() -> None:
    now = [0.0]
    published: list[FlashEvent] = []
    stream = JobEventStream(
        JobRequest("j", "kitchen-01", "socket://x:1"), published.append, clock=lambda: now[0]
    )
    stream.accepted()
    reports = [
        (0.00, FlashPhase.CONNECTING, 0),  # same as accepted: dropped
        (0.01, FlashPhase.CONNECTING, 3),  # too soon: dropped
        (0.02, FlashPhase.READING_PARTITION_TABLE, 10),  # phase change: sent
        (0.03, FlashPhase.READING_PARTITION_TABLE, 15),  # too soon: dropped
        (0.20, FlashPhase.READING_PARTITION_TABLE, 19),  # due: sent
        (0.21, FlashPhase.WRITING, 30),  # phase change: sent
        (0.22, FlashPhase.WRITING, 12),  # never goes back
    ]
    for at, phase, progress in reports:
        now[0] = at
        stream.on_progress(FlashProgress(phase, progress))

    assert [
        ("connecting", 0),
        ("reading_partition_table", 10),
        ("reading_partition_table", 19),
        ("writing", 30),
    ] == [(event.phase.value, event.progress) for event in published]
