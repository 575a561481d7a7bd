"""The HTTP surface wired into the real agent and the real station (contract 6.4), over HTTP.

The services run in the test's loop against a real Mosquitto with ``http_listen`` on port 0;
every assertion reads what a probe or Prometheus would read.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker_agent.app import Agent, run_agent
from broker_agent.broker.process import free_port
from broker_agent.settings import StationSettings
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import PROJECT, Broker
from tests.support.mqtt import observe, payload_of, v5_properties
from tests.support.service import running
from tests.support.station import running_station

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def write_fleet(tmp_path: Path) -> tuple[Path, Path]:
    configs, secrets = tmp_path / "configs", tmp_path / "secrets"
    configs.mkdir()
    secrets.mkdir()
    (configs / "kitchen-01.json").write_text('{"interval_s": 30}')
    (configs / "garage-door.json").write_text('{"interval_s": 60}')
    (secrets / "_fleet.json").write_text(
        json.dumps({"token_url": "https://t.invalid/token", "base_url": "https://b.invalid/"})
    )
    (secrets / "kitchen-01.json").write_text(
        json.dumps({"client_id": "kitchen-01-client", "client_secret": "s3cr3t-kitchen"})
    )
    return configs, secrets


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling an HTTP endpoint, as a probe does
            await asyncio.sleep(0.02)


@pytest.mark.needs_own_broker
async def test_agent_probes_and_metrics(broker: Broker, tmp_path: Path) -> None:
    """/readyz is 503 with its reason while the broker is down, 200 once the first reconcile
    is done; /metrics counts the configs published and a provisioning reply by its code."""
    configs, secrets = write_fleet(tmp_path)
    settings = agent_settings(broker.url, configs, secrets, http_listen="127.0.0.1:0")
    broker.stop()
    agents: list[Agent] = []

    async def listening() -> None:
        while not agents or agents[0].http is None:  # noqa: ASYNC110 - set inside run()
            await asyncio.sleep(0.01)

    async with running(run_agent(settings, agents.append), listening(), name="agent-under-test"):
        server = agents[0].http
        assert server is not None and server.url is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            health = await http.get("/healthz")
            before = await http.get("/readyz")
            broker.start()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await until(ready, timeout=15)
            assert agents[0].online.is_set()
            async with observe(broker.url, "iot/provision/+/response/#") as seen:
                for device, request_id in (("kitchen-01", "r-ok"), ("nobody", "r-unknown")):
                    await seen.client.publish(
                        f"iot/provision/{device}/request",
                        json.dumps({"request_id": request_id, "partition_size": 20480}),
                        qos=1,
                        properties=v5_properties(f"iot/provision/{device}/response/t"),
                    )
                await seen.wait_for(lambda: len(seen.messages) == 2)
            metrics = samples((await http.get("/metrics")).text)
    assert (200, "agent") == (health.status_code, health.json()["service"])
    assert (503, "not connected to the broker") == (before.status_code, before.json()["reason"])
    assert 1.0 == metrics[("broker_agent_provision_replies_total", (("code", "ok"),))]
    assert 1.0 == metrics[("broker_agent_provision_replies_total", (("code", "unknown_device"),))]
    assert 2.0 == metrics[("broker_agent_provision_reply_seconds_count", ())]
    assert 2.0 == metrics[("broker_agent_configs_published_total", ())]
    assert 1.0 == metrics[("broker_agent_ready", ())]
    assert 1.0 == metrics[("broker_agent_broker_connected", ())]
    never = ("broker_agent_fleet_devices", (("state", "never_applied"),))
    pending = ("broker_agent_fleet_devices", (("state", "pending"),))
    assert 2.0 == metrics.get(never, 0.0) + metrics.get(pending, 0.0)


async def test_agent_counts_rejected_configs_by_code(broker: Broker, tmp_path: Path) -> None:
    configs, secrets = write_fleet(tmp_path)
    (configs / "broken.json").write_text("{not json")
    settings = agent_settings(broker.url, configs, secrets, http_listen="127.0.0.1:0")
    async with running_agent(settings) as agent:
        assert agent.http is not None and agent.http.url is not None
        async with httpx.AsyncClient(base_url=agent.http.url, timeout=5) as http:
            metrics = samples((await http.get("/metrics")).text)
            ready = await http.get("/readyz")
    assert 200 == ready.status_code
    assert 1.0 == metrics[("broker_agent_configs_rejected_total", (("code", "invalid_json"),))]


async def test_station_probes_and_metrics(broker: Broker, tmp_path: Path) -> None:
    """A flash job on a simulated board is counted with its duration; ports are gauged."""
    configs, secrets = write_fleet(tmp_path)
    agent = agent_settings(broker.url, configs, secrets, http_listen="")
    station = StationSettings(
        broker_url=broker.url,
        station_id="bench-1",
        simulate=1,
        http_listen="127.0.0.1:0",
        manufacturing_log=tmp_path / "log.jsonl",
    )
    async with running_agent(agent), running_station(station) as bench:
        assert bench.http is not None and bench.http.url is not None
        async with httpx.AsyncClient(base_url=bench.http.url, timeout=5) as http:
            health = await http.get("/healthz")
            ready = await http.get("/readyz")
            idle = samples((await http.get("/metrics")).text)
            async with observe(broker.url, "iot/stations/bench-1/flash/response") as seen:
                await seen.client.publish(
                    "iot/stations/bench-1/flash/request",
                    json.dumps({"request_id": "job-1", "device_id": "kitchen-01"}),
                    qos=1,
                )
                await seen.first(lambda m: b'"status":"ok"' in payload_of(m), timeout=20)

            async def counted() -> bool:
                found = samples((await http.get("/metrics")).text)
                return found[("broker_agent_flash_jobs_total", (("code", "ok"),))] == 1.0

            await until(counted)
            metrics = samples((await http.get("/metrics")).text)
    assert (200, "station") == (health.status_code, health.json()["service"])
    assert 200 == ready.status_code
    assert 1.0 == idle[("broker_agent_ports_attached", ())]
    assert 0.0 == idle[("broker_agent_ports_busy", ())]
    assert 1.0 == metrics[("broker_agent_flash_job_seconds_count", (("result", "ok"),))]
    assert 0.0 < metrics[("broker_agent_flash_job_seconds_sum", (("result", "ok"),))]


def test_a_port_in_use_stops_run_with_exit_2(broker: Broker, tmp_path: Path) -> None:
    configs, secrets = write_fleet(tmp_path)
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "broker_agent.cli", "run", "--broker-url", broker.url),
                *("--config-dir", str(configs), "--secrets-dir", str(secrets)),
                *("--http-listen", f"127.0.0.1:{port}"),
            ],
            env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin:/usr/sbin"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert 2 == done.returncode
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in done.stderr
