"""The one place that builds MQTT clients: URLs, TLS, credentials, and the ``Connection`` type.

Only ``broker_agent.mqtt`` imports aiomqtt or paho. The rest of the package talks to the broker
through ``Connection`` (publish, subscribe, unsubscribe with plain keyword arguments) and
receives ``Message`` values; aiomqtt's ``MqttError`` is translated here, once, into the
project's ``BrokerUnavailableError`` (back off and reconnect).

Measured traps handled here (see docs/benchmarks.md): aiomqtt leaves Nagle on (a 44 ms stall
per reply), warns on every publish past 10 pending calls, and its message iterator costs a task
and an ``asyncio.wait`` per message, so incoming messages are routed synchronously as they
arrive (``RoutingQueue``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.mqtt.properties import publish_properties, subscription_properties
from broker_agent.settings import MqttSettings


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


@dataclass(frozen=True, slots=True)
class Message:
    """One incoming message, as the project sees it (no library types)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_ids: tuple[int, ...] = ()

    @classmethod
    def from_aiomqtt(cls, message: aiomqtt.Message) -> Message:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        props = message.properties
        if props is None:
            return cls(message.topic.value, payload, message.qos, bool(message.retain))
        correlation = getattr(props, "CorrelationData", None)
        return cls(
            message.topic.value,
            payload,
            message.qos,
            bool(message.retain),
            getattr(props, "ResponseTopic", None),
            bytes(correlation) if correlation is not None else None,
            tuple(getattr(props, "SubscriptionIdentifier", ()) or ()),
        )


Route = Callable[[Message], None]


class RoutingQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, replaced (``queue_type``) by a synchronous router.

    aiomqtt's message iterator costs a task and an ``asyncio.wait`` per message, which made a
    10,000-config reconnect take a second; routing from ``put_nowait`` costs a function call.
    """

    route: Route | None = None

    def put_nowait(self, item: aiomqtt.Message) -> None:
        route = self.route
        if route is None:
            super().put_nowait(item)
        else:
            route(Message.from_aiomqtt(item))


def _routing_queue(route: Route) -> type[RoutingQueue]:
    return type("BoundRoutingQueue", (RoutingQueue,), {"route": staticmethod(route)})


class Connection:
    """An MQTT v5 client: ``async with connection:`` connects; failures are translated.

    Every method raises ``BrokerUnavailableError`` when the broker is gone or refuses.
    """

    def __init__(self, client: aiomqtt.Client, url: BrokerUrl, client_id: str) -> None:
        self._client = client
        self.url = url
        self.client_id = client_id

    async def __aenter__(self) -> Connection:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"cannot connect to {self.url.display()}: {exc}") from exc
        except OSError as exc:  # refused, unreachable, TLS handshake: all mean "try again later"
            raise BrokerUnavailableError(
                f"cannot connect to {self.url.display()}: {exc.strerror or exc}"
            ) from exc
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._client.__aexit__(*exc_info)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(str(exc)) from exc

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
        timeout: float | None = None,
    ) -> None:
        properties = publish_properties(
            response_topic=response_topic, correlation_data=correlation_data, expiry_s=expiry_s
        )
        try:
            await self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout
            )
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"publish failed: {exc}") from exc

    async def subscribe(
        self,
        topic_filter: str,
        *,
        qos: int = 1,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_id: int | None = None,
        timeout: float | None = None,
    ) -> None:
        options = SubscribeOptions(
            qos=qos,
            noLocal=no_local,
            retainAsPublished=retain_as_published,
            retainHandling=retain_handling,
        )
        try:
            await self._client.subscribe(
                topic_filter,
                options=options,
                properties=subscription_properties(subscription_id),
                timeout=timeout,
            )
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"subscribe to {topic_filter} failed: {exc}") from exc

    async def unsubscribe(self, topic_filter: str, *, timeout: float | None = None) -> None:
        try:
            await self._client.unsubscribe(topic_filter, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"unsubscribe from {topic_filter} failed: {exc}") from exc

    async def wait_disconnected(self) -> None:
        """Return never; raise ``BrokerUnavailableError`` when the connection drops.

        Incoming messages are handed to the connection's route as they arrive; this only
        notices the end of the connection.
        """
        try:
            async for message in self._client.messages:
                del message  # only queued when no route was given
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"connection lost: {exc}") from exc
        raise BrokerUnavailableError("connection closed")

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages, for a connection made without a route."""
        try:
            async for message in self._client.messages:
                yield Message.from_aiomqtt(message)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"connection lost: {exc}") from exc


def make_connection(
    settings: MqttSettings,
    url: str,
    *,
    client_id: str,
    will: Will | None = None,
    timeout: float = 10.0,
    route: Route | None = None,
) -> Connection:
    """An MQTT v5 connection for ``url``, with TCP_NODELAY, TLS and credentials from settings.

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
    return Connection(client, broker, client_id)


@asynccontextmanager
async def connected(connection: Connection) -> AsyncIterator[Connection]:
    """``async with connection`` (kept for call sites that read better this way)."""
    async with connection:
        yield connection
