"""Brokers Mosquitto cannot be configured to be: a real Mosquitto behind a small MQTT v5 proxy.

- ``no_shared_broker``: without shared subscriptions. Mosquitto always offers them, but some
  brokers do not (they announce ``Shared Subscription Available 0`` in the CONNACK and refuse
  a ``$share/...`` SUBSCRIBE with reason code 0x9E). The proxy does exactly those two things;
  ``refused`` lists the filters it refused.
- ``slow_suback_broker``: the SUBACK of one filter arrives ``delay_s`` late (and everything
  after it with it), as when it waits behind the retained messages of a 100,000-device fleet
  (measured: longer than aiomqtt's 10 s default, fleet/publisher.py), without sending 100,000
  messages in a test.

Everything else passes through byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

SHARED_SUBSCRIPTION_AVAILABLE = 0x2A
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        shift += 7
        at += 1
        if byte < 0x80:
            return value, at


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return first, await reader.readexactly(length)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


@dataclass
class MqttProxy:
    broker_host: str
    broker_port: int
    port: int = 0
    no_shared: bool = True
    suback_delay_s: float = 0.0
    slow_filter: str | None = None
    refused: list[str] = field(default_factory=list)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = asyncio.current_task()
        assert session is not None
        self.sessions.add(session)
        session.add_done_callback(self.sessions.discard)
        up_reader, up_writer = await asyncio.open_connection(self.broker_host, self.broker_port)
        lock = asyncio.Lock()
        slow_ids: set[bytes] = set()  # packet ids of the SUBSCRIBEs whose SUBACK is late

        async def send_down(data: bytes) -> None:
            async with lock:
                writer.write(data)
                await writer.drain()

        async def upstream() -> None:  # client -> broker
            while True:
                first, body = await _read_packet(reader)
                if first == 0x82 and self._filter(body) == self.slow_filter:
                    slow_ids.add(body[:2])
                if first == 0x82 and self.no_shared and self._refuse(body):
                    self.refused.append(self._filter(body))
                    suback = body[:2] + b"\x00" + bytes([SHARED_SUBSCRIPTIONS_NOT_SUPPORTED])
                    await send_down(_packet(0x90, suback))
                    continue
                up_writer.write(_packet(first, body))
                await up_writer.drain()

        async def downstream() -> None:  # broker -> client
            while True:
                first, body = await _read_packet(up_reader)
                if first == 0x90 and body[:2] in slow_ids:
                    await asyncio.sleep(self.suback_delay_s)
                if first == 0x20 and self.no_shared:  # CONNACK: flags, reason, properties
                    props_len, at = _read_varint(body, 2)
                    props = body[at : at + props_len] + bytes([SHARED_SUBSCRIPTION_AVAILABLE, 0])
                    body = body[:2] + _varint(len(props)) + props
                await send_down(_packet(first, body))

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()

    @staticmethod
    def _filter(body: bytes) -> str:
        """The (first) topic filter of a SUBSCRIBE's body."""
        props_len, at = _read_varint(body, 2)
        at += props_len
        topic_len = int.from_bytes(body[at : at + 2], "big")
        return body[at + 2 : at + 2 + topic_len].decode()

    def _refuse(self, body: bytes) -> bool:
        return self._filter(body).startswith("$share/")


def no_shared_broker(broker_url: str) -> AbstractAsyncContextManager[MqttProxy]:
    """A proxy in front of ``broker_url`` (``mqtt://host:port``) that has no shared subs."""
    return _proxy(broker_url, no_shared=True)


def slow_suback_broker(
    broker_url: str, topic_filter: str, delay_s: float
) -> AbstractAsyncContextManager[MqttProxy]:
    """A proxy in front of ``broker_url`` whose SUBACK for ``topic_filter`` is ``delay_s`` late."""
    return _proxy(broker_url, no_shared=False, slow_filter=topic_filter, suback_delay_s=delay_s)


@asynccontextmanager
async def _proxy(broker_url: str, **options: Any) -> AsyncIterator[MqttProxy]:
    host, _, port = broker_url.removeprefix("mqtt://").rpartition(":")
    proxy = MqttProxy(host, int(port), **options)
    server = await asyncio.start_server(proxy._client, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for session in list(proxy.sessions):
            session.cancel()
        await asyncio.gather(*proxy.sessions, return_exceptions=True)
