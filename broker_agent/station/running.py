"""The jobs a station runs: each on its own thread (its esptool work in a worker process),
its events published in order by a task on the loop.

``RunningJobs`` knows the jobs by request_id and their ports (``port_key``) for ``port_busy``.
A job's port is free again just before its final event goes out (the flasher has closed it by
then), so an operator who reacts to the final event finds the port free.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from broker_agent.logs import get_logger
from broker_agent.provisioning.requester import ImageRequester
from broker_agent.station.auto import IdentitySource
from broker_agent.station.commands import JobRequest
from broker_agent.station.job import (
    Flasher,
    JobResult,
    JobThread,
    call_from_job_thread,
    fetch_image,
    post_to_loop,
    run_job,
)
from broker_agent.station.manufacturing_log import ManufacturingLog
from broker_agent.station.targets import NvsImage, NvsTarget
from firmware_contracts.codes import FlashPhase, FlashStatus
from firmware_contracts.payloads import FlashEvent

log = get_logger(__name__)

FINAL = (FlashStatus.OK, FlashStatus.ERROR)

Publish = Callable[[str, bytes | None, FlashEvent], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None] | None"]


@dataclass(eq=False)
class RunningJob:
    request: JobRequest
    port_key: str
    topic: str
    correlation: bytes | None
    cancel: threading.Event = field(default_factory=threading.Event)
    outbox: asyncio.Queue[FlashEvent] = field(default_factory=asyncio.Queue)
    thread: JobThread[JobResult] | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class JobServices:
    """What a job needs from its station."""

    requester: ImageRequester
    manufacturing_log: ManufacturingLog
    flasher: Flasher
    identity: IdentitySource | None
    event_interval_s: float
    publish: Publish  # a job's event to its topic (a final one waits for a connection)
    changed: Callable[[], None]  # the set of busy ports changed
    finished: Callable[[JobResult], None]  # e.g. metrics


class RunningJobs:
    """The station's running jobs, by request_id."""

    def __init__(self, services: JobServices) -> None:
        self.services = services
        self.jobs: dict[str, RunningJob] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.jobs

    def busy(self) -> dict[str, str]:
        """port_key -> request_id of the job running there."""
        return {job.port_key: request_id for request_id, job in self.jobs.items()}

    def ports(self) -> list[tuple[str, str]]:
        """(port as named, port_key) of every running job."""
        return [(job.request.port, job.port_key) for job in self.jobs.values()]

    def start(
        self,
        request: JobRequest,
        key: str,
        topic: str,
        correlation: bytes | None,
        spawn: Spawn,
    ) -> None:
        job = RunningJob(request, key, topic, correlation)
        self.jobs[request.request_id] = job
        self.services.changed()
        log.info(
            "flash_job_accepted",
            request_id=request.request_id,
            device_id=request.device_id,
            port=request.port,
        )
        loop = asyncio.get_running_loop()
        job.thread = JobThread(f"flash-job-{request.port}", lambda: self._run_blocking(job, loop))
        job.task = spawn(self._run(job), f"flash-job-{request.request_id}")

    def cancel(self, request_id: str) -> RunningJob | None:
        job = self.jobs.get(request_id)
        if job is not None:
            job.cancel.set()
        return job

    async def cancel_all(self, grace_s: float) -> None:
        """Cancel every job and wait (bounded) for their final events to go out."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for job in self.jobs.values():
            job.cancel.set()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)

    def stop_threads(self, grace_s: float) -> None:
        """Cancel what still runs and wait (bounded) for the threads to close their ports."""
        for job in self.jobs.values():
            job.cancel.set()
        deadline = time.monotonic() + grace_s
        for job in list(self.jobs.values()):
            remaining = max(deadline - time.monotonic(), 0.0)
            if job.thread is not None and not job.thread.join(remaining):
                log.error("flash_job_thread_stuck", request_id=job.request.request_id)

    def _run_blocking(self, job: RunningJob, loop: asyncio.AbstractEventLoop) -> JobResult:
        """The job's thread: flash, log, and hand every event to the loop."""
        services = self.services
        request_id = job.request.request_id

        def fetch(device_id: str, target: NvsTarget) -> NvsImage:
            coroutine = fetch_image(services.requester, device_id, request_id, target)
            return call_from_job_thread(loop, coroutine, job.cancel, FlashPhase.FETCHING_NVS)

        identity = services.identity
        return run_job(
            job.request,
            fetch,
            lambda event: post_to_loop(loop, job.outbox.put_nowait, event),
            job.cancel,
            record=services.manufacturing_log.append,
            min_interval_s=services.event_interval_s,
            flasher=services.flasher,
            identify=identity.device_for if identity is not None else None,
        )

    async def _run(self, job: RunningJob) -> None:
        assert job.thread is not None
        try:
            finished = job.thread.start()
            while True:
                event = await job.outbox.get()
                final = event.status in FINAL
                if final:  # the flasher has closed the port: free it before saying so
                    self._release(job)
                await self.services.publish(job.topic, job.correlation, event)
                if final:
                    break
            result = await finished
            self.services.finished(result)
            log.info(
                "flash_job_finished",
                request_id=job.request.request_id,
                device_id=result.device_id,
                port=job.request.port,
                result="ok" if result.ok else "error",
                code=result.error.code.value if result.error else None,
                duration_s=result.duration_s,
            )
        except Exception:  # one job's bug must not stop the station
            log.exception("flash_job_task_failed", request_id=job.request.request_id)
        finally:
            self._release(job)

    def _release(self, job: RunningJob) -> None:
        if self.jobs.get(job.request.request_id) is job:
            del self.jobs[job.request.request_id]
            self.services.changed()
