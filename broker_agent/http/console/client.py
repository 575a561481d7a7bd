"""The console's MQTT side: it reads what the broker retains and acts only through the contract.

One connection with the console's own client id and operator account (``ConsoleSettings``),
reconnecting like every service (``run_forever_connected``). Per session it subscribes to:

- every device's retained ``config``, ``config/applied`` and ``status`` at QoS 0 (a QoS 1
  subscriber was measured to receive only 1,020 of 10,000 retained messages under Mosquitto's
  default queue limits; notes/mosquitto-and-mqtt.md), the agents' status and events, the
  stations' status; these feed ``ConsoleModel``;
- ``{root}/stations/+/flash/response/#`` (QoS 1): every job's event stream, the console's own
  (asked for below the station's response topic) and anyone else's;
- its own answers: ``.../config/set/response/{scope}/+`` and the image requester's
  ``.../provision/+/response/{scope}/+``, ``scope`` being the console id, so a production ACL
  can give the operator account exactly those.

The answer subscriptions come first and the retained ones last, with the fleet tracker's long
SUBACK timeout (``RETAINED_READ_TIMEOUT_S``): a SUBACK arrives after the retained messages of
the subscriptions before it, and with 100,000 devices that took longer than aiomqtt's 10 s
default, so the console timed out, reconnected and read the flood again, forever.

Actions are plain contract publishes: ``config/set`` (MQTT v5 request/response, answered by an
agent after the retained config is published), provisioning requests (the one
``ImageRequester``), flash requests and cancels (fire and forget; the job's events arrive on
the response subscription).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from typing import Any

from broker_agent.errors import BrokerUnavailableError
from broker_agent.fleet.publisher import RETAINED_READ_TIMEOUT_S
from broker_agent.http.console.model import FLUSH_INTERVAL_S, ConsoleModel
from broker_agent.logs import get_logger
from broker_agent.mqtt import (
    Backoff,
    BrokerUrls,
    Connection,
    Message,
    PendingAnswers,
    Router,
    make_connection,
    raise_if_cancelled,
    run_forever_connected,
)
from broker_agent.provisioning.messages import ProvisionedImage
from broker_agent.provisioning.requester import ImageRequester
from broker_agent.settings import ConsoleSettings
from firmware_contracts.topics import TOPICS, TopicKind, TopicMatch, Topics

log = get_logger(__name__)


class NotConnectedError(BrokerUnavailableError):
    """The console has no broker connection right now (the API answers 503)."""


class ConsoleClient:
    def __init__(self, settings: ConsoleSettings, broker_url: str) -> None:
        self.settings = settings
        self.broker_url = broker_url
        self.topics = Topics(settings.topic_root)
        self.scope = settings.console_id
        self.model = ConsoleModel(settings.pending_grace_s)
        self.requester = ImageRequester(self.topics, self.scope, settings.console_request_timeout_s)
        self.connected = asyncio.Event()
        self._connection: Connection | None = None
        self.failure: str | None = None
        """Set when the console stopped for good (beside the agent: it keeps running)."""
        self._answers = PendingAnswers()
        self._station_prefix = f"{self.topics.root}/stations/"

    @property
    def own_account(self) -> bool:
        s = self.settings
        return s.console_mqtt_username is not None or s.console_mqtt_password_file is not None

    @property
    def broker_urls(self) -> BrokerUrls:
        """The broker's URLs; with the console's own account, without a URL's credentials
        (a URL's user name wins over the settings', and would be the agent's account)."""
        urls = BrokerUrls.parse(self.broker_url)
        if not self.own_account:
            return urls
        return BrokerUrls(
            tuple(dataclasses.replace(u, username=None, password=None) for u in urls.urls)
        )

    @property
    def mqtt_settings(self) -> ConsoleSettings:
        """The console's own account when one is configured, else the shared MQTT settings."""
        s = self.settings
        if not self.own_account:
            return s
        return s.model_copy(
            update={
                "mqtt_username": s.console_mqtt_username or s.mqtt_username,
                "mqtt_password": None,
                "mqtt_password_file": s.console_mqtt_password_file,
            }
        )

    async def run(self) -> None:
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._flush_changes(), name="console-changes")
            group.create_task(
                run_forever_connected(self._connect, self._session, backoff, self._disconnected),
                name="console-session-loop",
            )

    def _connect(self) -> Connection:
        model = self.model
        device = {
            TopicKind.DEVICE_CONFIG: model.on_config,
            TopicKind.DEVICE_CONFIG_APPLIED: model.on_ack,
            TopicKind.DEVICE_STATUS: model.on_status,
            TopicKind.AGENT_STATUS: model.on_agent_status,
            TopicKind.AGENT_EVENTS: model.on_agent_event,
            TopicKind.STATION_STATUS: model.on_station_status,
            TopicKind.FLASH_RESPONSE: model.on_flash_event,
        }

        def feed(match: TopicMatch, message: Message) -> None:
            device[match.kind](match.identifier, message.payload)

        handlers: dict[TopicKind, Any] = dict.fromkeys(device, feed)
        handlers[TopicKind.PROVISION_RESPONSE] = self.requester.on_response
        handlers[TopicKind.CONFIG_SET_RESPONSE] = self._on_answer
        router = Router(self.topics, handlers, unmatched=self._on_unmatched)
        return make_connection(
            self.mqtt_settings, self.broker_urls, client_id=self.scope, route=router
        )

    def _on_answer(self, match: TopicMatch, message: Message) -> None:
        self._answers.deliver(message)

    def _on_unmatched(self, message: Message) -> None:
        """Job events on a topic below a station's ``flash/response`` (ours or anyone's)."""
        topic = message.topic
        if topic.startswith(self._station_prefix) and "/flash/response/" in topic:
            station_id = topic[len(self._station_prefix) :].split("/", 1)[0]
            self.model.on_flash_event(station_id, message.payload)

    def failed(self, error: BaseException) -> None:
        """The console stopped for good; its API answers 503 with this from now on."""
        self.connected.clear()
        self._connection = None
        self.requester.detach()
        self.failure = f"the console stopped: {error}"[:500]
        log.error("console_failed", error=str(error)[:500], error_type=type(error).__name__)

    def _disconnected(self, error: Exception, delay: float) -> None:
        self.connected.clear()
        self._connection = None
        self.requester.detach()
        log.warning("console_disconnected", error=str(error), retry_in_s=round(delay, 2))

    async def _session(self, connection: Connection) -> None:
        self.model.reset_fleet()
        t = self.topics
        async with asyncio.TaskGroup() as group:
            group.create_task(connection.wait_disconnected(), name="console-connection")
            # the answers first: their SUBACKs then do not queue behind the retained flood
            await connection.subscribe(f"{t.filter(TopicKind.FLASH_RESPONSE)}/#", qos=1)
            await connection.subscribe(
                f"{t.filter(TopicKind.CONFIG_SET_RESPONSE)}/{self.scope}/+", qos=1
            )
            await self.requester.attach(connection)
            for kind in (
                TopicKind.DEVICE_CONFIG,
                TopicKind.DEVICE_CONFIG_APPLIED,
                TopicKind.DEVICE_STATUS,
                TopicKind.AGENT_STATUS,
                TopicKind.AGENT_EVENTS,
                TopicKind.STATION_STATUS,
            ):
                # each SUBACK waits behind the retained messages before it: aiomqtt's 10 s
                # default expired at 100,000 devices and the console reconnected forever
                await connection.subscribe(t.filter(kind), qos=0, timeout=RETAINED_READ_TIMEOUT_S)
            self._connection = connection
            self.connected.set()
            raise_if_cancelled()
            log.info("console_connected", broker=connection.url.display(), scope=self.scope)

    async def _flush_changes(self) -> None:
        changes = self.model.changes
        while True:
            await changes.pending.wait()
            changes.pending.clear()
            batch = changes.take()
            if batch is not None:
                batch["counts"] = self.model.counts()
                changes.deliver(batch)
            await asyncio.sleep(FLUSH_INTERVAL_S)

    # -- actions ---------------------------------------------------------------------------
    def _live(self) -> Connection:
        connection = self._connection
        if connection is None:
            raise NotConnectedError(self.failure or "the console is not connected to the broker")
        return connection

    async def write_config(self, device_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """One ``config/set`` (contract 6.3); the agent's answer, or TimeoutError."""
        connection = self._live()
        nonce = secrets.token_hex(8)
        request = {"request_id": f"console-{nonce}", **request}
        topic = f"{self.topics.config_set_response(device_id)}/{self.scope}/{nonce}"
        spec = TOPICS[TopicKind.CONFIG_SET]
        with self._answers.expect(topic) as (correlation, answer):
            async with asyncio.timeout(self.settings.console_request_timeout_s):
                await connection.publish(
                    self.topics.config_set(device_id),
                    json.dumps(request, separators=(",", ":")).encode(),
                    qos=spec.qos,
                    retain=False,
                    response_topic=topic,
                    correlation_data=correlation,
                )
                payload = await answer
        document = json.loads(payload)
        assert isinstance(document, dict)
        return document

    async def provision(self, device_id: str, partition_size: int) -> ProvisionedImage:
        self._live()
        return await self.requester.request(device_id, partition_size)

    async def start_job(
        self, station_id: str, device_id: str, port: str | None, expected_mac: str | None
    ) -> str:
        connection = self._live()
        request_id = f"console-{secrets.token_hex(6)}"
        command: dict[str, Any] = {"request_id": request_id, "device_id": device_id}
        if port:
            command["port"] = port
        if expected_mac:
            command["expected_mac"] = expected_mac
        self.model.job_requested(station_id, request_id, device_id, port)
        await connection.publish(
            self.topics.flash_request(station_id),
            json.dumps(command, separators=(",", ":")).encode(),
            qos=TOPICS[TopicKind.FLASH_REQUEST].qos,
            retain=False,
            response_topic=f"{self.topics.flash_response(station_id)}/{self.scope}/{request_id}",
        )
        log.info("console_flash_requested", station_id=station_id, request_id=request_id)
        return request_id

    async def cancel_job(self, station_id: str, request_id: str) -> None:
        connection = self._live()
        await connection.publish(
            self.topics.flash_cancel(station_id),
            json.dumps({"request_id": request_id}).encode(),
            qos=TOPICS[TopicKind.FLASH_CANCEL].qos,
            retain=False,
        )
        log.info("console_flash_cancel", station_id=station_id, request_id=request_id)
