"""Every fleet state (contract 6.2), reached by a simulated device against the real agent."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker_agent.app import Agent
from broker_agent.commands.status import read_fleet
from broker_agent.settings import MqttSettings
from firmware_contracts.codes import DevicePresence, FleetState
from firmware_contracts.payloads import FleetSummary, config_sha256
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.device import running_device
from tests.support.mqtt import client_for, eventually, observe, retained_snapshot

pytestmark = pytest.mark.timeout(60)

FLEET_TOPIC = "iot/agents/test-agent/fleet"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "configs"
    path.mkdir()
    return path


def write_config(config_dir: Path, device: str, config: dict[str, Any]) -> str:
    (config_dir / f"{device}.json").write_text(json.dumps(config))
    return config_sha256(config)


async def reaches(
    agent: Agent, device: str, state: FleetState | None, timeout: float = 10.0
) -> None:
    async def check() -> bool:
        found = agent.tracker.view.devices.get(device)
        return (found.state if found else None) == state

    await eventually(check, timeout)


async def retained_summary(broker: Broker) -> FleetSummary:
    snapshot = await retained_snapshot(broker.url, FLEET_TOPIC)
    return FleetSummary.from_json(snapshot[FLEET_TOPIC])


async def test_device_that_applies_its_config_is_in_sync(broker: Broker, config_dir: Path) -> None:
    sha = write_config(config_dir, "dev-1", {"interval": 30})
    async with (
        running_agent(agent_settings(broker.url, config_dir)) as agent,
        running_device(broker.port, "dev-1") as device,
    ):
        await device.wait_acked(sha)
        await reaches(agent, "dev-1", FleetState.IN_SYNC)


async def test_device_that_rejects_its_config_is_failed(broker: Broker, config_dir: Path) -> None:
    write_config(config_dir, "dev-1", {"interval": 1})
    async with (
        running_agent(agent_settings(broker.url, config_dir)) as agent,
        running_device(broker.port, "dev-1", reject_with="interval too low"),
    ):
        await reaches(agent, "dev-1", FleetState.FAILED)
        assert "apply_failed: interval too low" == agent.tracker.view.devices["dev-1"].ack.error  # type: ignore[union-attr]


async def test_device_without_an_ack_is_pending_then_never_applied(
    broker: Broker, config_dir: Path
) -> None:
    write_config(config_dir, "dev-1", {"interval": 30})
    settings = agent_settings(broker.url, config_dir, pending_grace_s=1.5)
    async with (
        running_agent(settings) as agent,
        running_device(broker.port, "dev-1", acknowledge=False),
    ):
        await reaches(agent, "dev-1", FleetState.PENDING)
        await reaches(agent, "dev-1", FleetState.NEVER_APPLIED)


async def test_grace_crossing_alone_republishes_the_summary(
    broker: Broker, config_dir: Path
) -> None:
    write_config(config_dir, "dev-1", {"interval": 30})
    settings = agent_settings(broker.url, config_dir, pending_grace_s=1.5)
    async with observe(broker.url, FLEET_TOPIC) as seen, running_agent(settings):
        await seen.wait_for(lambda: any(s["never_applied"] == 1 for s in seen.json_on(FLEET_TOPIC)))
        first = seen.json_on(FLEET_TOPIC)[0]
        assert (1, 0) == (first["pending"], first["never_applied"])


async def test_device_acked_an_older_config_is_stale(broker: Broker, config_dir: Path) -> None:
    first = write_config(config_dir, "dev-1", {"interval": 30})
    settings = agent_settings(broker.url, config_dir, pending_grace_s=1.5)
    async with running_agent(settings) as agent:
        async with running_device(broker.port, "dev-1") as device:
            await device.wait_acked(first)
            await reaches(agent, "dev-1", FleetState.IN_SYNC)
        write_config(config_dir, "dev-1", {"interval": 60})  # while the device is away
        await reaches(agent, "dev-1", FleetState.PENDING)
        await reaches(agent, "dev-1", FleetState.STALE)


async def test_status_without_a_config_is_unmanaged(broker: Broker, config_dir: Path) -> None:
    async with (
        running_agent(agent_settings(broker.url, config_dir)) as agent,
        running_device(broker.port, "stray-1"),
    ):
        await reaches(agent, "stray-1", FleetState.UNMANAGED)
        await eventually(_summary_has(broker, unmanaged=1, devices=0))


async def test_presence_follows_status_and_will(broker: Broker, config_dir: Path) -> None:
    write_config(config_dir, "dev-1", {"interval": 30})
    write_config(config_dir, "dev-2", {"interval": 30})
    async with running_agent(agent_settings(broker.url, config_dir)) as agent:
        async with running_device(broker.port, "dev-1") as device:
            await eventually(_summary_has(broker, online=1, unknown=1))
            await device.crash()
            await eventually(_summary_has(broker, offline=1, unknown=1))
        view = agent.tracker.view.devices
        assert (DevicePresence.OFFLINE, DevicePresence.UNKNOWN) == (
            view["dev-1"].shown_presence,
            view["dev-2"].shown_presence,
        )


async def test_deleting_a_config_clears_its_ack(broker: Broker, config_dir: Path) -> None:
    sha = write_config(config_dir, "dev-1", {"interval": 30})
    async with (
        running_agent(agent_settings(broker.url, config_dir)) as agent,
        running_device(broker.port, "dev-1") as device,
    ):
        await device.wait_acked(sha)
        await device.stop()
        (config_dir / "dev-1.json").unlink()

        async def ack_cleared() -> bool:
            retained = await retained_snapshot(broker.url, "iot/devices/dev-1/config/applied")
            return not retained.get("iot/devices/dev-1/config/applied")

        await eventually(ack_cleared)
        # the offline status stays retained: the device is unmanaged, not forgotten
        await reaches(agent, "dev-1", FleetState.UNMANAGED)


async def test_summary_is_published_at_most_once_a_second(broker: Broker, config_dir: Path) -> None:
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with (
        client_for(broker.url) as watcher,
        running_agent(agent_settings(broker.url, config_dir)),
        client_for(broker.url) as devices,
    ):
        await watcher.subscribe(FLEET_TOPIC, qos=0)

        async def record() -> None:
            async for message in watcher.messages:
                arrivals.append((time.monotonic(), json.loads(bytes(message.payload))))

        recording = asyncio.create_task(record())
        for index in range(20):  # 20 changes in a burst: one summary each, if unthrottled
            await devices.publish(
                f"iot/devices/stray-{index}/status", b'{"state":"online"}', qos=1, retain=True
            )
        await eventually(_arrived(arrivals, unmanaged=20))
        recording.cancel()
    times = [at for at, _ in arrivals]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert [] == [gap for gap in gaps if gap < 0.9]
    assert len(arrivals) < 20


def _arrived(arrivals: list[tuple[float, dict[str, Any]]], **expected: int) -> Any:
    async def check() -> bool:
        return bool(arrivals) and all(arrivals[-1][1][k] == v for k, v in expected.items())

    return check


def _summary_has(broker: Broker, **expected: int) -> Any:
    async def check() -> bool:
        try:
            summary = (await retained_summary(broker)).model_dump()
        except KeyError:
            return False
        return all(summary[name] == value for name, value in expected.items())

    return check


async def test_agent_and_status_command_compute_the_same_state(
    broker: Broker, config_dir: Path
) -> None:
    synced = write_config(config_dir, "dev-ok", {"interval": 30})
    write_config(config_dir, "dev-bad", {"interval": 1})
    write_config(config_dir, "dev-quiet", {"interval": 5})
    async with (
        running_agent(agent_settings(broker.url, config_dir)) as agent,
        running_device(broker.port, "dev-ok") as ok,
        running_device(broker.port, "dev-bad", reject_with="too low"),
        running_device(broker.port, "stray-1"),
    ):
        await ok.wait_acked(synced)
        await reaches(agent, "dev-bad", FleetState.FAILED)
        await reaches(agent, "stray-1", FleetState.UNMANAGED)
        view = await read_fleet(MqttSettings(), broker.url)
        assert agent.tracker.counts() == view.counts()
        assert {d.device_id: d.state for d in agent.tracker.view} == {
            d.device_id: d.state for d in view
        }
