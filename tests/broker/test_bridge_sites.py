"""Multi-site: a central Mosquitto with the agent, two site Mosquittos bridged to it.

Each site's bridge sections come from ``broker-agent bridge-config`` (the command itself, run
in-process); devices and stations connect to their site, the agent to the centre.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker_agent.commands.provision import request_image_online
from broker_agent.settings import MqttSettings, StationSettings
from firmware_contracts.payloads import config_sha256
from firmware_contracts.topics import Topics
from tests.station.harness import STATION, commander, make_bench
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.device import running_device
from tests.support.mqtt import observe, retained_snapshot, v5_properties
from tests.support.sites import CONVERGE_S, bridges_up, converged, site_broker
from tests.support.station import running_station

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

T = Topics("iot")
SITES = ("site-a", "site-b")


@dataclass
class Topology:
    central: Broker
    sites: dict[str, Broker]
    config_dir: Path
    secrets_dir: Path

    def write(self, device: str, config: dict[str, Any]) -> None:
        (self.config_dir / f"{device}.json").write_text(json.dumps(config))

    def directory(self) -> dict[str, str]:
        """device_id -> sha256 of the canonical config, as the files hold them now."""
        return {
            path.stem: config_sha256(json.loads(path.read_text()))
            for path in self.config_dir.glob("*.json")
        }

    def restart_central_empty(self) -> None:
        """SIGKILL, lose everything it retained and every session, start on the same port."""
        self.central.stop(kill=True)
        (self.central.process.data_dir / "mosquitto.db").unlink(missing_ok=True)
        self.central.start()


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    central = Broker(tmp_path / "central")
    central.start()
    sites = {name: site_broker(tmp_path, name, central) for name in SITES}
    bench = make_bench(central, tmp_path)
    try:
        for site in sites.values():
            site.start()
        for site in sites.values():
            await bridges_up(site)
        yield Topology(central, sites, bench.config_dir, bench.secrets_dir)
    finally:
        for site in sites.values():
            site.stop()
        central.stop()


@asynccontextmanager
async def central_agent(topology: Topology) -> AsyncIterator[None]:
    settings = agent_settings(
        topology.central.url, topology.config_dir, topology.secrets_dir, http_listen=""
    )
    async with running_agent(settings):
        yield


async def test_a_central_edit_reaches_devices_at_both_sites(topology: Topology) -> None:
    topology.write("dev-1", {"interval": 30})
    topology.write("dev-2", {"interval": 30})
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(central_agent(topology))
        one = await stack.enter_async_context(
            running_device(topology.sites["site-a"].port, "dev-1")
        )
        two = await stack.enter_async_context(
            running_device(topology.sites["site-b"].port, "dev-2")
        )
        topology.write("dev-1", {"interval": 60})
        topology.write("dev-2", {"interval": 90})
        await one.wait_acked(config_sha256({"interval": 60}))
        await two.wait_acked(config_sha256({"interval": 90}))
        assert ({"interval": 60}, {"interval": 90}) == (one.configs[-1], two.configs[-1])


async def test_acks_and_device_status_reach_the_centre_retained(topology: Topology) -> None:
    topology.write("dev-1", {"interval": 30})
    sha = config_sha256({"interval": 30})
    async with (
        central_agent(topology),
        running_device(topology.sites["site-a"].port, "dev-1") as device,
    ):
        await device.wait_acked(sha)
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline:
            central = await retained_snapshot(topology.central.url, "iot/devices/dev-1/#")
            if T.device_config_applied("dev-1") in central and T.device_status("dev-1") in central:
                break
            await asyncio.sleep(0.1)
    assert sha == json.loads(central[T.device_config_applied("dev-1")])["sha256"]
    assert "online" == json.loads(central[T.device_status("dev-1")])["state"]


async def test_provisioning_round_trip_through_a_site_bridge(topology: Topology) -> None:
    site = topology.sites["site-b"]
    async with central_agent(topology):
        image = await request_image_online(
            MqttSettings(broker_url=site.url), site.url, "kitchen-01", 0x5000, 10.0
        )
    assert (0x5000, 0x5000) == (image.partition_size, len(image.data))
    assert "client_secret" in image.keys


async def test_response_topic_correlation_and_expiry_cross_the_requests_link(
    topology: Topology,
) -> None:
    request = T.provision_request("kitchen-01")
    reply_to = T.provision_response("kitchen-01") + "/bench-1/n1"
    props = v5_properties(reply_to, b"corr-1")
    assert props is not None
    props.MessageExpiryInterval = 60
    async with (
        observe(topology.central.url, request, qos=1) as centre,
        observe(topology.sites["site-a"].url) as site,
    ):
        await site.client.publish(request, b"{}", qos=1, properties=props)
        arrived = await centre.first_on(request)
    carried = arrived.properties
    assert (reply_to, b"corr-1") == (carried.ResponseTopic, carried.CorrelationData)  # type: ignore[union-attr]
    assert 0 < carried.MessageExpiryInterval <= 60  # type: ignore[union-attr]


async def test_a_station_at_a_site_flashes_a_board_commanded_from_the_centre(
    topology: Topology,
) -> None:
    settings = StationSettings(
        broker_url=topology.sites["site-a"].url,
        station_id=STATION,
        simulate=1,
        provision_timeout_s=10.0,
        port_scan_interval_s=0.2,
        http_listen="",
        manufacturing_log=topology.config_dir.parent / "log.jsonl",
    )
    async with (
        central_agent(topology),
        running_station(settings),
        commander(topology.central.url) as operator,
    ):
        await operator.wait(lambda: bool(operator.statuses and operator.statuses[-1]["ports"]))
        port = operator.statuses[-1]["ports"][0]["port"]  # the station's status crossed up
        events = await operator.run({"request_id": "job-1", "device_id": "dev-1", "port": port})
    # "ok" comes only after the MD5 of the written NVS region matched (contract 4)
    assert ("ok", "done", 100) == (
        events[-1]["status"],
        events[-1]["phase"],
        events[-1]["progress"],
    )


async def test_sites_converge_after_the_central_broker_restarts_empty(topology: Topology) -> None:
    for n in range(1, 5):
        topology.write(f"dev-{n}", {"interval": n})
    async with central_agent(topology):
        for site in topology.sites.values():
            await converged(site.url, topology.directory())
        topology.restart_central_empty()
        topology.write("dev-1", {"interval": 100})  # changed while the centre was empty
        topology.write("dev-5", {"interval": 5})  # added
        for site in topology.sites.values():
            await converged(site.url, topology.directory())
        await converged(topology.central.url, topology.directory())


async def test_a_restarted_site_converges_with_a_config_deleted_while_it_was_down(
    topology: Topology,
) -> None:
    for n in range(1, 4):
        topology.write(f"dev-{n}", {"interval": n})
    site = topology.sites["site-a"]
    async with central_agent(topology):
        await converged(site.url, topology.directory())
        site.stop()
        (topology.config_dir / "dev-2.json").unlink()
        topology.write("dev-3", {"interval": 33})
        await converged(topology.central.url, topology.directory())
        site.start()
        await converged(site.url, topology.directory())
    assert "dev-2" not in topology.directory()


async def test_a_site_serves_retained_configs_while_the_centre_is_down(
    topology: Topology,
) -> None:
    topology.write("dev-1", {"interval": 30})
    site = topology.sites["site-a"]
    async with central_agent(topology):
        await converged(site.url, topology.directory())
    topology.central.stop()
    async with running_device(site.port, "dev-1") as device:
        await device.wait_acked(config_sha256({"interval": 30}))
    assert [{"interval": 30}] == device.configs


async def test_a_config_deleted_while_the_centre_was_empty_stays_at_sites_until_cleared(
    topology: Topology,
) -> None:
    """The documented failure mode (docs/multi-site.md): the empty centre forgot the config,
    so the agent has nothing to clear, and a clear published at the centre for a topic it does
    not retain never reaches the sites (measured); an empty retained publish at the site does."""
    topology.write("dev-1", {"interval": 1})
    topology.write("dev-2", {"interval": 2})
    site = topology.sites["site-a"]
    async with central_agent(topology):
        await converged(site.url, topology.directory())
        stale = dict(topology.directory())
        topology.restart_central_empty()
        (topology.config_dir / "dev-1.json").unlink()
        await converged(topology.central.url, topology.directory())
        await converged(site.url, stale)  # the deleted config is still served at the site
        async with observe(site.url) as operator:
            await operator.client.publish(T.device_config("dev-1"), b"", qos=1, retain=True)
        await converged(site.url, topology.directory())
