"""``broker-agent flash DEVICE_ID [--port PORT] [--offline]``: provision one attached board now.

The same job as the station's (``flash_job.run_job``) on a worker thread, with a progress bar
(phase + percentage; plain lines when stdout is not a terminal). The image comes from the agent
over MQTT v5 (``ImageRequester``, answers scoped to ``--station-id``) or, with ``--offline``,
is built here from the secrets directory; a board whose table has an ``nvs_keys`` partition
gets an encrypted image and its keys either way (offline: the device's key under
``<secrets_dir>/_nvs_keys/``, as the agent keeps it). Every finished job goes to the
manufacturing log.

Exit status: 0 only when the image was written and its MD5 verified; 1 when the job failed
(``error: <code>: <message>`` on stderr); 2 for usage and setup errors (``SetupError``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from broker_agent.errors import BrokerUnavailableError, ProvisionFailure, SetupError
from broker_agent.mqtt import BrokerUrls, Router, make_connection
from broker_agent.provisioning.offline import build_offline_image
from broker_agent.provisioning.requester import ImageRequester
from broker_agent.settings import AgentSettings, StationSettings
from broker_agent.station.commands import JobRequest, normalise_mac
from broker_agent.station.job import (
    JobResult,
    JobThread,
    call_from_job_thread,
    error_detail,
    fetch_image,
    provisioning_failed,
    run_job,
)
from broker_agent.station.manufacturing_log import ManufacturingLog
from broker_agent.station.ports import scan_ports
from broker_agent.station.targets import NvsImage, NvsTarget
from firmware_contracts.codes import FlashAfter, FlashErrorCode, FlashPhase, FlashStatus
from firmware_contracts.identifiers import InvalidIdentifierError, check_identifier
from firmware_contracts.payloads import MAC_PATTERN, FlashEvent
from firmware_contracts.topics import TopicKind, Topics

EXIT_OK = 0
EXIT_JOB_FAILED = 1
MIN_BAUD, MAX_BAUD = 9600, 5_000_000
_MAC = re.compile(MAC_PATTERN)

FetchImage = Callable[[str, NvsTarget], NvsImage]
JobBody = Callable[[], JobResult]
Record = Callable[[JobResult], None]


class ProgressView:
    """Shows a job's events: a rich bar on a terminal, one line per phase otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._phase: FlashPhase | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        if self.tty:
            self._progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                TaskProgressColumn(),
                console=Console(file=self.out),
            )
            self._task = self._progress.add_task(FlashPhase.CONNECTING.value, total=100)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_event(self, event: FlashEvent) -> None:
        """Called on the job's thread."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=event.progress, description=event.phase)
            return
        if event.status is FlashStatus.ERROR:
            return  # the error is printed once, at the end
        if event.phase != self._phase or event.status is FlashStatus.OK:
            self._phase = event.phase
            print(f"{event.phase.value:<24} {event.progress:>3}%", file=self.out, flush=True)


def flash_command(args: argparse.Namespace, settings: StationSettings) -> int:
    """Run one flash job now; see the module docstring for the exit status."""
    request = _job_request(args)
    offline_settings = _offline_settings(args, settings) if args.offline else None
    if offline_settings is None and settings.broker_url is None:
        raise SetupError(
            "flash needs a broker for the image: pass --broker-url or set "
            "BROKER_AGENT_BROKER_URL (or use --offline with --secrets-dir)"
        )
    if request is None:
        return EXIT_JOB_FAILED
    record = ManufacturingLog(settings.manufacturing_log, settings.station_id).append
    cancel = threading.Event()
    if offline_settings is not None:
        fetch = _offline_fetch(offline_settings)
        with _progress(request) as view:
            result = _run_here(
                lambda: run_job(request, fetch, view.on_event, cancel, record=record), cancel
            )
    else:
        assert settings.broker_url is not None
        result = asyncio.run(_run_online(settings, settings.broker_url, request, cancel, record))
    return _report(result)


def _progress(request: JobRequest) -> ProgressView:
    print(f"flashing {request.device_id} on {request.port}", flush=True)
    return ProgressView(sys.stdout)


def _job_request(args: argparse.Namespace) -> JobRequest | None:
    """The job to run, from the arguments; None (after printing why) when no port fits."""
    try:
        device_id = check_identifier(args.device_id, "device_id")
    except InvalidIdentifierError as exc:
        raise SetupError(str(exc)) from None
    if not MIN_BAUD <= args.baud <= MAX_BAUD:
        raise SetupError(f"--baud must be between {MIN_BAUD} and {MAX_BAUD}")
    expected_mac = args.expected_mac
    if expected_mac is not None and not _MAC.match(normalise_mac(expected_mac)):
        raise SetupError("--expected-mac must look like 24:0a:c4:12:34:56")
    port = args.port
    if port is None:
        candidates = [info.port for info in scan_ports().candidates]
        if len(candidates) != 1:
            what = ", ".join(candidates) if candidates else "none attached"
            print(
                f"error: {FlashErrorCode.PORT_REQUIRED.value}: name the board's port with "
                f"--port (candidate ports: {what})",
                file=sys.stderr,
            )
            return None
        port = candidates[0]
    return JobRequest(
        request_id=f"cli-{secrets.token_hex(6)}",
        device_id=device_id,
        port=port,
        baud=args.baud,
        after=FlashAfter(args.after),
        expected_mac=expected_mac,
        force=args.force,
    )


def _offline_settings(args: argparse.Namespace, settings: StationSettings) -> AgentSettings:
    if not settings.secrets_dir.is_dir():
        raise SetupError(
            f"--offline needs the secrets directory: {settings.secrets_dir} is not a directory "
            "(pass --secrets-dir)"
        )
    config_dir = Path(args.config_dir) if args.config_dir else Path("configs")
    return AgentSettings(secrets_dir=settings.secrets_dir, config_dir=config_dir)


def _offline_fetch(settings: AgentSettings) -> FetchImage:
    def fetch(device_id: str, target: NvsTarget) -> NvsImage:
        try:
            image = build_offline_image(
                settings, device_id, target.nvs.size, encrypted=target.encrypted
            )
        except ProvisionFailure as exc:
            raise provisioning_failed(device_id, str(settings.secrets_dir), exc) from None
        return NvsImage(image.data, image.nvs_keys)

    return fetch


def _run_here(job: JobBody, cancel: threading.Event) -> JobResult:
    """Run the job on a worker thread; Ctrl-C cancels it (it then ends ``aborted``)."""
    holder: list[JobResult] = []
    thread = threading.Thread(target=lambda: holder.append(job()), name="flash-job")
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            cancel.set()
    return holder[0]


async def _run_online(
    settings: StationSettings,
    url: str,
    request: JobRequest,
    cancel: threading.Event,
    record: Record,
) -> JobResult:
    """Connect (a failure is a ``SetupError``), then run the job with the agent's image."""
    topics = Topics(settings.topic_root)
    requester = ImageRequester(topics, settings.station_id, settings.provision_timeout_s)
    router = Router(topics, {TopicKind.PROVISION_RESPONSE: requester.on_response})
    client_id = f"flash-{settings.station_id}-{secrets.token_hex(4)}"
    connection = make_connection(settings, url, client_id=client_id, route=router)
    loop = asyncio.get_running_loop()

    def fetch(device_id: str, target: NvsTarget) -> NvsImage:
        coroutine = fetch_image(requester, device_id, request.request_id, target)
        return call_from_job_thread(loop, coroutine, cancel, FlashPhase.FETCHING_NVS)

    result: JobResult | None = None
    try:
        async with connection:
            await requester.attach(connection)
            with _progress(request) as view:
                thread = JobThread(
                    "flash-job",
                    lambda: run_job(request, fetch, view.on_event, cancel, record=record),
                )
                finished = thread.start()
                try:
                    result = await asyncio.shield(finished)
                except asyncio.CancelledError:  # Ctrl-C: the job ends aborted; report that
                    cancel.set()
                    result = await finished
    except BrokerUnavailableError as exc:
        if result is None:
            raise SetupError(
                f"cannot use the broker at {BrokerUrls.parse(url).display()}: {exc}"
            ) from None
    return result


def _report(result: JobResult) -> int:
    if result.outcome is None:
        assert result.error is not None
        detail = error_detail(result.error)
        print(f"error: {detail.code.value}: {detail.message}", file=sys.stderr)
        if detail.cause is not None:
            print(f"  cause: {detail.cause.code}: {detail.cause.message}", file=sys.stderr)
        return EXIT_JOB_FAILED
    outcome = result.outcome
    partition = outcome.partition
    if outcome.skipped:
        print(
            f"ok: {result.device_id} on {result.request.port} already held this image: "
            "nothing written (--force rewrites it)"
        )
    else:
        print(f"ok: {result.device_id} written and verified on {result.request.port}")
    print(f"chip: {outcome.chip_type}  mac: {outcome.mac}")
    print(f"partition: {partition.name} at {partition.offset:#x}, {partition.size} bytes")
    keys = outcome.nvs_keys
    if keys is not None:
        print(f"nvs_keys: {keys.name} at {keys.offset:#x} (image encrypted with its key)")
    print(f"md5: {outcome.md5}")
    return EXIT_OK
