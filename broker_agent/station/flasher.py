"""Write a device's NVS image onto an ESP32 over a serial port: the one module that drives esptool.

``run_flash_job`` is blocking; the station runs it in a worker process, one per port
(``worker.py``), ``broker-agent flash`` on a thread. It walks the contract's phases
(connecting, reading_partition_table, fetching_nvs, writing, verifying), reports monotonic
progress below 100, and either returns a ``FlashOutcome`` (the MD5 of every written region
matched its image) or raises ``FlashJobError`` with a contract error code and the phase it
failed in. A board with NVS encryption gets two regions (``targets.py``), the encrypted
``nvs`` image and the ``nvs_keys`` image: ``writing`` covers both writes, ``verifying`` both
checks. esptool and pyserial exceptions are translated here, once. The serial port is always
closed on the way out, so the next job on the same port starts clean.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import structlog
from esptool import cmds
from esptool.util import FatalError, flash_size_bytes

from broker_agent.errors import FlashJobError
from broker_agent.station import socket_port
from broker_agent.station.commands import JobRequest, normalise_mac
from broker_agent.station.esptool_log import JobLogBinding, bound_to, install
from broker_agent.station.targets import (
    ImageMismatch,
    NvsImage,
    NvsTarget,
    Region,
    find_nvs_target,
    regions,
)
from firmware_contracts.codes import FlashAfter, FlashErrorCode, FlashPhase
from firmware_contracts.partition_table import (
    PARTITION_TABLE_MAX_SIZE,
    PARTITION_TABLE_OFFSET,
    PartitionEntry,
    PartitionTableError,
    parse_partition_table,
)

ROM_BAUD = 115200

# Each phase owns a range [start, end); a job never reports 100 (the caller's final ok does).
PHASE_RANGES: dict[FlashPhase, tuple[int, int]] = {
    FlashPhase.CONNECTING: (0, 10),
    FlashPhase.READING_PARTITION_TABLE: (10, 20),
    FlashPhase.FETCHING_NVS: (20, 30),
    FlashPhase.WRITING: (30, 90),
    FlashPhase.VERIFYING: (90, 100),
}

_ESPTOOL_ERRORS = (FatalError, OSError)  # pyserial's SerialException is an OSError

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FlashProgress:
    """One progress report; ``progress`` is 0..99 and never decreases within a job."""

    phase: FlashPhase
    progress: int
    chip_type: str | None = None
    mac: str | None = None
    partition: PartitionEntry | None = None
    encrypted: bool | None = None  # known with the partition: the table has nvs_keys


@dataclass(frozen=True)
class FlashOutcome:
    """The NVS partition now holds the image whose MD5 is ``md5``, verified.

    ``skipped``: it held that image already, so nothing was written (the job was not forced).
    ``nvs_keys``: the keys partition that now holds the image's keys (verified too), for an
    encrypted image.
    """

    chip_type: str
    mac: str
    partition: PartitionEntry
    md5: str
    skipped: bool = False
    nvs_keys: PartitionEntry | None = None

    @property
    def encrypted(self) -> bool:
        return self.nvs_keys is not None


class _Cancelled(Exception):
    """Raised from a checkpoint (possibly deep inside esptool) once the job is cancelled."""


def _describe(exc: BaseException) -> str:
    """esptool's messages run over several lines with a troubleshooting link: keep the gist."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.lower().startswith("for troubleshooting")]
    return " ".join(kept) or type(exc).__name__


FetchImage = Callable[[NvsTarget], NvsImage]
"""Asked once the table is read: the image for that target (encrypted when it has nvs_keys)."""


def run_flash_job(
    job: JobRequest,
    fetch_image: FetchImage,
    report: Callable[[FlashProgress], None],
    cancel: threading.Event,
) -> FlashOutcome:
    """Flash the image ``fetch_image`` returns into the board's ``nvs`` partition. Blocking.

    ``fetch_image`` runs on this thread and may raise ``FlashJobError`` itself (e.g.
    ``provisioning_failed``); it is passed through unchanged (any other exception becomes
    ``internal_error``). ``report`` is called on this thread too. Setting ``cancel`` aborts
    the job with code ``aborted`` at the next checkpoint: between steps, and on every call
    esptool makes into its logger (so also mid-transfer and between connection attempts).
    """
    install()
    run = _FlashRun(job, report, cancel)
    binding = JobLogBinding(port=job.port, on_bytes=run.on_bytes, checkpoint=run.checkpoint)
    with bound_to(binding):
        return run.execute(fetch_image)


class _FlashRun:
    """The state of one job while it runs: phase, progress, what is known of the chip."""

    def __init__(
        self, job: JobRequest, report: Callable[[FlashProgress], None], cancel: threading.Event
    ) -> None:
        self.job = job
        self._report = report
        self._cancel = cancel
        self._cancellable = True
        self.phase = FlashPhase.CONNECTING
        self._last: tuple[FlashPhase, int] | None = None
        self.progress = 0
        self.chip_type: str | None = None
        self.mac: str | None = None
        self.target: NvsTarget | None = None
        self._write_span = (0.0, 1.0)  # the share of the writing phase the current write has
        self._write_streamed = False

    # -- progress and cancellation -----------------------------------------------------

    def checkpoint(self) -> None:
        if self._cancellable and self._cancel.is_set():
            raise _Cancelled

    def _emit(self, value: int) -> None:
        self.progress = max(self.progress, min(value, 99))
        if self._last == (self.phase, self.progress):
            return
        self._last = (self.phase, self.progress)
        target = self.target
        self._report(
            FlashProgress(
                self.phase,
                self.progress,
                self.chip_type,
                self.mac,
                target.nvs if target else None,
                target.encrypted if target else None,
            )
        )

    def _enter(self, phase: FlashPhase) -> None:
        self.checkpoint()
        self.phase = phase
        self._emit(PHASE_RANGES[phase][0])

    def _advance(self, fraction: float) -> None:
        start, end = PHASE_RANGES[self.phase]
        fraction = min(max(fraction, 0.0), 1.0)
        self._emit(start + int(fraction * (end - 1 - start)))

    def on_bytes(self, done: int, total: int) -> None:
        """esptool's byte progress, for whatever transfer the current phase runs."""
        if self.phase is FlashPhase.READING_PARTITION_TABLE:
            self._advance(done / total)
        elif self.phase is FlashPhase.WRITING:
            start, share = self._write_span
            self._advance(start + share * done / total)
            self._write_streamed = done >= total

    def _error(self, code: FlashErrorCode, message: str) -> FlashJobError:
        return FlashJobError(code, message, self.phase)

    @contextmanager
    def _translate(self, code: FlashErrorCode, what: str) -> Iterator[None]:
        """Turn an esptool or serial failure inside the block into ``FlashJobError(code)``."""
        try:
            yield
        except _ESPTOOL_ERRORS as exc:
            raise self._error(code, f"{what}: {_describe(exc)}") from exc

    # -- the job -----------------------------------------------------------------------

    def execute(self, fetch_image: FetchImage) -> FlashOutcome:
        try:
            self._enter(FlashPhase.CONNECTING)
            port = socket_port.open_port(self.job.port, ROM_BAUD)
        except _Cancelled:
            raise self._error(FlashErrorCode.ABORTED, "flash job cancelled") from None
        try:
            return self._flash(port, fetch_image)
        except _Cancelled:
            raise self._error(
                FlashErrorCode.ABORTED, f"flash job cancelled while {self.phase.value}"
            ) from None
        except FlashJobError:
            raise
        except Exception as exc:  # the one place an unforeseen failure becomes a clean error
            # the type only: the message of an unforeseen error may carry anything
            raise self._error(
                FlashErrorCode.INTERNAL_ERROR,
                f"unexpected {type(exc).__name__} while {self.phase.value}",
            ) from exc
        finally:
            with suppress(OSError):
                port.close()

    def _flash(self, port: Any, fetch_image: FetchImage) -> FlashOutcome:
        esp = self._connect(port)
        esp = self._start_stub(esp)
        self._enter(FlashPhase.READING_PARTITION_TABLE)
        target = self._read_partition_table(esp)
        self._enter(FlashPhase.FETCHING_NVS)
        writes = self._fetch(fetch_image, target)
        skipped = not self.job.force and self._holds(esp, writes)
        if skipped:  # _holds compared the MD5s: that is the verification
            self._enter(FlashPhase.VERIFYING)
        else:
            self._enter(FlashPhase.WRITING)
            self._write(esp, writes)
            self._enter(FlashPhase.VERIFYING)
            for region in writes:
                self._verify(esp, region)
        self._cancellable = False  # the image is in flash and verified: the job is done
        self._emit(98)
        self._after(esp)
        self._emit(99)
        assert self.chip_type is not None and self.mac is not None
        return FlashOutcome(
            self.chip_type, self.mac, target.nvs, writes[0].md5, skipped, target.nvs_keys
        )

    def _connect(self, port: Any) -> Any:
        try:
            esp = cmds.detect_chip(
                port, ROM_BAUD, "default-reset", False, self.job.connect_attempts
            )
        except FatalError as exc:
            if not port.is_open:  # esptool closes the port when no attempt got a SYNC reply
                raise self._error(
                    FlashErrorCode.BOOTLOADER_NOT_ENTERED,
                    f"the chip on {self.job.port} did not answer the bootloader sync: "
                    "hold the BOOT button, press and release RESET (EN), and retry",
                ) from exc
            raise self._error(
                FlashErrorCode.CONNECT_FAILED, f"could not identify the chip: {_describe(exc)}"
            ) from exc
        except OSError as exc:
            raise self._error(
                FlashErrorCode.CONNECT_FAILED, f"serial link failed: {_describe(exc)}"
            ) from exc
        self._emit(3)
        with self._translate(FlashErrorCode.CONNECT_FAILED, "could not read the chip's MAC"):
            self.chip_type = str(esp.CHIP_NAME)
            self.mac = ":".join(f"{octet:02x}" for octet in esp.read_mac())
        self._emit(4)  # reports chip and MAC, also when the MAC turns out to be the wrong one
        self._check_mac(self.mac)
        return esp

    def _check_mac(self, mac: str) -> None:
        expected = self.job.expected_mac
        if expected is not None and normalise_mac(expected) != mac:
            raise self._error(
                FlashErrorCode.MAC_MISMATCH,
                f"the chip's MAC is {mac}, expected {normalise_mac(expected)}: nothing written",
            )

    def _start_stub(self, esp: Any) -> Any:
        self.checkpoint()
        with self._translate(FlashErrorCode.CONNECT_FAILED, "could not start the flasher stub"):
            esp = cmds.run_stub(esp)
        self._emit(7)
        if self.job.baud != ROM_BAUD:
            with self._translate(
                FlashErrorCode.CONNECT_FAILED, f"could not switch to {self.job.baud} baud"
            ):
                esp.change_baud(self.job.baud)
        self._emit(9)
        return esp

    def _read_partition_table(self, esp: Any) -> NvsTarget:
        code = FlashErrorCode.PARTITION_TABLE_UNREADABLE
        with self._translate(code, "could not read the partition table"):
            cmds.attach_flash(esp)
            flash_size = self._flash_size(esp)
            data = cmds.read_flash(esp, PARTITION_TABLE_OFFSET, PARTITION_TABLE_MAX_SIZE)
        try:
            self.target = find_nvs_target(parse_partition_table(data), flash_size=flash_size)
        except PartitionTableError as exc:
            raise self._error(exc.code, exc.message) from exc
        self._emit(19)
        return self.target

    def _flash_size(self, esp: Any) -> int | None:
        """The chip's flash size from its JEDEC id (esptool's table); None when unknown.

        Checked against the ``nvs`` partition before anything is written (contract 6.5): a
        table built for a bigger chip would otherwise fail mid-write, or worse, wrap around.
        """
        size = flash_size_bytes(cmds.detect_flash_size(esp))
        if size is None:
            logger.warning("flash_size_unknown", port=self.job.port)
        return int(size) if size is not None else None

    def _fetch(self, fetch_image: FetchImage, target: NvsTarget) -> list[Region]:
        image = fetch_image(target)
        self.checkpoint()
        try:
            writes = regions(target, image)
        except ImageMismatch as exc:
            raise self._error(FlashErrorCode.BLOB_SIZE_MISMATCH, str(exc)) from None
        self._emit(29)
        return writes

    def _holds(self, esp: Any, writes: list[Region]) -> bool:
        """True when every region already holds its image (MD5s read by the stub).

        A board provisioned before (replugged on a zero-touch bench, or commanded twice) is
        then not rewritten: the flash is spared an erase cycle and the job a write. An
        encrypted image compares too: XTS with the device's one stored key is deterministic,
        so the agent's image for an unchanged device is byte for byte the one written before.
        """
        what = "could not read the partition's MD5 before writing"
        with self._translate(FlashErrorCode.WRITE_FAILED, what):
            return all(self._flash_md5(esp, region) == region.md5 for region in writes)

    def _flash_md5(self, esp: Any, region: Region) -> str:
        return str(esp.flash_md5sum(region.offset, len(region.data)))

    def _write(self, esp: Any, writes: list[Region]) -> None:
        """Each region in turn, its byte progress a share of the phase's range by its size."""
        total, done = sum(len(region.data) for region in writes), 0
        for region in writes:
            self._write_span = (done / total, len(region.data) / total)
            self._write_streamed = False
            self._write_region(esp, region)
            done += len(region.data)

    def _write_region(self, esp: Any, region: Region) -> None:
        try:
            cmds.write_flash(esp, [(region.offset, region.data)])
        except _ESPTOOL_ERRORS as exc:
            # write_flash checks the MD5 itself once every byte went out; tell a write that
            # did not stick (verify_failed) from one that broke off (write_failed).
            if self._write_streamed and self._region_differs(esp, region):
                self._enter(FlashPhase.VERIFYING)
                raise self._error(
                    FlashErrorCode.VERIFY_FAILED,
                    f"the flash at {region.offset:#x} ({region.name}) does not hold the image "
                    f"after writing: {_describe(exc)}",
                ) from exc
            raise self._error(
                FlashErrorCode.WRITE_FAILED,
                f"writing {len(region.data)} bytes at {region.offset:#x} ({region.name}) "
                f"failed: {_describe(exc)}",
            ) from exc

    def _region_differs(self, esp: Any, region: Region) -> bool:
        try:
            esp.flush_input()
            return self._flash_md5(esp, region) != region.md5
        except _ESPTOOL_ERRORS:
            return False  # the link is gone: it was the write that failed

    def _verify(self, esp: Any, region: Region) -> None:
        with self._translate(FlashErrorCode.VERIFY_FAILED, "could not read back the MD5"):
            esp.flush_input()  # write_flash may have reconnected underneath this loader
            actual = self._flash_md5(esp, region)
        if actual != region.md5:
            raise self._error(
                FlashErrorCode.VERIFY_FAILED,
                f"MD5 of the flash at {region.offset:#x} ({region.name}) is {actual}, "
                f"expected {region.md5}",
            )

    def _after(self, esp: Any) -> None:
        mode = "hard-reset" if self.job.after is FlashAfter.HARD_RESET else "no-reset"
        try:
            cmds.reset_chip(esp, mode)
        except _ESPTOOL_ERRORS as exc:  # the image is verified; a failed reset only warrants a note
            logger.warning(
                "flash_reset_failed", port=self.job.port, mode=mode, error=_describe(exc)
            )
