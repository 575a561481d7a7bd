"""Request intake: how a service that answers requests (provisioning, config writes) takes them in.

One implementation for both request services (contract 3 and 6.3), which used to write it
twice:

- the group name is checked once (``checked_group``);
- ``subscribe`` makes the request subscription: ``$share/<group>/<filter>`` through
  ``shared_filter`` (a broker without shared subscriptions gets the plain filter and a warning,
  not a refused SUBSCRIBE that would stop the agent), QoS 1, Retain As Published so the retain
  flag of a live request is visible, and with a group Retain Handling 2 (Mosquitto 2.0.11 would
  otherwise hand every retained request to every shared subscriber at subscribe time);
- with a group, a short look for requests retained *before* we subscribed, which the shared
  subscription no longer shows: the plain filter is subscribed with Retain Handling 0, Retain
  As Published off, and unsubscribed at once; the broker queues the retained messages behind
  the SUBACK, before the UNSUBACK, so they all arrive. Only retained copies from that look are
  taken; a live request that reaches us through it too is left to the shared subscription.
  Keeping the look for the session's life would deliver every request twice to every replica;
- ``offer`` (sync, from the dispatcher) queues a request; cleared retained requests (ours,
  echoed back) are dropped;
- the queue is bounded (``capacity``): paho acknowledges a QoS 1 request on arrival, so nothing
  slows a client that publishes faster than the workers answer, and the queue would grow
  without limit. A request that finds the queue full goes to a small "busy" queue and is
  answered at once by the service's ``busy`` handler (an ``internal_error`` saying to retry);
  one warning per burst (until the queue has drained). When even the busy queue is full the
  request is dropped (counted in the warning): the requester's timeout answers it;
- ``clear_invalid`` clears a retained message on a request topic whose device id is invalid
  (it matches no handler, so the ``Router`` hands it to the unmatched hook): it gets no answer
  (contract 3) but must not stay retained (6.5);
- ``request_id_in`` reads a request's own id to refuse it by name, after a size cap and under
  the contract's JSON rules (``loads_strict``); ``new_request_id`` makes one up.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.logs import get_logger
from broker_agent.mqtt.capabilities import shared_filter
from broker_agent.mqtt.client import Connection, Message
from broker_agent.mqtt.session import raise_if_cancelled
from firmware_contracts.identifiers import is_request_id
from firmware_contracts.json_rules import StrictJsonError, loads_strict

log = get_logger(__name__)

BUSY_CAPACITY = 1_000
"""Requests waiting for a "busy" answer at most; past it they are dropped (see the module doc)."""


def new_request_id() -> str:
    """The request_id of a request that came without a usable one."""
    return f"agent-{secrets.token_hex(8)}"


def request_id_in(payload: bytes, max_bytes: int) -> str | None:
    """The payload's own valid request_id, to refuse it by name; None when it has none.

    A payload over ``max_bytes`` is not parsed at all (a retained 100 MB request must not cost
    a JSON parse to be refused).
    """
    if len(payload) > max_bytes:
        return None
    try:
        document = loads_strict(payload)
    except (StrictJsonError, ValueError, RecursionError):
        return None
    found = document.get("request_id") if isinstance(document, dict) else None
    return found if is_request_id(found) else None


def checked_group(group: str | None) -> str | None:
    """The shared-subscription group (None when empty), or ``SetupError`` for a bad name."""
    group = group or None
    if group is not None and any(ch in group for ch in "/+#\x00"):
        raise SetupError(f"provision_shared_group {group!r} must not contain '/', '+' or '#'")
    return group


@dataclass(frozen=True, slots=True)
class Request:
    device_id: str
    topic: str
    payload: bytes
    retained: bool
    response_topic: str | None
    correlation_data: bytes | None
    received: float = field(default_factory=time.monotonic)  # for the reply-latency metric


Handle = Callable[[Connection, Request], Awaitable[None]]


class RequestIntake:
    """The subscriptions, queue and workers of one request service (see the module doc).

    ``topic_prefix``/``topic_suffix`` say which unmatched retained messages ``clear_invalid``
    takes as this service's requests. The queues live as long as the service: requests
    received (and acknowledged) before a reconnect are answered by the next session's workers.
    """

    def __init__(
        self,
        name: str,
        request_filter: str,
        group: str | None,
        *,
        subscription_ids: tuple[int, int],
        capacity: int,
        topic_prefix: str,
        topic_suffix: str = "",
    ) -> None:
        self.name = name
        self.request_filter = request_filter
        self.group = checked_group(group)
        self.requests_id, self.scan_id = subscription_ids
        self.capacity = capacity
        self.topic_prefix = topic_prefix
        self.topic_suffix = topic_suffix
        self.queue: asyncio.Queue[Request] = asyncio.Queue(capacity)
        self.busy: asyncio.Queue[Request] = asyncio.Queue(BUSY_CAPACITY)
        self.accepting = False
        self.connection: Connection | None = None
        self._burst = False
        self._dropped = 0
        self._group: asyncio.TaskGroup | None = None  # the session's: clears run in it

    # -- the dispatcher's side (sync, never blocks) ------------------------------------------
    def offer(self, device_id: str, message: Message) -> None:
        if not self.accepting:
            return
        ids = message.subscription_ids
        if self.scan_id in ids and self.requests_id not in ids and not message.retain:
            return  # a live request seen by the retained look too: the shared one takes it
        if message.retain and not message.payload:
            return  # a cleared retained request (ours, echoed back)
        request = Request(
            device_id,
            message.topic,
            message.payload,
            message.retain,
            message.response_topic,
            message.correlation_data,
        )
        try:
            self.queue.put_nowait(request)
            return
        except asyncio.QueueFull:
            pass
        try:
            self.busy.put_nowait(request)
        except asyncio.QueueFull:
            self._dropped += 1
        if not self._burst:
            self._burst = True
            log.warning(
                f"{self.name}_busy",
                queued=self.capacity,
                consequence="requests answered internal_error (retry) until the queue drains",
            )

    def clear_invalid(self, message: Message) -> bool:
        """True when ``message`` is on one of this service's request topics (and so handled):
        a retained one is cleared; it matched no handler, so its device id is invalid."""
        topic = message.topic
        if not (topic.startswith(self.topic_prefix) and topic.endswith(self.topic_suffix)):
            return False
        connection, group = self.connection, self._group
        if not (message.retain and message.payload) or connection is None or group is None:
            log.info("request_ignored", topic=topic[:200], reason="invalid device id")
            return True
        try:
            # in the session's group: cancelled and awaited with it (a task of its own
            # outlived the session and the shutdown, never awaited)
            group.create_task(_clear_retained(connection, topic), name="clear-retained-request")
        except RuntimeError:  # the session is ending; the next one finds it retained again
            log.info("request_ignored", topic=topic[:200], reason="session ending")
            return True
        log.warning(f"{self.name}_retained_invalid_cleared", topic=topic[:200])
        return True

    # -- per connection ------------------------------------------------------------------------
    async def start(
        self,
        connection: Connection,
        group: asyncio.TaskGroup,
        workers: int,
        handle: Handle,
        busy: Handle,
    ) -> None:
        """Start ``workers`` handlers and the busy answerer, then subscribe."""
        self.accepting = True
        self.connection = connection
        self._group = group
        for index in range(workers):
            group.create_task(self._work(connection, handle), name=f"{self.name}-worker-{index}")
        group.create_task(self._answer_busy(connection, busy), name=f"{self.name}-busy")
        await self._subscribe(connection)

    async def _subscribe(self, connection: Connection) -> None:
        plain = self.request_filter
        subscribe_to = shared_filter(connection.capabilities, self.group, plain)
        if subscribe_to == plain:
            await connection.subscribe(
                plain, qos=1, retain_as_published=True, subscription_id=self.requests_id
            )
            return
        await connection.subscribe(
            subscribe_to,
            qos=1,
            retain_as_published=True,
            retain_handling=2,
            subscription_id=self.requests_id,
        )
        await connection.subscribe(plain, qos=0, retain_handling=0, subscription_id=self.scan_id)
        await connection.unsubscribe(plain)

    async def _work(self, connection: Connection, handle: Handle) -> None:
        queue = self.queue
        while True:
            request = await queue.get()
            await handle(connection, request)
            if queue.empty() and self.busy.empty():
                self._end_burst()
            raise_if_cancelled()  # aiomqtt's wait_for may have swallowed a cancel

    async def _answer_busy(self, connection: Connection, busy: Handle) -> None:
        while True:
            request = await self.busy.get()
            await busy(connection, request)
            raise_if_cancelled()

    def _end_burst(self) -> None:
        if self._burst:
            self._burst = False
            log.info(f"{self.name}_busy_ended", dropped=self._dropped)
            self._dropped = 0


async def _clear_retained(connection: Connection, topic: str) -> None:
    with contextlib.suppress(BrokerUnavailableError):  # the next session finds it again
        await connection.publish(topic, b"", qos=1, retain=True)
