"""The one place that builds MQTT clients: URLs, TLS, credentials, and the ``Connection`` type.

Only ``broker_agent.mqtt`` imports aiomqtt or paho. The rest of the package talks to the broker
through ``Connection`` (publish, subscribe, unsubscribe with plain keyword arguments) and
receives ``Message`` values; aiomqtt's ``MqttError`` is translated here, once, into the
project's ``BrokerUnavailableError`` (back off and reconnect).

A connection is made for a list of broker URLs (``BrokerUrls``): entering it tries each URL
once, starting at the list's position, and stays on the first that accepts. It then holds the
broker's ``capabilities`` (from the CONNACK) and refuses, with a ``SetupError``, a broker this
project cannot work with (no retained messages, no wildcards, QoS 0 only). Every DISCONNECT the
broker sends and every refused SUBSCRIBE (SUBACK reason code 0x80 or above) is logged with its
reason code and name; a refused SUBSCRIBE raises ``SubscriptionRefusedError`` (a ``SetupError``:
retrying the same subscription would only be refused again).

Measured traps handled here (see docs/benchmarks.md): aiomqtt leaves Nagle on (a 44 ms stall
per reply), warns on every publish past 10 pending calls, and its message iterator costs a task
and an ``asyncio.wait`` per message, so incoming messages are routed synchronously as they
arrive (``RoutingQueue``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker_agent.errors import BrokerUnavailableError, RefusedFile, SetupError
from broker_agent.files import read_regular_file
from broker_agent.logs import get_logger
from broker_agent.mqtt.capabilities import LARGEST_PROVISIONING_REPLY, BrokerCapabilities
from broker_agent.mqtt.library import ReportingClient, SubscriptionRefusedError, reason_of
from broker_agent.mqtt.properties import publish_properties, subscription_properties
from broker_agent.mqtt.urls import BrokerUrl, BrokerUrls
from broker_agent.settings import MqttSettings

log = get_logger(__name__)

__all__ = [
    "BrokerUrl",
    "BrokerUrls",
    "Connection",
    "Message",
    "SubscriptionRefusedError",
    "Will",
    "make_connection",
]


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
    user_properties: tuple[tuple[str, str], ...] = ()
    expiry_s: int | None = None  # what is left of its Message Expiry Interval, when it has one

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
            tuple(getattr(props, "UserProperty", ()) or ()),
            getattr(props, "MessageExpiryInterval", None),
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


ClientFactory = Callable[[BrokerUrl], ReportingClient]

_PERMANENT_REFUSALS = {
    0x9A: "it has no retained messages, which the will, device configs and presence are",
    0x9B: "it does not take QoS 1, which the will, configs, requests and answers use",
}
"""CONNACK refusals that retrying cannot cure: a SetupError (exit 2), not a reconnect loop.
Measured on Mosquitto 2.0.11: ``retain_available false`` refuses a CONNECT whose will is
retained with 0x9A, ``max_qos 0`` one whose will is QoS 1 with 0x9B. (Bad credentials and
``Not authorized`` are retried: the account may be added while we wait.)"""


class Connection:
    """An MQTT v5 client: ``async with connection:`` connects; failures are translated.

    Every method raises ``BrokerUnavailableError`` when the broker is gone or refuses;
    ``subscribe`` raises ``SubscriptionRefusedError`` when the broker refuses that filter.
    ``url`` is the broker URL in use (or to be tried next); ``capabilities`` what its CONNACK
    announced.
    """

    def __init__(
        self,
        urls: BrokerUrls,
        client_id: str,
        build: ClientFactory,
        *,
        require_features: bool = True,
    ) -> None:
        self.urls = urls
        self.client_id = client_id
        self.capabilities = BrokerCapabilities()
        self._build = build
        self._require_features = require_features
        self._client: ReportingClient | None = None

    @property
    def url(self) -> BrokerUrl:
        return self.urls.current

    @property
    def inflight_limit(self) -> int:
        """QoS>0 publishes in flight at once: ours (1000), or the broker's Receive Maximum."""
        if self._client is None:
            raise BrokerUnavailableError("not connected")
        return self._client.inflight_limit

    @property
    def client(self) -> aiomqtt.Client:
        if self._client is None:
            raise BrokerUnavailableError("not connected")
        return self._client

    async def __aenter__(self) -> Connection:
        """Try each URL once from ``urls.position``; stay on the first that accepts."""
        failures: list[str] = []
        for _ in range(len(self.urls)):
            url = self.urls.current
            try:
                client = self._build(url)
                await client.__aenter__()
            except ValueError as exc:  # paho's checks of host, port and credentials
                # (a UnicodeError's text would quote a character of the password)
                reason = "credentials that are not UTF-8" if isinstance(exc, UnicodeError) else exc
                raise SetupError(f"cannot connect to {url.display()}: {reason}") from None
            except MqttConnectError as exc:
                permanent = _PERMANENT_REFUSALS.get(getattr(exc.rc, "value", -1))
                if permanent is not None:
                    code, name = reason_of(exc.rc)
                    raise SetupError(
                        f"the broker at {url.display()} refused the connection: {name} "
                        f"({code}): {permanent}"
                    ) from None
                reason = str(exc)
                failures.append(f"{url.display()}: {reason}")
                if len(self.urls) > 1:
                    log.warning("broker_connect_failed", url=url.display(), error=reason)
                self.urls.next()
                continue
            except (aiomqtt.MqttError, OSError) as exc:  # refused, unreachable, TLS
                reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
                failures.append(f"{url.display()}: {reason}")
                if len(self.urls) > 1:
                    log.warning("broker_connect_failed", url=url.display(), error=reason)
                self.urls.next()
                continue
            self._client = client
            await self._check_capabilities(client, url)
            return self
        raise BrokerUnavailableError(f"cannot connect to {'; '.join(failures)}")

    async def _check_capabilities(self, client: ReportingClient, url: BrokerUrl) -> None:
        self.capabilities = BrokerCapabilities.from_connack(client.connack_properties)
        problem = self.capabilities.required_problem()
        if problem is not None and self._require_features:
            with suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            self._client = None
            raise SetupError(f"the broker at {url.display()} {problem}")
        log.info(
            "broker_connected",
            url=url.display(),
            client_id=self.client_id,
            **self.capabilities.as_log(),
        )
        if self._require_features and not self.capabilities.fits(LARGEST_PROVISIONING_REPLY):
            log.warning(
                "broker_packet_limit_small",
                url=url.display(),
                maximum_packet_size=self.capabilities.maximum_packet_size,
                consequence="provisioning replies larger than this are answered internal_error",
            )

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, as a crash would: the broker sends the will.

        (check-broker and the tests; aiomqtt keeps paho's client, whose socket this is, in
        ``_client``.)
        """
        sock = self.client._client.socket()
        if isinstance(sock, socket.socket):  # also ssl.SSLSocket
            sock.shutdown(socket.SHUT_RDWR)

    async def __aexit__(self, *exc_info: Any) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.__aexit__(*exc_info)
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
        user_properties: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> None:
        properties = publish_properties(
            response_topic=response_topic,
            correlation_data=correlation_data,
            expiry_s=expiry_s,
            user_properties=user_properties,
        )
        try:
            await self.client.publish(
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
    ) -> int:
        """Subscribe; returns the granted QoS. A refusal raises ``SubscriptionRefusedError``.

        A subscription identifier is left out when the broker has none (sending one anyway is a
        protocol error it would disconnect us for).
        """
        options = SubscribeOptions(
            qos=qos,
            noLocal=no_local,
            retainAsPublished=retain_as_published,
            retainHandling=retain_handling,
        )
        if not self.capabilities.subscription_identifiers:
            subscription_id = None
        try:
            granted = await self.client.subscribe(
                topic_filter,
                options=options,
                properties=subscription_properties(subscription_id),
                timeout=timeout,
            )
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"subscribe to {topic_filter} failed: {exc}") from exc
        for code in granted:
            value = code.value if isinstance(code, ReasonCode) else int(code)
            if value >= 0x80:
                reason = reason_of(code)[1]
                log.error(
                    "subscription_refused",
                    topic_filter=topic_filter,
                    code=f"0x{value:02X}",
                    reason=reason,
                )
                raise SubscriptionRefusedError(topic_filter, value, reason)
        first = granted[0] if granted else qos
        return first.value if isinstance(first, ReasonCode) else int(first)

    async def unsubscribe(self, topic_filter: str, *, timeout: float | None = None) -> None:
        try:
            await self.client.unsubscribe(topic_filter, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"unsubscribe from {topic_filter} failed: {exc}") from exc

    async def wait_disconnected(self) -> None:
        """Return never; raise ``BrokerUnavailableError`` when the connection drops.

        Incoming messages are handed to the connection's route as they arrive; this only
        notices the end of the connection.
        """
        try:
            async for message in self.client.messages:
                del message  # only queued when no route was given
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"connection lost: {exc}") from exc
        raise BrokerUnavailableError("connection closed")

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages, for a connection made without a route."""
        try:
            async for message in self.client.messages:
                yield Message.from_aiomqtt(message)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"connection lost: {exc}") from exc


MAX_CA_FILE_BYTES = 4 * 1024 * 1024
"""A CA bundle larger than this is refused (Debian's whole system bundle is ~220 KB)."""


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The client TLS context: the system CAs, or ``ca_file``; verification unless insecure.

    ``SetupError`` naming the file when it cannot be used. The CA file is read through
    ``files.read_regular_file`` (a FIFO there would block the event loop in
    ``create_default_context``), and ssl's own errors, raw ``OSError`` subclasses, are
    translated here: they used to escape the reconnect loop and end the process.
    """
    cadata: str | None = None
    if settings.ca_file is not None:
        try:
            raw, _ = read_regular_file(settings.ca_file, MAX_CA_FILE_BYTES, inside="/")
            cadata = raw.decode("ascii")
        except FileNotFoundError:
            raise SetupError(f"the CA file {settings.ca_file} does not exist") from None
        except RefusedFile as exc:
            raise SetupError(
                f"cannot use the CA file {settings.ca_file}: it {exc.reason}"
            ) from None
        except UnicodeDecodeError:
            raise SetupError(f"the CA file {settings.ca_file} is not PEM text") from None
    try:
        context = ssl.create_default_context(cadata=cadata)
    except (ssl.SSLError, ValueError) as exc:
        where = f"the CA file {settings.ca_file}" if settings.ca_file else "the system CAs"
        raise SetupError(f"cannot load {where}: {exc}") from None
    if settings.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_connection(
    settings: MqttSettings,
    url: str | BrokerUrls,
    *,
    client_id: str,
    will: Will | None = None,
    timeout: float = 10.0,
    route: Route | None = None,
    require_features: bool = True,
) -> Connection:
    """An MQTT v5 connection to ``url`` (one URL or a comma-separated list), with TCP_NODELAY,
    TLS and credentials from settings (a URL's own user name and password win).

    With ``route``, every incoming message is handed to it as it arrives (see RoutingQueue).
    ``require_features=False`` connects to a broker this project could not use (check-broker).
    """
    urls = BrokerUrls.parse(url) if isinstance(url, str) else url
    password = settings.password()
    tls = tls_context(settings) if any(u.scheme == "mqtts" for u in urls.urls) else None

    def build(broker: BrokerUrl) -> ReportingClient:
        tls_context = tls if broker.scheme == "mqtts" else None
        socket_options: list[tuple[int, int, int]] = []
        if broker.scheme != "unix":
            socket_options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
        client = ReportingClient(
            broker.path if broker.scheme == "unix" else broker.host,
            broker.port,
            transport="unix" if broker.scheme == "unix" else "tcp",
            identifier=client_id,
            username=broker.username or settings.mqtt_username,
            password=broker.password if broker.password is not None else password,
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
        client.url_display = broker.display()
        return client

    return Connection(urls, client_id, build, require_features=require_features)
