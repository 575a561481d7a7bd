"""The config publisher: the directory of device configs, kept in step with retained MQTT.

One instance lives as long as the agent; it survives reconnects. File changes arrive from the
watcher at any time (also while disconnected) and are queued by name; on every (re)connect the
publisher reads what the broker retains, reconciles, and then drains queued changes.

Hooks for the rest of the agent: every change of the broker's retained configs, the ones this
publisher had acknowledged and the ones other agents publish, is reported to each of
``retained_listeners`` (device_id, envelope or b"" for a clear): the fleet state follows it,
and a config write waits on it for its answer. When a config is cleared, the device's retained
``config/applied`` is cleared with it (contract 6.1), so the fleet state shows nothing stale.

Replicas sharing one directory (docs/multi-site.md): a config is published only from the file as
just read (content and mtime from one open, which a network file system revalidates), and not
when another replica's retained envelope has a later ``updated_at`` than that file's mtime: that
replica read a newer version of the file than this one sees (a stale NFS/CephFS view), so its
config wins and stays (``config_overtaken`` is logged). Likewise a config is not cleared when
another replica published it after the directory's mtime as seen here (taken before listing):
this replica's listing predates that file (``config_clear_overtaken``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from broker_agent.errors import BrokerUnavailableError, ConfigFileError
from broker_agent.events import AgentEvents
from broker_agent.fleet.files import (
    SCHEMA_FILE,
    DeviceConfig,
    FleetSchema,
    envelope_sha256,
)
from broker_agent.fleet.plan import (
    DirectoryScan,
    PruneGuard,
    ReconcilePlan,
    open_scan,
    plan_reconcile,
)
from broker_agent.fleet.state import parse_envelope, parse_timestamp
from broker_agent.logs import get_logger
from broker_agent.mqtt import (
    Connection,
    Message,
    OutgoingMessage,
    publish_many,
    publish_stream,
    raise_if_cancelled,
)
from firmware_contracts.codes import AgentEventName, ConfigErrorCode
from firmware_contracts.payloads import utc_timestamp
from firmware_contracts.topics import TOPICS, TopicKind, TopicMatch, Topics

log = get_logger(__name__)

_SCAN_CHUNK = 64  # files read between turns of the event loop during a reconcile
RETAINED_READ_TIMEOUT_S = 300.0
_PUBLISH_OVERHEAD = 16  # fixed header, topic length, packet id, properties length
"""Subscribe timeout of the subscriptions that bring a fleet's retained state. A SUBACK queues
behind the retained messages of the subscription before it: with 100,000 devices, aiomqtt's
10 s default expired while the client was still reading acks, and the agent reconnected
forever (measured, bench/bench_fleet_state.py)."""


class ConfigPublisher:
    def __init__(
        self,
        config_dir: Path,
        topics: Topics,
        events: AgentEvents,
        *,
        guard: PruneGuard,
        max_bytes: int,
        concurrency: int = 128,
        event_limit: int = 100,
    ) -> None:
        self.config_dir = config_dir
        self.topics = topics
        self.events = events
        # called after each batch of live changes (the agent re-announces its device count)
        self.on_batch_done: Callable[[Connection], Awaitable[None]] | None = None
        # told of every change of the retained configs (see the module docstring)
        self.retained_listeners: list[Callable[[str, bytes], None]] = []
        self.guard = guard
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self.event_limit = event_limit
        self.retained: dict[str, str] = {}  # device_id -> sha256, as the broker holds it
        self._foreign_at: dict[str, float] = {}  # updated_at of retained configs not ours
        self.schema = FleetSchema(None)
        self._pending: set[str] = set()
        self._wakeup = asyncio.Event()
        self._rescan = False
        self._sync_nonce = b""
        self._synced = asyncio.Event()

    # -- inputs ------------------------------------------------------------------------
    def on_file_changes(self, names: set[str]) -> None:
        self._pending |= names
        self._wakeup.set()

    def on_watch_restart(self) -> None:
        self._rescan = True
        self._wakeup.set()

    def on_message(self, match: TopicMatch, message: Message) -> None:
        """Retained configs (ours at subscribe time, other agents' live) and our sync marker."""
        if match.kind is TopicKind.AGENT_SYNC:
            if message.payload == self._sync_nonce:
                self._synced.set()
            return
        self._record(match.identifier, message.payload)

    def _record(self, device_id: str, payload: bytes, *, ours: bool = False) -> None:
        self._foreign_at.pop(device_id, None)
        if payload:
            sha = envelope_sha256(payload)
            self.retained[device_id] = sha or "?"  # not ours: differs from every real hash
            found = None if ours else parse_envelope(payload)
            if found is not None and found.updated_at is not None:
                self._foreign_at[device_id] = found.updated_at
        else:
            self.retained.pop(device_id, None)
        for listener in self.retained_listeners:
            listener(device_id, payload)

    # -- per connection ----------------------------------------------------------------
    async def subscribe_and_sync(self, connection: Connection) -> None:
        """Learn everything the broker retains under the config topics, without a fixed sleep.

        QoS 0 so the broker's per-client queue limits cannot drop any (measured: QoS 1 got
        1,020 of 10,000); No Local so our own publishes are not echoed back later. The marker
        published after the SUBACK arrives after every retained message.
        """
        self.retained.clear()
        self._synced.clear()
        self._sync_nonce = secrets.token_hex(8).encode()
        sync_topic = self.topics.agent_sync(self.events.agent_id)
        await connection.subscribe(
            self.topics.filter(TopicKind.DEVICE_CONFIG),
            qos=0,
            no_local=True,
            timeout=RETAINED_READ_TIMEOUT_S,
        )
        await connection.subscribe(sync_topic, qos=0, timeout=RETAINED_READ_TIMEOUT_S)
        await connection.publish(sync_topic, self._sync_nonce, qos=0)
        try:
            async with asyncio.timeout(RETAINED_READ_TIMEOUT_S):
                await self._synced.wait()
        except TimeoutError:
            # a dropped QoS 0 marker (an ACL, an overloaded broker or bridge) would leave the
            # agent connected but never online: start a new session instead
            raise BrokerUnavailableError(
                f"the sync marker on {sync_topic} did not come back within "
                f"{RETAINED_READ_TIMEOUT_S:g} s (can the agent read its own agents/<id>/#?)"
            ) from None

    async def reconcile(self, connection: Connection) -> None:
        """Make the retained state equal the directory (subject to the prune guard).

        Pipelined: the scan runs in a thread and hands every config whose hash differs from the
        retained one to the publishing tasks as soon as it is read. Clears wait for the whole
        scan, since only then is it known which retained configs have no file.
        """
        self._pending.clear()
        self._rescan = False
        await self._reload_schema()
        retained = dict(self.retained)
        queue: asyncio.Queue[OutgoingMessage | None] = asyncio.Queue()
        overtaken: set[str] = set()
        listed_at = self._directory_mtime()

        async def scan_then_close() -> DirectoryScan:
            # On the event loop, in chunks, so publishing overlaps reading: a scan thread
            # would fight the loop for the GIL at every hand-over (measured 3x slower).
            scan, names = open_scan(self.config_dir)
            configs = scan.read(self.config_dir, names, self.schema, self.max_bytes)
            for index, config in enumerate(configs):
                changed = retained.get(config.device_id) != config.sha256
                if changed and not self._refuse_oversized(scan, config, connection):
                    if self._overtaken(config):
                        overtaken.add(config.device_id)
                    else:
                        queue.put_nowait(self._message_for(config))
                if index % _SCAN_CHUNK == _SCAN_CHUNK - 1:
                    await asyncio.sleep(0)
            for _ in range(self.concurrency):
                queue.put_nowait(None)
            return scan

        async with asyncio.TaskGroup() as group:
            scanning = group.create_task(scan_then_close(), name="config-scan")
            group.create_task(
                publish_stream(
                    connection, queue, concurrency=self.concurrency, on_done=self._published
                ),
                name="config-publish",
            )
        scan = scanning.result()
        plan = plan_reconcile(scan, retained, self.guard)
        await self._report_rejections(scan.rejected)
        clear = self._clearable(plan.clear, listed_at)
        await self._apply(connection, ReconcilePlan([], clear, plan.unchanged, plan.blocked))
        published = [config for config in plan.publish if config.device_id not in overtaken]
        await self._report_published(published, [])
        log.info(
            "reconciled",
            published=len(published),
            cleared=len(clear),
            unchanged=plan.unchanged,
            rejected=len(scan.rejected),
            devices=len(self.retained),
        )

    def _message_for(self, config: DeviceConfig) -> OutgoingMessage:
        spec = TOPICS[TopicKind.DEVICE_CONFIG]
        topic = self.topics.device_config(config.device_id)
        return OutgoingMessage(topic, config.envelope, qos=spec.qos, retain=spec.retained)

    def _published(self, message: OutgoingMessage) -> None:
        """Record an acknowledged config publish or clear in the broker's retained state."""
        match = self.topics.parse(message.topic)
        assert match is not None
        if match.kind is TopicKind.DEVICE_CONFIG:
            self._record(match.identifier, message.payload, ours=True)

    async def drain(self, connection: Connection) -> None:
        """Handle queued file changes for as long as the connection lives."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            names, self._pending = self._pending, set()
            if self._rescan or SCHEMA_FILE in names:
                await self.reconcile(connection)
            elif names:
                await self._apply_changes(connection, names)
            if self.on_batch_done is not None:
                await self.on_batch_done(connection)
            raise_if_cancelled()

    # -- the work ------------------------------------------------------------------------
    async def _reload_schema(self) -> None:
        try:
            self.schema = FleetSchema.load(self.config_dir / SCHEMA_FILE, self.max_bytes)
        except ConfigFileError as exc:
            # Keep the last good schema: configs stay held to the rules the operator set.
            await self.events.emit(
                AgentEventName.CONFIG_REJECTED, file=SCHEMA_FILE, error=(exc.code, exc.message)
            )

    async def _apply_changes(self, connection: Connection, names: Iterable[str]) -> None:
        """The same plan as a reconcile, scoped to the files the watcher named."""
        listed_at = self._directory_mtime()
        scan, todo = open_scan(self.config_dir, names)
        for config in list(scan.read(self.config_dir, todo, self.schema, self.max_bytes)):
            self._refuse_oversized(scan, config, connection)
        await self._report_rejections(scan.rejected)
        plan = plan_reconcile(scan, self.retained, self.guard)
        fresh = [config for config in plan.publish if not self._overtaken(config)]
        clear = self._clearable(plan.clear, listed_at)
        await self._apply(connection, ReconcilePlan(fresh, clear, plan.unchanged, plan.blocked))

    def _refuse_oversized(
        self, scan: DirectoryScan, config: DeviceConfig, connection: Connection
    ) -> bool:
        """Refuse (``too_large``) a config the broker would not take; True when refused.

        A publish over the broker's announced Maximum Packet Size is refused by the client
        library and used to end the whole session, every time, so one big file kept the agent
        from ever going online. It is now that file's rejection; the last good config stays.
        """
        topic = self.topics.device_config(config.device_id)
        packet = len(config.envelope) + len(topic.encode()) + _PUBLISH_OVERHEAD
        if connection.capabilities.fits(packet):
            return False
        limit = connection.capabilities.maximum_packet_size
        scan.configs.pop(config.device_id, None)
        scan.rejected.append(
            ConfigFileError(
                ConfigErrorCode.TOO_LARGE,
                f"its retained message would be {packet} bytes; the broker accepts at most "
                f"{limit} (its Maximum Packet Size)",
                file=config.file,
                device_id=config.device_id,
            )
        )
        return True

    def _directory_mtime(self) -> float | None:
        try:
            return self.config_dir.stat().st_mtime
        except OSError:
            return None  # no directory: the prune guard blocks every clear anyway

    def _clearable(self, devices: list[str], listed_at: float | None) -> list[str]:
        """The clears to make: not those another replica published after our listing."""
        if listed_at is None:
            return devices
        kept = [d for d in devices if self._foreign_at.get(d, listed_at) <= listed_at]
        for device_id in sorted(set(devices) - set(kept)):
            log.warning(
                "config_clear_overtaken",
                device_id=device_id,
                directory_mtime=utc_timestamp(listed_at),
                retained_updated_at=utc_timestamp(self._foreign_at[device_id]),
            )
        return kept

    def _overtaken(self, config: DeviceConfig) -> bool:
        """True when another replica's retained config is newer than our file (module doc)."""
        retained_at = self._foreign_at.get(config.device_id)
        file_at = parse_timestamp(config.updated_at)
        if retained_at is None or file_at is None or retained_at <= file_at:
            return False
        log.warning(
            "config_overtaken",
            device_id=config.device_id,
            file_updated_at=config.updated_at,
            retained_updated_at=utc_timestamp(retained_at),
        )
        return True

    async def _apply(self, connection: Connection, plan: ReconcilePlan) -> None:
        if plan.blocked is not None:
            await self.events.emit(
                AgentEventName.PRUNE_BLOCKED,
                reason=plan.blocked.reason,
                would_clear=plan.blocked.would_clear,
                fleet_size=plan.blocked.fleet_size,
            )
        messages = [self._message_for(config) for config in plan.publish]
        spec = TOPICS[TopicKind.DEVICE_CONFIG]
        for device in plan.clear:
            messages.append(
                OutgoingMessage(
                    self.topics.device_config(device), b"", qos=spec.qos, retain=spec.retained
                )
            )
            # 6.1: its ack goes with it, or the device would show as unmanaged for good
            messages.append(
                OutgoingMessage(
                    self.topics.device_config_applied(device), b"", qos=spec.qos, retain=True
                )
            )
        await publish_many(
            connection, messages, concurrency=self.concurrency, on_done=self._published
        )
        await self._report_published(plan.publish, plan.clear)

    async def _report_published(self, published: list[DeviceConfig], cleared: list[str]) -> None:
        """One event per device, or one summary event per kind for a large batch."""
        if len(published) > self.event_limit:
            await self.events.emit(AgentEventName.CONFIG_PUBLISHED, count=len(published))
        else:
            for config in published:
                await self.events.emit(
                    AgentEventName.CONFIG_PUBLISHED,
                    device_id=config.device_id,
                    file=config.file,
                    sha256=config.sha256,
                )
        if len(cleared) > self.event_limit:
            await self.events.emit(AgentEventName.CONFIG_CLEARED, count=len(cleared))
        else:
            for device_id in cleared:
                await self.events.emit(AgentEventName.CONFIG_CLEARED, device_id=device_id)

    async def _report_rejections(self, rejected: list[ConfigFileError]) -> None:
        for item in rejected:
            await self.events.emit(
                AgentEventName.CONFIG_REJECTED,
                device_id=item.device_id,
                file=item.file,
                error=(item.code, item.message),
            )
