"""Services and commands given a URL list: past a dead first URL, and each URL once for a CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from broker_agent.broker.process import free_port
from broker_agent.settings import StationSettings
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import retained_snapshot
from tests.support.station import running_station


def dead_url() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


async def test_the_agent_comes_online_past_a_dead_first_url(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    urls = f"{dead_url()},{broker.url}"
    settings = agent_settings(urls, tmp_path / "configs", http_listen="")

    async with running_agent(settings):
        status = await retained_snapshot(broker.url, f"{broker.root}/agents/+/status")

    assert "online" == json.loads(status[f"{broker.root}/agents/test-agent/status"])["state"]


async def test_the_station_comes_online_past_a_dead_first_url(
    broker: Broker, tmp_path: Path
) -> None:
    settings = StationSettings(
        broker_url=f"{dead_url()},{broker.url}",
        station_id="bench-urls",
        manufacturing_log=tmp_path / "manufacturing.jsonl",
        reconnect_min_s=0.05,
        http_listen="",
    )

    async with running_station(settings):
        status = await retained_snapshot(broker.url, f"{broker.root}/stations/+/status")

    assert "online" == json.loads(status[f"{broker.root}/stations/bench-urls/status"])["state"]


def test_a_command_tries_each_url_once_then_fails(tmp_path: Path) -> None:
    first, second = dead_url(), dead_url()

    result = subprocess.run(
        [
            sys.executable, "-m", "broker_agent.cli", "provision", "kitchen-01",
            "--partition-size", "0x5000", "-o", str(tmp_path / "nvs.bin"),
            "--broker-url", f"{first},{second}",
        ],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip

    assert 1 == result.returncode
    assert result.stderr.startswith("error: broker_unavailable: cannot connect to ")
    assert [1, 1] == [result.stderr.count(url) for url in (first, second)]
    assert not (tmp_path / "nvs.bin").exists()
