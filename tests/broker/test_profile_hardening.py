"""The production profile against a real Mosquitto: client-id takeover and revocation.

Both run Mosquitto from mosquitto.prod.conf (tests/support/secure_broker.py), the real agent
and the real broker-auth sync.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import SecretStr

from firmware_contracts.topics import Topics
from tests.support.agent import agent_settings, running_agent
from tests.support.mqtt import observe
from tests.support.secure_broker import (
    DEVICE_SECRETS,
    NOT_AUTHORIZED,
    SecureBroker,
    connect_code,
    running_auth_sync,
    write_json,
)

TOPICS = Topics("iot")
AGENT_STATUS = TOPICS.agent_status("test-agent")

pytestmark = pytest.mark.timeout(60)


async def test_no_account_on_the_loopback_listener_can_take_the_agents_client_id(
    secure_broker: SecureBroker,
) -> None:
    """An operator and a station connect on the plain listener with the agent's client id.

    Without ``use_username_as_clientid`` on that listener, Mosquitto hands them the agent's
    session: the agent is disconnected, its will (``offline``) goes out, and it reconnects.
    """
    b = secure_broker
    settings = agent_settings(
        f"mqtts://localhost:{b.tls_port}",
        b.config_dir,
        b.secrets_dir,
        agent_id="test-agent",
        mqtt_username="test-agent",
        mqtt_password=SecretStr(b.passwords["test-agent"]),
        ca_file=b.certs.ca_cert,
    )
    marker = TOPICS.flash_response("station-2")
    observer = b.client("station-2", tls=True, client_id="station-2")
    async with (
        running_agent(settings) as agent,
        observe(observer, AGENT_STATUS, marker, qos=1) as seen,
    ):
        await seen.wait_for(lambda: seen.payloads(AGENT_STATUS))
        for intruder in ("operator", "station-1"):
            async with b.client(intruder, identifier=settings.agent_id) as client:
                # a round trip: the broker has finished the CONNECT before we leave
                await client.subscribe("iot/agents/+/status", qos=1)
                async with asyncio.timeout(5):
                    retained = await anext(client.messages)
                assert AGENT_STATUS == retained.topic.value
        # Mosquitto sends the will of a session it hands over before it answers the CONNECT
        # that took it, so the will would be queued for the observer before this marker
        await observer.publish(marker, b"{}", qos=1)  # (its own connection: one per account)
        await seen.wait_for(lambda: seen.payloads(marker))
        still_online = agent.online.is_set()
    states = [json.loads(payload)["state"] for payload in seen.payloads(AGENT_STATUS)]
    assert (["online"], True) == (states, still_online)
    assert seen.closed_at is None


@pytest.mark.parametrize("revocation", ["client_secret removed", "client_secret changed"])
async def test_a_revoked_device_is_cut_off_at_the_reload(
    secure_broker: SecureBroker, revocation: str
) -> None:
    """The broker-auth sync rewrites passwd and sends SIGHUP; Mosquitto 2.0.11 then closes
    the revoked device's open connection (and only that one) and refuses the old secret."""
    b = secure_broker
    old_secret = DEVICE_SECRETS["dev-a"]
    dev_a = b.client("dev-a", tls=True, client_id="dev-a")
    dev_b = b.client("dev-b", tls=True, client_id="dev-b")
    async with (
        running_auth_sync(b.auth) as sync,
        observe(dev_a, TOPICS.device_config("dev-a"), qos=1) as seen_a,
        observe(dev_b, TOPICS.device_config("dev-b"), qos=1) as seen_b,
    ):
        syncs = sync.syncs
        revoked: dict[str, str] = {"client_id": "c"}
        if revocation == "client_secret changed":
            revoked["client_secret"] = "rotated-" + old_secret
        written = time.monotonic()
        write_json(b.secrets_dir / "dev-a.json", revoked)
        async with asyncio.timeout(10):
            while sync.syncs == syncs:
                sync.synced.clear()
                await sync.synced.wait()
        reloaded = time.monotonic()  # passwd rewritten and SIGHUP sent
        await seen_a.wait_for(lambda: seen_a.closed_at is not None, timeout=10)
        assert seen_a.closed_at is not None
        cut_off = seen_a.closed_at - reloaded
        print(
            f"\n{revocation}: connection closed {cut_off:.2f} s after the SIGHUP "
            f"({seen_a.closed_at - written:.2f} s after the secrets file changed)"
        )
        old_secret_code = await connect_code(b.client("dev-a", old_secret, tls=True))
        dev_b_open = seen_b.closed_at is None
    assert (NOT_AUTHORIZED, True) == (old_secret_code, dev_b_open)
    assert cut_off < 5, f"the revoked connection stayed open {cut_off:.2f} s after the reload"
