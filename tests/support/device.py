"""A simulated device: an MQTT client that behaves as the firmware in docs/firmware.md does.

- connects with its MQTT will, the retained ``{"state":"offline"}`` on its ``status`` topic,
  then publishes the retained ``online`` status (QoS 1) and subscribes to its config (QoS 1);
- for every config envelope it receives for itself, applies it (or rejects it, when told to)
  and publishes the retained ack on ``config/applied`` (QoS 1, with ``ts``), a duplicate
  sha256 included; a zero-length config means "deleted" and is not acknowledged;
- ``crash()`` drops the TCP connection without a DISCONNECT, so the broker publishes the will;
  ``stop()`` shuts down as the firmware does before a reboot: offline status, then disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from firmware_contracts.payloads import DEVICE_STATUS_WILL, utc_timestamp
from firmware_contracts.topics import Topics


@dataclass
class SimulatedDevice:
    device_id: str
    port: int
    host: str = "127.0.0.1"
    username: str | None = None
    password: str | None = None
    root: str = "iot"
    fw_version: str = "1.4.2"
    reject_with: str | None = None  # reject every config with this message (state failed)
    acknowledge: bool = True  # False: v1 firmware that never acks (pending / never_applied)
    configs: list[dict[str, Any]] = field(default_factory=list)  # every config applied
    acked: list[str] = field(default_factory=list)  # the sha256 of every ack published
    cleared: int = 0  # zero-length configs received
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _client: aiomqtt.Client | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.root)

    async def start(self) -> None:
        topics = self.topics
        self._client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.device_id,
            username=self.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(
                topics.device_status(self.device_id),
                DEVICE_STATUS_WILL.to_json(),
                qos=1,
                retain=True,
            ),
        )
        await self._client.__aenter__()
        status = {"state": "online", "fw_version": self.fw_version, "since": utc_timestamp()}
        await self._client.publish(
            topics.device_status(self.device_id), json.dumps(status), qos=1, retain=True
        )
        await self._client.subscribe(topics.device_config(self.device_id), qos=1)
        self._task = asyncio.create_task(self._pump(), name=f"device-{self.device_id}")

    async def _pump(self) -> None:
        assert self._client is not None
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self._client.messages:
                await self._on_config(bytes(message.payload))
                self.changed.set()

    async def _on_config(self, payload: bytes) -> None:
        if not payload:
            self.cleared += 1
            return
        envelope = json.loads(payload)
        if envelope.get("device_id") != self.device_id:
            return
        sha = envelope["sha256"]
        ok = self.reject_with is None
        if ok:
            self.configs.append(envelope["config"])
        if not self.acknowledge:
            return
        error = None if ok else {"code": "apply_failed", "message": self.reject_with}
        ack = {"sha256": sha, "ok": ok, "error": error, "ts": utc_timestamp()}
        assert self._client is not None
        await self._client.publish(
            self.topics.device_config_applied(self.device_id),
            json.dumps(ack),
            qos=1,
            retain=True,
        )
        self.acked.append(sha)

    async def wait_acked(self, sha: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while sha not in self.acked:
                self.changed.clear()
                await self.changed.wait()

    async def crash(self) -> None:
        """Drop the connection without a DISCONNECT: the broker publishes the will."""
        assert self._client is not None
        sock = self._client._client.socket()
        if isinstance(sock, socket.socket):  # paho types it as a SocketLike, without shutdown()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await self._stop_pump()
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await self._client.__aexit__(None, None, None)
        self._client = None

    async def stop(self) -> None:
        """A deliberate shutdown: the offline status first (a clean disconnect has no will)."""
        if self._client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.publish(
                self.topics.device_status(self.device_id),
                DEVICE_STATUS_WILL.to_json(),
                qos=1,
                retain=True,
            )
        await self._stop_pump()
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)
        self._client = None

    async def _stop_pump(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@asynccontextmanager
async def running_device(
    port: int, device_id: str, **options: Any
) -> AsyncIterator[SimulatedDevice]:
    device = SimulatedDevice(device_id, port, **options)
    await device.start()
    try:
        yield device
    finally:
        await device.stop()
