"""Fault (d): FIFOs named like config and secrets files, present when the agent starts and
added while it runs. A plain open() of a FIFO waits for a writer forever; the agent must come
online, reject them, and go on publishing and provisioning."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_process import AgentProcess, went_online
from tests.support.broker import Broker
from tests.support.mqtt import Observer, observe, payload_of, v5_properties

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


async def provision(url: str, device_id: str) -> dict[str, Any]:
    response_topic = f"iot/provision/{device_id}/response/t-{uuid.uuid4().hex[:8]}"
    async with observe(url, response_topic, qos=1) as replies:
        await replies.client.publish(
            f"iot/provision/{device_id}/request",
            json.dumps({"request_id": "r-1", "partition_size": 0x5000}),
            qos=1,
            properties=v5_properties(response_topic, b"c"),
        )
        message = await replies.first_on(response_topic)
    reply: dict[str, Any] = json.loads(payload_of(message))
    return reply


def unreadable(seen: Observer) -> set[str]:
    return {
        event["file"]
        for event in seen.events()
        if event["event"] == "config_rejected" and event["error"]["code"] == "unreadable"
    }


async def test_fifos_at_start_and_while_running_block_nothing(
    broker: Broker, dirs: tuple[Path, Path], agent_process: AgentProcess
) -> None:
    config_dir, secrets_dir = dirs
    (config_dir / "kitchen-01.json").write_text(json.dumps({"interval": 30}))
    for directory in (config_dir, secrets_dir):
        os.mkfifo(directory / "fifo-1.json")
    agent_process.broker_url = broker.url

    async with observe(broker.url, "iot/devices/+/config", "iot/agents/#") as seen:
        agent_process.start()
        await seen.wait_for(lambda: went_online(seen, agent_process, 0), timeout=30)
        replies = [await provision(broker.url, "kitchen-01")]
        for directory in (config_dir, secrets_dir):
            os.mkfifo(directory / "fifo-2.json")
        await seen.wait_for(lambda: {"fifo-1.json", "fifo-2.json"} <= unreadable(seen))
        (config_dir / "kitchen-02.json").write_text(json.dumps({"interval": 60}))
        await seen.wait_for(lambda: "iot/devices/kitchen-02/config" in seen.latest)
        replies += [
            await provision(broker.url, "kitchen-01"),
            await provision(broker.url, "fifo-1"),
            await provision(broker.url, "fifo-2"),
        ]
        files = unreadable(seen)

    assert agent_process.alive, agent_process.log_tail()
    assert {"fifo-1.json", "fifo-2.json"} <= files
    assert ["ok", "ok"] == [reply["status"] for reply in replies[:2]]
    for reply in replies[2:]:
        assert ("error", "credentials_unavailable") == (reply["status"], reply["error"]["code"])
        assert "is a FIFO" in reply["error"]["message"]
