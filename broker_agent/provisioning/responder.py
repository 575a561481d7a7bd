"""The provisioning responder: answers every request on ``{root}/provision/+/request`` once.

Per connection, ``start`` subscribes and starts a fixed pool of worker tasks; the dispatcher
hands each request to ``on_message``, which only queues it (it must not block the dispatcher).
A worker parses the request, looks up the credentials, builds the NVS image and publishes the
answer (QoS 1, not retained, expiry 60 s, Correlation Data echoed). The pool bounds how many
answers are in flight (aiomqtt scans every pending call on each publish, so thousands of
concurrent publishes cost quadratic time); requests wait in FIFO order behind it.

Subscriptions (MQTT v5 options, each tagged with a Subscription Identifier):

1. ``$share/<group>/{root}/provision/+/request`` (or the plain filter when no group is set),
   QoS 1, Retain As Published so the retain flag of a live request is visible. With a group,
   Retain Handling 2: Mosquitto 2.0.11 would otherwise hand every retained request to every
   shared subscriber at subscribe time.
2. With a group only: a short look for requests retained *before* we subscribed, which (1) no
   longer shows. The plain filter is subscribed with Retain Handling 0 (send retained) and
   Retain As Published off, then unsubscribed at once: the broker queues the retained messages
   behind the SUBACK, before the UNSUBACK, so they all arrive. Only retained copies from this
   subscription are acted on; a live request that reaches us through it as well during those
   milliseconds carries the retain flag cleared and is left to (1). Keeping (2) for the
   session's life would instead deliver every request twice to every replica.

A retained request is refused with ``retained_request_rejected`` and then cleared (an empty
retained publish, which comes back to us retained and empty and is ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from broker_agent.errors import BrokerUnavailableError, ProvisionFailure, SetupError
from broker_agent.events import AgentEvents
from broker_agent.logs import get_logger
from broker_agent.mqtt import Connection, Message, raise_if_cancelled, shared_filter
from broker_agent.provisioning.credentials import CredentialStore
from broker_agent.provisioning.messages import (
    build_image,
    error_response,
    new_request_id,
    ok_response,
    parse_request,
    request_id_in,
)
from broker_agent.provisioning.nvs_keys import NvsKeyStore
from broker_agent.settings import AgentSettings
from firmware_contracts.codes import AgentEventName, ProvisionErrorCode
from firmware_contracts.topics import PROVISION_RESPONSE_EXPIRY_S, TopicKind, TopicMatch, Topics

log = get_logger(__name__)

REQUESTS_SUBSCRIPTION_ID = 1
RETAINED_SCAN_SUBSCRIPTION_ID = 2
MAX_WORKERS = 32
"""Replies in flight at once. The work is CPU-bound and a PUBACK takes well under a
millisecond on a LAN, so more workers only lengthen aiomqtt's per-publish pending-call scans."""
_BACKLOG_WARNING = 10_000


@dataclass(frozen=True, slots=True)
class _Request:
    device_id: str
    topic: str
    payload: bytes
    retained: bool
    response_topic: str | None
    correlation_data: bytes | None
    received: float = field(default_factory=time.monotonic)  # for the reply-latency metric


@dataclass(frozen=True, slots=True)
class _Answer:
    topic: str
    payload: bytes
    correlation_data: bytes | None
    request_id: str
    clear_retained: bool = False
    md5: str | None = None  # set on success: the ``provisioned`` event follows
    partition_size: int = 0
    code: ProvisionErrorCode | None = None  # the refusal's code; None for an image


class ProvisioningResponder:
    def __init__(self, settings: AgentSettings, topics: Topics, events: AgentEvents) -> None:
        self.settings = settings
        self.topics = topics
        self.events = events
        self.nvs_keys = NvsKeyStore(settings.secrets_dir)
        self.store = CredentialStore(
            settings.secrets_dir, settings.config_dir, issue=settings.issue_credentials
        )
        self.concurrency = min(settings.publish_concurrency, MAX_WORKERS)
        self.group = settings.provision_shared_group or None
        if self.group is not None and any(ch in self.group for ch in "/+#\x00"):
            raise SetupError(
                f"provision_shared_group {self.group!r} must not contain '/', '+' or '#'"
            )
        # One queue for the agent's life: requests received (and acknowledged) before a
        # reconnect are answered by the next session's workers instead of being dropped.
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._accepting = False
        self._backlog_warned = False
        self._connection: Connection | None = None
        self._clearing: set[asyncio.Task[None]] = set()
        self._request_prefix = self.topics.root + "/provision/"
        self.on_reply: Callable[[ProvisionErrorCode | None, float], None] | None = None
        """Told each reply's code (None: ok) and seconds since its request arrived (metrics)."""

    # -- the dispatcher's side (sync, never blocks) ------------------------------------------
    def on_message(self, match: TopicMatch, message: Message) -> None:
        queue = self._queue
        if not self._accepting or match.kind is not TopicKind.PROVISION_REQUEST:
            return
        payload = message.payload
        subscriptions = message.subscription_ids
        if (
            RETAINED_SCAN_SUBSCRIPTION_ID in subscriptions
            and REQUESTS_SUBSCRIPTION_ID not in subscriptions
            and not message.retain
        ):
            return  # a live request seen by the retained scan too: the shared one answers it
        if message.retain and not payload:
            return  # a cleared retained request (ours, echoed back)
        queue.put_nowait(
            _Request(
                match.identifier,
                message.topic,
                payload,
                message.retain,
                message.response_topic,
                message.correlation_data,
            )
        )
        if queue.qsize() > _BACKLOG_WARNING and not self._backlog_warned:
            self._backlog_warned = True
            log.warning("provision_backlog", queued=queue.qsize(), workers=self.concurrency)

    def on_unmatched(self, message: Message) -> None:
        """A retained message under ``{root}/provision/`` that is no valid request: clear it.

        A request on a topic with an invalid device_id gets no answer (contract section 3),
        but left retained it would stay on the broker for good (6.5).
        """
        retained_request = message.retain and message.payload
        if not (retained_request and message.topic.startswith(self._request_prefix)):
            log.info("message_ignored", topic=message.topic[:200], reason="not a contract topic")
            return
        connection = self._connection
        if connection is None or not self._accepting:
            return
        log.warning("provision_retained_invalid_cleared", topic=message.topic[:200])
        task = asyncio.get_running_loop().create_task(
            _clear_retained(connection, message.topic), name="clear-retained-request"
        )
        self._clearing.add(task)
        task.add_done_callback(self._clearing.discard)

    # -- per connection ------------------------------------------------------------------------
    async def start(self, connection: Connection, group: asyncio.TaskGroup) -> None:
        """Start the workers, then subscribe (so requests are answered as soon as they come)."""
        queue = self._queue
        self._accepting = True
        self._backlog_warned = False
        self._connection = connection
        for index in range(self.concurrency):
            group.create_task(self._work(connection, queue), name=f"provision-worker-{index}")
        request_filter = self.topics.filter(TopicKind.PROVISION_REQUEST)
        # a broker without shared subscriptions gets the plain filter (and a warning)
        subscribe_to = shared_filter(connection.capabilities, self.group, request_filter)
        if subscribe_to == request_filter:
            await connection.subscribe(
                request_filter,
                qos=1,
                retain_as_published=True,
                retain_handling=0,
                subscription_id=REQUESTS_SUBSCRIPTION_ID,
            )
            return
        await connection.subscribe(
            subscribe_to,
            qos=1,
            retain_as_published=True,
            retain_handling=2,
            subscription_id=REQUESTS_SUBSCRIPTION_ID,
        )
        await connection.subscribe(
            request_filter,
            qos=0,
            retain_as_published=False,
            retain_handling=0,
            subscription_id=RETAINED_SCAN_SUBSCRIPTION_ID,
        )
        await connection.unsubscribe(request_filter)

    # -- the work ------------------------------------------------------------------------------
    async def _work(self, connection: Connection, queue: asyncio.Queue[_Request]) -> None:
        while True:
            request = await queue.get()
            answer = await self._answer(request)
            await connection.publish(
                answer.topic,
                answer.payload,
                qos=1,
                retain=False,
                correlation_data=answer.correlation_data,
                expiry_s=PROVISION_RESPONSE_EXPIRY_S,
            )
            if self.on_reply is not None:
                self.on_reply(answer.code, time.monotonic() - request.received)
            if answer.clear_retained:
                await connection.publish(request.topic, b"", qos=1, retain=True)
            if answer.md5 is not None:
                await self.events.emit(
                    AgentEventName.PROVISIONED,
                    device_id=request.device_id,
                    partition_size=answer.partition_size,
                    md5=answer.md5,
                    request_id=answer.request_id,
                )
            raise_if_cancelled()  # aiomqtt's wait_for may have swallowed a cancel

    async def _answer(self, request: _Request) -> _Answer:
        """The one answer to a request; any failure becomes an error answer."""
        device_id = request.device_id
        default_topic = self.topics.provision_response(device_id)
        topic = default_topic
        topic_refused = False
        if request.response_topic is not None:
            if self.topics.is_response_topic_for(device_id, request.response_topic):
                topic = request.response_topic
            else:
                topic_refused = True
        request_id: str | None = None
        try:
            if request.retained:
                request_id = request_id_in(request.payload) or new_request_id()
                return self._refusal(
                    request,
                    topic,
                    request_id,
                    ProvisionFailure(
                        ProvisionErrorCode.RETAINED_REQUEST_REJECTED,
                        "provisioning requests must not be retained; this one has been cleared",
                    ),
                    clear_retained=True,
                )
            if topic_refused:
                request_id = request_id_in(request.payload) or new_request_id()
                return self._refusal(
                    request,
                    topic,
                    request_id,
                    ProvisionFailure(
                        ProvisionErrorCode.INVALID_RESPONSE_TOPIC,
                        f"the response topic must be {default_topic} or a topic below it",
                    ),
                )
            parsed = parse_request(request.payload)
            request_id = parsed.request_id
            found = self.store.lookup(device_id)
            values = (
                found.values
                if not found.missing
                else await asyncio.to_thread(self.store.complete, found)
            )
            key = None
            if parsed.encrypted:  # blocking: may generate and fsync the device's key
                key = await asyncio.to_thread(self.nvs_keys.key_for, device_id)
            image = build_image(device_id, values, parsed.partition_size, encryption_key=key)
        except ProvisionFailure as exc:
            answer_id = exc.request_id or request_id or new_request_id()
            return self._refusal(request, topic, answer_id, exc)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            # Only the type and the frames: a library's message might quote a value.
            log.error(
                "provision_internal_error",
                device_id=device_id,
                error_type=type(exc).__name__,
                frames="".join(traceback.format_tb(exc.__traceback__)),
            )
            failure = ProvisionFailure(
                ProvisionErrorCode.INTERNAL_ERROR,
                f"the agent failed to build the image ({type(exc).__name__})",
            )
            return self._refusal(request, topic, request_id or new_request_id(), failure)
        return _Answer(
            topic,
            ok_response(request_id, image),
            request.correlation_data,
            request_id,
            md5=image.md5,
            partition_size=image.partition_size,
        )

    def _refusal(
        self,
        request: _Request,
        topic: str,
        request_id: str,
        failure: ProvisionFailure,
        *,
        clear_retained: bool = False,
    ) -> _Answer:
        log.info(
            "provision_refused",
            device_id=request.device_id,
            request_id=request_id,
            code=failure.code.value,
            message=failure.message,
        )
        payload = error_response(request_id, request.device_id, failure.code, failure.message)
        return _Answer(
            topic,
            payload,
            request.correlation_data,
            request_id,
            clear_retained=clear_retained,
            code=failure.code,
        )


async def _clear_retained(connection: Connection, topic: str) -> None:
    with contextlib.suppress(BrokerUnavailableError):  # the next session finds it again
        await connection.publish(topic, b"", qos=1, retain=True)
