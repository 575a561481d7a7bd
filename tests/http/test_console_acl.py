"""The console under the production broker profile (mosquitto.prod.conf, its ACL): with an
operator account it sees the fleet and writes through the agent; with a device's account the
broker's ACL leaves it blind to other devices and refuses its writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from broker_agent.commands.console import run_console
from broker_agent.http.server import HttpServer
from broker_agent.settings import AgentSettings, ConsoleSettings
from tests.broker.conftest import certs, secure_broker  # noqa: F401 - the fixtures
from tests.http.console_harness import eventually
from tests.support.agent import agent_settings, running_agent
from tests.support.secure_broker import DEVICE_SECRETS, SecureBroker
from tests.support.service import running

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def console_as(b: SecureBroker, user: str, password: str) -> AsyncIterator[httpx.AsyncClient]:
    servers: list[HttpServer] = []
    settings = ConsoleSettings(
        broker_url=f"mqtts://localhost:{b.tls_port}",
        mqtt_username=user,
        mqtt_password=SecretStr(password),
        ca_file=b.certs.ca_cert,
        http_listen="127.0.0.1:0",
        console_id=user,
        console_request_timeout_s=2,
    )

    async def listening() -> None:
        while not servers or not servers[0].app.state.console.client.connected.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async with (
        running(run_console(settings, servers.append), listening(), name=f"console-{user}"),
        httpx.AsyncClient(base_url=str(servers[0].url), timeout=10) as http,
    ):
        yield http


def agent_of(b: SecureBroker) -> AgentSettings:
    """The agent on the production profile's TLS listener, with its own account."""
    return agent_settings(
        f"mqtts://localhost:{b.tls_port}",
        b.config_dir,
        b.secrets_dir,
        agent_id="test-agent",
        mqtt_username="test-agent",
        mqtt_password=SecretStr(b.passwords["test-agent"]),
        ca_file=b.certs.ca_cert,
        http_listen="",
    )


async def write(http: httpx.AsyncClient, device_id: str, config: dict[str, Any]) -> httpx.Response:
    token = (await http.get("/api/session")).json()["csrf_token"]
    return await http.put(
        f"/api/devices/{device_id}/config", json=config, headers={"X-CSRF-Token": token}
    )


async def test_an_operator_account_works_and_a_device_account_cannot(
    secure_broker: SecureBroker,  # noqa: F811 - the fixture imported above
) -> None:
    b = secure_broker
    async with running_agent(agent_of(b)):
        async with console_as(b, "operator", b.passwords["operator"]) as operator:

            async def both() -> bool:
                return bool((await operator.get("/api/devices")).json()["total"] == 2)

            await eventually(both)
            written = await write(operator, "dev-b", {"name": "from the operator"})
        async with console_as(b, "dev-a", DEVICE_SECRETS["dev-a"]) as device:
            await eventually(lambda: _sees(device, "dev-a"))
            seen = (await device.get("/api/devices")).json()
            refused = await write(device, "dev-b", {"name": "from a device"})
    assert 200 == written.status_code, written.text
    assert ["dev-a"] == [d["device_id"] for d in seen["items"]]  # the ACL hides the others
    # Mosquitto drops a denied publish (v5: PUBACK 0x87, which the client does not raise):
    # no agent ever hears of it, so the console answers with its timeout
    assert (504, "timeout") == (refused.status_code, refused.json()["error"]["code"])
    assert {"name": "from the operator"} == json.loads((b.config_dir / "dev-b.json").read_text())


async def _sees(http: httpx.AsyncClient, device_id: str) -> bool:
    items = (await http.get("/api/devices")).json()["items"]
    return any(d["device_id"] == device_id for d in items)


async def download(http: httpx.AsyncClient, device_id: str) -> httpx.Response:
    return await http.get(
        f"/api/devices/{device_id}/provisioning", params={"partition_size": 0x3000}
    )


async def test_only_an_operator_listed_as_provisioner_downloads_an_image(
    secure_broker: SecureBroker,  # noqa: F811 - the fixture imported above
) -> None:
    b = secure_broker
    async with running_agent(agent_of(b)):
        async with console_as(b, "console-1", b.passwords["console-1"]) as provisioner:
            granted = await download(provisioner, "dev-a")
        async with console_as(b, "operator", b.passwords["operator"]) as operator:
            denied = await download(operator, "dev-a")
    assert 200 == granted.status_code, granted.text
    assert 0x3000 == granted.json()["size"]
    assert 504 == denied.status_code  # the broker drops the request: no agent hears of it
