"""Config writes over MQTT (contract 6.3) against the real agent and a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from broker_agent.app import Agent
from firmware_contracts.payloads import config_sha256
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.config_writes import (
    DEVICE,
    RESPONSE,
    SET,
    ask,
    requester,
    retained_config,
    write_file,
)
from tests.support.mqtt import Observer, eventually, observe, payload_of, retained_snapshot

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "configs"
    path.mkdir()
    return path


@asynccontextmanager
async def agent_and_requester(
    broker: Broker, config_dir: Path, **settings: Any
) -> AsyncIterator[tuple[Agent, Observer]]:
    async with (
        running_agent(agent_settings(broker.url, config_dir, **settings)) as agent,
        requester(broker.url) as writer,
    ):
        yield agent, writer


async def test_replace_is_answered_once_the_config_is_retained(
    broker: Broker, config_dir: Path
) -> None:
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"request_id": "w-1", "config": {"interval": 30}})
        retained = await retained_config(broker)  # no waiting: already there
    sha = config_sha256({"interval": 30})
    assert {"request_id": "w-1", "status": "ok", "device_id": DEVICE, "sha256": sha} == answer
    assert retained is not None and sha == retained.sha256
    assert {"interval": 30} == json.loads((config_dir / f"{DEVICE}.json").read_text())


async def test_merge_patch_applies_onto_the_file(broker: Broker, config_dir: Path) -> None:
    write_file(config_dir, {"a": 1, "led": {"on": True, "level": 3}})
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"merge": {"led": {"level": None, "color": "red"}}})
    expected = {"a": 1, "led": {"on": True, "color": "red"}}
    assert config_sha256(expected) == answer["sha256"]
    assert expected == json.loads((config_dir / f"{DEVICE}.json").read_text())


async def test_delete_removes_the_file_and_clears_the_retained_config(
    broker: Broker, config_dir: Path
) -> None:
    write_file(config_dir, {"a": 1})
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"request_id": "w-3", "delete": True})
        retained = await retained_config(broker)
    assert ("ok", None) == (answer["status"], answer["sha256"])
    assert retained is None
    assert not (config_dir / f"{DEVICE}.json").exists()


async def test_stale_if_sha256_is_a_conflict_naming_the_current_sha(
    broker: Broker, config_dir: Path
) -> None:
    current = write_file(config_dir, {"a": 1})
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"config": {"a": 2}, "if_sha256": "0" * 64})
    assert "conflict" == answer["error"]["code"]
    assert current in answer["error"]["message"]
    assert {"a": 1} == json.loads((config_dir / f"{DEVICE}.json").read_text())


async def test_matching_if_sha256_writes(broker: Broker, config_dir: Path) -> None:
    current = write_file(config_dir, {"a": 1})
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"config": {"a": 2}, "if_sha256": current})
    assert config_sha256({"a": 2}) == answer["sha256"]


async def test_schema_violation_is_refused_with_its_path(broker: Broker, config_dir: Path) -> None:
    (config_dir / "_schema.json").write_text(
        json.dumps({"properties": {"interval": {"type": "integer", "minimum": 5}}})
    )
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"config": {"interval": 1}})
    assert "schema_violation" == answer["error"]["code"]
    assert "$.interval" in answer["error"]["message"]
    assert not (config_dir / f"{DEVICE}.json").exists()


async def test_nan_is_invalid_json(broker: Broker, config_dir: Path) -> None:
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, b'{"request_id": "w-5", "config": {"x": NaN}}')
    assert "invalid_json" == answer["error"]["code"]


async def test_merge_on_a_device_without_config_is_unknown_device(
    broker: Broker, config_dir: Path
) -> None:
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"merge": {"a": 1}})
    assert "unknown_device" == answer["error"]["code"]


async def test_writes_disabled_by_setting(broker: Broker, config_dir: Path) -> None:
    async with agent_and_requester(broker, config_dir, config_writes=False) as (_, writer):
        answer = await ask(writer, {"config": {"a": 1}})
    assert "writes_disabled" == answer["error"]["code"]
    assert not (config_dir / f"{DEVICE}.json").exists()


@pytest.fixture
def immutable_dir(config_dir: Path) -> Iterator[Path]:
    """The config directory made unwritable even for root (``chattr +i``)."""
    if subprocess.run(["chattr", "+i", str(config_dir)], check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield config_dir
    finally:
        subprocess.run(["chattr", "-i", str(config_dir)], check=True)


async def test_read_only_directory_is_writes_disabled(broker: Broker, immutable_dir: Path) -> None:
    async with agent_and_requester(broker, immutable_dir) as (_, writer):
        answer = await ask(writer, {"config": {"a": 1}})
    assert "writes_disabled" == answer["error"]["code"]


@pytest.mark.allow_contract_violations
async def test_retained_write_is_refused_and_cleared(broker: Broker, config_dir: Path) -> None:
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"request_id": "w-7", "config": {"a": 1}}, retain=True)
        await asyncio.sleep(0)  # the clear follows the answer
        left = await retained_snapshot(broker.url, SET)
    assert ("retained_request_rejected", "w-7") == (answer["error"]["code"], answer["request_id"])
    assert not left.get(SET)
    assert not (config_dir / f"{DEVICE}.json").exists()


@pytest.mark.allow_contract_violations
async def test_retained_write_never_answers_on_a_foreign_topic(
    broker: Broker, config_dir: Path
) -> None:
    async with (
        observe(broker.url, "iot/elsewhere") as elsewhere,
        agent_and_requester(broker, config_dir) as (_, writer),
    ):
        answer = await ask(
            writer,
            {"request_id": "w-10", "delete": True},
            retain=True,
            response_topic="iot/elsewhere",
        )
    assert ("retained_request_rejected", "w-10") == (answer["error"]["code"], answer["request_id"])
    assert [] == elsewhere.messages


@pytest.mark.allow_contract_violations
async def test_write_retained_before_the_agent_started_is_refused(
    broker: Broker, config_dir: Path
) -> None:
    async with requester(broker.url) as writer:
        await writer.client.publish(
            SET, b'{"request_id": "old", "config": {"a": 1}}', qos=1, retain=True
        )
        async with running_agent(agent_settings(broker.url, config_dir)):
            answer = json.loads(payload_of(await writer.nth(0)))
    assert ("retained_request_rejected", "old") == (answer["error"]["code"], answer["request_id"])


async def test_foreign_response_topic_is_refused_on_the_default_topic(
    broker: Broker, config_dir: Path
) -> None:
    async with agent_and_requester(broker, config_dir) as (_, writer):
        answer = await ask(writer, {"config": {"a": 1}}, response_topic="iot/elsewhere")
    assert "invalid_response_topic" == answer["error"]["code"]


async def test_mqtt_311_writer_gets_the_default_topic(broker: Broker, config_dir: Path) -> None:
    async with (
        running_agent(agent_settings(broker.url, config_dir)),
        requester(broker.url, protocol=aiomqtt.ProtocolVersion.V311) as writer,
    ):
        await writer.client.publish(SET, b'{"request_id": "v3", "config": {"a": 1}}', qos=1)
        message = await writer.nth(0)
    assert RESPONSE == str(message.topic)
    assert "ok" == json.loads(payload_of(message))["status"]


async def test_config_written_event_says_who_and_what(broker: Broker, config_dir: Path) -> None:
    async with (
        observe(broker.url, "iot/agents/+/events") as seen,
        agent_and_requester(broker, config_dir) as (_, writer),
    ):
        answer = await ask(writer, {"request_id": "w-8", "config": {"a": 1}})
        await seen.wait_for(lambda: any(e["event"] == "config_written" for e in seen.events()))
    event = next(e for e in seen.events() if e["event"] == "config_written")
    assert (DEVICE, "w-8", answer["sha256"]) == (
        event["device_id"],
        event["request_id"],
        event["sha256"],
    )


async def test_two_agents_share_writes_without_a_double_write(
    broker: Broker, config_dir: Path
) -> None:
    count = 20
    async with (
        observe(broker.url, "iot/agents/+/events") as seen,
        running_agent(agent_settings(broker.url, config_dir, agent_id="agent-a")),
        running_agent(agent_settings(broker.url, config_dir, agent_id="agent-b")),
        requester(broker.url) as writer,
    ):
        answers = [
            await ask(writer, {"request_id": f"w-{i}", "config": {"n": i}}) for i in range(count)
        ]

        def written() -> list[dict[str, Any]]:
            return [e for e in seen.events() if e["event"] == "config_written"]

        await seen.wait_for(lambda: len(written()) >= count)
        await asyncio.sleep(0.3)  # a double write would show up as an extra event by now
    assert ["ok"] * count == [a["status"] for a in answers]
    assert sorted(f"w-{i}" for i in range(count)) == sorted(e["request_id"] for e in written())
    handled_by = {
        str(m.topic).split("/")[2]
        for m in seen.messages
        if json.loads(bytes(m.payload)).get("event") == "config_written"
    }
    assert {"agent-a", "agent-b"} == handled_by


async def test_write_racing_a_file_edit_never_leaves_them_apart(
    broker: Broker, config_dir: Path
) -> None:
    write_file(config_dir, {"n": -1})
    async with agent_and_requester(broker, config_dir) as (_, writer):

        async def edit_file() -> None:
            for i in range(20):
                write_file(config_dir, {"edited": i})
                await asyncio.sleep(0.005)

        editing = asyncio.create_task(edit_file())
        answers = [await ask(writer, {"config": {"n": i}}) for i in range(10)]
        await editing
        on_disk = json.loads((config_dir / f"{DEVICE}.json").read_text())

        async def converged() -> bool:
            retained = await retained_config(broker)
            return retained is not None and retained.config == on_disk

        await eventually(converged)
    statuses = {a["status"] if a["status"] == "ok" else a["error"]["code"] for a in answers}
    assert statuses <= {"ok", "conflict"}
