"""The fleet loop under the production broker profile (contract 6.1, 6.3 ACL rules).

Devices write only their own ``status`` and ``config/applied``; operators read every device's
config, ack and status, write ``config/set`` and read the answers; agents take writes through
the shared group, answer, publish the fleet summary and clear a deleted device's ack.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from broker_agent.commands.config import send_write
from broker_agent.commands.status import read_fleet
from firmware_contracts.codes import DevicePresence, FleetState
from firmware_contracts.payloads import FleetSummary
from tests.support import secure_broker as profile
from tests.support.agent import agent_settings, running_agent
from tests.support.device import running_device
from tests.support.mqtt import eventually

pytestmark = pytest.mark.timeout(90)

NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return profile.make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def prod(tmp_path: Path, certs: Any) -> Iterator[profile.SecureBroker]:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed")
    with profile.secure_broker(tmp_path, certs) as broker:
        yield broker


def url(b: profile.SecureBroker) -> str:
    return f"mqtt://127.0.0.1:{b.plain_port}"


def publish_code(b: profile.SecureBroker, user: str, topic: str) -> int:
    """One QoS 1 publish on its own paho connection; the PUBACK reason code (0x87: refused)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{user}-{secrets.token_hex(3)}",
        protocol=paho.MQTTv5,
    )
    client.username_pw_set(user, b.passwords[user])
    connected, acked, codes = threading.Event(), threading.Event(), []
    client.on_connect = lambda *args: connected.set()

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        codes.append(reason.value)
        acked.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", b.plain_port)
    client.loop_start()
    try:
        assert connected.wait(10)
        client.publish(topic, b'{"state": "online"}', qos=1)
        assert acked.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return int(codes[0])


FORBIDDEN = [
    ("dev-a", "iot/devices/dev-b/status"),
    ("dev-a", "iot/devices/dev-b/config/applied"),
    ("dev-a", "iot/devices/dev-a/config/set"),
    ("operator", "iot/devices/dev-a/status"),
    ("operator", "iot/devices/dev-a/config/applied"),
    ("operator", "iot/devices/dev-a/config/set/response"),
    ("operator", "iot/devices/operator/config/applied"),  # the device pattern, voided
    ("station-1", "iot/devices/dev-a/config/set"),
]


@pytest.mark.parametrize(("user", "topic"), FORBIDDEN)
def test_fleet_topics_outside_ones_rights_are_refused(
    prod: profile.SecureBroker, user: str, topic: str
) -> None:
    assert NOT_AUTHORIZED == publish_code(prod, user, topic)


def test_device_writes_its_own_status(prod: profile.SecureBroker) -> None:
    assert publish_code(prod, "dev-a", "iot/devices/dev-a/status") in (0, 0x10)


async def test_operator_writes_and_reads_the_fleet_through_the_agent(
    prod: profile.SecureBroker,
) -> None:
    b = prod
    settings = agent_settings(
        url(b),
        b.config_dir,
        b.secrets_dir,
        agent_id="test-agent",
        mqtt_username="test-agent",
        mqtt_password=SecretStr(b.passwords["test-agent"]),
    )
    operator = b.settings("operator")
    async with (
        running_agent(settings),
        running_device(
            b.plain_port, "dev-a", username="dev-a", password=b.passwords["dev-a"]
        ) as device,
    ):
        answer = await send_write(operator, url(b), "dev-a", {"config": {"interval": 9}}, 10)
        assert "ok" == answer["status"], answer
        await device.wait_acked(answer["sha256"])

        async def in_sync() -> bool:
            view = await read_fleet(operator, url(b), timeout=10)
            found = view.devices.get("dev-a")
            return found is not None and (found.state, found.shown_presence) == (
                FleetState.IN_SYNC,
                DevicePresence.ONLINE,
            )

        await eventually(in_sync)
        deleted = await send_write(operator, url(b), "dev-a", {"delete": True}, 10)
        assert ("ok", None) == (deleted["status"], deleted["sha256"])

        async def ack_cleared() -> bool:
            view = await read_fleet(operator, url(b), timeout=10)
            found = view.devices.get("dev-a")
            return found is not None and found.ack is None

        await eventually(ack_cleared)

        async def summary_shows_the_delete() -> bool:
            payload = await _retained(b, "operator", "iot/agents/test-agent/fleet")
            summary = FleetSummary.from_json(payload)
            # dev-b is left; dev-a is unmanaged: its online status stays retained
            return (1, 1) == (summary.devices, summary.unmanaged)

        await eventually(summary_shows_the_delete)


async def _retained(b: profile.SecureBroker, user: str, topic: str) -> bytes:
    async with b.client(user) as client:
        await client.subscribe(topic, qos=0)
        async with asyncio.timeout(10):
            async for message in client.messages:
                return bytes(message.payload)
    raise AssertionError(f"nothing retained on {topic}")
