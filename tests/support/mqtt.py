"""Async helpers for tests: an independent observer client and polling without fixed sleeps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def v5_properties(
    response_topic: str | None = None, correlation: bytes | None = None
) -> Properties | None:
    """PUBLISH properties for a v5 request (None when there is nothing to set)."""
    if response_topic is None and correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def client_for(url: str, **kwargs: Any) -> aiomqtt.Client:
    assert url.startswith("mqtt://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    return aiomqtt.Client("127.0.0.1", port, **kwargs)


@dataclass
class Observer:
    """Records every message seen on a filter; ``retained`` keeps the latest per topic."""

    messages: list[aiomqtt.Message] = field(default_factory=list)
    latest: dict[str, bytes] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def payloads(self, topic: str) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if str(m.topic) == topic]  # type: ignore[arg-type]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads(topic) if p]

    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(bytes(m.payload)) for m in self.messages if str(m.topic).endswith("/events")
        ]  # type: ignore[arg-type]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("condition not met in time")
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


@asynccontextmanager
async def observe(url: str, *filters: str) -> AsyncIterator[Observer]:
    observer = Observer()
    async with client_for(url) as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=0)

        async def pump() -> None:
            async for message in client.messages:
                observer.messages.append(message)
                observer.latest[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                observer.changed.set()

        task = asyncio.create_task(pump(), name="observer")
        try:
            yield observer
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def retained_snapshot(
    url: str, topic_filter: str, marker: str = "test/snapshot-marker"
) -> dict[str, bytes]:
    """Everything the broker retains under a filter, as a fresh subscriber sees it."""
    seen: dict[str, bytes] = {}
    async with client_for(url) as client:
        await client.subscribe(topic_filter, qos=0)
        await client.subscribe(marker, qos=0)
        await client.publish(marker, b"end", qos=0)
        async for message in client.messages:
            if str(message.topic) == marker:
                break
            seen[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
    return seen


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
