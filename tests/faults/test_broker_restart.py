"""Fault (a): the broker is SIGKILLed and comes back empty while the agent runs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from broker_agent.broker.process import MosquittoProcess, free_port
from tests.faults.conftest import broker_manifest, directory_manifest
from tests.support.agent_process import AgentProcess, went_online
from tests.support.broker import PROJECT
from tests.support.mqtt import observe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DEVICES = 2_000


async def converged(url: str, expected: dict[str, str], timeout: float) -> dict[str, str]:
    """Poll the broker's retained configs until they equal ``expected`` (or time runs out)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        seen = await broker_manifest(url)
        if seen == expected:
            break
        await asyncio.sleep(0.2)
    return seen


async def test_an_empty_restarted_broker_gets_every_config_back(
    tmp_path: Path, dirs: tuple[Path, Path], agent_process: AgentProcess
) -> None:
    config_dir, _ = dirs
    for index in range(DEVICES):
        config = {"index": index, "interval": 30 + index % 60, "site": f"plant-{index % 7}"}
        (config_dir / f"dev-{index:05}.json").write_text(json.dumps(config))
    expected = directory_manifest(config_dir)
    broker = MosquittoProcess(
        (PROJECT / "mosquitto.conf").read_text(), tmp_path / "broker-1", port=free_port()
    )
    broker.start()
    agent_process.broker_url = broker.url

    try:
        async with observe(broker.url, agent_process.status_topic) as seen:
            agent_process.start()
            await seen.wait_for(lambda: went_online(seen, agent_process, 0), timeout=30)
        before = await converged(broker.url, expected, 20)
        broker.stop(kill=True)
        broker.data_dir = tmp_path / "broker-2"  # fresh: nothing retained, nothing persisted
        broker.start()
        after = await converged(broker.url, expected, 30)
        assert agent_process.alive, agent_process.log_tail()
    finally:
        agent_process.stop()
        broker.stop()
    assert DEVICES == len(expected)
    assert expected == before
    assert expected == after
