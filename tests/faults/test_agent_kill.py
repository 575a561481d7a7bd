"""Fault (b): the agent is SIGKILLed in the middle of a burst of edits; more edits follow while
it is dead; once restarted, the broker's retained configs equal the directory, by sha256."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from tests.faults.conftest import broker_manifest, directory_manifest
from tests.support.agent_process import AgentProcess, went_online
from tests.support.broker import Broker
from tests.support.mqtt import observe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DEVICES = 300
EDITS = 400  # add, change or delete; the agent dies after the first half


def edit(config_dir: Path, rng: random.Random, step: int) -> None:
    """One operator edit: add a device, change one (in place or by rename), or delete one."""
    existing = sorted(config_dir.glob("*.json"))
    roll = rng.random()
    if roll < 0.1 and len(existing) > DEVICES * 0.8:  # deletions: well under the prune guard
        rng.choice(existing).unlink()
    elif roll < 0.3:
        path = config_dir / f"new-{step:04}.json"
        path.write_text(json.dumps({"added_at_step": step}))
    elif roll < 0.65:
        path = rng.choice(existing)
        path.write_text(json.dumps({"changed_at_step": step, "value": rng.random()}))
    else:  # as editors save: a temp file renamed over the old one
        path = rng.choice(existing)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps({"renamed_at_step": step}))
        temp.replace(path)


async def converged(url: str, config_dir: Path, timeout: float) -> tuple[dict[str, str], ...]:
    deadline = time.monotonic() + timeout
    expected = directory_manifest(config_dir)
    seen = await broker_manifest(url)
    while seen != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        seen = await broker_manifest(url)
    return expected, seen


async def test_a_killed_agent_converges_after_restart(
    broker: Broker, dirs: tuple[Path, Path], agent_process: AgentProcess
) -> None:
    config_dir, _ = dirs
    for index in range(DEVICES):
        (config_dir / f"dev-{index:04}.json").write_text(json.dumps({"index": index}))
    rng = random.Random(9)
    agent_process.broker_url = broker.url

    async with observe(broker.url, agent_process.status_topic) as seen:
        agent_process.start()
        await seen.wait_for(lambda: went_online(seen, agent_process, 0), timeout=30)
        for step in range(EDITS // 2):
            edit(config_dir, rng, step)
            if step % 20 == 0:
                await asyncio.sleep(0.01)  # let some of the burst reach the broker
        agent_process.kill()
        for step in range(EDITS // 2, EDITS):
            edit(config_dir, rng, step)
        mark = len(seen.messages)
        agent_process.start()
        await seen.wait_for(lambda: went_online(seen, agent_process, mark), timeout=30)
    expected, found = await converged(broker.url, config_dir, 20)

    assert agent_process.alive, agent_process.log_tail()
    assert len(expected) > DEVICES * 0.8
    assert expected == found
