"""The flash station (contract section 4): flash commands over MQTT, one worker process per job.

Tasks (all named): the port scanner, the MQTT session loop and, per job, a task that publishes
the job's events in order while the job runs on its own thread (``job.run_job``), whose esptool
work runs in a child process (``worker.ProcessFlasher``: parallel boards do not share a GIL).

Per connection: subscribe to ``flash/request`` and ``flash/cancel`` (Retain Handling 2: a
command retained before the station subscribed is never run) and to the provisioning answers
addressed to this station, THEN publish the retained ``online`` status with the ports. The
status is re-published whenever a port appears, disappears or changes its busy flag.

Jobs outlive a connection: a job keeps running while the station reconnects; its
``in_progress`` events published meanwhile are dropped, its final event waits for the next
connection. On shutdown every job is cancelled (it ends ``aborted`` unless it is past the
point of verifying) and its final event published before the ``offline`` status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from broker_agent import __version__
from broker_agent.errors import BrokerUnavailableError, FlashJobError, SetupError
from broker_agent.http.embed import start_http
from broker_agent.http.metrics import StationMetrics
from broker_agent.logs import get_logger
from broker_agent.mqtt import (
    Backoff,
    Connection,
    Message,
    Presence,
    Router,
    make_connection,
    raise_if_cancelled,
    run_forever_connected,
)
from broker_agent.provisioning.requester import ImageRequester
from broker_agent.settings import StationSettings
from broker_agent.simulator import BoardConfig, SimulatedBench, SimulatedBoard
from broker_agent.station.auto import ZeroTouch, open_source
from broker_agent.station.commands import (
    JobRequest,
    new_request_id,
    parse_command,
    refused,
    request_id_in,
    response_topic_problem,
    select_port,
)
from broker_agent.station.job import Flasher, JobResult
from broker_agent.station.manufacturing_log import ManufacturingLog
from broker_agent.station.ports import PortScan, port_key, scan_ports
from broker_agent.station.running import FINAL, JobServices, RunningJobs
from broker_agent.station.worker import ProcessFlasher
from firmware_contracts.codes import FlashErrorCode, FlashPhase, FlashStatus, PresenceState
from firmware_contracts.payloads import (
    FlashCancel,
    FlashErrorDetail,
    FlashEvent,
    FlashRequest,
    PortInfo,
    StationStatus,
)
from firmware_contracts.topics import TOPICS, TopicKind, TopicMatch, Topics

if TYPE_CHECKING:
    from broker_agent.http.server import HttpServer

log = get_logger(__name__)

SHUTDOWN_GRACE_S = 10.0


class Station:
    """One flash station. ``online`` is set while it is connected and announced."""

    def __init__(
        self,
        settings: StationSettings,
        broker_url: str | None = None,
        *,
        connect_attempts: int = 3,
        event_interval_s: float = 0.1,
        flasher: Flasher | None = None,
    ) -> None:
        url = broker_url or settings.broker_url
        if url is None:
            raise SetupError(
                "the station needs a broker: pass --broker-url or set BROKER_AGENT_BROKER_URL"
            )
        self.settings = settings
        self.broker_url = url
        self.station_id = settings.station_id
        self.topics = Topics(settings.topic_root)
        self.connect_attempts = connect_attempts
        self.event_interval_s = event_interval_s
        self.flasher = flasher or ProcessFlasher(settings.log_format, settings.log_level)
        self.online = asyncio.Event()
        self.requester = ImageRequester(self.topics, self.station_id, settings.provision_timeout_s)
        self.manufacturing_log = ManufacturingLog(settings.manufacturing_log, self.station_id)
        self.bench: SimulatedBench | None = None  # --simulate: boards plugged in and out
        self.zero_touch = (
            ZeroTouch(open_source(settings.auto), connect_attempts)
            if settings.auto is not None
            else None
        )
        self._scan = PortScan((), frozenset())
        offline = StationStatus(state=PresenceState.OFFLINE, station_id=self.station_id)
        spec = TOPICS[TopicKind.STATION_STATUS]
        self.presence = Presence(
            self._status_topic,
            offline.to_json(),
            qos=spec.qos,
            expiry_s=settings.presence_expiry_s,
            refresh_s=settings.presence_refresh_s,
        )
        self._connection: Connection | None = None
        self._connected = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._job_group: asyncio.TaskGroup | None = None
        self.metrics = StationMetrics(readiness=self._not_ready_reason)
        self.jobs = RunningJobs(
            JobServices(
                requester=self.requester,
                manufacturing_log=self.manufacturing_log,
                flasher=self.flasher,
                identity=self.zero_touch.source if self.zero_touch is not None else None,
                event_interval_s=event_interval_s,
                publish=self._publish_event,
                changed=self._status_changed,
                finished=self._job_finished,
            )
        )
        self.http: HttpServer | None = None  # once running, when HTTP is on

    def _not_ready_reason(self) -> str | None:
        return None if self.online.is_set() else "not connected to the broker"

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        with self._simulated_bench():
            self._scan = await asyncio.to_thread(self._scan_ports)
            await self._reserve_workers()
            try:
                async with asyncio.TaskGroup() as jobs:
                    self._job_group = jobs
                    async with asyncio.TaskGroup() as group:
                        self.http = await start_http(group, self.metrics, self.settings.http_listen)
                        group.create_task(self._watch_ports(), name="port-scanner")
                        group.create_task(
                            run_forever_connected(
                                self._connect, self._session, backoff, self._disconnected
                            ),
                            name="mqtt-session-loop",
                        )
            finally:
                self._job_group = None
                self.jobs.stop_threads(SHUTDOWN_GRACE_S)
                if isinstance(self.flasher, ProcessFlasher):
                    await asyncio.to_thread(self.flasher.close)

    @contextlib.contextmanager
    def _simulated_bench(self) -> Iterator[None]:
        """``--simulate N``: a bench with N boards; tests plug more in and out (``self.bench``)."""
        if self.settings.simulate == 0:
            yield
            return
        with SimulatedBench() as bench:
            for index in range(self.settings.simulate):
                board = SimulatedBoard(BoardConfig(mac=f"24:0a:c4:00:00:{index + 1:02x}"))
                log.info("simulated_board_started", port=bench.plug(board))
            self.bench = bench
            try:
                yield
            finally:
                self.bench = None

    async def _reserve_workers(self) -> None:
        """A worker process ready for every candidate port: one starting on demand costs a
        parallel job 0.2-0.7 s (bench/bench_flash_station.py)."""
        if isinstance(self.flasher, ProcessFlasher):
            await asyncio.to_thread(self.flasher.warm_up, max(len(self._scan.candidates), 1))

    def _scan_ports(self) -> PortScan:
        """The host's serial ports plus the simulated bench's (blocking: a few ms)."""
        return scan_ports(self.bench.comports() if self.bench is not None else ())

    def _connect(self) -> Connection:
        router = Router(
            self.topics,
            {
                TopicKind.PROVISION_RESPONSE: self.requester.on_response,
                TopicKind.FLASH_REQUEST: self._for_us(self._on_flash_request),
                TopicKind.FLASH_CANCEL: self._for_us(self._on_flash_cancel),
            },
        )
        return make_connection(
            self.settings,
            self.broker_url,
            client_id=self.station_id,
            will=self.presence.will(),
            route=router,
        )

    def _for_us(self, handler: Callable[[Message], None]) -> Callable[[TopicMatch, Message], None]:
        def route(match: TopicMatch, message: Message) -> None:
            if match.identifier == self.station_id:
                handler(message)
            else:
                log.info("message_ignored", topic=message.topic[:200])

        return route

    def _disconnected(self, error: Exception, delay: float) -> None:
        self.metrics.broker_disconnected()
        log.warning("broker_disconnected", error=str(error), retry_in_s=round(delay, 2))

    async def _session(self, connection: Connection) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(connection.wait_disconnected(), name="mqtt-connection")
                for topic in (
                    self.topics.flash_request(self.station_id),
                    self.topics.flash_cancel(self.station_id),
                ):
                    await connection.subscribe(
                        topic, qos=1, retain_as_published=True, retain_handling=2
                    )
                await self.requester.attach(connection)
                self.metrics.broker_connected()
                self._connection = connection
                self._connected.set()
                await self._publish_status(connection, force=True)
                group.create_task(self._publish_status_changes(connection), name="station-status")
                group.create_task(self.presence.keep_fresh(connection), name="presence-refresh")
                raise_if_cancelled()  # aiomqtt's wait_for may have swallowed a cancel
                self.online.set()
                log.info(
                    "station_online",
                    station_id=self.station_id,
                    broker=connection.url.display(),
                    ports=[port.port for port in self._ports()],
                )
                self._start_auto_jobs()
        except asyncio.CancelledError:
            await self._shutdown(connection)
            raise
        finally:
            self.online.clear()
            self._connected.clear()
            self._connection = None
            self.requester.detach()

    async def _shutdown(self, connection: Connection) -> None:
        """Abort the jobs, publish their final events, then say offline."""
        await self.jobs.cancel_all(SHUTDOWN_GRACE_S)
        await self.presence.withdraw(connection)
        log.info("station_offline", station_id=self.station_id)

    # -- ports and status ----------------------------------------------------------------

    @property
    def _status_topic(self) -> str:
        return self.topics.station_status(self.station_id)

    def _candidates(self) -> list[PortInfo]:
        return list(self._scan.candidates)

    def _ports(self) -> list[PortInfo]:
        """The candidates, plus any other port a job is using, each with its busy flag."""
        ports = self._candidates()
        listed = {port_key(port.port) for port in ports}
        ports += [PortInfo(port=port) for port, key in self.jobs.ports() if key not in listed]
        busy = self.jobs.busy()
        return [port.model_copy(update={"busy": port_key(port.port) in busy}) for port in ports]

    def _status_changed(self) -> None:
        self._status_dirty.set()

    async def _publish_status(self, connection: Connection, *, force: bool = False) -> None:
        ports = self._ports()
        self.metrics.ports(
            attached=len(self._candidates()), busy=sum(1 for port in ports if port.busy)
        )
        status = StationStatus(
            state=PresenceState.ONLINE,
            station_id=self.station_id,
            ports=ports,
            version=__version__,
        )
        await self.presence.announce(connection, status.to_json(), force=force)

    async def _publish_status_changes(self, connection: Connection) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            await self._publish_status(connection)
            raise_if_cancelled()

    async def _watch_ports(self) -> None:
        while True:
            await asyncio.sleep(self.settings.port_scan_interval_s)
            try:
                scan = await asyncio.to_thread(self._scan_ports)
            except Exception:  # a failed scan must not stop the station
                log.exception("port_scan_failed")
                continue
            if scan != self._scan:
                self._scan = scan
                log.info("ports_changed", candidates=[port.port for port in scan.candidates])
                self._status_changed()
                self._spawn(self._reserve_workers(), "flash-worker-reserve")
            self._start_auto_jobs()

    def _start_auto_jobs(self) -> None:
        """``--auto``: a job for every candidate port that appeared (only while online, so
        the whole event stream is published)."""
        if self.zero_touch is None or not self.online.is_set():
            return
        topic = self.topics.flash_response(self.station_id)
        for key, request in self.zero_touch.new_jobs(self._scan.candidates, self.jobs.busy()):
            self.jobs.start(request, key, topic, None, self._spawn)

    # -- incoming messages (sync, on the loop) -------------------------------------------

    def _on_flash_request(self, message: Message) -> None:
        payload = message.payload
        if message.retain and not payload:
            return  # our own clearing of a retained command, echoed back
        correlation = message.correlation_data
        response_topic = message.response_topic
        problem = response_topic_problem(self.topics, self.station_id, response_topic)
        reply_to = None if problem is not None else response_topic
        try:
            if message.retain:  # live and retained: refuse it, and clear it so nobody runs it
                self._spawn(self._clear_retained_command(message.topic), "clear-command")
                raise refused(
                    FlashErrorCode.INVALID_REQUEST,
                    "a flash command must not be retained (it was cleared)",
                    request_id_in(payload),
                )
            command = parse_command(payload)
            request_id = command.request_id or new_request_id()
            if problem is not None:
                raise refused(FlashErrorCode.INVALID_REQUEST, problem, request_id)
            self._accept(command, request_id, reply_to, correlation)
        except FlashJobError as rejection:
            self._reject(rejection, reply_to, correlation)

    def _select_port(self, requested: str | None) -> str:
        def attached(port: str) -> bool:
            if self._scan.is_attached(port):
                return True
            self._scan = self._scan_ports()  # plugged in since the last scan?
            self._status_changed()
            return self._scan.is_attached(port)

        return select_port(requested, [port.port for port in self._candidates()], attached)

    def _accept(
        self, command: FlashRequest, request_id: str, topic: str | None, correlation: bytes | None
    ) -> None:
        try:
            port = self._select_port(command.port)
            key = port_key(port)
            holder = self.jobs.busy().get(key)
            if holder is not None:
                raise refused(FlashErrorCode.PORT_BUSY, f"port {port} is busy with job {holder}")
            if request_id in self.jobs:
                raise refused(
                    FlashErrorCode.INVALID_REQUEST,
                    f"a job with request_id {request_id} is already running",
                )
        except FlashJobError as rejection:
            rejection.request_id = request_id
            rejection.device_id, rejection.port = command.device_id, command.port
            raise
        request = JobRequest(
            request_id=request_id,
            device_id=command.device_id,
            port=port,
            baud=command.baud,
            after=command.after,
            expected_mac=command.expected_mac,
            connect_attempts=self.connect_attempts,
            force=command.force,
        )
        topic = topic or self.topics.flash_response(self.station_id)
        self.jobs.start(request, key, topic, correlation, self._spawn)

    def _reject(
        self, rejection: FlashJobError, topic: str | None, correlation: bytes | None
    ) -> None:
        request_id = rejection.request_id or new_request_id()
        log.warning(
            "flash_request_rejected",
            request_id=request_id,
            code=rejection.code.value,
            error=rejection.message,
        )
        event = FlashEvent(
            request_id=request_id,
            status=FlashStatus.ERROR,
            phase=FlashPhase.CONNECTING,
            progress=0,
            device_id=rejection.device_id,
            port=rejection.port,
            error=FlashErrorDetail(code=rejection.code, message=rejection.message),
        )
        target = topic or self.topics.flash_response(self.station_id)
        self._spawn(self._publish_event(target, correlation, event), "flash-rejection")

    def _on_flash_cancel(self, message: Message) -> None:
        payload = message.payload
        try:
            request_id = FlashCancel.model_validate_json(payload).request_id
        except ValidationError:
            log.warning("flash_cancel_invalid", size=len(payload))
            return
        job = self.jobs.cancel(request_id)
        if job is None:
            log.info("flash_cancel_unknown", request_id=request_id)
            return
        log.info("flash_cancel_requested", request_id=request_id, port=job.request.port)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        group = self._job_group
        if group is None:  # not running (or stopping): nothing may start any more
            coroutine.close()
            return None
        return group.create_task(coroutine, name=name)

    # -- jobs ----------------------------------------------------------------------------

    def _job_finished(self, result: JobResult) -> None:
        self.metrics.flash_job_finished(
            result.error.code if result.error else None, result.duration_s
        )

    async def _publish_event(
        self, topic: str, correlation: bytes | None, event: FlashEvent
    ) -> None:
        """Publish one event; a final one waits for a connection, the others are dropped."""
        final = event.status in FINAL
        payload = event.to_json()
        spec = TOPICS[TopicKind.FLASH_RESPONSE]
        while True:
            connection = self._connection
            if connection is None:
                if not final:
                    return
                await self._connected.wait()
                continue
            try:
                await connection.publish(
                    topic,
                    payload,
                    qos=spec.qos,
                    retain=spec.retained,
                    correlation_data=correlation,
                )
                return
            except BrokerUnavailableError as exc:
                if not final:
                    return
                log.warning("flash_event_unsent", request_id=event.request_id, error=str(exc))
                await asyncio.sleep(0.1)

    async def _clear_retained_command(self, topic: str) -> None:
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(BrokerUnavailableError):
                await connection.publish(topic, b"", qos=1, retain=True)


async def run_station(settings: StationSettings) -> None:
    """``broker-agent station``: run until cancelled (SIGINT/SIGTERM)."""
    await Station(settings).run()
