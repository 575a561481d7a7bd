"""The agent: one TaskGroup holding the watcher and the MQTT session loop.

Per connection: subscribe, learn the retained configs, reconcile, start the provisioning
responder, then announce ``online``. A ``BrokerUnavailableError`` ends the session; the loop
backs off and starts a new one, and the watcher keeps queueing changes meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker_agent.broker.auth_sync import BrokerAuthSync
from broker_agent.broker.process import MosquittoProcess
from broker_agent.events import AgentEvents, agent_online, agent_presence
from broker_agent.fleet.plan import PruneGuard
from broker_agent.fleet.publisher import ConfigPublisher
from broker_agent.fleet.tracker import FleetTracker
from broker_agent.fleet.watcher import DirectoryWatcher
from broker_agent.fleet.writer import ConfigWriter
from broker_agent.http.embed import start_http
from broker_agent.http.metrics import AgentMetrics
from broker_agent.logs import get_logger
from broker_agent.mqtt import (
    Backoff,
    Connection,
    Message,
    Router,
    make_connection,
    raise_if_cancelled,
    run_forever_connected,
)
from broker_agent.provisioning.responder import ProvisioningResponder
from broker_agent.settings import AgentSettings, ConsoleSettings
from firmware_contracts.codes import AgentEventName, ConfigErrorCode
from firmware_contracts.payloads import utc_timestamp
from firmware_contracts.topics import TopicKind, Topics

if TYPE_CHECKING:
    from broker_agent.http.server import HttpServer

log = get_logger(__name__)


@dataclass
class Agent:
    settings: AgentSettings
    broker_url: str
    online: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        s = self.settings
        self.topics = Topics(s.topic_root)
        self.since = utc_timestamp()
        self.presence = agent_presence(self.topics, s.agent_id).expiring(
            s.presence_expiry_s, s.presence_refresh_s
        )
        self.events = AgentEvents(self.topics, s.agent_id)
        self.publisher = ConfigPublisher(
            s.config_dir,
            self.topics,
            self.events,
            guard=PruneGuard(s.prune_max_share, s.prune_min_devices),
            max_bytes=s.max_config_bytes,
            concurrency=s.publish_concurrency,
            event_limit=s.event_detail_limit,
        )
        self.publisher.on_batch_done = self._announce
        self.tracker = FleetTracker(self.topics, s.agent_id, s.pending_grace_s)
        self.publisher.retained_listeners.append(self.tracker.on_config)
        self.writer = ConfigWriter(s, self.topics, self.events, self.publisher)
        self.responder = ProvisioningResponder(s, self.topics, self.events)
        self.watcher = DirectoryWatcher(
            s.config_dir,
            self.publisher.on_file_changes,
            self.publisher.on_watch_restart,
            debounce_ms=s.watch_debounce_ms,
            mode=s.watch_mode,
            poll_interval_s=s.watch_poll_interval_s,
        )
        self.metrics = AgentMetrics(readiness=self._not_ready_reason, fleet=self.tracker.counts)
        self.events.listeners.append(self._count_event)
        self.writer.on_answered = self.metrics.config_written
        self.responder.on_reply = self.metrics.provision_replied
        self.http: HttpServer | None = None  # once running, when HTTP is on

    def _not_ready_reason(self) -> str | None:
        if self.online.is_set():
            return None
        if self.events.connection is None:
            return "not connected to the broker"
        return "first reconcile not done"

    def _count_event(self, event: AgentEventName, data: dict[str, Any]) -> None:
        count = int(data.get("count") or 1)
        if event is AgentEventName.CONFIG_PUBLISHED:
            self.metrics.config_published(count)
        elif event is AgentEventName.CONFIG_CLEARED:
            self.metrics.config_cleared(count)
        elif event is AgentEventName.PRUNE_BLOCKED:
            self.metrics.prune_blocked()
        elif event is AgentEventName.CONFIG_REJECTED:
            code = str((data.get("error") or {}).get("code"))
            if code in ConfigErrorCode._value2member_map_:
                self.metrics.config_rejected(ConfigErrorCode(code))

    def _console_settings(self) -> ConsoleSettings | None:
        """The console beside the agent: the agent's broker settings, its own MQTT client id."""
        if not self.settings.console:
            return None
        shared = self.settings.model_dump(include=set(ConsoleSettings.model_fields))
        return ConsoleSettings(**shared)

    async def run(self) -> None:
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        async with asyncio.TaskGroup() as group:
            self.http = await start_http(
                group,
                self.metrics,
                self.settings.http_listen,
                console=self._console_settings(),
                broker_url=self.broker_url,
                beside_agent=True,
            )
            group.create_task(self.watcher.run(), name="config-watcher")
            auth_sync = BrokerAuthSync.from_agent(self.settings)
            if auth_sync is not None:
                group.create_task(auth_sync.run(), name="broker-auth-sync")
                await auth_sync.ready.wait()  # the broker knows every device before we connect
            await self.watcher.ready.wait()
            group.create_task(
                run_forever_connected(self._connect, self._session, backoff, self._disconnected),
                name="mqtt-session-loop",
            )

    def _connect(self) -> Connection:
        router = Router(
            self.topics,
            {
                TopicKind.DEVICE_CONFIG: self.publisher.on_message,
                TopicKind.AGENT_SYNC: self.publisher.on_message,
                TopicKind.PROVISION_REQUEST: self.responder.on_message,
                TopicKind.DEVICE_CONFIG_APPLIED: self.tracker.on_message,
                TopicKind.DEVICE_STATUS: self.tracker.on_message,
                TopicKind.CONFIG_SET: self.writer.on_message,
            },
            unmatched=self._unmatched,
        )
        return make_connection(
            self.settings,
            self.broker_url,
            client_id=self.settings.agent_id,
            will=self.presence.will(),
            route=router,
        )

    def _unmatched(self, message: Message) -> None:
        """A message no handler takes (e.g. an invalid device id): a config write's or else
        the provisioning responder's to clear when retained."""
        if not self.writer.on_unmatched(message):
            self.responder.on_unmatched(message)

    def _disconnected(self, error: Exception, delay: float) -> None:
        self.online.clear()
        self.events.connection = None
        self.metrics.broker_disconnected()
        log.warning("broker_disconnected", error=str(error), retry_in_s=round(delay, 2))

    async def _announce(self, connection: Connection) -> None:
        payload = agent_online(self.settings.agent_id, len(self.publisher.retained), self.since)
        await self.presence.announce(connection, payload)

    async def _session(self, connection: Connection) -> None:
        self.events.connection = connection
        self.metrics.broker_connected()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(connection.wait_disconnected(), name="mqtt-connection")
                await self.tracker.subscribe(connection)  # before the publisher's sync marker
                await self.publisher.subscribe_and_sync(connection)
                await self.publisher.reconcile(connection)
                group.create_task(self.publisher.drain(connection), name="config-drain")
                group.create_task(self.tracker.publish_summaries(connection), name="fleet-summary")
                await self.responder.start(connection, group)
                await self.writer.start(connection, group)
                payload = agent_online(
                    self.settings.agent_id, len(self.publisher.retained), self.since
                )
                await self.presence.announce(connection, payload, force=True)
                group.create_task(self.presence.keep_fresh(connection), name="presence-refresh")
                raise_if_cancelled()  # aiomqtt's wait_for may have swallowed a cancel
                self.online.set()
                log.info(
                    "agent_online",
                    agent_id=self.settings.agent_id,
                    broker=connection.url.display(),
                )
        except asyncio.CancelledError:
            await self.presence.withdraw(connection)
            raise


async def run_agent(
    settings: AgentSettings, started: Callable[[Agent], None] | None = None
) -> None:
    """Run the agent until cancelled; without a broker URL, inside a private Mosquitto."""
    broker: MosquittoProcess | None = None
    url = settings.broker_url
    if url is None:
        broker = MosquittoProcess.from_file(
            settings.mosquitto_conf,
            settings.broker_data_dir.resolve(),
            settings.broker_port,
            binary=settings.mosquitto_bin,
        )
        await asyncio.to_thread(broker.start)
        url = broker.url
        log.info("private_broker_started", url=url, data_dir=str(settings.broker_data_dir))
    try:
        agent = Agent(settings, url)
        if started is not None:
            started(agent)
        await agent.run()
    finally:
        if broker is not None:
            broker.stop()
            log.info("private_broker_stopped")
