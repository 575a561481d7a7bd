"""One flash job as both the station and ``broker-agent flash`` run it: events, record, thread.

- ``fetch_image``: the agent's image for a job, its failures as the job's errors.
- ``run_job``: BLOCKING; runs ``run_flash_job`` and turns its progress into the contract's
  event stream (``accepted``, ``in_progress``..., then exactly one ``ok`` or ``error``), handed
  to a ``publish`` callback on the job's thread. The finished job is recorded (the
  manufacturing log) *before* the final event goes out, so an ``ok`` means it is on disk.
- ``JobEventStream``: the stream's rules: progress never decreases, a phase change is never
  skipped, byte progress is throttled (default at most 10 events/s), ``ok`` is 100/``done``,
  ``error`` keeps the failing phase and the last progress that was published.
- ``JobThread`` / ``call_from_job_thread``: a job's own worker thread, awaitable from the loop,
  and the way back from that thread into the loop (the agent's image) that honours cancel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from broker_agent.errors import FlashJobError, ProvisionFailure, ProvisionTimeout
from broker_agent.logs import get_logger
from broker_agent.provisioning.requester import ImageRequester
from broker_agent.station.commands import JobRequest
from broker_agent.station.flasher import FetchImage, FlashOutcome, FlashProgress, run_flash_job
from broker_agent.station.targets import NvsImage, NvsTarget
from firmware_contracts.codes import FlashErrorCode, FlashPhase, FlashStatus
from firmware_contracts.partition_table import PartitionEntry
from firmware_contracts.payloads import (
    ChipInfo,
    ErrorDetail,
    FlashErrorDetail,
    FlashEvent,
    PartitionInfo,
)

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_EVENT_INTERVAL_S = 0.1
"""Byte progress goes out at most this often per job (phase changes always go out)."""

_CANCEL_POLL_S = 0.02

Flasher = Callable[
    [JobRequest, FetchImage, Callable[[FlashProgress], None], threading.Event], FlashOutcome
]
"""``run_flash_job`` itself (on the job's thread) or ``worker.ProcessFlasher`` (a child process)."""


@dataclass(frozen=True)
class JobResult:
    """How a job ended: ``outcome`` (verified) or ``error``, and what was learnt on the way.

    ``device_id`` is the request's, or for a zero-touch job the one its MAC was given.
    ``encrypted``: the board's table has nvs_keys (an encrypted image with its keys); None
    when the job failed before the table was read.
    """

    request: JobRequest
    device_id: str | None
    outcome: FlashOutcome | None
    error: FlashJobError | None
    chip_type: str | None
    mac: str | None
    partition: PartitionEntry | None
    duration_s: float
    encrypted: bool | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is not None


class JobEventStream:
    """Builds one job's events from the flasher's progress; call it from the job's thread."""

    def __init__(
        self,
        request: JobRequest,
        publish: Callable[[FlashEvent], None],
        *,
        min_interval_s: float = DEFAULT_EVENT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request = request
        self._publish = publish
        self._min_interval_s = min_interval_s
        self._clock = clock
        self.phase = FlashPhase.CONNECTING
        self.progress = 0
        self.device_id = request.device_id
        self._published_at = float("-inf")
        self.chip_type: str | None = None
        self.mac: str | None = None
        self.partition: PartitionEntry | None = None
        self.encrypted: bool | None = None

    def _event(self, status: FlashStatus, **extra: Any) -> FlashEvent:
        chip = None
        if self.chip_type is not None and self.mac is not None:
            chip = ChipInfo(type=self.chip_type, mac=self.mac)
        partition = None
        if self.partition is not None:
            partition = PartitionInfo(offset=self.partition.offset, size=self.partition.size)
        return FlashEvent(
            request_id=self.request.request_id,
            status=status,
            phase=self.phase,
            progress=self.progress,
            device_id=self.device_id,
            port=self.request.port,
            chip=chip,
            partition=partition,
            **extra,
        )

    def _send(self, event: FlashEvent) -> None:
        self._published_at = self._clock()
        self._publish(event)

    def accepted(self) -> None:
        self._send(self._event(FlashStatus.ACCEPTED))

    def on_progress(self, report: FlashProgress) -> None:
        """The flasher's ``report`` callback."""
        self.chip_type = report.chip_type or self.chip_type
        self.mac = report.mac or self.mac
        self.partition = report.partition or self.partition
        if report.encrypted is not None:
            self.encrypted = report.encrypted
        progress = max(self.progress, report.progress)
        if report.phase == self.phase and progress == self.progress:
            return
        due = self._clock() - self._published_at >= self._min_interval_s
        if report.phase == self.phase and not due:
            return  # byte progress, throttled; the next event carries the newer value
        self.phase = report.phase
        self.progress = progress
        self._send(self._event(FlashStatus.IN_PROGRESS))

    def finish(self, result: JobResult) -> FlashEvent:
        """Publish and return the one final event."""
        if result.outcome is not None:
            self.phase = FlashPhase.DONE
            self.progress = 100
            skipped = True if result.outcome.skipped else None
            event = self._event(FlashStatus.OK, md5=result.outcome.md5, skipped=skipped)
        else:
            assert result.error is not None
            self.phase = result.error.phase  # progress stays at what was last published
            event = self._event(FlashStatus.ERROR, error=error_detail(result.error))
        self._send(event)
        return event


def error_detail(error: FlashJobError) -> FlashErrorDetail:
    cause = None
    if error.cause is not None:
        cause = ErrorDetail(
            code=str(error.cause.get("code", "")), message=str(error.cause.get("message", ""))
        )
    return FlashErrorDetail(code=error.code, message=error.message, cause=cause)


def run_job(
    request: JobRequest,
    fetch_image: Callable[[str, NvsTarget], NvsImage],
    publish: Callable[[FlashEvent], None],
    cancel: threading.Event,
    *,
    record: Callable[[JobResult], None] | None = None,
    min_interval_s: float = DEFAULT_EVENT_INTERVAL_S,
    flasher: Flasher = run_flash_job,
    identify: Callable[[str], str] | None = None,
) -> JobResult:
    """Run one job to its end. BLOCKING: call it on the job's own thread. Never raises.

    ``fetch_image(device_id, target)`` gets the image (encrypted, with its keys, when the
    target has an nvs_keys partition). A request without a device_id
    (zero-touch) needs ``identify(mac) -> device_id``: it is asked once the chip's MAC is
    known, before the image is fetched, and may refuse with ``FlashJobError``.
    """
    stream = JobEventStream(request, publish, min_interval_s=min_interval_s)
    stream.accepted()
    started = time.monotonic()
    outcome: FlashOutcome | None = None
    error: FlashJobError | None = None

    def fetch(target: NvsTarget) -> NvsImage:
        if stream.device_id is None:
            if identify is None or stream.mac is None:
                raise FlashJobError(
                    FlashErrorCode.INTERNAL_ERROR, "no device_id for this job", stream.phase
                )
            stream.device_id = identify(stream.mac)
            log.info(
                "flash_job_identified",
                request_id=request.request_id,
                mac=stream.mac,
                device_id=stream.device_id,
            )
        return fetch_image(stream.device_id, target)

    try:
        outcome = flasher(request, fetch, stream.on_progress, cancel)
    except FlashJobError as exc:
        error = exc
    except Exception as exc:
        log.exception("flash_job_crashed", request_id=request.request_id, port=request.port)
        error = FlashJobError(
            FlashErrorCode.INTERNAL_ERROR,
            f"unexpected {type(exc).__name__} while {stream.phase.value}",
            stream.phase,
        )
    if outcome is not None:
        stream.chip_type, stream.mac = outcome.chip_type, outcome.mac
        stream.partition, stream.encrypted = outcome.partition, outcome.encrypted
    result = JobResult(
        request,
        stream.device_id,
        outcome,
        error,
        stream.chip_type,
        stream.mac,
        stream.partition,
        round(time.monotonic() - started, 3),
        stream.encrypted,
    )
    if record is not None:
        try:
            record(result)
        except Exception:  # the final event must go out all the same
            log.exception("flash_job_record_failed", request_id=request.request_id)
    stream.finish(result)
    return result


# -- threads -----------------------------------------------------------------------------------


@dataclass
class JobThread(Generic[T]):
    """A job's own worker thread whose result the event loop can await."""

    name: str
    target: Callable[[], T]
    thread: threading.Thread | None = field(default=None, init=False)
    _future: asyncio.Future[T] | None = field(default=None, init=False)

    def start(self) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._future = future

        def settle(outcome: Callable[[], None]) -> None:
            if not future.done():
                outcome()

        def body() -> None:
            try:
                value = self.target()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                failure = exc
                post_to_loop(loop, settle, lambda: future.set_exception(failure))
            else:
                post_to_loop(loop, settle, lambda: future.set_result(value))

        self.thread = threading.Thread(target=body, name=self.name, daemon=True)
        self.thread.start()
        return future

    def join(self, timeout: float) -> bool:
        """Wait for the thread (blocking); True when it has ended."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


def post_to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """``loop.call_soon_threadsafe`` that does nothing once the loop is closed."""
    with contextlib.suppress(RuntimeError):  # closed: nobody awaits the thread any more
        loop.call_soon_threadsafe(fn, *args)


def call_from_job_thread(
    loop: asyncio.AbstractEventLoop,
    coroutine: Coroutine[Any, Any, T],
    cancel: threading.Event,
    phase: FlashPhase,
) -> T:
    """Run ``coroutine`` on ``loop`` and wait for it on this (job) thread.

    Setting ``cancel`` stops the wait: the coroutine is cancelled and the job ends ``aborted``.
    """
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    while True:
        try:
            return future.result(timeout=_CANCEL_POLL_S)
        except concurrent.futures.TimeoutError:
            if cancel.is_set():
                future.cancel()
                raise FlashJobError(
                    FlashErrorCode.ABORTED, f"flash job cancelled while {phase.value}", phase
                ) from None
        except concurrent.futures.CancelledError:
            raise FlashJobError(
                FlashErrorCode.ABORTED, f"flash job cancelled while {phase.value}", phase
            ) from None


def provisioning_failed(device_id: str, source: str, failure: ProvisionFailure) -> FlashJobError:
    """``provisioning_failed`` (phase fetching_nvs) with the provisioning error as ``cause``;
    ``source`` says who had no image (the agent, or the secrets directory when offline)."""
    return FlashJobError(
        FlashErrorCode.PROVISIONING_FAILED,
        f"{source} did not provide an NVS image for {device_id} ({failure.code.value})",
        FlashPhase.FETCHING_NVS,
        cause={"code": failure.code.value, "message": failure.message},
    )


async def fetch_image(
    requester: ImageRequester, device_id: str, request_id: str, target: NvsTarget
) -> NvsImage:
    """The agent's image for ``device_id``; raises ``FlashJobError`` (phase fetching_nvs).

    A target with nvs_keys asks for an encrypted image; an answer without its keys (an agent
    from before NVS encryption ignores ``encrypted``) is ``provisioning_failed``, no cause.
    No answer in time -> ``provisioning_timeout``; the agent's error -> ``provisioning_failed``
    with the agent's error nested as ``cause``.
    """
    size, encrypted = target.nvs.size, target.encrypted
    try:
        image = await requester.request(device_id, size, request_id, encrypted=encrypted)
    except ProvisionTimeout as exc:
        raise FlashJobError(
            FlashErrorCode.PROVISIONING_TIMEOUT, exc.message, FlashPhase.FETCHING_NVS
        ) from None
    except ProvisionFailure as exc:
        raise provisioning_failed(device_id, "the agent", exc) from None
    if encrypted and image.nvs_keys is None:
        raise FlashJobError(
            FlashErrorCode.PROVISIONING_FAILED,
            f"the agent answered with a plain NVS image for {device_id}, this board needs an "
            "encrypted one (an agent without NVS encryption? update broker-agent run)",
            FlashPhase.FETCHING_NVS,
        )
    return NvsImage(image.data, image.nvs_keys)
