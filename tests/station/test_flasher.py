"""run_flash_job with the real esptool against simulated boards: success, every error, cancel."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from esp_pylib.logger import log

from broker_agent.errors import FlashJobError
from broker_agent.simulator import (
    MB,
    BoardConfig,
    BoardServer,
    Fault,
    SimulatedBoard,
    encrypted_nvs,
    nvs_past_end,
    table_image,
    with_nvs_keys,
)
from broker_agent.station.commands import JobRequest
from broker_agent.station.esptool_log import JobLogBinding, bound_to, install
from broker_agent.station.flasher import PHASE_RANGES, FlashProgress, run_flash_job
from broker_agent.station.targets import NvsImage, NvsTarget
from firmware_contracts.codes import FlashAfter, FlashErrorCode, FlashPhase
from firmware_contracts.partition_table import PartitionEntry

pytestmark = pytest.mark.timeout(60)

MAC = "24:0a:c4:12:34:56"
PHASES_IN_ORDER = [
    FlashPhase.CONNECTING,
    FlashPhase.READING_PARTITION_TABLE,
    FlashPhase.FETCHING_NVS,
    FlashPhase.WRITING,
    FlashPhase.VERIFYING,
]


def image_for(target: NvsTarget) -> NvsImage:
    return NvsImage(os.urandom(target.nvs.size))  # incompressible: the write streams blocks


def start_board(*faults: Fault, mac: str = MAC) -> BoardServer:
    return BoardServer(SimulatedBoard(BoardConfig(mac=mac, faults=frozenset(faults)))).start()


@pytest.fixture
def server() -> Iterator[BoardServer]:
    with start_board() as running:
        yield running


class Recorder:
    """Collects progress reports; optionally acts on one."""

    def __init__(self, on_report: Callable[[FlashProgress], None] | None = None) -> None:
        self.reports: list[FlashProgress] = []
        self._on_report = on_report

    def __call__(self, progress: FlashProgress) -> None:
        self.reports.append(progress)
        if self._on_report is not None:
            self._on_report(progress)

    def phases(self) -> list[FlashPhase]:
        seen: list[FlashPhase] = []
        for report in self.reports:
            if not seen or seen[-1] != report.phase:
                seen.append(report.phase)
        return seen


def flash(
    url: str,
    fetch: Callable[[NvsTarget], NvsImage] = image_for,
    recorder: Recorder | None = None,
    cancel: threading.Event | None = None,
    **spec: Any,
) -> tuple[bytes, Recorder]:
    """Run one job; return the image it was given and the progress it reported."""
    written: list[bytes] = []
    recorder = recorder or Recorder()

    def fetch_and_keep(target: NvsTarget) -> NvsImage:
        image = fetch(target)
        written.append(image.data)
        return image

    job = JobRequest("job-1", "kitchen-01", port=url, **spec)
    run_flash_job(job, fetch_and_keep, recorder, cancel or threading.Event())
    return written[0], recorder


def assert_well_formed(recorder: Recorder) -> None:
    values = [report.progress for report in recorder.reports]
    assert values == sorted(values)
    for report in recorder.reports:
        start, end = PHASE_RANGES[report.phase]
        assert start <= report.progress < end <= 100
    assert PHASES_IN_ORDER[: len(recorder.phases())] == recorder.phases()


def test_success_writes_exactly_the_image_and_nothing_else(
    server: BoardServer, capfd: pytest.CaptureFixture[str]
) -> None:
    before = bytes(server.board.flash)

    image, recorder = flash(server.url, after=FlashAfter.HARD_RESET)

    assert before[:0x9000] + image + before[0xE000:] == server.board.flash
    assert recorder.phases() == PHASES_IN_ORDER
    assert_well_formed(recorder)
    assert recorder.reports[-1].progress == 99
    assert (recorder.reports[-1].chip_type, recorder.reports[-1].mac) == ("ESP32", MAC)
    assert getattr(recorder.reports[-1].partition, "offset", None) == 0x9000
    writing = [r.progress for r in recorder.reports if r.phase is FlashPhase.WRITING]
    assert any(30 < value < 89 for value in writing)  # byte progress inside the range
    assert capfd.readouterr() == ("", "")  # esptool printed nothing


def test_outcome_names_chip_partition_and_md5(server: BoardServer) -> None:
    image = b"\x5a" * 0x5000

    outcome = run_flash_job(
        JobRequest(
            "job-1", "kitchen-01", port=server.url, baud=115200, expected_mac="24-0A-C4-12-34-56"
        ),
        lambda target: NvsImage(image),
        Recorder(),
        threading.Event(),
    )

    assert (outcome.chip_type, outcome.mac) == ("ESP32", MAC)
    assert PartitionEntry("nvs", 1, 2, 0x9000, 0x5000) == outcome.partition
    assert hashlib.md5(image).hexdigest() == outcome.md5


@pytest.mark.parametrize(
    ("fault", "code", "phase"),
    [
        (Fault.NO_ANSWER, FlashErrorCode.BOOTLOADER_NOT_ENTERED, FlashPhase.CONNECTING),
        (
            Fault.CORRUPT_TABLE_MD5,
            FlashErrorCode.PARTITION_TABLE_UNREADABLE,
            FlashPhase.READING_PARTITION_TABLE,
        ),
        (
            Fault.NO_NVS_PARTITION,
            FlashErrorCode.NVS_PARTITION_MISSING,
            FlashPhase.READING_PARTITION_TABLE,
        ),
        (
            Fault.WRONG_NVS_SUBTYPE,
            FlashErrorCode.NVS_SUBTYPE_MISMATCH,
            FlashPhase.READING_PARTITION_TABLE,
        ),
        (Fault.WRITE_DOES_NOT_STICK, FlashErrorCode.VERIFY_FAILED, FlashPhase.VERIFYING),
        (Fault.DROP_MID_WRITE, FlashErrorCode.WRITE_FAILED, FlashPhase.WRITING),
    ],
)
def test_board_faults_map_to_contract_codes(
    fault: Fault, code: FlashErrorCode, phase: FlashPhase
) -> None:
    recorder = Recorder()
    with start_board(fault) as server, pytest.raises(FlashJobError) as caught:
        flash(server.url, recorder=recorder, connect_attempts=1)

    assert (code, phase) == (caught.value.code, caught.value.phase)
    assert phase == recorder.reports[-1].phase  # the error keeps the phase it failed in
    assert_well_formed(recorder)


def test_bootloader_not_entered_asks_for_the_boot_button() -> None:
    with (
        start_board(Fault.NO_ANSWER) as server,
        pytest.raises(FlashJobError, match="hold the BOOT button") as caught,
    ):
        flash(server.url, connect_attempts=1)

    assert caught.value.code == FlashErrorCode.BOOTLOADER_NOT_ENTERED


def test_wrong_image_size_is_refused_before_writing(server: BoardServer) -> None:
    before = bytes(server.board.flash)

    with pytest.raises(FlashJobError) as caught:
        flash(server.url, fetch=lambda target: NvsImage(b"\x00" * (target.nvs.size - 4096)))

    assert caught.value.code == FlashErrorCode.BLOB_SIZE_MISMATCH
    assert caught.value.phase == FlashPhase.FETCHING_NVS
    assert before == server.board.flash


def test_fetch_errors_pass_through_unchanged(server: BoardServer) -> None:
    failure = FlashJobError(
        FlashErrorCode.PROVISIONING_FAILED,
        "the agent refused",
        FlashPhase.FETCHING_NVS,
        cause={"code": "unknown_device", "message": "no such device"},
    )

    def refuse(target: NvsTarget) -> NvsImage:
        raise failure

    with pytest.raises(FlashJobError) as caught:
        flash(server.url, fetch=refuse)

    assert failure is caught.value


def test_unexpected_fetch_failure_is_internal_error_without_its_message(
    server: BoardServer,
) -> None:
    def broken(target: NvsTarget) -> NvsImage:
        raise RuntimeError("client_secret=hunter2")

    with pytest.raises(FlashJobError) as caught:
        flash(server.url, fetch=broken)

    assert (FlashErrorCode.INTERNAL_ERROR, FlashPhase.FETCHING_NVS) == (
        caught.value.code,
        caught.value.phase,
    )
    assert "hunter2" not in caught.value.message
    image, _ = flash(server.url)  # the port was closed on the way out
    assert image == server.board.flash[0x9000:0xE000]


def test_mac_mismatch_fails_before_anything_is_written(server: BoardServer) -> None:
    before = bytes(server.board.flash)
    recorder = Recorder()

    with pytest.raises(FlashJobError, match="24:0a:c4:12:34:56") as caught:
        flash(server.url, recorder=recorder, expected_mac="24:0a:c4:00:00:99")

    assert (
        caught.value.code,
        caught.value.phase,
    ) == (FlashErrorCode.MAC_MISMATCH, FlashPhase.CONNECTING)
    assert before == server.board.flash
    assert {FlashPhase.CONNECTING} == {report.phase for report in recorder.reports}
    # the operator learns which chip is really attached
    assert "24:0a:c4:12:34:56" == recorder.reports[-1].mac


def test_cancel_mid_write_aborts_and_the_port_is_free_again(server: BoardServer) -> None:
    cancel = threading.Event()

    def cancel_once_writing(progress: FlashProgress) -> None:
        if progress.phase is FlashPhase.WRITING and progress.progress > 30:
            cancel.set()

    with pytest.raises(FlashJobError) as caught:
        flash(server.url, recorder=Recorder(cancel_once_writing), cancel=cancel)

    assert (
        caught.value.code,
        caught.value.phase,
    ) == (FlashErrorCode.ABORTED, FlashPhase.WRITING)
    image, _ = flash(server.url)
    assert image == server.board.flash[0x9000:0xE000]


def test_cancel_before_start_touches_nothing(server: BoardServer) -> None:
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(FlashJobError) as caught:
        flash(server.url, cancel=cancel)

    assert caught.value.code == FlashErrorCode.ABORTED
    assert server.board.connections == 0


@pytest.mark.parametrize(
    ("port", "code"),
    [
        ("/dev/does-not-exist", FlashErrorCode.PORT_NOT_FOUND),
        ("socket://127.0.0.1:1", FlashErrorCode.CONNECT_FAILED),
        ("nonsense://port", FlashErrorCode.CONNECT_FAILED),
    ],
)
def test_unopenable_ports(port: str, code: FlashErrorCode) -> None:
    with pytest.raises(FlashJobError) as caught:
        flash(port)

    assert (code, FlashPhase.CONNECTING) == (caught.value.code, caught.value.phase)


def test_four_boards_in_parallel_each_get_their_own_image_and_progress() -> None:
    macs = [f"24:0a:c4:00:00:{index:02x}" for index in range(1, 5)]
    servers = [start_board(mac=mac) for mac in macs]
    results: dict[str, tuple[bytes, Recorder]] = {}

    def job(server: BoardServer) -> None:
        results[server.board.config.mac] = flash(server.url)

    threads = [threading.Thread(target=job, args=(server,)) for server in servers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for server in servers:
            server.stop()

    assert sorted(macs) == sorted(results)
    for server in servers:
        image, recorder = results[server.board.config.mac]
        assert image == server.board.flash[0x9000:0xE000]
        assert recorder.phases() == PHASES_IN_ORDER
        assert_well_formed(recorder)
        assert {server.board.config.mac} == {r.mac for r in recorder.reports if r.mac}


def test_router_sends_each_threads_progress_to_its_own_job() -> None:
    install()
    totals = {"a": 3000, "b": 5000}
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    both_inside = threading.Barrier(2)

    def job(name: str) -> None:
        binding = JobLogBinding(
            port=name,
            on_bytes=lambda done, total: seen[name].append((done, total)),
            checkpoint=lambda: None,
        )
        with bound_to(binding), log.progress(total=totals[name], unit="B") as task:
            both_inside.wait(5)
            for _ in range(10):
                task.update(advance=totals[name] // 10)

    threads = [threading.Thread(target=job, args=(name,)) for name in totals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    for name, total in totals.items():
        assert [(total // 10 * i, total) for i in range(1, 11)] == seen[name]


# -- refusals that name the real problem (contract 6.5), nothing written -----------------------


@pytest.mark.parametrize(
    ("config", "code"),
    [
        (BoardConfig(erased=True), FlashErrorCode.PARTITION_TABLE_UNREADABLE),
        (BoardConfig(table_image=table_image([])), FlashErrorCode.PARTITION_TABLE_UNREADABLE),
        (
            BoardConfig(partitions=nvs_past_end(MB), flash_size=MB),
            FlashErrorCode.NVS_PARTITION_OUT_OF_RANGE,
        ),
        (BoardConfig(partitions=encrypted_nvs()), FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED),
        (
            BoardConfig(partitions=encrypted_nvs(with_nvs_keys())),
            FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED,
        ),
    ],
    ids=["erased", "no-entry", "nvs-past-end", "encrypted-nvs", "encrypted-nvs-beside-keys"],
)
def test_unusable_tables_are_refused_before_fetching_or_writing(
    config: BoardConfig, code: FlashErrorCode
) -> None:
    fetched: list[NvsTarget] = []

    def fetch(target: NvsTarget) -> NvsImage:
        fetched.append(target)
        return image_for(target)

    with BoardServer(SimulatedBoard(config)) as server:
        before = bytes(server.board.flash)
        with pytest.raises(FlashJobError) as caught:
            flash(server.url, fetch=fetch)
        after = bytes(server.board.flash)

    assert (code, FlashPhase.READING_PARTITION_TABLE) == (caught.value.code, caught.value.phase)
    assert [] == fetched
    assert before == after


def test_the_flash_size_comes_from_the_chip() -> None:
    """The same table fits a 2 MB chip: the size is the chip's, not a constant."""
    entries = nvs_past_end(MB)
    with BoardServer(SimulatedBoard(BoardConfig(partitions=entries, flash_size=2 * MB))) as server:
        image, _ = flash(server.url)
        written = bytes(server.board.flash[MB - 0x2000 : MB + 0x3000])

    assert image == written


# -- a board that already holds its image is not rewritten (issue 14) ------------------------


def test_a_partition_already_holding_the_image_is_not_rewritten(server: BoardServer) -> None:
    image = os.urandom(0x5000)
    server.board.flash[0x9000:0xE000] = image
    recorder = Recorder()

    outcome = run_flash_job(
        JobRequest("job-1", "kitchen-01", server.url),
        lambda target: NvsImage(image),
        recorder,
        threading.Event(),
    )

    assert outcome.skipped
    assert hashlib.md5(image).hexdigest() == outcome.md5
    assert FlashPhase.WRITING not in recorder.phases()
    assert FlashPhase.VERIFYING == recorder.phases()[-1]


def test_force_rewrites_a_partition_that_holds_the_image(server: BoardServer) -> None:
    image = os.urandom(0x5000)
    server.board.flash[0x9000:0xE000] = image
    job = JobRequest("job-1", "kitchen-01", server.url, force=True)
    recorder = Recorder()

    outcome = run_flash_job(job, lambda target: NvsImage(image), recorder, threading.Event())

    assert not outcome.skipped
    assert FlashPhase.WRITING in recorder.phases()
