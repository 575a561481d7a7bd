"""``broker-agent check-broker`` against Mosquitto, whole and configured without some feature.

Mosquitto 2.0 cannot be made MQTT 3.1.1-only (no listener option limits the protocol), nor
announce missing shared subscriptions or wildcards; the v5 features it can refuse are tested
here instead: retained messages (``retain_available false``), QoS 1 (``max_qos 0``) and large
packets (``max_packet_size``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from broker_agent.broker.process import free_port
from broker_agent.commands.check_broker import BrokerCheck, Verdict
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker
from tests.support.broker import Broker
from tests.support.mqtt import retained_snapshot

SETTINGS = MqttSettings()


async def verdicts(*urls: str, prefix: str = "check-broker-test/t") -> dict[str, Verdict]:
    checked = await BrokerCheck(SETTINGS, list(urls), prefix, wait_s=1.0).run()
    return {verdict.name: verdict for verdict in checked}


def not_ok(checked: dict[str, Verdict]) -> dict[str, str]:
    return {name: v.status for name, v in checked.items() if v.status != "ok"}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker_agent.cli", "check-broker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_the_project_mosquitto_passes_and_exits_0(broker: Broker, tmp_path: Path) -> None:
    result = cli(broker.url, cwd=tmp_path)

    lines = result.stdout.splitlines()
    assert 0 == result.returncode, result.stdout + result.stderr
    assert 10 == len([line for line in lines if line.startswith("ok ")])
    assert "usable for broker-agent" in lines[-1]
    assert lines[0].endswith("receive maximum 100, maximum packet size no limit")


def test_an_unreachable_broker_exits_1_with_one_failed_line(tmp_path: Path) -> None:
    result = cli(f"mqtt://127.0.0.1:{free_port()}", cwd=tmp_path)

    assert (1, 1) == (result.returncode, len(result.stdout.splitlines()))
    assert result.stdout.startswith("failed   connect: cannot connect to mqtt://127.0.0.1:")


def test_a_required_feature_missing_exits_1_naming_it(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    result = cli(make_broker("max_qos 0").url, cwd=tmp_path)

    assert 1 == result.returncode
    assert "not usable for broker-agent: QoS 1" in result.stderr


async def test_the_test_messages_are_cleared_afterwards(broker: Broker) -> None:
    prefix = f"{broker.root}/check-broker"
    await verdicts(broker.url, prefix=prefix)

    left = await retained_snapshot(broker.url, f"{prefix}/#")

    assert {} == left


async def test_a_small_packet_limit_is_the_only_missing_feature(
    make_broker: MakeBroker,
) -> None:
    checked = await verdicts(make_broker("max_packet_size 100000").url)

    assert {"packet size >= 1,500,000 B": "missing"} == not_ok(checked)
    assert "100,000" in checked["packet size >= 1,500,000 B"].detail


async def test_without_retain_the_retained_checks_are_missing(make_broker: MakeBroker) -> None:
    checked = await verdicts(make_broker("retain_available false").url)

    expected = {"retained read-back, 1,001 via +": "missing", "Retain As Published": "missing"}
    assert expected == not_ok(checked)


async def test_a_missing_feature_says_what_breaks_without_it(make_broker: MakeBroker) -> None:
    checked = await verdicts(make_broker("max_qos 0").url)

    line = checked["QoS 1"].line()
    assert line.startswith("missing  QoS 1")
    assert "required" in line and "without it: configs, requests and answers" in line


async def test_two_urls_of_one_broker_share_retained_messages(broker: Broker) -> None:
    other_spelling = broker.url.replace("127.0.0.1", "localhost")

    checked = await verdicts(broker.url, other_spelling, prefix=f"{broker.root}/check")

    assert "ok" == checked["retained seen through URL2"].status


async def test_two_separate_brokers_fail_the_shared_retained_check(
    broker: Broker, make_broker: MakeBroker
) -> None:
    checked = await verdicts(broker.url, make_broker().url, prefix=f"{broker.root}/check")

    assert {"retained seen through URL2": "failed"} == not_ok(checked)
