"""MQTT v5 request/response on the requester's side: answers matched to their requests."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from broker_agent.mqtt.client import Message


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

    def deliver(self, message: Message) -> bool:
        """True when ``message`` answered a request we wait for."""
        topic = message.topic
        if message.correlation_data is not None:
            waiting = self._waiting.get(message.correlation_data)
        else:
            waiting = next((w for w in self._waiting.values() if w[0] == topic), None)
        if waiting is None or waiting[0] != topic:
            return False
        if not waiting[1].done():
            waiting[1].set_result(message.payload)
        return True
