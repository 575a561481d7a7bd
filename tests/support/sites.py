"""Multi-site test topologies: site Mosquittos bridged to a central one by ``bridge-config``.

``site_broker`` runs the command itself (in-process) and starts a Mosquitto from the project's
``mosquitto.conf`` plus the printed bridge sections; ``bridges_up`` waits for both links of a
site; ``converged`` waits until a broker retains exactly a given set of configs (by sha256).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from broker_agent.cli import main
from firmware_contracts.payloads import ConfigEnvelope
from tests.support.broker import PROJECT, Broker
from tests.support.mqtt import client_for, observe, payload_of

CONFIGS = "iot/devices/+/config"
CONVERGE_S = 20.0


def site_broker(
    tmp_path: Path, name: str, central: Broker, *options: str, base: str | None = None
) -> Broker:
    """A site Mosquitto (``base`` config, default the project's) plus the bridge sections
    ``broker-agent bridge-config`` wrote."""
    conf = tmp_path / f"{name}-bridge.conf"
    args = ["bridge-config", "--site", name, "--central", central.url, "-o", str(conf)]
    assert 0 == main([*args, "--restart-timeout", "1", *options])
    base = base if base is not None else (PROJECT / "mosquitto.conf").read_text()
    return Broker(tmp_path / name, base + "\n" + conf.read_text())


async def retained(
    url: str, topic_filter: str, username: str | None = None, password: str | None = None
) -> dict[str, bytes]:
    """What a fresh subscriber (with these credentials) sees retained under a filter."""
    marker = "test/snapshot-marker" if username is None else f"test/{username}/marker"
    client = client_for(url, username=username, password=password)
    async with observe(client, topic_filter, marker) as fresh:
        await fresh.client.publish(marker, b"end", qos=0)
        end = await fresh.first_on(marker)
        before = fresh.messages[: fresh.messages.index(end)]
    return {str(m.topic): payload_of(m) for m in before}


async def retained_shas(url: str, **credentials: str) -> dict[str, str]:
    """device_id -> sha256 of every config the broker retains."""
    snapshot = await retained(url, CONFIGS, **credentials)
    return {
        topic.split("/")[2]: ConfigEnvelope.model_validate_json(payload).sha256
        for topic, payload in snapshot.items()
        if payload
    }


async def converged(
    url: str, expected: dict[str, str], timeout: float = CONVERGE_S, **credentials: str
) -> None:
    """Wait until the broker at ``url`` retains exactly ``expected``; fail with the difference."""
    deadline = time.monotonic() + timeout
    seen = await retained_shas(url, **credentials)
    while expected != seen and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = await retained_shas(url, **credentials)
    assert expected == seen


async def link_states(url: str, **credentials: str) -> dict[str, bytes]:
    """The bridges' notification topics as the broker retains them."""
    return await retained(url, "$SYS/broker/connection/+/state", **credentials)


async def bridges_up(site: Broker, timeout: float = CONVERGE_S) -> None:
    """Both bridge links of a site report 1 on their notification topics."""
    deadline = time.monotonic() + timeout
    states = await link_states(site.url)
    while not (len(states) == 2 and set(states.values()) == {b"1"}):
        if time.monotonic() > deadline:
            raise AssertionError(f"bridges of {site.url} not connected: {states}")
        await asyncio.sleep(0.1)
        states = await link_states(site.url)
