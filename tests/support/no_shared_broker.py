"""A broker without shared subscriptions: a real Mosquitto behind a small MQTT v5 proxy.

Mosquitto always offers shared subscriptions, but some brokers do not (they announce
``Shared Subscription Available 0`` in the CONNACK and refuse a ``$share/...`` SUBSCRIBE with
reason code 0x9E). The proxy does exactly those two things to the real broker's traffic and
passes everything else through byte for byte; ``refused`` lists the filters it refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

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
class NoSharedProxy:
    broker_host: str
    broker_port: int
    port: int = 0
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

        async def send_down(data: bytes) -> None:
            async with lock:
                writer.write(data)
                await writer.drain()

        async def upstream() -> None:  # client -> broker
            while True:
                first, body = await _read_packet(reader)
                if first == 0x82 and self._refuse(body):
                    props_len, at = _read_varint(body, 2)
                    at += props_len
                    topic_len = int.from_bytes(body[at : at + 2], "big")
                    self.refused.append(body[at + 2 : at + 2 + topic_len].decode())
                    suback = body[:2] + b"\x00" + bytes([SHARED_SUBSCRIPTIONS_NOT_SUPPORTED])
                    await send_down(_packet(0x90, suback))
                    continue
                up_writer.write(_packet(first, body))
                await up_writer.drain()

        async def downstream() -> None:  # broker -> client
            while True:
                first, body = await _read_packet(up_reader)
                if first == 0x20:  # CONNACK: flags, reason, properties
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
    def _refuse(body: bytes) -> bool:
        props_len, at = _read_varint(body, 2)
        at += props_len
        topic_len = int.from_bytes(body[at : at + 2], "big")
        return body[at + 2 : at + 2 + topic_len].startswith(b"$share/")


@asynccontextmanager
async def no_shared_broker(broker_url: str) -> AsyncIterator[NoSharedProxy]:
    """A proxy in front of ``broker_url`` (``mqtt://host:port``) that has no shared subs."""
    host, _, port = broker_url.removeprefix("mqtt://").rpartition(":")
    proxy = NoSharedProxy(host, int(port))
    server = await asyncio.start_server(proxy._client, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for session in list(proxy.sessions):
            session.cancel()
        await asyncio.gather(*proxy.sessions, return_exceptions=True)
