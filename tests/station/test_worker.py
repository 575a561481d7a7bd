"""ProcessFlasher: a job's esptool work in a worker process, with the real esptool and boards."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_agent.errors import FlashJobError
from broker_agent.simulator import BoardConfig, BoardServer, SimulatedBoard, port_of
from broker_agent.station.commands import JobRequest
from broker_agent.station.flasher import FlashProgress
from broker_agent.station.targets import NvsImage, NvsTarget
from broker_agent.station.worker import ProcessFlasher
from firmware_contracts.codes import FlashErrorCode, FlashPhase
from tests.station.harness import Bench, boards, commander
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def flasher() -> Iterator[ProcessFlasher]:
    pool = ProcessFlasher("json", "warning")
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def server() -> Iterator[BoardServer]:
    with BoardServer(SimulatedBoard(BoardConfig())) as running:
        yield running


def image_for(target: NvsTarget) -> NvsImage:
    return NvsImage(os.urandom(target.nvs.size))  # incompressible: the write streams blocks


def job(server: BoardServer, request_id: str = "w-1") -> JobRequest:
    return JobRequest(request_id, "kitchen-01", server.url)


def socket_owners(remote_port: int) -> set[int]:
    """Pids holding a TCP socket connected to 127.0.0.1:remote_port (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == remote_port and fields[3] == "01":  # established
            inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if links & inodes:
            owners.add(int(pid))
    return owners


def test_the_serial_port_is_held_by_another_process_than_the_station(
    flasher: ProcessFlasher, server: BoardServer
) -> None:
    owners: list[set[int]] = []

    def fetch(target: NvsTarget) -> NvsImage:
        owners.append(socket_owners(port_of(server.url)))  # the port is open while fetching
        return image_for(target)

    outcome = flasher(job(server), fetch, lambda report: None, threading.Event())

    [holders] = owners
    assert 1 == len(holders)
    assert os.getpid() not in holders
    assert hashlib.md5(server.board.flash[0x9000:0xE000]).hexdigest() == outcome.md5


def test_progress_and_outcome_cross_the_process_boundary(
    flasher: ProcessFlasher, server: BoardServer
) -> None:
    reports: list[FlashProgress] = []

    outcome = flasher(job(server), image_for, reports.append, threading.Event())

    phases = list(dict.fromkeys(report.phase for report in reports))
    assert [
        FlashPhase.CONNECTING,
        FlashPhase.READING_PARTITION_TABLE,
        FlashPhase.FETCHING_NVS,
        FlashPhase.WRITING,
        FlashPhase.VERIFYING,
    ] == phases
    assert ("ESP32", "24:0a:c4:12:34:56") == (outcome.chip_type, outcome.mac)
    assert reports[-1].partition == outcome.partition


def test_a_fetch_error_reaches_the_caller_with_its_cause(
    flasher: ProcessFlasher, server: BoardServer
) -> None:
    before = bytes(server.board.flash)

    def refuse(target: NvsTarget) -> NvsImage:
        raise FlashJobError(
            FlashErrorCode.PROVISIONING_FAILED,
            "the agent refused",
            FlashPhase.FETCHING_NVS,
            cause={"code": "unknown_device", "message": "no such device"},
        )

    with pytest.raises(FlashJobError) as caught:
        flasher(job(server), refuse, lambda report: None, threading.Event())

    assert (FlashErrorCode.PROVISIONING_FAILED, FlashPhase.FETCHING_NVS) == (
        caught.value.code,
        caught.value.phase,
    )
    assert {"code": "unknown_device", "message": "no such device"} == caught.value.cause
    assert before == server.board.flash


def test_cancel_mid_write_answers_within_a_second_and_frees_the_port(
    flasher: ProcessFlasher, server: BoardServer
) -> None:
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_once_writing(progress: FlashProgress) -> None:
        if progress.phase is FlashPhase.WRITING and not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()

    with pytest.raises(FlashJobError) as caught:
        flasher(job(server), image_for, cancel_once_writing, cancel)
    took = time.monotonic() - cancelled_at[0]

    assert (FlashErrorCode.ABORTED, FlashPhase.WRITING) == (caught.value.code, caught.value.phase)
    assert took < 1.0
    assert set() == socket_owners(port_of(server.url))
    again = flasher(job(server, "w-2"), image_for, lambda report: None, threading.Event())
    assert hashlib.md5(server.board.flash[0x9000:0xE000]).hexdigest() == again.md5


def test_a_worker_that_dies_ends_its_job_internal_error_and_the_next_job_works(
    flasher: ProcessFlasher, server: BoardServer
) -> None:
    def kill_the_worker(target: NvsTarget) -> NvsImage:
        [holder] = socket_owners(port_of(server.url))
        os.kill(holder, signal.SIGKILL)
        return image_for(target)

    with pytest.raises(FlashJobError) as caught:
        flasher(job(server), kill_the_worker, lambda report: None, threading.Event())
    outcome = flasher(job(server, "w-2"), image_for, lambda report: None, threading.Event())

    assert FlashErrorCode.INTERNAL_ERROR == caught.value.code
    assert "exit code -9" in caught.value.message
    assert hashlib.md5(server.board.flash[0x9000:0xE000]).hexdigest() == outcome.md5


def test_a_worker_is_reused_by_the_next_job(flasher: ProcessFlasher, server: BoardServer) -> None:
    holders: list[set[int]] = []

    def fetch(target: NvsTarget) -> NvsImage:
        holders.append(socket_owners(port_of(server.url)))
        return image_for(target)

    for request_id in ("w-1", "w-2"):
        flasher(job(server, request_id), fetch, lambda report: None, threading.Event())

    assert holders[0] == holders[1]


def test_four_jobs_at_once_run_in_four_workers(flasher: ProcessFlasher) -> None:
    servers = [
        BoardServer(SimulatedBoard(BoardConfig(mac=f"24:0a:c4:00:00:0{i}"))).start()
        for i in range(1, 5)
    ]
    holders: dict[str, set[int]] = {}
    inside = threading.Barrier(4)

    def run(server: BoardServer) -> None:
        def fetch(target: NvsTarget) -> NvsImage:
            holders[server.url] = socket_owners(port_of(server.url))
            inside.wait(20)  # all four hold their port at once
            return image_for(target)

        flasher(job(server, server.url[-5:]), fetch, lambda report: None, threading.Event())

    threads = [threading.Thread(target=run, args=(server,)) for server in servers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for server in servers:
            server.stop()

    pids = [pid for owners in holders.values() for pid in owners]
    assert 4 == len(set(pids)) == len(pids)
    for server in servers:
        assert server.board.flash[0x9000:0xE000] != b"\xff" * 0x5000


def test_a_worker_that_does_not_answer_a_cancel_is_terminated_and_its_port_freed(
    flasher: ProcessFlasher, server: BoardServer
) -> None:
    cancel = threading.Event()
    frozen: list[int] = []

    def freeze_the_worker_then_cancel(target: NvsTarget) -> NvsImage:
        [holder] = socket_owners(port_of(server.url))
        os.kill(holder, signal.SIGSTOP)  # a worker stuck where no cancel reaches it
        frozen.append(holder)
        cancel.set()
        return image_for(target)

    started = time.monotonic()
    with pytest.raises(FlashJobError) as caught:
        flasher(job(server), freeze_the_worker_then_cancel, lambda report: None, cancel)
    took = time.monotonic() - started

    assert FlashErrorCode.ABORTED == caught.value.code
    assert took < 3.0
    assert not Path(f"/proc/{frozen[0]}").exists()  # terminated and reaped
    assert set() == socket_owners(port_of(server.url))
    outcome = flasher(job(server, "w-2"), image_for, lambda report: None, threading.Event())
    assert hashlib.md5(server.board.flash[0x9000:0xE000]).hexdigest() == outcome.md5


async def test_the_station_runs_a_jobs_esptool_work_outside_its_own_process(
    bench: Bench,
) -> None:
    """No agent: the job waits for its image, holding the board's port, long enough to look."""
    with boards(BoardConfig()) as [server]:
        settings = bench.station_settings(provision_timeout_s=20)
        async with running_station(settings), commander(bench.broker.url) as operator:
            command = {"request_id": "w-1", "device_id": "kitchen-01", "port": server.url}
            await operator.send(command)
            await operator.phase("w-1", "fetching_nvs")
            holders = socket_owners(port_of(server.url))
            await operator.cancel("w-1")
            events = await operator.final("w-1")

    assert 1 == len(holders)
    assert os.getpid() not in holders
    assert "aborted" == events[-1]["error"]["code"]
