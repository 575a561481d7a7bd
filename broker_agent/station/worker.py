"""A job's esptool work in a worker process (issue 14, "parallel boards").

esptool's protocol handling costs CPU (against a simulated board most of a job's ~50 ms) and
holds the GIL while it does: jobs on threads of the station's process queue on one GIL, and the
event loop with them. ``ProcessFlasher`` has the signature of ``flasher.run_flash_job`` and runs
it in a worker process instead, so ``job.run_job`` keeps building the event stream, honouring
cancel and writing the manufacturing log exactly as it does for a thread.

Workers are kept between jobs (an idle pool; a job takes an idle worker or starts one): a new
process costs far more than a job. Measured in bench/bench_flash_station.py: a ``forkserver``
child per job took 200-350 ms to start, because multiprocessing makes each child import the
main module again (``broker-agent`` or the benchmark, with aiomqtt and the station) - the
forkserver's ``__main__`` preload never applies (its ``main_path`` key is not filled in by
Python 3.11's ``spawn.get_preparation_data``). A worker pays that once. Workers come from the
``forkserver`` (``fork`` is out: the station's process runs threads).

Between the parent (the job's thread in the station) and a worker, two one-way pipes; every
message after ``job`` carries the job's sequence number, so nothing of a finished job (a late
image, a late cancel) reaches the next one:

- parent -> worker: ``("job", seq, JobRequest)``, ``("image", seq, NvsImage)`` or
  ``("refused", seq, code, message, phase, cause)`` answering a fetch (the image fetch stays in
  the parent, where the MQTT session is; for a board with NVS encryption the image carries its
  keys image, so the keys cross this pipe, never a log), ``("cancel", seq)``;
- worker -> parent: ``("progress", seq, FlashProgress)``, ``("fetch", seq, NvsTarget)``,
  then exactly one ``("done", seq, FlashOutcome)`` or ``("failed", seq, code, message, phase,
  cause)``.

Cancel: the parent sends ``cancel``; the worker's flasher stops at its next checkpoint (every
call esptool makes into its logger), closes the port and reports ``aborted``. A worker that has
not answered within ``CANCEL_GRACE_S`` is terminated (the kernel closes its port) and the job
ends ``aborted`` all the same. A worker that dies ends its job with ``internal_error``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from broker_agent.errors import FlashJobError
from broker_agent.logs import LogFormat, configure_logging, get_logger
from broker_agent.station.commands import JobRequest
from broker_agent.station.flasher import FetchImage, FlashOutcome, FlashProgress, run_flash_job
from broker_agent.station.targets import NvsImage, NvsTarget
from firmware_contracts.codes import FlashErrorCode, FlashPhase

log = get_logger(__name__)

CANCEL_GRACE_S = 0.5
"""How long a cancelled worker may take to report ``aborted`` before it is terminated."""
MAX_IDLE_WORKERS = 16
_POLL_S = 0.02
_EXIT_WAIT_S = 1.0

Connection = multiprocessing.connection.Connection


def _forkserver() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()  # POSIX; not Windows


def _context() -> ForkServerContext | SpawnContext:
    """The forkserver, whose server imports esptool once; ``spawn`` where there is none."""
    if not _forkserver():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _fields(error: FlashJobError) -> tuple[str, str, str, dict[str, Any] | None]:
    return (error.code.value, error.message, error.phase.value, error.cause)


def _error(fields: tuple[Any, ...]) -> FlashJobError:
    code, message, phase, cause = fields
    return FlashJobError(FlashErrorCode(code), message, FlashPhase(phase), cause=cause)


class _Worker:
    """One worker process and the parent's ends of its pipes."""

    def __init__(self, log_format: LogFormat, log_level: str) -> None:
        context = _context()
        inbox, self.to_worker = context.Pipe(duplex=False)
        self.from_worker, outbox = context.Pipe(duplex=False)
        self.process: BaseProcess = context.Process(
            target=_worker_main,
            args=(inbox, outbox, log_format, log_level),
            name="flash-worker",
            daemon=True,
        )
        self.process.start()
        inbox.close()
        outbox.close()

    def send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the worker is gone; its EOF ends the job
            self.to_worker.send(message)

    def stop(self, *, wait_s: float = _EXIT_WAIT_S) -> None:
        """Close the pipes (an idle worker then exits), wait ``wait_s``, then terminate it
        (SIGTERM, then SIGKILL): the kernel closes whatever port it held."""
        self.to_worker.close()
        self.from_worker.close()
        self.process.join(wait_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_EXIT_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class ProcessFlasher:
    """``run_flash_job`` in a worker process; call it on the job's thread (it blocks)."""

    def __init__(self, log_format: LogFormat = "auto", log_level: str = "info") -> None:
        self.log_format: LogFormat = log_format
        self.log_level = log_level
        self._idle: list[_Worker] = []
        self._busy = 0  # workers running a job
        self._lock = threading.Lock()
        self._sequence = 0
        self._closed = False

    def warm_up(self, workers: int = 1) -> None:
        """Have at least ``workers`` workers, idle or busy (blocking: each new one takes
        0.2-0.7 s of CPU, measured, mostly imports), so jobs on that many boards at once
        find one ready. The station calls it with the number of candidate ports."""
        if _forkserver():
            multiprocessing.forkserver.ensure_running()
        with self._lock:
            missing = min(workers, MAX_IDLE_WORKERS) - len(self._idle) - self._busy
        started = [_Worker(self.log_format, self.log_level) for _ in range(max(missing, 0))]
        with self._lock:
            closed = self._closed
            if not closed:
                self._idle += started
        for worker in started if closed else []:
            worker.stop()

    def close(self) -> None:
        """Stop the idle workers; a worker busy with a job stops when the job ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    def _take(self) -> tuple[_Worker, int]:
        with self._lock:
            self._sequence += 1
            self._busy += 1
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    return worker, self._sequence
                worker.stop()
            sequence = self._sequence
        return _Worker(self.log_format, self.log_level), sequence

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_WORKERS:
                self._idle.append(worker)
                return
        worker.stop()

    def __call__(
        self,
        job: JobRequest,
        fetch_image: FetchImage,
        report: Callable[[FlashProgress], None],
        cancel: threading.Event,
    ) -> FlashOutcome:
        worker, sequence = self._take()
        run = _Run(job, worker, sequence)
        try:
            return run.execute(fetch_image, report, cancel)
        finally:
            with self._lock:
                self._busy -= 1
            if run.reusable:
                self._give_back(worker)
            else:  # it died, or did not answer a cancel: terminate it now
                worker.stop(wait_s=0)


class _Run:
    """The parent's side of one job: relay progress and fetches until the worker's answer."""

    def __init__(self, job: JobRequest, worker: _Worker, sequence: int) -> None:
        self.job = job
        self.worker = worker
        self.sequence = sequence
        self.phase = FlashPhase.CONNECTING
        self.reusable = False  # set once the worker has answered the job

    def _aborted(self) -> FlashJobError:
        message = f"flash job cancelled while {self.phase.value}"
        return FlashJobError(FlashErrorCode.ABORTED, message, self.phase)

    def execute(
        self,
        fetch_image: FetchImage,
        report: Callable[[FlashProgress], None],
        cancel: threading.Event,
    ) -> FlashOutcome:
        self.worker.send(("job", self.sequence, self.job))
        cancelled_at: float | None = None
        while True:
            if cancel.is_set() and cancelled_at is None:
                self.worker.send(("cancel", self.sequence))
                cancelled_at = time.monotonic()
            if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                log.warning("flash_worker_unresponsive", request_id=self.job.request_id)
                raise self._aborted()
            message = self._receive()
            if message is None or message[1] != self.sequence:
                continue
            kind = message[0]
            if kind == "progress":
                self.phase = message[2].phase
                report(message[2])
            elif kind == "fetch":
                self.worker.send(self._fetch(fetch_image, message[2]))
            elif kind == "done":
                self.reusable = True
                outcome: FlashOutcome = message[2]
                return outcome
            else:  # "failed"
                self.reusable = True
                raise _error(message[2:])

    def _receive(self) -> tuple[Any, ...] | None:
        try:
            if not self.worker.from_worker.poll(_POLL_S):
                return None
            message: tuple[Any, ...] = self.worker.from_worker.recv()
        except (EOFError, OSError):
            raise self._died() from None
        return message

    def _fetch(self, fetch_image: FetchImage, target: NvsTarget) -> tuple[Any, ...]:
        self.phase = FlashPhase.FETCHING_NVS
        try:
            return ("image", self.sequence, fetch_image(target))
        except FlashJobError as exc:
            return ("refused", self.sequence, *_fields(exc))
        except Exception as exc:  # as run_flash_job does: the type only, never the message
            log.exception("flash_fetch_crashed", request_id=self.job.request_id)
            failure = FlashJobError(
                FlashErrorCode.INTERNAL_ERROR,
                f"unexpected {type(exc).__name__} while {self.phase.value}",
                self.phase,
            )
            return ("refused", self.sequence, *_fields(failure))

    def _died(self) -> FlashJobError:
        process = self.worker.process
        process.join(_EXIT_WAIT_S)
        log.error("flash_worker_died", request_id=self.job.request_id, exit_code=process.exitcode)
        return FlashJobError(
            FlashErrorCode.INTERNAL_ERROR,
            f"the flash worker process ended (exit code {process.exitcode}) "
            f"while {self.phase.value}",
            self.phase,
        )


# -- the worker process ------------------------------------------------------------------------


class _Inbox:
    """The worker's reader thread: jobs and answers queued, cancel applied at once."""

    def __init__(self, inbox: Connection) -> None:
        self.jobs: queue.Queue[tuple[int, JobRequest, threading.Event] | None] = queue.Queue()
        self.answers: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._inbox = inbox
        self._cancels: dict[int, threading.Event] = {}
        threading.Thread(target=self._read, name="flash-worker-inbox", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self._inbox.recv()
            except (EOFError, OSError):  # the parent is gone: stop what runs, then exit
                for cancel in self._cancels.values():
                    cancel.set()
                self.jobs.put(None)
                return
            kind, sequence = message[0], message[1]
            if kind == "job":
                self._cancels = {sequence: threading.Event()}  # only the latest may be cancelled
                self.jobs.put((sequence, message[2], self._cancels[sequence]))
            elif kind == "cancel":
                if sequence in self._cancels:
                    self._cancels[sequence].set()
            else:
                self.answers.put(message)

    def answer(self, sequence: int, cancel: threading.Event) -> tuple[Any, ...]:
        """The parent's answer to this job's fetch (answers for earlier jobs are dropped)."""
        while True:
            try:
                answer = self.answers.get(timeout=_POLL_S)
            except queue.Empty:
                if cancel.is_set():
                    raise FlashJobError(
                        FlashErrorCode.ABORTED,
                        "flash job cancelled while fetching_nvs",
                        FlashPhase.FETCHING_NVS,
                    ) from None
                continue
            if answer[1] == sequence:
                return answer


def _worker_main(inbox: Connection, outbox: Connection, log_format: LogFormat, level: str) -> None:
    """A worker process: run jobs one at a time until the parent closes the pipe."""
    configure_logging(log_format, level)
    reader = _Inbox(inbox)
    while (next_job := reader.jobs.get()) is not None:
        sequence, job, cancel = next_job

        def fetch(
            target: NvsTarget, sequence: int = sequence, cancel: threading.Event = cancel
        ) -> NvsImage:
            outbox.send(("fetch", sequence, target))
            answer = reader.answer(sequence, cancel)
            if answer[0] != "image":
                raise _error(answer[2:])
            image: NvsImage = answer[2]
            return image

        def report(progress: FlashProgress, sequence: int = sequence) -> None:
            outbox.send(("progress", sequence, progress))

        try:
            outcome = run_flash_job(job, fetch, report, cancel)
        except FlashJobError as exc:
            outbox.send(("failed", sequence, *_fields(exc)))
        else:
            outbox.send(("done", sequence, outcome))
