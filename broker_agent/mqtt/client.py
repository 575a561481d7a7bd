"""The one place that builds MQTT clients: URLs, TLS, credentials, publish pools, backoff.

Measured traps handled here (see docs/benchmarks.md): aiomqtt leaves Nagle on (a 44 ms stall
per reply), warns on every publish past 10 pending calls, and scans all pending calls on each
publish, so bulk publishing goes through a bounded pool of tasks.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker_agent.errors import SetupError
from broker_agent.settings import MqttSettings

MqttError = aiomqtt.MqttError
Message = aiomqtt.Message


@dataclass(frozen=True)
class BrokerUrl:
    scheme: str  # mqtt | mqtts | unix
    host: str
    port: int
    path: str = ""
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "unix":
            path = parts.path or parts.netloc
            if not path:
                raise SetupError(f"broker URL {url!r}: unix:// needs a socket path")
            return cls("unix", "", 0, path=path)
        if scheme not in ("mqtt", "mqtts"):
            raise SetupError(
                f"broker URL {_redact(url)!r}: scheme must be mqtt://, mqtts:// or unix://"
            )
        if not parts.hostname:
            raise SetupError(f"broker URL {_redact(url)!r} has no host")
        try:
            port = parts.port or (8883 if scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise SetupError(f"broker URL {_redact(url)!r}: bad port") from exc
        return cls(
            scheme,
            parts.hostname,
            port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def display(self) -> str:
        """The URL without credentials, for logs."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


class RoutingQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, replaced (``queue_type``) by a synchronous router.

    aiomqtt's message iterator costs a task and an ``asyncio.wait`` per message, which made a
    10,000-config reconnect take a second; routing from ``put_nowait`` costs a function call.
    Messages the router does not take are queued as usual.
    """

    route: Callable[[aiomqtt.Message], bool] | None = None

    def put_nowait(self, item: aiomqtt.Message) -> None:
        route = self.route
        if route is None or not route(item):
            super().put_nowait(item)


def make_client(
    settings: MqttSettings,
    url: str,
    *,
    client_id: str,
    will: Will | None = None,
    timeout: float = 10.0,
    route: Callable[[aiomqtt.Message], bool] | None = None,
) -> aiomqtt.Client:
    """An MQTT v5 client for ``url``, with TCP_NODELAY, TLS and credentials from settings.

    With ``route``, every incoming message is handed to it as it arrives (see RoutingQueue).
    """
    broker = BrokerUrl.parse(url)
    username = broker.username or settings.mqtt_username
    password = broker.password if broker.password is not None else settings.password()
    tls_context: ssl.SSLContext | None = None
    if broker.scheme == "mqtts":
        tls_context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        if settings.tls_insecure:
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
    socket_options: list[tuple[int, int, int]] = []
    if broker.scheme != "unix":
        socket_options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    client = aiomqtt.Client(
        broker.path if broker.scheme == "unix" else broker.host,
        broker.port,
        transport="unix" if broker.scheme == "unix" else "tcp",
        identifier=client_id,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        will=(
            aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain)
            if will
            else None
        ),
        tls_context=tls_context,
        tls_insecure=settings.tls_insecure if tls_context else None,
        socket_options=socket_options,
        max_inflight_messages=1000,
        timeout=timeout,
        keepalive=30,
        queue_type=_routing_queue(route) if route is not None else None,
    )
    client.pending_calls_threshold = 100_000  # its per-publish warning is noise for us
    return client


def _routing_queue(route: Callable[[aiomqtt.Message], bool]) -> type[RoutingQueue]:
    return type("BoundRoutingQueue", (RoutingQueue,), {"route": staticmethod(route)})


async def wait_disconnected(client: aiomqtt.Client) -> None:
    """Return never; raise ``MqttError`` when the connection drops (messages are routed)."""
    async for message in client.messages:
        del message  # a RoutingQueue only queues what its router declined


def response_properties(
    correlation_data: bytes | None = None, expiry_s: int | None = None
) -> Properties:
    """A fresh PUBLISH properties object (never reuse one across publishes)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


def request_properties(response_topic: str, correlation_data: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation_data
    return props


def message_property(message: aiomqtt.Message, name: str) -> Any:
    props = message.properties
    return getattr(props, name, None) if props is not None else None


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that ``asyncio.wait_for`` swallowed.

    On Python 3.11, ``wait_for`` (which aiomqtt uses for every call) returns the result instead
    of raising when cancellation and completion race; a loop that goes on waiting would then
    never stop. Long-lived loops call this after each aiomqtt await.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _forget_leaked_cancels() -> None:
    """Undo cancel requests that a failed session's TaskGroup left on this task.

    Python 3.11's TaskGroup cancels its parent when a child fails after the body has finished,
    and then never uncancels it (fixed in 3.12): the reconnect loop would carry a phantom
    cancel into the next session, where ``raise_if_cancelled`` takes it for a shutdown. A real
    shutdown arrives as CancelledError, not as the MqttError that brings us here.
    """
    task = asyncio.current_task()
    while task is not None and task.cancelling():
        task.uncancel()


class PendingAnswers:
    """Answers awaited over MQTT v5 request/response, matched by Correlation Data.

    ``expect(topic)`` registers one request (its fresh correlation data and a future);
    ``deliver(message)`` hands an incoming answer to the request it belongs to. A broker that
    drops properties is covered too: each request's response topic is unique.
    """

    def __init__(self) -> None:
        self._waiting: dict[bytes, tuple[str, asyncio.Future[bytes]]] = {}

    @contextmanager
    def expect(self, topic: str) -> Iterator[tuple[bytes, asyncio.Future[bytes]]]:
        correlation = secrets.token_bytes(16)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = (topic, answer)
        try:
            yield correlation, answer
        finally:
            del self._waiting[correlation]

    def deliver(self, message: aiomqtt.Message) -> bool:
        """True when ``message`` answered a request we wait for."""
        topic = message.topic.value
        correlation = message_property(message, "CorrelationData")
        if correlation is not None:
            waiting = self._waiting.get(bytes(correlation))
        else:
            waiting = next((w for w in self._waiting.values() if w[0] == topic), None)
        if waiting is None or waiting[0] != topic:
            return False
        if not waiting[1].done():
            payload = message.payload if isinstance(message.payload, bytes) else b""
            waiting[1].set_result(payload)
        return True


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


async def publish_stream(
    client: aiomqtt.Client,
    queue: asyncio.Queue[OutgoingMessage | None],
    *,
    concurrency: int = 128,
    on_done: Callable[[OutgoingMessage], None] | None = None,
) -> None:
    """Publish what arrives on ``queue`` through ``concurrency`` tasks until each reads None.

    The producer may still be filling the queue (a directory scan in a thread, say); it ends
    the stream by putting one ``None`` per worker.
    """

    async def worker() -> None:
        while (message := await queue.get()) is not None:
            await client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain
            )
            raise_if_cancelled()
            if on_done is not None:
                on_done(message)

    async with asyncio.TaskGroup() as group:
        for index in range(concurrency):
            group.create_task(worker(), name=f"publish-worker-{index}")


async def publish_many(
    client: aiomqtt.Client,
    messages: Iterable[OutgoingMessage],
    *,
    concurrency: int = 128,
    on_done: Callable[[OutgoingMessage], None] | None = None,
) -> int:
    """Publish through a bounded pool of tasks; returns how many were acknowledged."""
    queue: asyncio.Queue[OutgoingMessage | None] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    count = queue.qsize()
    workers = min(concurrency, count)
    for _ in range(workers):
        queue.put_nowait(None)
    if workers:
        await publish_stream(client, queue, concurrency=workers, on_done=on_done)
    return count


class Backoff:
    """Jittered exponential backoff, capped: 0.5 s, ~1 s, ~2 s ... up to ``maximum``."""

    def __init__(self, minimum: float = 0.5, maximum: float = 30.0) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.minimum * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@asynccontextmanager
async def connected(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """``async with client`` with connection failures surfaced as ``MqttError``."""
    try:
        async with client:
            yield client
    except OSError as exc:  # refused, unreachable, TLS handshake: all mean "try again later"
        raise aiomqtt.MqttError(f"cannot connect: {exc}") from exc


async def run_forever_connected(
    connect: Callable[[], aiomqtt.Client],
    session: Callable[[aiomqtt.Client], Awaitable[None]],
    backoff: Backoff,
    on_disconnect: Callable[[Exception, float], None],
) -> None:
    """The reconnect loop: run ``session`` on a fresh connection until cancelled."""
    while True:
        try:
            async with connected(connect()) as client:
                backoff.reset()
                await session(client)
        except* aiomqtt.MqttError as group:
            _forget_leaked_cancels()
            delay = backoff.next_delay()
            on_disconnect(group.exceptions[0], delay)
            await asyncio.sleep(delay)
