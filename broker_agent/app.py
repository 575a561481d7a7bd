"""The agent: one TaskGroup holding the watcher and the MQTT session loop.

Per connection: subscribe, learn the retained configs, reconcile, start the provisioning
responder, then announce ``online``. Any ``MqttError`` ends the session; the loop backs off and
starts a new one, and the watcher keeps queueing changes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

from broker_agent.fleet.plan import PruneGuard
from broker_agent.broker.process import MosquittoProcess
from broker_agent.mqtt.client import (
    Backoff,
    make_client,
    raise_if_cancelled,
    run_forever_connected,
    wait_disconnected,
)
from broker_agent.fleet.watcher import DirectoryWatcher
from broker_agent.logs import get_logger
from broker_agent.events import AgentPresence
from broker_agent.broker.auth_sync import BrokerAuthSync
from broker_agent.fleet.publisher import ConfigPublisher
from broker_agent.provisioning.responder import ProvisioningResponder
from broker_agent.settings import AgentSettings
from firmware_contracts.topics import TopicKind, TopicMatch, Topics

log = get_logger(__name__)

Handler = Callable[[TopicMatch, aiomqtt.Message], None]


class Router:
    """Routes each incoming message to its service by topic; one bad message stops nothing."""

    def __init__(self, topics: Topics, handlers: dict[TopicKind, Handler]) -> None:
        self.topics = topics
        self.handlers = handlers

    def __call__(self, message: aiomqtt.Message) -> bool:
        topic = message.topic.value
        match = self.topics.parse(topic)
        handler = self.handlers.get(match.kind) if match else None
        if match is None or handler is None:
            log.info("message_ignored", topic=topic[:200], reason="not a contract topic for us")
            return True
        try:
            handler(match, message)
        except Exception:  # the one place that keeps the session alive: report and go on
            log.exception("message_handler_failed", topic=topic[:200])
        return True


@dataclass
class Agent:
    settings: AgentSettings
    broker_url: str
    online: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        s = self.settings
        self.topics = Topics(s.topic_root)
        self.presence = AgentPresence(self.topics, s.agent_id)
        self.publisher = ConfigPublisher(
            s.config_dir,
            self.topics,
            self.presence,
            guard=PruneGuard(s.prune_max_share, s.prune_min_devices),
            max_bytes=s.max_config_bytes,
            concurrency=s.publish_concurrency,
            event_limit=s.event_detail_limit,
        )
        self.responder = ProvisioningResponder(s, self.topics, self.presence)
        self.watcher = DirectoryWatcher(
            s.config_dir,
            self.publisher.on_file_changes,
            self.publisher.on_watch_restart,
            debounce_ms=s.watch_debounce_ms,
        )

    async def run(self) -> None:
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watcher.run(), name="config-watcher")
            group.create_task(self.responder.watch_secrets(), name="secrets-watcher")
            auth_sync = BrokerAuthSync.from_agent(self.settings)
            if auth_sync is not None:
                group.create_task(auth_sync.run(), name="broker-auth-sync")
                await auth_sync.ready.wait()  # the broker knows every device before we connect
            await self.watcher.ready.wait()
            group.create_task(
                run_forever_connected(self._connect, self._session, backoff, self._disconnected),
                name="mqtt-session-loop",
            )

    def _connect(self) -> aiomqtt.Client:
        router = Router(
            self.topics,
            {
                TopicKind.DEVICE_CONFIG: self.publisher.on_message,
                TopicKind.AGENT_SYNC: self.publisher.on_message,
                TopicKind.PROVISION_REQUEST: self.responder.on_message,
            },
        )
        return make_client(
            self.settings,
            self.broker_url,
            client_id=self.settings.agent_id,
            will=self.presence.will(),
            route=router,
        )

    def _disconnected(self, error: Exception, delay: float) -> None:
        self.online.clear()
        self.presence.client = None
        log.warning("broker_disconnected", error=str(error), retry_in_s=round(delay, 2))

    async def _session(self, client: aiomqtt.Client) -> None:
        self.presence.client = client
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(wait_disconnected(client), name="mqtt-connection")
                await self.publisher.subscribe_and_sync(client)
                await self.publisher.reconcile(client)
                group.create_task(self.publisher.drain(client), name="config-drain")
                await self.responder.start(client, group)
                await self.presence.publish_status(client, len(self.publisher.retained))
                raise_if_cancelled()  # aiomqtt's wait_for may have swallowed a cancel
                self.online.set()
                log.info(
                    "agent_online",
                    agent_id=self.settings.agent_id,
                    broker=_display(self.broker_url),
                )
        except asyncio.CancelledError:
            await _say_offline(self.presence, client)
            raise


async def _say_offline(presence: AgentPresence, client: aiomqtt.Client) -> None:
    with contextlib.suppress(aiomqtt.MqttError):
        await presence.publish_offline(client)


def _display(url: str) -> str:
    from broker_agent.mqtt.client import BrokerUrl

    return BrokerUrl.parse(url).display()


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
