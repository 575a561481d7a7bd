"""The conformance monitor accepts contract traffic and names every message that breaks it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_contracts.payloads import config_sha256
from tests.support.conformance import ConformanceMonitor, check_message

if TYPE_CHECKING:
    from tests.support.broker import Broker

CONFIG = {"report_interval_s": 30}
ENVELOPE = {
    "v": 1,
    "device_id": "kitchen-01",
    "sha256": config_sha256(CONFIG),
    "updated_at": "2026-11-25T19:21:46Z",
    "config": CONFIG,
}
SHA = config_sha256(CONFIG)
TS = "2026-11-25T19:21:46Z"
FLEET = {
    "devices": 3,
    "in_sync": 1,
    "failed": 0,
    "pending": 1,
    "stale": 0,
    "never_applied": 1,
    "unmanaged": 2,
    "online": 2,
    "offline": 0,
    "unknown": 1,
    "ts": TS,
}

GOOD: list[tuple[str, Any, bool]] = [
    ("iot/devices/kitchen-01/config", ENVELOPE, True),
    ("iot/devices/kitchen-01/config", b"", True),  # a deleted config: zero-length retained clear
    ("iot/devices/kitchen-01/config/applied", {"sha256": SHA, "ok": True, "error": None}, True),
    (
        "iot/devices/kitchen-01/config/applied",
        {"sha256": SHA, "ok": False, "error": {"code": "range", "message": "too low"}, "ts": TS},
        True,
    ),
    ("iot/devices/kitchen-01/config/applied", b"", True),  # cleared when the config is deleted
    (
        "iot/devices/kitchen-01/status",
        {"state": "online", "fw_version": "1.4.2", "rssi": -61},
        True,
    ),
    ("iot/devices/kitchen-01/status", {"state": "offline"}, True),  # the will
    ("iot/devices/kitchen-01/config/set", {"request_id": "w-1", "merge": {"a": None}}, False),
    ("iot/devices/kitchen-01/config/set", {"delete": True, "if_sha256": None}, False),
    (
        "iot/devices/kitchen-01/config/set/response/console/7",
        {"request_id": "w-1", "status": "ok", "device_id": "kitchen-01", "sha256": None},
        False,
    ),
    (
        "iot/devices/kitchen-01/config/set/response",
        {
            "request_id": "w-1",
            "status": "error",
            "device_id": "kitchen-01",
            "error": {"code": "conflict", "message": f"the current sha256 is {SHA}"},
        },
        False,
    ),
    ("iot/agents/agent-1/fleet", FLEET, True),
    ("iot/agents/agent-1/status", {"state": "online", "agent_id": "agent-1", "devices": 1}, True),
    (
        "iot/agents/agent-1/events",
        {
            "event": "config_published",
            "device_id": "kitchen-01",
            "sha256": SHA,
            "ts": "2026-11-25T19:21:46Z",
        },
        False,
    ),
    ("iot/agents/agent-1/sync", b"not json at all", False),  # the agent's own marker: ignored
    ("iot/provision/kitchen-01/request", {"request_id": "r-1", "partition_size": 20480}, False),
    (
        "iot/provision/kitchen-01/response/bench-1/job-7",
        {
            "request_id": "r-1",
            "status": "error",
            "device_id": "kitchen-01",
            "error": {"code": "unknown_device", "message": "no config or secrets"},
        },
        False,
    ),
    ("iot/stations/bench-1/status", {"state": "offline", "station_id": "bench-1"}, True),
    ("iot/stations/bench-1/flash/request", {"device_id": "kitchen-01"}, False),
    ("iot/stations/bench-1/flash/cancel", {"request_id": "job-1"}, False),
    (
        "iot/stations/bench-1/flash/response/op-3",
        {"request_id": "job-1", "status": "accepted", "phase": "connecting", "progress": 0},
        False,
    ),
    ("iot/elsewhere/not/a/contract/topic", b"\xff", False),
]

BAD: list[tuple[str, Any, bool, str]] = [
    ("iot/devices/kitchen-01/config", {**ENVELOPE, "sha256": "0" * 64}, True, "canonical config"),
    ("iot/devices/kitchen-01/config", {**ENVELOPE, "device_id": "hall-02"}, True, "does not match"),
    (
        "iot/devices/kitchen-01/config",
        {k: v for k, v in ENVELOPE.items() if k != "updated_at"},
        True,
        "'updated_at' is a required property",
    ),
    ("iot/devices/kitchen-01/config", ENVELOPE, False, "must be retained"),
    ("iot/devices/kitchen-01/config", b"", False, "zero-length"),
    ("iot/devices/Kitchen-01/config", ENVELOPE, True, "not a valid device_id"),
    ("iot/devices/kitchen-01/config/applied", {"sha256": SHA, "ok": "yes"}, True, "ok: 'yes'"),
    (
        "iot/devices/kitchen-01/config/applied",
        {"sha256": SHA, "ok": True, "error": None},
        False,
        "must be retained",  # v1.1: the ack is retained
    ),
    ("iot/devices/kitchen-01/status", {"state": "online"}, False, "must be retained"),
    ("iot/devices/kitchen-01/status", {"fw_version": "1.4.2"}, True, "'state' is a required"),
    ("iot/devices/kitchen-01/config/set", {"config": {}, "merge": {}}, False, "config_set_request"),
    ("iot/devices/kitchen-01/config/set", {"config": {}}, True, "must not be retained"),
    ("iot/devices/kitchen-01/config/set", b'{"config": {"gain": NaN}}', False, "NaN is not JSON"),
    (
        "iot/devices/kitchen-01/config/set/response",
        {"request_id": "w-1", "status": "ok", "device_id": "hall-02", "sha256": SHA},
        False,
        "does not match",
    ),
    (
        "iot/devices/kitchen-01/config/set/response",
        {"request_id": "w-1", "status": "ok", "device_id": "kitchen-01"},
        False,
        "config_set_ok: (root): 'sha256' is a required property",
    ),
    ("iot/agents/agent-1/fleet", {**FLEET, "devices": 4}, True, "counts do not add up"),
    ("iot/agents/agent-1/fleet", FLEET, False, "must be retained"),
    ("iot/agents/agent-1/status", {"state": "sleeping", "agent_id": "agent-1"}, True, "state:"),
    ("iot/provision/kitchen-01/request", {"partition_size": 20480}, True, "must not be retained"),
    ("iot/provision/kitchen-01/request", b"{not json", False, "not UTF-8 JSON"),
    ("iot/provision/kitchen-01/request", [20480], False, "not a JSON object"),
    (
        "iot/provision/kitchen-01/response",
        {"request_id": "r-1", "status": "ok", "device_id": "kitchen-01"},
        False,
        "provision_ok:",
    ),
    (
        "iot/stations/bench-1/flash/response",
        {"request_id": "job-1", "status": "in_progress", "phase": "flashing", "progress": 5},
        False,
        "phase:",
    ),
    (
        "iot/stations/bench-1/flash/request",
        {"device_id": "kitchen-01", "extra": 1},
        False,
        "Additional properties",
    ),
]


def encode(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


@pytest.mark.parametrize(("topic", "payload", "retain"), GOOD, ids=[t for t, _, _ in GOOD])
def test_conforming_message_passes(topic: str, payload: Any, retain: bool) -> None:
    assert check_message("iot", topic, encode(payload), retain) == []


@pytest.mark.parametrize(("topic", "payload", "retain", "reason"), BAD, ids=[r for *_, r in BAD])
def test_breaking_message_is_named(topic: str, payload: Any, retain: bool, reason: str) -> None:
    found = check_message("iot", topic, encode(payload), retain)
    assert found, "no violation reported"
    assert all(v.topic == topic for v in found)
    assert any(reason in v.reason for v in found), [v.reason for v in found]


def test_other_roots_are_not_checked() -> None:
    assert check_message("site-7/iot", "iot/devices/kitchen-01/config", b"junk", False) == []
    assert check_message("site-7/iot", "site-7/iot/devices/kitchen-01/config", b"junk", True) != []


# -- against a real Mosquitto ------------------------------------------------------------


@pytest.fixture
def publisher(broker: Broker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: mqtt.Client, topic: str, payload: Any, retain: bool) -> None:
    info = client.publish(topic, encode(payload), qos=1, retain=retain)
    info.wait_for_publish(timeout=5)
    assert info.is_published()


@pytest.mark.allow_contract_violations
def test_monitor_against_mosquitto(broker: Broker, publisher: mqtt.Client) -> None:
    with ConformanceMonitor("127.0.0.1", broker.port) as monitor:
        for topic, payload, retain in GOOD:
            publish(publisher, topic, payload, retain)
        monitor.flush()
        assert monitor.violations == []
        assert monitor.checked == len(GOOD)

        bad_config = {**ENVELOPE, "sha256": "0" * 64}
        publish(publisher, "iot/devices/kitchen-01/config", bad_config, True)
        publish(publisher, "iot/provision/kitchen-01/request", {"partition_size": 20480}, True)
        monitor.flush()

    assert len(monitor.violations) == 2
    assert monitor.violations[0].startswith("iot/devices/kitchen-01/config: sha256 is not")
    assert monitor.violations[1] == "iot/provision/kitchen-01/request: must not be retained"
    assert monitor.violations_from("agent") == monitor.violations[:1]
    assert monitor.violations_from("station") == monitor.violations[1:]
    with pytest.raises(AssertionError, match="sha256 is not"):
        monitor.assert_clean("agent")


@pytest.mark.allow_contract_violations
def test_monitor_sees_retained_state_at_start(broker: Broker, publisher: mqtt.Client) -> None:
    publish(publisher, "iot/stations/bench-1/status", {"state": "online"}, True)  # no station_id
    with ConformanceMonitor("127.0.0.1", broker.port) as monitor:
        monitor.wait_until(lambda: monitor.checked >= 1)
    assert monitor.violations == [
        "iot/stations/bench-1/status: station_status: (root): 'station_id' is a required property"
    ]
