"""The tests' one MQTT collector (``observe``/``Observer``) and the client settings they share.

``observe(url_or_client, *filters)`` connects, subscribes (each SUBACK awaited) and records every
message it receives until the block ends; tests publish on the same connection through
``observer.client`` and wait on what arrives with ``wait_for`` or ``first`` (never a fixed
sleep). ``retained_snapshot`` is what a fresh subscriber sees retained under a filter.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker_agent.mqtt import BrokerUrl

WAIT_TIMEOUT_S = 10.0


def v5_properties(
    response_topic: str | None = None, correlation: bytes | None = None
) -> Properties | None:
    """PUBLISH properties for a v5 request (None when there is nothing to set)."""
    if response_topic is None and correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho is untyped
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def client_for(url: str, **kwargs: Any) -> aiomqtt.Client:
    """An MQTT v5 client (unless ``protocol`` says otherwise) for a test broker's URL.

    The URL's credentials, else ``BROKER_AGENT_MQTT_USERNAME``/``..._PASSWORD``, are used (an
    external test broker); the suite's own Mosquitto takes anyone.
    """
    broker = BrokerUrl.parse(url)
    assert broker.scheme == "mqtt", "test brokers are plain mqtt://"
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    kwargs.setdefault("username", broker.username or os.environ.get("BROKER_AGENT_MQTT_USERNAME"))
    kwargs.setdefault("password", broker.password or os.environ.get("BROKER_AGENT_MQTT_PASSWORD"))
    return aiomqtt.Client(broker.host, broker.port, **kwargs)


def payload_of(message: aiomqtt.Message) -> bytes:
    """A received message's payload, as bytes (``bytes(message.payload)`` needs no ignore)."""
    return bytes(message.payload)


def correlation_of(message: aiomqtt.Message) -> bytes | None:
    """The MQTT v5 Correlation Data of a message, if it carries any."""
    correlation: bytes | None = getattr(message.properties, "CorrelationData", None)
    return correlation


@dataclass(eq=False)
class Observer:
    """Every message one subscriber received, in order of arrival.

    ``latest`` holds the last payload per topic; ``closed_at`` is set (``time.monotonic()``)
    when the connection dropped under the observer.
    """

    client: aiomqtt.Client
    messages: list[aiomqtt.Message] = field(default_factory=list)
    latest: dict[str, bytes] = field(default_factory=dict)
    closed_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def topics(self) -> list[str]:
        return [str(m.topic) for m in self.messages]

    def payloads(self, topic: str) -> list[bytes]:
        return [payload_of(m) for m in self.messages if str(m.topic) == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        """The JSON documents received on ``topic`` (empty payloads, i.e. clears, skipped)."""
        return [json.loads(p) for p in self.payloads(topic) if p]

    def events(self) -> list[dict[str, Any]]:
        """Every agent event (``.../events``) received, in order."""
        return [
            json.loads(payload_of(m)) for m in self.messages if str(m.topic).endswith("/events")
        ]

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float = WAIT_TIMEOUT_S
    ) -> None:
        """Return once ``predicate()`` is true, re-checked after every message."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout} s")
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def first(
        self, match: Callable[[aiomqtt.Message], bool], timeout: float = WAIT_TIMEOUT_S
    ) -> aiomqtt.Message:
        """The first message received (so far or later) that ``match`` accepts."""
        checked = 0  # messages before this index did not match

        def arrived() -> bool:
            nonlocal checked
            while checked < len(self.messages) and not match(self.messages[checked]):
                checked += 1
            return checked < len(self.messages)

        await self.wait_for(arrived, timeout)
        return self.messages[checked]

    async def nth(self, index: int, timeout: float = WAIT_TIMEOUT_S) -> aiomqtt.Message:
        """The message at ``index`` in order of arrival, once it has arrived.

        ``nth(len(observer.messages))`` taken before a request is the answer that follows it.
        """
        await self.wait_for(lambda: len(self.messages) > index, timeout)
        return self.messages[index]

    async def first_on(self, topic: str, timeout: float = WAIT_TIMEOUT_S) -> aiomqtt.Message:
        """The first message received on ``topic`` (so far or later)."""
        return await self.first(lambda m: str(m.topic) == topic, timeout)

    def _record(self, message: aiomqtt.Message) -> None:
        self.messages.append(message)
        self.latest[str(message.topic)] = payload_of(message)
        self.changed.set()


@asynccontextmanager
async def observe(
    target: str | aiomqtt.Client, *filters: str, qos: int = 0
) -> AsyncIterator[Observer]:
    """Connect ``target`` (a test broker's URL, or a client to use), subscribe, and record."""
    client = client_for(target) if isinstance(target, str) else target
    observer = Observer(client)
    async with client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=qos)

        async def pump() -> None:
            try:
                async for message in client.messages:
                    observer._record(message)
            except aiomqtt.MqttError:
                observer.closed_at = time.monotonic()
                observer.changed.set()

        task = asyncio.create_task(pump(), name="observer")
        try:
            yield observer
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


async def retained_snapshot(
    url: str, topic_filter: str, marker: str = "test/snapshot-marker"
) -> dict[str, bytes]:
    """Everything the broker retains under a filter, as a fresh subscriber sees it."""
    async with observe(url, topic_filter, marker) as fresh:
        await fresh.client.publish(marker, b"end", qos=0)
        end = await fresh.first_on(marker)
        before = fresh.messages[: fresh.messages.index(end)]
    return {str(m.topic): payload_of(m) for m in before}


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll a condition that no MQTT message announces (a service's own state)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
