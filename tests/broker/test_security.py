"""The production profile against a real Mosquitto: mosquitto.prod.conf, generated passwd/acl.

The ``secure_broker`` fixture (tests/broker/conftest.py, tests/support/secure_broker.py) starts
Mosquitto from the project's ``mosquitto.prod.conf`` with only its paths and ports replaced.
The profile binds client ids to user names on every listener, so each account holds one
connection: a test publishes through the connection that also observes for that account.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from broker_agent.commands.provision import request_image_online
from broker_agent.provisioning.credentials import CredentialStore
from firmware_contracts.topics import Topics
from tests.support.agent import agent_settings, running_agent
from tests.support.mqtt import Observer, observe, payload_of
from tests.support.nvs_parser import parse_nvs
from tests.support.secure_broker import (
    DEVICE_SECRETS,
    NOT_AUTHORIZED,
    SecureBroker,
    connect_code,
    make_certs,
    running_auth_sync,
    write_json,
)

TOPICS = Topics("iot")

pytestmark = pytest.mark.timeout(60)


# -- helpers ----------------------------------------------------------------------------------
def publish_codes(
    broker: SecureBroker, user: str, messages: list[tuple[str, bytes]], *, retain: bool = False
) -> list[int]:
    """Publish at QoS 1 with paho (aiomqtt hides PUBACK reason codes); return them in order.

    One connection per message: Mosquitto 2.0.11 closes the connection right after a PUBACK
    0x87, so a refused publish would take the ones after it down with it.
    """
    return [publish_code(broker, user, topic, payload, retain) for topic, payload in messages]


def publish_code(
    broker: SecureBroker,
    user: str,
    topic: str,
    payload: bytes,
    retain: bool,
    *,
    seen: list[str] | None = None,
) -> int:
    """One QoS 1 publish on its own connection; its PUBACK reason code.

    With ``seen``, the connection first subscribes to ``#`` and appends the topic of every
    message delivered to it before the PUBACK (Mosquitto delivers a publish to its matching
    subscribers, the sender included, before it acknowledges it): with one connection per
    account, this is how an account observes what its own publish reaches.
    """
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{user}-{secrets.token_hex(3)}",
        protocol=paho.MQTTv5,
    )
    client.username_pw_set(user, broker.passwords[user])
    connected, subscribed, acked = threading.Event(), threading.Event(), threading.Event()
    codes: list[int] = []

    def on_connect(*args: Any) -> None:
        connected.set()

    def on_subscribe(*args: Any) -> None:
        subscribed.set()

    def on_message(c: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        if seen is not None and not acked.is_set() and not message.retain:
            seen.append(message.topic)

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        codes.append(reason.value)
        acked.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    client.connect("127.0.0.1", broker.plain_port)
    client.loop_start()
    try:
        assert connected.wait(10), "paho did not connect"
        if seen is not None:
            client.subscribe("#", qos=1)
            assert subscribed.wait(10), "no SUBACK"
        client.publish(topic, payload, qos=1, retain=retain)
        assert acked.wait(10), f"no PUBACK for {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


async def publish(broker: SecureBroker, user: str, *topics: str, retain: bool = False) -> None:
    """Publish (allowed) messages in order; each must be accepted (0 or 0x10 no subscribers)."""
    messages = [(topic, b"{}") for topic in topics]
    codes = await asyncio.to_thread(publish_codes, broker, user, messages, retain=retain)
    assert [0] * len(topics) == [0 if c == 0x10 else c for c in codes], f"{user}: {codes}"


async def publish_on(account: Observer, *topics: str, retain: bool = False) -> None:
    """Publish (allowed) messages on an account's one connection, each acknowledged in turn.

    A refused one (0x87) would cost the connection, and the waits that follow time out.
    """
    for topic in topics:
        await account.client.publish(topic, b"{}", qos=1, retain=retain)


def t(suffix: str) -> str:
    return f"iot/{suffix}"


# -- tests ------------------------------------------------------------------------------------
async def test_anonymous_and_wrong_passwords_are_refused(secure_broker: SecureBroker) -> None:
    b = secure_broker
    codes = {
        "anonymous": await connect_code(b.client(None)),
        "wrong password": await connect_code(b.client("dev-a", "not-the-secret")),
        "another device's secret": await connect_code(b.client("dev-a", DEVICE_SECRETS["dev-b"])),
        "unknown user": await connect_code(b.client("dev-zz", "whatever")),
        "right password": await connect_code(b.client("dev-a")),
    }

    assert {
        "anonymous": NOT_AUTHORIZED,
        "wrong password": NOT_AUTHORIZED,
        "another device's secret": NOT_AUTHORIZED,
        "unknown user": NOT_AUTHORIZED,
        "right password": 0,
    } == codes


async def what_each_identity_sees(b: SecureBroker) -> dict[str, set[str]]:
    """Everyone subscribes to '#'; every account publishes what it may, on its one connection."""
    async with (
        observe(b.client("dev-a"), "#", "$share/devices/#", qos=1) as dev_a,
        observe(b.client("station-1"), "#", "$share/s/iot/provision/+/request", qos=1) as st1,
        observe(b.client("station-2"), "#", qos=1) as st2,
        observe(b.client("operator"), "#", qos=1) as operator,
        observe(b.client("test-agent"), "#", qos=1) as agent,
        observe(b.client("test-agent-2"), "$share/agents/iot/provision/+/request", qos=1) as shared,
    ):
        # every message below is published by its rightful owner, on the account's one
        # connection (the profile binds client ids to user names on every listener)
        await publish_on(agent, t("devices/dev-a/config"), t("devices/dev-b/config"))
        await publish_on(agent, t("agents/test-agent/status"), retain=True)
        await publish_on(
            agent,
            t("agents/test-agent/events"),
            t("provision/dev-b/response/station-2/j1"),
            t("provision/dev-a/response/station-1/j2"),
            t("provision/dev-b/response"),
        )
        await publish_on(st1, t("stations/station-1/status"), retain=True)
        await publish_on(st1, t("stations/station-1/flash/response"), t("provision/dev-b/request"))
        await publish_on(st2, t("stations/station-2/status"), retain=True)
        await publish_on(operator, t("stations/station-1/flash/request"))
        await publish(b, "dev-b", t("devices/dev-b/config/applied"))  # (no dev-b observer)
        await publish_on(dev_a, t("devices/dev-a/config/applied"))
        # markers: each subscriber's last message; everything above reached it before
        markers = {
            dev_a: t("devices/dev-a/config"),
            agent: t("devices/dev-a/config"),
            st1: t("provision/dev-a/response/station-1/end"),
            st2: t("provision/dev-a/response/station-2/end"),
            operator: t("agents/test-agent/events"),
            shared: t("provision/end/request"),
        }
        await publish_on(agent, *sorted(set(markers.values()) - {markers[shared]}))
        await publish_on(st1, markers[shared])
        for seen, marker in markers.items():
            await seen.first_on(marker)
        return {
            "dev-a": set(dev_a.topics),
            "station-1": set(st1.topics),
            "station-2": set(st2.topics),
            "operator": set(operator.topics),
            "agent": set(agent.topics),
            "agent $share": set(shared.topics),
        }


GRANTED = {  # what each identity receives on '#' (or its shared subscription) and no more
    "dev-a": {t("devices/dev-a/config")},
    "station-1": {
        t("stations/station-1/status"),
        t("stations/station-1/flash/response"),
        t("stations/station-1/flash/request"),
        t("provision/dev-a/response/station-1/j2"),
        t("provision/dev-a/response/station-1/end"),
        t("agents/test-agent/status"),
    },
    "station-2": {
        t("stations/station-2/status"),
        t("provision/dev-b/response/station-2/j1"),
        t("provision/dev-a/response/station-2/end"),
        t("agents/test-agent/status"),
    },
    "operator": {  # the fleet state (contract 6.1): every device's config and ack
        t("devices/dev-a/config"),
        t("devices/dev-b/config"),
        t("devices/dev-a/config/applied"),
        t("devices/dev-b/config/applied"),
        t("agents/test-agent/status"),
        t("agents/test-agent/events"),
        t("stations/station-1/status"),
        t("stations/station-2/status"),
        t("stations/station-1/flash/response"),
    },
    "agent": {
        t("devices/dev-a/config"),
        t("devices/dev-b/config"),
        t("devices/dev-a/config/applied"),
        t("devices/dev-b/config/applied"),
        t("agents/test-agent/status"),
        t("agents/test-agent/events"),
        t("provision/dev-b/request"),
        t("provision/end/request"),
    },
    "agent $share": {t("provision/dev-b/request"), t("provision/end/request")},
}


@pytest.mark.parametrize("identity", GRANTED)
async def test_each_identity_sees_only_its_own_topics(
    secure_broker: SecureBroker, identity: str
) -> None:
    seen = await what_each_identity_sees(secure_broker)

    assert GRANTED[identity] == seen[identity]


async def test_publishing_outside_ones_rights_is_refused_and_never_delivered(
    secure_broker: SecureBroker,
) -> None:
    b = secure_broker
    forged = {
        "dev-a": [
            t("devices/dev-a/config"),
            t("devices/dev-b/config/applied"),
            t("provision/dev-a/response"),
            t("provision/dev-a/response/station-1/x"),
            t("provision/dev-a/request"),
            t("agents/test-agent/status"),
        ],
        "station-1": [
            t("devices/dev-a/config"),
            t("devices/station-1/config/applied"),  # the device pattern grants stations nothing
            t("provision/dev-a/response/station-1/x"),
            t("stations/station-2/flash/request"),
        ],
        "operator": [t("devices/dev-a/config"), t("provision/dev-a/request")],
    }

    def forge(user: str, seen: list[str] | None = None) -> list[int]:
        codes = []
        for topic in forged[user]:
            codes.append(publish_code(b, user, topic, b"forged", retain=False, seen=seen))
        return codes

    codes = {}
    async with observe(b.client("test-agent"), "#", qos=1) as agent:
        async with observe(b.client("station-1"), "#", qos=1) as station:
            for user in ("dev-a", "operator"):
                codes[user] = await asyncio.to_thread(forge, user)
            await publish_on(agent, t("provision/dev-a/response/station-1/end"))
            await station.first_on(t("provision/dev-a/response/station-1/end"))
        # station-1's own forgeries: its one connection watches '#' while it publishes
        station_self: list[str] = []
        codes["station-1"] = await asyncio.to_thread(forge, "station-1", station_self)
        await publish(b, "dev-a", t("devices/dev-a/config/applied"))
        await agent.first_on(t("devices/dev-a/config/applied"))

    assert {user: [NOT_AUTHORIZED] * len(topics) for user, topics in forged.items()} == codes
    assert [t("devices/dev-a/config/applied")] == agent.topics
    assert ([t("provision/dev-a/response/station-1/end")], []) == (station.topics, station_self)


async def test_issued_credentials_reach_the_broker_without_a_restart(
    secure_broker: SecureBroker,
) -> None:
    b = secure_broker
    write_json(b.config_dir / "dev-new.json", {"name": "new"})
    pid_before = b.pid

    async with running_auth_sync(b.auth) as sync:
        inode = b.auth.passwd_file.stat().st_ino
        refused_before = await connect_code(b.client("dev-new", "anything"))
        # the real issuing path, as the provisioning responder runs it
        store = CredentialStore(b.secrets_dir, b.config_dir, issue=True)
        secret = (await asyncio.to_thread(store.values_for, "dev-new"))["client_secret"]
        deadline = time.monotonic() + 10
        while (accepted := await connect_code(b.client("dev-new", secret))) != 0:
            assert time.monotonic() < deadline, f"dev-new still refused ({accepted:#x})"
            await asyncio.sleep(0.05)
        # an edit that changes no credential rewrites nothing
        syncs = sync.syncs
        inode_after_issue = b.auth.passwd_file.stat().st_ino
        write_json(b.config_dir / "dev-a.json", {"name": "renamed"})
        async with asyncio.timeout(10):
            while sync.syncs == syncs:
                sync.synced.clear()
                await sync.synced.wait()
        unchanged = b.auth.passwd_file.stat().st_ino == inode_after_issue != inode

    assert (NOT_AUTHORIZED, 0, True) == (refused_before, accepted, unchanged)
    assert (pid_before, None) == (b.pid, b.process.poll() if b.process else "gone")
    assert 0o640 == b.auth.passwd_file.stat().st_mode & 0o777


async def test_tls_needs_the_generated_ca_and_binds_client_ids_to_users(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    b = secure_broker
    other = make_certs.make_certs(tmp_path / "other-ca", ["broker.test"])
    applied = t("devices/dev-a/config/applied")

    agent = b.client("test-agent", tls=True, client_id="test-agent")
    async with observe(agent, applied, qos=1) as seen:
        # a device that claims the agent's client id must not take over its session
        async with b.client("dev-a", tls=True, client_id="test-agent") as device:
            await device.publish(applied, b"{}", qos=1)
        await seen.wait_for(lambda: seen.messages or seen.closed_at is not None, 5)

    def handshake(ca_file: Path) -> str:
        context = ssl.create_default_context(cafile=str(ca_file))
        with socket.create_connection(("127.0.0.1", b.tls_port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return str(tls.version())
            except ssl.SSLCertVerificationError as exc:
                return f"refused: {exc.verify_message}"

    assert ([applied], None) == (seen.topics, seen.closed_at)  # still connected
    assert handshake(b.certs.ca_cert) in ("TLSv1.2", "TLSv1.3")
    # (checked on a bare socket: paho leaks the SSL socket of a failed handshake)
    assert handshake(other.ca_cert).startswith("refused: ")


async def config_of(client: aiomqtt.Client, device_id: str) -> dict[str, Any]:
    """The retained config a device's connection receives on subscribing."""
    topic = TOPICS.device_config(device_id)
    async with observe(client, topic, qos=1) as device:
        message = await device.first_on(topic)
    return dict(json.loads(payload_of(message)))


async def test_agent_end_to_end_over_tls(secure_broker: SecureBroker) -> None:
    """The agent on TLS with its own account; a station provisions a new device (issuing its
    credentials); the device connects with what its NVS image holds and gets its config."""
    b = secure_broker
    write_json(b.config_dir / "dev-new.json", {"interval": 7})
    settings = agent_settings(
        f"mqtts://localhost:{b.tls_port}",
        b.config_dir,
        b.secrets_dir,
        agent_id="test-agent",
        mqtt_username="test-agent",
        mqtt_password=SecretStr(b.passwords["test-agent"]),
        ca_file=b.certs.ca_cert,
        issue_credentials=True,
    )

    async with running_auth_sync(b.auth), running_agent(settings):
        dev_a = await config_of(b.client("dev-a", tls=True, client_id="dev-a"), "dev-a")
        image = await request_image_online(
            b.settings("station-1"),
            f"mqtts://localhost:{b.tls_port}",
            "dev-new",
            0x3000,
            timeout=10,
        )
        prov = parse_nvs(image.data).strings("prov")
        key, secret = prov["device_key"], prov["client_secret"]
        deadline = time.monotonic() + 10
        while await connect_code(b.client(key, secret, tls=True)) != 0:
            assert time.monotonic() < deadline, "the issued device was never admitted"
            await asyncio.sleep(0.05)
        dev_new = await config_of(b.client(key, secret, tls=True, client_id=key), key)

    assert ("dev-a", {"name": "dev-a"}) == (dev_a["device_id"], dev_a["config"])
    assert "dev-new" == prov["device_key"]
    assert ("dev-new", {"interval": 7}) == (dev_new["device_id"], dev_new["config"])
    issued = json.loads((b.secrets_dir / "dev-new.json").read_text())
    assert issued["client_secret"] == prov["client_secret"]
