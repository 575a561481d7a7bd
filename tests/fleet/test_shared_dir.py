"""Replicas sharing one config directory: one watching with inotify, one polling.

The retained configs must always end equal to the directory's current content, and no replica
may publish an older content over a newer retained config (the re-read-before-publish rule of
``fleet/publisher.py``). A network file system's stale view is reproduced with real files: the
lagging replica reads a copy of the directory that still holds the older file, with its older
mtime, as an NFS client does until its cache is revalidated.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from broker_agent.app import Agent
from broker_agent.fleet.state import parse_envelope
from firmware_contracts.payloads import ConfigEnvelope, config_sha256
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import Observer, observe, payload_of, retained_snapshot, v5_properties

pytestmark = pytest.mark.timeout(90)

CONFIGS = "iot/devices/+/config"
RESPONSES = "iot/devices/+/config/set/response/#"


def write(directory: Path, device: str, config: dict[str, Any], mtime: float | None = None) -> None:
    path = directory / f"{device}.json"
    path.write_text(json.dumps(config))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def directory_shas(directory: Path) -> dict[str, str]:
    return {p.stem: config_sha256(json.loads(p.read_text())) for p in directory.glob("*.json")}


async def retained_shas(broker: Broker) -> dict[str, str]:
    snapshot = await retained_snapshot(broker.url, CONFIGS)
    return {
        topic.split("/")[2]: ConfigEnvelope.model_validate_json(payload).sha256
        for topic, payload in snapshot.items()
        if payload
    }


async def converges(broker: Broker, directory: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    seen = await retained_shas(broker)
    while seen != directory_shas(directory) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = await retained_shas(broker)
    assert directory_shas(directory) == seen


def replica(broker: Broker, directory: Path, agent_id: str, **extra: Any) -> Any:
    return running_agent(
        agent_settings(broker.url, directory, agent_id=agent_id, http_listen="", **extra)
    )


@asynccontextmanager
async def pair(broker: Broker, directory: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    """Replica ``inotify`` and replica ``poll`` on one directory."""
    async with (
        replica(broker, directory, "agent-inotify", watch_mode="inotify") as a,
        replica(broker, directory, "agent-poll", watch_mode="poll", watch_poll_interval_s=0.1) as b,
    ):
        yield a, b


async def config_set(operator: Observer, device: str, request: dict[str, Any]) -> dict[str, Any]:
    """One config write over MQTT (contract 6.3), answered by whichever replica takes it."""
    reply_to = f"iot/devices/{device}/config/set/response/test/{request['request_id']}"
    props = v5_properties(reply_to, request["request_id"].encode())
    topic = f"iot/devices/{device}/config/set"
    await operator.client.publish(topic, json.dumps(request), qos=1, properties=props)
    answer = await operator.first_on(reply_to)
    answer_document: dict[str, Any] = json.loads(payload_of(answer))
    return answer_document


def published_in_order(observer: Observer) -> dict[str, list[float]]:
    """Per device, the ``updated_at`` of every config envelope seen, in order of arrival."""
    found: dict[str, list[float]] = {}
    for message in observer.messages:
        payload = payload_of(message)
        envelope = parse_envelope(payload) if payload else None
        if str(message.topic).endswith("/config") and envelope is not None:
            assert envelope.updated_at is not None
            found.setdefault(str(message.topic), []).append(envelope.updated_at)
    return found


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    for n in range(1, 4):
        write(path, f"dev-{n}", {"interval": n})
    return path


async def test_a_lagging_replica_does_not_republish_an_older_file(
    broker: Broker, tmp_path: Path
) -> None:
    current, lagging = tmp_path / "current", tmp_path / "lagging"
    current.mkdir()
    lagging.mkdir()
    write(lagging, "dev-1", {"interval": 1}, mtime=time.time() - 120)  # what a stale cache shows
    write(current, "dev-1", {"interval": 2})
    topic = "iot/devices/dev-1/config"
    async with observe(broker.url, topic) as seen:
        async with replica(broker, current, "agent-a"):
            await converges(broker, current)
        async with replica(broker, lagging, "agent-b", watch_mode="poll"):
            await converges(broker, current)  # agent-b is online: its reconcile is done
            shutil.copy2(current / "dev-1.json", lagging / "dev-1.json")  # the cache catches up
            await converges(broker, current)
    configs = [ConfigEnvelope.model_validate_json(p).config for p in seen.payloads(topic)]
    assert [{"interval": 2}] == configs


async def test_a_replica_with_a_stale_listing_does_not_clear_a_newer_config(
    broker: Broker, tmp_path: Path
) -> None:
    current, lagging = tmp_path / "current", tmp_path / "lagging"
    current.mkdir()
    lagging.mkdir()
    write(current, "dev-1", {"interval": 1}, mtime=time.time() - 300)
    shutil.copy2(current / "dev-1.json", lagging / "dev-1.json")
    os.utime(lagging, (time.time() - 120, time.time() - 120))  # listed before dev-2 existed
    write(current, "dev-2", {"interval": 2})
    topic = "iot/devices/dev-2/config"
    async with observe(broker.url, topic) as seen:
        async with replica(broker, current, "agent-a"):
            await converges(broker, current)
        async with replica(broker, lagging, "agent-b", watch_mode="poll"):
            await converges(broker, current)  # agent-b is online: its reconcile is done
            shutil.copy2(current / "dev-2.json", lagging / "dev-2.json")  # the cache catches up
            await converges(broker, current)
    assert [] == [payload for payload in seen.payloads(topic) if not payload]  # never cleared


async def test_writes_through_replicas_keep_the_broker_equal_to_the_directory(
    broker: Broker, shared: Path
) -> None:
    async with (
        observe(broker.url, RESPONSES, CONFIGS, qos=1) as operator,
        pair(broker, shared),
    ):
        await converges(broker, shared)
        answers = [
            await config_set(operator, "dev-1", {"request_id": "w-1", "config": {"interval": 10}}),
            await config_set(operator, "dev-2", {"request_id": "w-2", "merge": {"mode": "eco"}}),
            await config_set(operator, "dev-3", {"request_id": "w-3", "delete": True}),
            await config_set(operator, "dev-4", {"request_id": "w-4", "config": {"interval": 4}}),
        ]
        assert ["ok"] * 4 == [answer["status"] for answer in answers]
        await converges(broker, shared)
    assert [] == [
        t for t, stamps in published_in_order(operator).items() if stamps != sorted(stamps)
    ]


async def test_replicas_converge_after_the_broker_restarts(broker: Broker, shared: Path) -> None:
    async with observe(broker.url, RESPONSES) as operator, pair(broker, shared):
        await converges(broker, shared)
        broker.restart()
        write(shared, "dev-2", {"interval": 22})  # while both replicas are disconnected
        await converges(broker, shared)
    async with observe(broker.url, RESPONSES) as operator, pair(broker, shared):
        answer = await config_set(operator, "dev-1", {"request_id": "w-5", "merge": {"x": 1}})
        assert "ok" == answer["status"]
        await converges(broker, shared)


async def test_replicas_converge_after_the_broker_restarts_empty(
    broker: Broker, shared: Path
) -> None:
    async with pair(broker, shared):
        await converges(broker, shared)
        broker.stop(kill=True)
        (broker.process.data_dir / "mosquitto.db").unlink(missing_ok=True)
        (shared / "dev-3.json").unlink()
        write(shared, "dev-5", {"interval": 5})
        broker.start()
        await converges(broker, shared)


async def test_the_polling_replica_restarted_after_writes_changes_nothing_newer(
    broker: Broker, shared: Path
) -> None:
    settings = {"watch_mode": "poll", "watch_poll_interval_s": 0.1}
    async with (
        observe(broker.url, RESPONSES, CONFIGS, qos=1) as operator,
        replica(broker, shared, "agent-inotify", watch_mode="inotify"),
    ):
        async with replica(broker, shared, "agent-poll", **settings):
            await converges(broker, shared)
        answer = await config_set(operator, "dev-1", {"request_id": "w-6", "config": {"v": 6}})
        assert "ok" == answer["status"]
        async with replica(broker, shared, "agent-poll", **settings):
            await converges(broker, shared)
    assert [] == [
        t for t, stamps in published_in_order(operator).items() if stamps != sorted(stamps)
    ]
