"""The provisioning responder: answers every request on ``{root}/provision/+/request`` once.

Per connection, ``start`` starts a fixed pool of worker tasks and subscribes, both through the
shared request intake (``mqtt/intake.py``: the subscriptions and their measured why, the
look for requests retained before we subscribed, the bounded queue). A worker parses the
request, looks up the credentials, builds the NVS image and publishes the answer (QoS 1, not
retained, expiry 60 s, Correlation Data echoed). The pool bounds how many answers are in flight
(aiomqtt scans every pending call on each publish, so thousands of concurrent publishes cost
quadratic time); requests wait in FIFO order behind it, at most ``QUEUE_CAPACITY`` of them;
past that a request is answered ``internal_error`` ("busy, retry") at once.

A retained request is refused with ``retained_request_rejected`` and then cleared (an empty
retained publish, which comes back to us retained and empty and is ignored). A retained
message under ``{root}/provision/`` that is no valid request (an invalid device id) is cleared
unanswered (``on_unmatched``).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from broker_agent.errors import ProvisionFailure
from broker_agent.events import AgentEvents
from broker_agent.logs import get_logger
from broker_agent.mqtt import Connection, Message, publish_packet_size
from broker_agent.mqtt.intake import Request, RequestIntake, new_request_id, request_id_in
from broker_agent.provisioning.credentials import CredentialStore
from broker_agent.provisioning.messages import (
    MAX_REQUEST_BYTES,
    build_image,
    error_response,
    ok_response,
    parse_request,
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
QUEUE_CAPACITY = 10_000
"""Requests waiting at most. One responder was CPU-bound at ~340 us a request (measured,
notes/mosquitto-and-mqtt.md), so a full queue is ~3.4 s of work: answered well inside a
requester's default 10 s timeout. A longer queue would only answer requesters that gave up."""
BUSY_MESSAGE = "the agent is busy (too many requests queued); retry in a few seconds"


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
        self.intake = RequestIntake(
            "provision",
            topics.filter(TopicKind.PROVISION_REQUEST),
            settings.provision_shared_group,
            subscription_ids=(REQUESTS_SUBSCRIPTION_ID, RETAINED_SCAN_SUBSCRIPTION_ID),
            capacity=QUEUE_CAPACITY,
            topic_prefix=topics.root + "/provision/",
        )
        self.on_reply: Callable[[ProvisionErrorCode | None, float], None] | None = None
        """Told each reply's code (None: ok) and seconds since its request arrived (metrics)."""

    # -- the dispatcher's side (sync, never blocks) ------------------------------------------
    def on_message(self, match: TopicMatch, message: Message) -> None:
        if match.kind is TopicKind.PROVISION_REQUEST:
            self.intake.offer(match.identifier, message)

    def on_unmatched(self, message: Message) -> None:
        """A message no handler takes: a retained one under ``{root}/provision/`` is cleared.

        A request on a topic with an invalid device_id gets no answer (contract section 3),
        but left retained it would stay on the broker for good (6.5).
        """
        if not self.intake.clear_invalid(message):
            log.info("message_ignored", topic=message.topic[:200], reason="not a contract topic")

    # -- per connection ------------------------------------------------------------------------
    async def start(self, connection: Connection, group: asyncio.TaskGroup) -> None:
        """Start the workers, then subscribe (so requests are answered as soon as they come)."""
        await self.intake.start(connection, group, self.concurrency, self._reply, self._busy)

    # -- the work ------------------------------------------------------------------------------
    async def _reply(self, connection: Connection, request: Request) -> None:
        await self._publish(connection, request, await self._answer(request))

    async def _busy(self, connection: Connection, request: Request) -> None:
        request_id = request_id_in(request.payload, MAX_REQUEST_BYTES) or new_request_id()
        failure = ProvisionFailure(ProvisionErrorCode.INTERNAL_ERROR, BUSY_MESSAGE)
        topic = self.topics.provision_response(request.device_id)
        if request.response_topic is not None and self.topics.is_response_topic_for(
            request.device_id, request.response_topic
        ):
            topic = request.response_topic
        answer = self._refusal(request, topic, request_id, failure, clear_retained=request.retained)
        await self._publish(connection, request, answer)

    async def _publish(self, connection: Connection, request: Request, answer: _Answer) -> None:
        answer = self._within_packet_limit(connection, request, answer)
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

    def _within_packet_limit(
        self, connection: Connection, request: Request, answer: _Answer
    ) -> _Answer:
        """``answer``, or an ``internal_error`` naming the limit when the broker's Maximum
        Packet Size is smaller than its PUBLISH: sent anyway, it got the agent disconnected
        (Mosquitto ``max_packet_size``: 0x95) and the requester got nothing but a timeout."""
        size = publish_packet_size(
            answer.topic,
            answer.payload,
            correlation_data=answer.correlation_data,
            expiry_s=PROVISION_RESPONSE_EXPIRY_S,
        )
        limit = connection.capabilities.maximum_packet_size
        if limit is None or connection.capabilities.fits(size):
            return answer
        failure = ProvisionFailure(
            ProvisionErrorCode.INTERNAL_ERROR,
            f"the reply would be a {size:,}-byte packet, over the broker's maximum packet size "
            f"of {limit:,} bytes: ask for a smaller partition_size or raise the broker's limit",
        )
        return self._refusal(
            request, answer.topic, answer.request_id, failure, clear_retained=answer.clear_retained
        )

    async def _answer(self, request: Request) -> _Answer:
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
                request_id = request_id_in(request.payload, MAX_REQUEST_BYTES) or new_request_id()
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
                request_id = request_id_in(request.payload, MAX_REQUEST_BYTES) or new_request_id()
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
        request: Request,
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
