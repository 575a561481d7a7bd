"""The v1.1 payloads' rules that a round trip does not show (contract 6.1-6.3)."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from firmware_contracts.codes import AgentEventName, ConfigWriteErrorCode, PresenceState
from firmware_contracts.json_rules import StrictJsonError
from firmware_contracts.payloads import (
    DEVICE_STATUS_WILL,
    AgentEvent,
    ConfigApplied,
    ConfigApplyError,
    ConfigSetError,
    ConfigSetOk,
    ConfigSetRequest,
    ConfigWriteErrorDetail,
    DeviceStatus,
    FleetSummary,
)

SHA = "d94732cf10ac48b98628c9fd72f26330d82514cf59173aa74a3999103d84fd99"
OTHER = "2971dc2a8ba2f941be4cac03874cd6a9d19bc6a26712c59b8f827c2bc44b2da6"
TS = "2026-11-25T19:21:46Z"

# -- config/set: if_sha256 absent, a sha256, or null ------------------------------------------


def test_absent_and_null_if_sha256_are_different_requests() -> None:
    unconditional = ConfigSetRequest.from_json(b'{"request_id": "w-1", "config": {"a": 1}}')
    only_if_new = ConfigSetRequest.from_json(
        b'{"request_id": "w-1", "config": {"a": 1}, "if_sha256": null}'
    )
    assert unconditional.if_sha256 is None and only_if_new.if_sha256 is None
    assert unconditional != only_if_new
    assert (False, True) == (unconditional.has_precondition, only_if_new.has_precondition)
    assert {"request_id": "w-1", "config": {"a": 1}} == json.loads(unconditional.to_json())
    assert {"request_id": "w-1", "config": {"a": 1}, "if_sha256": None} == json.loads(
        only_if_new.to_json()
    )
    assert only_if_new == ConfigSetRequest.model_validate(only_if_new.dump())


@pytest.mark.parametrize(
    ("if_sha256", "current", "holds"),
    [
        ("absent", None, True),  # no condition: always
        ("absent", SHA, True),
        (None, None, True),  # null: only when the device has no config yet
        (None, SHA, False),
        (SHA, SHA, True),  # a sha256: only when it is the current one
        (SHA, OTHER, False),
        (SHA, None, False),
    ],
)
def test_precondition(if_sha256: str | None, current: str | None, holds: bool) -> None:
    fields: dict[str, object] = {"merge": {"a": None}}
    if if_sha256 != "absent":
        fields["if_sha256"] = if_sha256
    assert holds == ConfigSetRequest.model_validate(fields).precondition_holds(current)


@pytest.mark.parametrize(
    ("payload", "operation"),
    [
        ({"config": {"a": 1}}, "config"),
        ({"config": {}}, "config"),
        ({"merge": {"a": None}}, "merge"),
        ({"delete": True, "request_id": "w-9"}, "delete"),
    ],
)
def test_each_operation(payload: dict[str, object], operation: str) -> None:
    assert operation == ConfigSetRequest.model_validate(payload).operation


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "exactly one of config, merge, delete is required (found none)"),
        ({"config": {}, "merge": {}}, "(found config, merge)"),
        ({"config": {}, "delete": True}, "(found config, delete)"),
        ({"config": None}, "config must be an object, not null"),
        ({"merge": None, "config": {}}, "(found config, merge)"),
        ({"delete": False}, "delete must be true"),
        ({"delete": 1}, "delete must be true"),
        ({"delete": "true"}, "delete must be true"),
        ({"config": [1]}, "valid dictionary"),
        ({"config": {}, "if_sha256": "abc"}, "should match pattern"),
        ({"config": {}, "request_id": ""}, "request_id must be 1..64"),
        ({"config": {}, "replace": {}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_config_set_requests(payload: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ConfigSetRequest.model_validate(payload)


def test_from_json_applies_the_strict_json_rules() -> None:
    with pytest.raises(StrictJsonError, match="NaN is not JSON"):
        ConfigSetRequest.from_json(b'{"config": {"gain": NaN}}')
    with pytest.raises(StrictJsonError, match="lone surrogate"):
        ConfigSetRequest.from_json(b'{"config": {"\\ud800": 1}}')


def test_config_set_answers_always_carry_sha256() -> None:
    deleted = ConfigSetOk(request_id="w-1", device_id="kitchen-01", sha256=None)
    assert {"request_id": "w-1", "status": "ok", "device_id": "kitchen-01", "sha256": None} == (
        json.loads(deleted.to_json())
    )
    with pytest.raises(ValidationError, match="sha256"):
        ConfigSetOk.model_validate({"request_id": "w-1", "device_id": "kitchen-01"})
    error = ConfigSetError(
        request_id="w-1",
        device_id="kitchen-01",
        error=ConfigWriteErrorDetail(code=ConfigWriteErrorCode.CONFLICT, message=f"is {SHA}"),
    )
    assert "conflict" == json.loads(error.to_json())["error"]["code"]


# -- config/applied ------------------------------------------------------------------------


def test_ack_keeps_error_null_and_leaves_out_a_missing_ts() -> None:
    ok = ConfigApplied(sha256=SHA, ok=True, ts=TS)
    assert {"sha256": SHA, "ok": True, "error": None, "ts": TS} == json.loads(ok.to_json())
    v1 = ConfigApplied.from_json(json.dumps({"sha256": SHA, "ok": True, "error": None}))
    assert v1.ts is None and {"sha256": SHA, "ok": True, "error": None} == v1.dump()


def test_ack_error_is_code_and_message_or_a_v1_string() -> None:
    failed = ConfigApplied(
        sha256=SHA, ok=False, error=ConfigApplyError(code="range", message="too low")
    )
    assert {"code": "range", "message": "too low"} == failed.dump()["error"]
    v1 = ConfigApplied.from_json(json.dumps({"sha256": SHA, "ok": False, "error": "too low"}))
    assert "too low" == v1.error
    with pytest.raises(ValidationError):
        ConfigApplied.model_validate({"sha256": SHA, "ok": False, "error": {"code": "x"}})


# -- device status -------------------------------------------------------------------------


def test_device_status_keeps_the_firmwares_own_fields() -> None:
    wire = (
        b'{"state":"online","fw_version":"1.4.2","since":"2026-11-25T19:21:46Z",'
        b'"rssi":-61,"boot":null}'
    )
    status = DeviceStatus.from_json(wire)
    assert PresenceState.ONLINE is status.state
    assert {"rssi": -61, "boot": None} == status.model_extra
    assert json.loads(wire) == json.loads(status.to_json()) == status.dump()


def test_device_status_will_is_the_bare_offline_state() -> None:
    assert b'{"state":"offline"}' == DEVICE_STATUS_WILL.to_json()


@pytest.mark.parametrize(
    "payload",
    [{}, {"state": "asleep"}, {"state": "online", "since": "yesterday"}, {"state": None}],
)
def test_invalid_device_status(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DeviceStatus.model_validate(payload)


# -- fleet summary -------------------------------------------------------------------------

SUMMARY = {
    "devices": 1200,
    "in_sync": 1180,
    "failed": 3,
    "pending": 10,
    "stale": 2,
    "never_applied": 5,
    "unmanaged": 0,
    "online": 1150,
    "offline": 40,
    "unknown": 10,
    "ts": TS,
}


def test_the_contracts_fleet_example_adds_up() -> None:
    assert SUMMARY == FleetSummary.model_validate(SUMMARY).dump()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"devices": 1201}, "the config states add up to 1200, not devices=1201"),
        ({"online": 1151}, "online+offline+unknown is 1201, not devices=1200"),
        ({"unmanaged": -1}, "greater than or equal to 0"),
    ],
)
def test_fleet_summary_counts_must_add_up(change: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        FleetSummary.model_validate({**SUMMARY, **change})


# -- config_written event ------------------------------------------------------------------


def test_config_written_event_says_who_changed_what() -> None:
    event = AgentEvent(
        event=AgentEventName.CONFIG_WRITTEN,
        ts=TS,
        device_id="kitchen-01",
        request_id="w-1",
        sha256=None,  # a delete
        user="console",
    )
    assert {
        "event": "config_written",
        "ts": TS,
        "device_id": "kitchen-01",
        "sha256": None,
        "request_id": "w-1",
        "user": "console",
    } == json.loads(event.to_json())
    other = AgentEvent(event=AgentEventName.CONFIG_PUBLISHED, ts=TS, device_id="kitchen-01")
    assert "sha256" not in other.dump()  # null only where the contract says so


@pytest.mark.parametrize("missing", ["device_id", "request_id"])
def test_config_written_event_needs_device_and_request(missing: str) -> None:
    fields = {"event": "config_written", "ts": TS, "device_id": "kitchen-01", "request_id": "w-1"}
    del fields[missing]
    with pytest.raises(ValidationError, match="carries device_id and request_id"):
        AgentEvent.model_validate(fields)
