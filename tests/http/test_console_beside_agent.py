"""The console inside ``broker-agent run`` (http/embed.py): never on the agent's MQTT account
(under the production profile one user name is one client id, so the two kicked each other
off in a loop), and a console failure reported instead of stopping the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr

from broker_agent.app import Agent
from tests.broker.conftest import certs, secure_broker  # noqa: F401 - the fixtures
from tests.http.console_harness import eventually
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.secure_broker import SecureBroker

pytestmark = pytest.mark.timeout(60)


def http_of(agent: Agent) -> httpx.AsyncClient:
    assert agent.http is not None and agent.http.url is not None
    return httpx.AsyncClient(base_url=agent.http.url, timeout=10)


def reconnects(metrics_text: str) -> float:
    [line] = [
        ln for ln in metrics_text.splitlines() if ln.startswith("broker_agent_broker_reconnects")
    ]
    return float(line.split()[-1])


def prod_agent(b: SecureBroker, url: str, **extra: Any) -> Any:
    return agent_settings(
        url,
        b.config_dir,
        b.secrets_dir,
        agent_id="test-agent",
        ca_file=b.certs.ca_cert,
        http_listen="127.0.0.1:0",
        **extra,
    )


async def test_beside_an_agent_with_a_user_name_and_no_console_account_the_console_is_off(
    secure_broker: SecureBroker,  # noqa: F811 - the fixture imported above
) -> None:
    b = secure_broker
    settings = prod_agent(
        b,
        f"mqtts://localhost:{b.tls_port}",
        mqtt_username="test-agent",
        mqtt_password=SecretStr(b.passwords["test-agent"]),
    )
    with structlog.testing.capture_logs() as logs:
        async with running_agent(settings) as agent, http_of(agent) as http:
            root = await http.get("/")
            api = await http.get("/api/devices")
            ready = await http.get("/readyz")

    assert (503, "console_off") == (root.status_code, root.json()["error"]["code"])
    assert "BROKER_AGENT_CONSOLE_MQTT_USERNAME" in root.json()["error"]["message"]
    assert 503 == api.status_code
    assert {"ready": True, "reason": None} == ready.json()  # readiness stays about the agent
    assert 1 == sum(e["event"] == "console_off" for e in logs)


async def test_with_its_own_account_the_console_runs_beside_the_agent_without_kicking_it(
    secure_broker: SecureBroker,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = secure_broker
    password_file = tmp_path / "console-password"
    password_file.write_text(b.passwords["operator"] + "\n")
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_MQTT_USERNAME", "operator")
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_MQTT_PASSWORD_FILE", str(password_file))
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_ID", "operator")
    # the agent's account in the URL: a URL's user name wins over settings, so the console
    # must not take it from there either
    url = f"mqtts://test-agent:{b.passwords['test-agent']}@localhost:{b.tls_port}"
    async with running_agent(prod_agent(b, url)) as agent, http_of(agent) as http:

        async def fleet_seen() -> bool:
            return bool((await http.get("/api/devices")).json()["total"] == 2)

        await eventually(fleet_seen)
        token = (await http.get("/api/session")).json()["csrf_token"]
        written = await http.put(
            "/api/devices/dev-a/config", json={"n": 1}, headers={"X-CSRF-Token": token}
        )
        metrics = (await http.get("/metrics")).text

    assert 200 == written.status_code, written.text  # the console wrote through the agent
    assert 0 == reconnects(metrics)  # and the agent was never kicked off


async def test_a_failing_built_in_console_is_reported_and_the_agent_keeps_running(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_MQTT_USERNAME", "operator")
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_MQTT_PASSWORD_FILE", str(tmp_path / "missing"))
    settings = agent_settings(broker.url, config_dir, http_listen="127.0.0.1:0")
    with structlog.testing.capture_logs() as logs:
        async with running_agent(settings) as agent, http_of(agent) as http:

            async def console_failed() -> bool:
                return any(e["event"] == "console_failed" for e in logs)

            await eventually(console_failed)
            token = (await http.get("/api/session")).json()["csrf_token"]
            write = await http.put(
                "/api/devices/dev-1/config", json={"n": 1}, headers={"X-CSRF-Token": token}
            )
            still_online = agent.online.is_set()

    assert still_online
    assert 503 == write.status_code
    assert "cannot read the MQTT password file" in write.json()["error"]["message"]
