"""The config write service (contract 6.3): ``config/set`` requests in, files written, answers out.

Requests come in through the intake the provisioning responder uses (``mqtt/intake.py`` has
the measured why): ``$share/<group>/{root}/devices/+/config/set`` (the plain filter, with a
warning, on a broker without shared subscriptions), QoS 1, Retain As Published, so each write
reaches one agent of the group; plus a short look for requests retained before we subscribed,
which are refused with ``retained_request_rejected`` and cleared. A retained ``config/set``
on a topic with an invalid device id is cleared unanswered (``on_unmatched``). At most
``QUEUE_CAPACITY`` writes wait; past that a write is answered ``internal_error`` at once.

One write, in a worker: parse (``writes.parse_write``), then under the device's lock read the
current file, plan the new one (``writes.plan_write``), write it atomically (temp file, fsync,
rename, directory fsync) or delete it, hand the file name straight to the publisher (the
watcher's 50 ms debounce would otherwise sit in every answer), and wait until the publisher has
the new sha256 acknowledged by the broker (or the config cleared). Only then the answer goes
out, followed by the ``config_written`` event. The device's lock is held until the publish is
confirmed, so two writes to one device never overtake each other; writes to different devices
run in parallel (``MAX_WORKERS``).

A file edit racing a write: if the publisher retains another sha256 for the device and the file
no longer holds the written content, someone changed the file after us; the write is answered
``conflict`` naming the sha256 that is now current.

Who wrote: Mosquitto 2.0 does not tell a subscriber who published a message, and an MQTT v5
user property would be the writer's own unverifiable claim, so ``config_written`` carries no
``user`` (documented in docs/fleet.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from broker_agent.errors import ConfigFileError
from broker_agent.events import AgentEvents
from broker_agent.files import write_atomically
from broker_agent.fleet.files import load_config
from broker_agent.fleet.publisher import ConfigPublisher
from broker_agent.fleet.writes import (
    CurrentConfig,
    PlannedWrite,
    WriteRefused,
    max_request_bytes,
    parse_write,
    plan_write,
)
from broker_agent.logs import get_logger
from broker_agent.mqtt import Connection, Message
from broker_agent.mqtt.intake import Request, RequestIntake, new_request_id, request_id_in
from broker_agent.settings import AgentSettings
from firmware_contracts.codes import AgentEventName, ConfigWriteErrorCode
from firmware_contracts.payloads import (
    ConfigSetError,
    ConfigSetOk,
    ConfigWriteErrorDetail,
)
from firmware_contracts.topics import TopicKind, TopicMatch, Topics

log = get_logger(__name__)

WRITES_SUBSCRIPTION_ID = 3
RETAINED_SCAN_SUBSCRIPTION_ID = 4
MAX_WORKERS = 64
"""Writes in progress at once. Most of a write is waiting for the publisher's PUBACK, so this
is sized for 50 outstanding writes to different devices (bench/bench_fleet_state.py)."""
QUEUE_CAPACITY = 1_000
"""Writes waiting at most. A write holds its payload (up to twice ``max_config_bytes``) while
it waits, so 1,000 bound the memory to ~0.5 GB at the default limit; and a write waits on a
PUBACK and a file fsync (~1-5 ms each), so 1,000 queued are seconds of work, inside a
requester's 10 s timeout."""
BUSY_MESSAGE = "the agent is busy (too many config writes queued); retry in a few seconds"
RESPONSE_EXPIRY_S = 60
PUBLISH_TIMEOUT_S = 10.0
"""How long a write waits for the publisher; longer means it is disconnected or stuck."""
CONFIG_FILE_MODE = 0o644
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class ConfigWriter:
    def __init__(
        self,
        settings: AgentSettings,
        topics: Topics,
        events: AgentEvents,
        publisher: ConfigPublisher,
    ) -> None:
        self.topics = topics
        self.events = events
        self.publisher = publisher
        self.enabled = settings.config_writes
        self.config_dir = settings.config_dir
        self.max_bytes = settings.max_config_bytes
        self.intake = RequestIntake(
            "config_write",
            topics.filter(TopicKind.CONFIG_SET),
            settings.provision_shared_group,
            subscription_ids=(WRITES_SUBSCRIPTION_ID, RETAINED_SCAN_SUBSCRIPTION_ID),
            capacity=QUEUE_CAPACITY,
            topic_prefix=topics.root + "/devices/",
            topic_suffix="/config/set",
        )
        self.on_answered: Callable[[ConfigWriteErrorCode | None], None] | None = None
        """Metrics hook: called once per answer, ``None`` for ok, else the error code."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._changed: dict[str, asyncio.Future[None]] = {}
        publisher.retained_listeners.append(self._on_retained)

    # -- the dispatcher's side (sync, never blocks) ------------------------------------------
    def on_message(self, match: TopicMatch, message: Message) -> None:
        if match.kind is TopicKind.CONFIG_SET:
            self.intake.offer(match.identifier, message)

    def on_unmatched(self, message: Message) -> bool:
        """True when ``message`` is a ``config/set`` with an invalid device id (a retained
        one is cleared: it would otherwise stay on the broker unanswered for good)."""
        return self.intake.clear_invalid(message)

    def _on_retained(self, device_id: str, payload: bytes) -> None:
        waiting = self._changed.pop(device_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    # -- per connection ------------------------------------------------------------------------
    async def start(self, connection: Connection, group: asyncio.TaskGroup) -> None:
        await self.intake.start(connection, group, MAX_WORKERS, self._handle, self._busy)

    async def _busy(self, connection: Connection, write: Request) -> None:
        """A write that found the queue full: ``internal_error``, retry (module doc)."""
        failure = WriteRefused(ConfigWriteErrorCode.INTERNAL_ERROR, BUSY_MESSAGE)
        limit = max_request_bytes(self.max_bytes)
        request_id = request_id_in(write.payload, limit) or new_request_id()
        payload = self._refusal(write, request_id, failure)
        await self._send(connection, write, self._response_topic(write)[0], payload, failure.code)

    def _response_topic(self, write: Request) -> tuple[str, bool]:
        """Where the answer goes, and whether the asked-for response topic is allowed."""
        asked = write.response_topic
        topic_ok = asked is None or self.topics.is_config_set_response_topic_for(
            write.device_id, asked
        )
        if asked is not None and topic_ok:
            return asked, True
        return self.topics.config_set_response(write.device_id), topic_ok

    # -- one write -----------------------------------------------------------------------------
    async def _handle(self, connection: Connection, write: Request) -> None:
        default_topic = self.topics.config_set_response(write.device_id)
        topic, topic_ok = self._response_topic(write)
        request_id = ""
        done: PlannedWrite | None = None
        try:
            if write.retained or not topic_ok:
                limit = max_request_bytes(self.max_bytes)
                request_id = request_id_in(write.payload, limit) or new_request_id()
            if write.retained:
                raise WriteRefused(
                    ConfigWriteErrorCode.RETAINED_REQUEST_REJECTED,
                    "config writes must not be retained; this one has been cleared",
                )
            if not topic_ok:
                raise WriteRefused(
                    ConfigWriteErrorCode.INVALID_RESPONSE_TOPIC,
                    f"the response topic must be {default_topic} or a topic below it",
                )
            parsed = parse_write(write.payload, self.max_bytes)
            request_id = parsed.request_id
            if not self.enabled:
                raise WriteRefused(
                    ConfigWriteErrorCode.WRITES_DISABLED,
                    "config writes are disabled on this agent (BROKER_AGENT_CONFIG_WRITES=false)",
                )
            async with self._device_lock(write.device_id):
                current = self._read_current(write.device_id)
                done = plan_write(
                    write.device_id,
                    parsed.request,
                    current,
                    self.publisher.schema,
                    self.max_bytes,
                )
                await self._store(done)
                await self._wait_published(done)
            answer = ConfigSetOk(
                request_id=request_id, device_id=write.device_id, sha256=done.sha256
            )
            payload, code = answer.to_json(), None
        except WriteRefused as exc:
            done = None
            request_id = exc.request_id or request_id or new_request_id()
            payload, code = self._refusal(write, request_id, exc), exc.code
        except Exception as exc:  # noqa: BLE001 - every write gets an answer
            log.error(
                "config_write_internal_error",
                device_id=write.device_id,
                error_type=type(exc).__name__,
                frames="".join(traceback.format_tb(exc.__traceback__)),
            )
            done = None
            failure = WriteRefused(
                ConfigWriteErrorCode.INTERNAL_ERROR,
                f"the agent failed to apply the write ({type(exc).__name__})",
            )
            request_id = request_id or new_request_id()
            payload, code = self._refusal(write, request_id, failure), failure.code
        await self._send(connection, write, topic, payload, code)
        if done is not None:
            await self.events.emit(
                AgentEventName.CONFIG_WRITTEN,
                device_id=write.device_id,
                request_id=request_id,
                sha256=done.sha256,
            )

    async def _send(
        self,
        connection: Connection,
        write: Request,
        topic: str,
        payload: bytes,
        code: ConfigWriteErrorCode | None,
    ) -> None:
        await connection.publish(
            topic,
            payload,
            qos=1,
            retain=False,
            correlation_data=write.correlation_data,
            expiry_s=RESPONSE_EXPIRY_S,
        )
        if write.retained:
            await connection.publish(write.topic, b"", qos=1, retain=True)
        if self.on_answered is not None:
            self.on_answered(code)

    def _refusal(self, write: Request, request_id: str, failure: WriteRefused) -> bytes:
        log.info(
            "config_write_refused",
            device_id=write.device_id,
            request_id=request_id,
            code=failure.code.value,
            message=failure.message[:300],
        )
        return ConfigSetError(
            request_id=request_id,
            device_id=write.device_id,
            error=ConfigWriteErrorDetail(code=failure.code, message=failure.message),
        ).to_json()

    @contextlib.asynccontextmanager
    async def _device_lock(self, device_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(device_id, asyncio.Lock())
        self._lock_users[device_id] = self._lock_users.get(device_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[device_id] -= 1
            if not self._lock_users[device_id]:
                del self._lock_users[device_id], self._locks[device_id]

    def _path(self, device_id: str) -> Path:
        return self.config_dir / f"{device_id}.json"

    def _read_current(self, device_id: str) -> CurrentConfig | None:
        """The device's file through the publisher's own reader; None when there is none."""
        try:
            found = load_config(self._path(device_id), self.publisher.schema, self.max_bytes)
        except FileNotFoundError:
            return None
        except ConfigFileError as exc:
            return CurrentConfig(None, None, f"{exc.code.value}: {exc.message}")
        document = json.loads(found.envelope)["config"]
        return CurrentConfig(found.sha256, document)

    async def _store(self, planned: PlannedWrite) -> None:
        path = self._path(planned.device_id)
        try:
            if planned.data is None:
                await asyncio.to_thread(_delete_durably, path)
            else:
                await asyncio.to_thread(write_atomically, path, planned.data, CONFIG_FILE_MODE)
        except OSError as exc:
            if exc.errno in _READ_ONLY:
                raise WriteRefused(
                    ConfigWriteErrorCode.WRITES_DISABLED,
                    f"the config directory is read-only for the agent ({exc.strerror})",
                ) from None
            raise
        self.publisher.on_file_changes({path.name})

    async def _wait_published(self, planned: PlannedWrite) -> None:
        """Until the publisher retains ``planned.sha256`` (or nothing, after a delete)."""
        device_id = planned.device_id
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while self.publisher.retained.get(device_id) != planned.sha256:
            changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._changed[device_id] = changed
            try:
                await asyncio.wait_for(changed, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise WriteRefused(
                    ConfigWriteErrorCode.INTERNAL_ERROR,
                    f"the file was written but not published within {PUBLISH_TIMEOUT_S:g} s",
                ) from None
            finally:
                self._changed.pop(device_id, None)
            now_retained = self.publisher.retained.get(device_id)
            if now_retained == planned.sha256:
                return
            current = self._read_current(device_id)
            on_disk = current.sha256 if current is not None else None
            if on_disk != planned.sha256:
                shown = now_retained if now_retained is not None else "null"
                raise WriteRefused(
                    ConfigWriteErrorCode.CONFLICT,
                    "the file was changed by someone else while this write was applied; "
                    f"the current config has sha256 {shown}",
                )


def _delete_durably(path: Path) -> None:
    path.unlink()
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
