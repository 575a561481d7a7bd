"""The central ACL that ``bridge-config --central-acl`` prints, enforced by a real Mosquitto.

The central broker authenticates everyone (password file + ACL file); the site's bridges log in
with the accounts and password file given to ``bridge-config``. What the printed user blocks
must allow: both links connect, each writes its notification, configs flow down and acks up,
and a provisioning round trip crosses. With ``--station`` they allow nothing for other stations.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker_agent.app import Agent
from broker_agent.broker.acl import render_acl
from broker_agent.broker.passwords import PasswordFile
from broker_agent.broker.users import ServiceAccounts
from broker_agent.cli import main
from broker_agent.commands.provision import request_image_online
from broker_agent.errors import ProvisionTimeout
from broker_agent.settings import MqttSettings
from firmware_contracts.payloads import config_sha256
from firmware_contracts.topics import Topics
from tests.station.harness import make_bench
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import PROJECT, Broker
from tests.support.device import running_device
from tests.support.sites import CONVERGE_S, bridges_up, link_states, retained, site_broker

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

T = Topics("iot")
PASSWORDS = {
    "test-agent": "agent-pw-1",
    "bridge-site-a": "bridge-pw-1",
    "bridge-site-a-rr": "bridge-pw-1",
    "observer": "observer-pw-1",
}
OBSERVER = {"username": "observer", "password": PASSWORDS["observer"]}


@dataclass
class SecuredSite:
    central: Broker
    site: Broker
    config_dir: Path
    secrets_dir: Path


def bridge_acl(tmp_path: Path, *options: str) -> str:
    out = tmp_path / "central-acl"
    args = ["bridge-config", "--site", "site-a", "--central", "mqtt://127.0.0.1"]
    assert 0 == main(
        [*args, "--username", "bridge-site-a", "--central-acl", "-o", str(out), *options]
    )
    return out.read_text()


def central_config(tmp_path: Path, *options: str) -> str:
    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / "passwd").write_text(PasswordFile().render(PASSWORDS))
    agents = render_acl("iot", ServiceAccounts(agents={"test-agent": PASSWORDS["test-agent"]}))
    observer = "\nuser observer\ntopic read #\ntopic read $SYS/#\ntopic write test/observer/#\n"
    (auth / "acl").write_text(agents + "\n" + bridge_acl(tmp_path, *options) + observer)
    base = (
        (PROJECT / "mosquitto.conf")
        .read_text()
        .replace("allow_anonymous true", "allow_anonymous false")
    )
    return base + f"\npassword_file {auth / 'passwd'}\nacl_file {auth / 'acl'}\n"


@pytest.fixture
async def secured(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SecuredSite]:
    options: tuple[str, ...] = getattr(request, "param", ())
    central = Broker(tmp_path / "central", central_config(tmp_path, *options))
    central.start()
    password_file = tmp_path / "bridge-password"
    password_file.write_text(PASSWORDS["bridge-site-a"] + "\n")
    credentials = ("--username", "bridge-site-a", "--password-file", str(password_file))
    site = site_broker(tmp_path, "site-a", central, *credentials, *options)
    bench = make_bench(central, tmp_path)
    try:
        site.start()
        await bridges_up(site)
        yield SecuredSite(central, site, bench.config_dir, bench.secrets_dir)
    finally:
        site.stop()
        central.stop()


def agent(secured: SecuredSite) -> AbstractAsyncContextManager[Agent]:
    settings = agent_settings(
        secured.central.url,
        secured.config_dir,
        secured.secrets_dir,
        http_listen="",
        mqtt_username="test-agent",
        mqtt_password=PASSWORDS["test-agent"],
    )
    return running_agent(settings)


async def test_both_bridge_accounts_log_in_and_announce_themselves(secured: SecuredSite) -> None:
    states = await link_states(secured.central.url, **OBSERVER)
    assert {
        "$SYS/broker/connection/bridge-site-a/state": b"1",
        "$SYS/broker/connection/bridge-site-a-rr/state": b"1",
    } == states


async def test_configs_flow_down_and_acks_up_through_the_acl(secured: SecuredSite) -> None:
    (secured.config_dir / "dev-1.json").write_text(json.dumps({"interval": 30}))
    sha = config_sha256({"interval": 30})
    async with agent(secured), running_device(secured.site.port, "dev-1") as device:
        await device.wait_acked(sha)
        deadline = time.monotonic() + CONVERGE_S
        acks: dict[str, bytes] = {}
        while T.device_config_applied("dev-1") not in acks and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            acks = await retained(secured.central.url, "iot/devices/+/config/applied", **OBSERVER)
    assert sha == json.loads(acks[T.device_config_applied("dev-1")])["sha256"]


async def test_a_provisioning_round_trip_crosses_the_acl(secured: SecuredSite) -> None:
    url = secured.site.url
    async with agent(secured):
        image = await request_image_online(
            MqttSettings(broker_url=url), url, "kitchen-01", 0x5000, 10
        )
    assert 0x5000 == len(image.data)


STATION_SCOPED = pytest.mark.parametrize("secured", [("--station", "bench-1")], indirect=True)


@STATION_SCOPED
async def test_a_station_scoped_bridge_carries_that_stations_images(secured: SecuredSite) -> None:
    url = secured.site.url
    settings = MqttSettings(broker_url=url, mqtt_username="bench-1")
    async with agent(secured):
        image = await request_image_online(settings, url, "kitchen-01", 0x5000, 10)
    assert 0x5000 == len(image.data)


@STATION_SCOPED
async def test_a_station_scoped_bridge_carries_no_other_stations_images(
    secured: SecuredSite,
) -> None:
    url = secured.site.url
    settings = MqttSettings(broker_url=url, mqtt_username="bench-9")
    async with agent(secured):
        with pytest.raises(ProvisionTimeout):
            await request_image_online(settings, url, "kitchen-01", 0x5000, 2)


async def test_a_site_with_its_own_passwords_and_acl_still_bridges(tmp_path: Path) -> None:
    """The bridge's local side needs no account or ACL entry at the site (measured here)."""
    auth = tmp_path / "site-auth"
    auth.mkdir()
    (auth / "passwd").write_text(PasswordFile().render({"dev-1": "dev-pw-1"}))
    (auth / "acl").write_text(
        "pattern read iot/devices/%u/config\n"
        "pattern write iot/devices/%u/config/applied\n"
        "pattern write iot/devices/%u/status\n"
    )
    base = (
        (PROJECT / "mosquitto.conf")
        .read_text()
        .replace("allow_anonymous true", "allow_anonymous false")
    )
    base += f"\npassword_file {auth / 'passwd'}\nacl_file {auth / 'acl'}\n"
    central = Broker(tmp_path / "central")
    central.start()
    site = site_broker(tmp_path, "site-a", central, base=base)
    try:
        site.start()
        (tmp_path / "configs").mkdir()
        (tmp_path / "configs" / "dev-1.json").write_text(json.dumps({"interval": 30}))
        sha = config_sha256({"interval": 30})
        settings = agent_settings(central.url, tmp_path / "configs", http_listen="")
        async with (
            running_agent(settings),
            running_device(site.port, "dev-1", username="dev-1", password="dev-pw-1") as device,
        ):
            await device.wait_acked(sha)
            deadline = time.monotonic() + CONVERGE_S
            acks: dict[str, bytes] = {}
            while T.device_config_applied("dev-1") not in acks and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                acks = await retained(central.url, "iot/devices/+/config/applied")
    finally:
        site.stop()
        central.stop()
    assert sha == json.loads(acks[T.device_config_applied("dev-1")])["sha256"]
