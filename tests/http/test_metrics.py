"""The metric classes: bounded labels, one registry per service, state read at scrape time."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker_agent.fleet.state import FleetView
from broker_agent.http.metrics import AgentMetrics, ServiceMetrics, StationMetrics
from firmware_contracts.codes import (
    ConfigErrorCode,
    ConfigWriteErrorCode,
    FlashErrorCode,
    FleetState,
    ProvisionErrorCode,
)
from firmware_contracts.payloads import utc_timestamp

Key = tuple[str, tuple[tuple[str, str], ...]]


def scrape(metrics: ServiceMetrics) -> dict[Key, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def label_values(metrics: ServiceMetrics, name: str, label: str) -> set[str]:
    return {labels[0][1] for (n, labels) in scrape(metrics) if n == name and labels[0][0] == label}


def test_two_services_in_one_process_keep_their_own_counts() -> None:
    first, second, station = AgentMetrics(), AgentMetrics(), StationMetrics()
    first.config_published()
    first.config_published()
    station.flash_job_finished(None, 1.0)
    assert 2.0 == scrape(first)[("broker_agent_configs_published_total", ())]
    assert 0.0 == scrape(second)[("broker_agent_configs_published_total", ())]
    assert ("broker_agent_configs_published_total", ()) not in scrape(station)


def test_every_code_series_exists_at_zero_before_the_first_event() -> None:
    agent, station = AgentMetrics(), StationMetrics()
    assert {c.value for c in ConfigErrorCode} == label_values(
        agent, "broker_agent_configs_rejected_total", "code"
    )
    assert {"ok"} | {c.value for c in ConfigWriteErrorCode} == label_values(
        agent, "broker_agent_config_writes_total", "code"
    )
    assert {"ok"} | {c.value for c in ProvisionErrorCode} == label_values(
        agent, "broker_agent_provision_replies_total", "code"
    )
    assert {"ok"} | {c.value for c in FlashErrorCode} == label_values(
        station, "broker_agent_flash_jobs_total", "code"
    )
    # one scrape: the process's CPU time moves between two (this test once saw 1.0 there)
    assert {0.0} == {
        value
        for (name, _), value in scrape(station).items()
        if name.endswith("_total") and name != "process_cpu_seconds_total"
    }


def test_a_label_value_outside_the_contract_enums_is_refused() -> None:
    agent, station = AgentMetrics(), StationMetrics()
    with pytest.raises(ValueError):
        agent.config_rejected("kitchen-01")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        agent.provision_replied("r-17", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        station.flash_job_finished("/dev/ttyUSB0", 1.0)  # type: ignore[arg-type]
    assert "kitchen-01" not in generate_latest(agent.registry).decode()


def test_config_outcomes_count_by_code() -> None:
    agent = AgentMetrics()
    agent.config_written(None)
    agent.config_written(ConfigWriteErrorCode.CONFLICT)
    agent.config_written(ConfigWriteErrorCode.CONFLICT)
    agent.config_cleared()
    agent.prune_blocked()
    got = scrape(agent)
    assert (1.0, 2.0, 0.0) == (
        got[("broker_agent_config_writes_total", (("code", "ok"),))],
        got[("broker_agent_config_writes_total", (("code", "conflict"),))],
        got[("broker_agent_config_writes_total", (("code", "schema_violation"),))],
    )
    assert (1.0, 1.0) == (
        got[("broker_agent_configs_cleared_total", ())],
        got[("broker_agent_prune_blocked_total", ())],
    )


def test_flash_jobs_by_code_and_duration_by_result() -> None:
    station = StationMetrics()
    station.flash_job_finished(None, 3.0)
    station.flash_job_finished(FlashErrorCode.BOOTLOADER_NOT_ENTERED, 12.0)
    station.ports(attached=3, busy=2)
    got = scrape(station)
    assert (1.0, 1.0) == (
        got[("broker_agent_flash_jobs_total", (("code", "ok"),))],
        got[("broker_agent_flash_jobs_total", (("code", "bootloader_not_entered"),))],
    )
    ok_le_5 = ("broker_agent_flash_job_seconds_bucket", (("le", "5.0"), ("result", "ok")))
    error_le_10 = ("broker_agent_flash_job_seconds_bucket", (("le", "10.0"), ("result", "error")))
    error_le_20 = ("broker_agent_flash_job_seconds_bucket", (("le", "20.0"), ("result", "error")))
    assert (1.0, 0.0, 1.0) == (got[ok_le_5], got[error_le_10], got[error_le_20])
    assert (3.0, 2.0) == (
        got[("broker_agent_ports_attached", ())],
        got[("broker_agent_ports_busy", ())],
    )


def test_fleet_gauges_follow_the_snapshot_at_each_scrape() -> None:
    counts: dict[str, int] = {"in_sync": 3, "failed": 1, "offline": 2, "devices": 4}
    agent = AgentMetrics()
    assert not any(name == "broker_agent_fleet_devices" for name, _ in scrape(agent))
    agent.fleet = lambda: counts
    first = scrape(agent)
    counts["failed"] = 0
    counts["in_sync"] = 4
    second = scrape(agent)
    failed = ("broker_agent_fleet_devices", (("state", "failed"),))
    in_sync = ("broker_agent_fleet_devices", (("state", "in_sync"),))
    assert ((1.0, 3.0), (0.0, 4.0)) == (
        (first[failed], first[in_sync]),
        (second[failed], second[in_sync]),
    )
    assert {s.value for s in FleetState} == label_values(
        agent, "broker_agent_fleet_devices", "state"
    )
    assert 2.0 == second[("broker_agent_fleet_presence", (("presence", "offline"),))]
    agent.fleet = lambda: None  # not known yet (before the first reconcile): no series at all
    assert not any(name.startswith("broker_agent_fleet_") for name, _ in scrape(agent))


def test_reconnects_count_connections_after_the_first() -> None:
    agent = AgentMetrics()
    agent.broker_connected()
    connected_once = scrape(agent)
    agent.broker_disconnected()
    down = scrape(agent)
    agent.broker_connected()
    agent.broker_disconnected()
    agent.broker_connected()
    back = scrape(agent)
    connected, reconnects = (
        ("broker_agent_broker_connected", ()),
        ("broker_agent_broker_reconnects_total", ()),
    )
    assert (1.0, 0.0) == (connected_once[connected], connected_once[reconnects])
    assert 0.0 == down[connected]
    assert (1.0, 2.0) == (back[connected], back[reconnects])


def test_fleet_gauges_from_the_agents_real_fleet_view() -> None:
    """``FleetView.counts`` is what the agent wires in: its keys must be the label values."""
    now = 1_796_000_000.0
    view = FleetView(grace_s=300, clock=lambda: now)
    stamp = utc_timestamp(now - 10)
    for device, sha in (("kitchen-01", "a" * 64), ("hall-02", "b" * 64), ("attic-03", "c" * 64)):
        envelope = {"v": 1, "device_id": device, "sha256": sha, "updated_at": stamp, "config": {}}
        view.on_config(device, json.dumps(envelope).encode())
    view.on_ack("kitchen-01", json.dumps({"sha256": "a" * 64, "ok": True, "error": None}).encode())
    view.on_ack("hall-02", json.dumps({"sha256": "b" * 64, "ok": False, "error": None}).encode())
    view.on_status("kitchen-01", b'{"state": "online"}')
    agent = AgentMetrics(fleet=view.counts)
    got = scrape(agent)
    assert {"in_sync": 1.0, "failed": 1.0, "pending": 1.0} == {
        labels[0][1]: value
        for (name, labels), value in got.items()
        if name == "broker_agent_fleet_devices" and value
    }
    assert {"online": 1.0, "unknown": 2.0} == {
        labels[0][1]: value
        for (name, labels), value in got.items()
        if name == "broker_agent_fleet_presence" and value
    }
