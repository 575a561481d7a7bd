"""Connection against real Mosquitto processes: URL lists, CONNACK capabilities, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from broker_agent.app import run_agent
from broker_agent.broker.process import free_port
from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.mqtt import BrokerUrl, SubscriptionRefusedError, Will, make_connection
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker
from tests.support.agent import agent_settings
from tests.support.broker import Broker

SETTINGS = MqttSettings()


def dead_url(credentials: str = "") -> str:
    return f"mqtt://{credentials}127.0.0.1:{free_port()}"


async def test_a_refused_first_url_moves_on_to_the_next(broker: Broker) -> None:
    connection = make_connection(SETTINGS, f"{dead_url()},{broker.url}", client_id="t-next")

    async with connection:
        used = connection.url.display()

    assert BrokerUrl.parse(broker.url).display() == used


async def test_each_failed_url_is_logged_in_display_form_only(broker: Broker) -> None:
    dead = dead_url("agent:s3cret@")
    with structlog.testing.capture_logs() as logs:
        async with make_connection(SETTINGS, f"{dead},{broker.url}", client_id="t-log"):
            pass

    [failed] = [e for e in logs if e["event"] == "broker_connect_failed"]
    [connected] = [e for e in logs if e["event"] == "broker_connected"]
    expected = (dead.replace("agent:s3cret@", ""), BrokerUrl.parse(broker.url).display())
    assert expected == (failed["url"], connected["url"])
    assert "s3cret" not in json.dumps(logs, default=str)


async def test_when_every_url_fails_the_error_names_each_once() -> None:
    first, second = dead_url(), dead_url()

    with pytest.raises(BrokerUnavailableError) as caught:
        async with make_connection(SETTINGS, f"{first},{second}", client_id="t-none"):
            pass

    assert [1, 1] == [str(caught.value).count(url) for url in (first, second)]


async def test_capabilities_come_from_the_connack(make_broker: MakeBroker) -> None:
    limited = make_broker("max_packet_size 100000", "max_inflight_messages 7")

    async with make_connection(SETTINGS, limited.url, client_id="t-caps") as connection:
        caps = connection.capabilities

    # Mosquitto announces max_inflight_messages as Receive Maximum
    assert (100_000, 7, True) == (caps.maximum_packet_size, caps.receive_maximum, caps.retain)


async def test_publishes_in_flight_stay_within_the_receive_maximum(
    make_broker: MakeBroker,
) -> None:
    small = make_broker("max_inflight_messages 7")

    async with make_connection(SETTINGS, small.url, client_id="t-inflight") as connection:
        limit = connection.inflight_limit
        await asyncio.gather(*(connection.publish(f"t/{i}", b"x", qos=1) for i in range(50)))

    assert 7 == limit


async def test_a_small_packet_limit_is_warned_about(make_broker: MakeBroker) -> None:
    limited = make_broker("max_packet_size 100000")

    with structlog.testing.capture_logs() as logs:
        async with make_connection(SETTINGS, limited.url, client_id="t-small"):
            pass

    [warning] = [e for e in logs if e["event"] == "broker_packet_limit_small"]
    assert 100_000 == warning["maximum_packet_size"]


async def test_a_broker_without_retain_is_refused_with_a_setup_error(
    make_broker: MakeBroker,
) -> None:
    no_retain = make_broker("retain_available false")

    with pytest.raises(SetupError, match="does not support retained messages"):
        async with make_connection(SETTINGS, no_retain.url, client_id="t-noretain"):
            pass


async def test_a_qos0_only_broker_is_refused_with_a_setup_error(make_broker: MakeBroker) -> None:
    qos0 = make_broker("max_qos 0")

    with pytest.raises(SetupError, match="QoS 0 only"):
        async with make_connection(SETTINGS, qos0.url, client_id="t-qos0"):
            pass


async def test_a_will_at_qos1_refused_by_a_qos0_broker_is_a_setup_error(
    make_broker: MakeBroker,
) -> None:
    qos0 = make_broker("max_qos 0")
    will = Will("t/status", b"offline", retain=False, qos=1)

    with pytest.raises(SetupError, match=r"QoS not supported \(0x9B\)"):
        async with make_connection(SETTINGS, qos0.url, client_id="t-qos0-will", will=will):
            pass


async def test_check_broker_mode_connects_to_a_broker_without_retain(
    make_broker: MakeBroker,
) -> None:
    no_retain = make_broker("retain_available false")
    connection = make_connection(
        SETTINGS, no_retain.url, client_id="t-lenient", require_features=False
    )

    async with connection:
        assert connection.capabilities.retain is False


async def test_a_disconnect_from_the_broker_is_logged_with_its_reason_code(
    make_broker: MakeBroker,
) -> None:
    limited = make_broker("max_packet_size 2000")
    connection = make_connection(
        SETTINGS, limited.url, client_id="t-toolarge", require_features=False
    )

    with structlog.testing.capture_logs() as logs, pytest.raises(BrokerUnavailableError):
        async with connection:
            await connection.publish("t/big", b"x" * 5000, qos=1, timeout=5)
            await asyncio.wait_for(connection.wait_disconnected(), 5)

    [sent] = [e for e in logs if e["event"] == "broker_sent_disconnect"]
    assert ("0x95", "Packet too large") == (sent["code"], sent["reason"])


def dynsec_broker_text(tmp_path: Path) -> str:
    """Mosquitto with the dynamic security plugin, anonymous clients allowed, and the default
    ACL denying subscriptions: SUBACK 0x87 (measured; an acl_file denial is granted instead)."""
    config = tmp_path / "dynsec.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(config), "admin", "admin-pw"],
        check=True,
        capture_output=True,
    )
    document = json.loads(config.read_text())
    document["defaultACLAccess"]["subscribe"] = False
    config.write_text(json.dumps(document))
    plugin = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
    return f"plugin {plugin}\nplugin_opt_config_file {config}"


@pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None, reason="needs mosquitto_ctrl")
async def test_a_refused_subscription_raises_with_its_reason(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    denying = make_broker(*dynsec_broker_text(tmp_path).splitlines())

    with structlog.testing.capture_logs() as logs:
        async with make_connection(SETTINGS, denying.url, client_id="t-denied") as connection:
            with pytest.raises(SubscriptionRefusedError) as caught:
                await connection.subscribe("iot/devices/+/config", qos=1)

    assert (0x87, "Not authorized") == (caught.value.code, caught.value.reason)
    [refused] = [e for e in logs if e["event"] == "subscription_refused"]
    assert ("0x87", "iot/devices/+/config") == (refused["code"], refused["topic_filter"])


@pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None, reason="needs mosquitto_ctrl")
async def test_the_agent_stops_on_a_refused_subscription_instead_of_reconnecting(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    denying = make_broker(*dynsec_broker_text(tmp_path).splitlines())
    (tmp_path / "configs").mkdir()
    settings = agent_settings(denying.url, tmp_path / "configs", http_listen="")

    with structlog.testing.capture_logs() as logs, pytest.raises(BaseExceptionGroup) as caught:
        await asyncio.wait_for(run_agent(settings), 15)

    refused = caught.value.subgroup(SubscriptionRefusedError)
    assert refused is not None
    assert 1 == len([e for e in logs if e["event"] == "broker_connected"])  # no second attempt


@pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None, reason="needs mosquitto_ctrl")
def test_a_refused_subscription_exits_2_with_one_line_saying_why(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    denying = make_broker(*dynsec_broker_text(tmp_path).splitlines())
    (tmp_path / "configs").mkdir()
    env = {**os.environ, "BROKER_AGENT_HTTP_LISTEN": "", "BROKER_AGENT_LOG_LEVEL": "error"}

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker_agent.cli",
            "run",
            "--broker-url",
            denying.url,
            "--config-dir",
            str(tmp_path / "configs"),
            "--agent-id",
            "t-refused",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )

    last = result.stderr.strip().splitlines()[-1]
    assert 2 == result.returncode
    assert last.startswith("broker-agent: error: the broker refused the subscription to ")
    assert last.endswith("Not authorized (0x87)")


def test_a_broker_without_retain_makes_the_station_exit_2_with_one_line(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    no_retain = make_broker("retain_available false")
    env = {**os.environ, "BROKER_AGENT_HTTP_LISTEN": "", "BROKER_AGENT_LOG_LEVEL": "error"}

    result = subprocess.run(
        [sys.executable, "-m", "broker_agent.cli", "station", "--broker-url", no_retain.url,
         "--station-id", "t-noretain", "--manufacturing-log", str(tmp_path / "log.jsonl")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip

    lines = result.stderr.strip().splitlines()
    assert (2, 1) == (result.returncode, len(lines))
    refused = f"the broker at {no_retain.url} refused the connection: Retain not supported (0x9A)"
    assert lines[0].startswith(f"broker-agent: error: {refused}")
