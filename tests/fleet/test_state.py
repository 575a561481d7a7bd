"""The fleet state rules (contract 6.2) and the incremental view, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker_agent.fleet.files import FleetSchema, load_config
from broker_agent.fleet.state import (
    Ack,
    FleetView,
    RetainedConfig,
    device_state,
    parse_ack,
    parse_envelope,
    parse_presence,
    parse_timestamp,
)
from firmware_contracts.codes import DevicePresence, FleetState
from firmware_contracts.payloads import config_sha256, utc_timestamp

GRACE = 300.0
NOW = 2_000_000_000.0
SHA_A = "a" * 64
SHA_B = "b" * 64


def envelope(device_id: str, config: dict[str, Any], updated_at: float) -> bytes:
    sha = config_sha256(config)
    head = f'{{"v":1,"device_id":"{device_id}","sha256":"{sha}",'
    stamp = utc_timestamp(updated_at)
    return (head + f'"updated_at":"{stamp}","config":' + json.dumps(config) + "}").encode()


def ack(sha: str, ok: bool = True, error: object = None) -> bytes:
    return json.dumps({"sha256": sha, "ok": ok, "error": error}).encode()


def young(sha: str = SHA_A) -> RetainedConfig:
    return RetainedConfig(sha, NOW - 10)


def old(sha: str = SHA_A) -> RetainedConfig:
    return RetainedConfig(sha, NOW - GRACE - 1)


def test_matching_ok_ack_is_in_sync_whatever_the_age() -> None:
    assert FleetState.IN_SYNC == device_state(old(), Ack(SHA_A, True, None), True, NOW, GRACE)


def test_matching_failed_ack_is_failed() -> None:
    assert FleetState.FAILED == device_state(young(), Ack(SHA_A, False, "x"), False, NOW, GRACE)


def test_other_ack_on_a_young_config_is_pending() -> None:
    assert FleetState.PENDING == device_state(young(), Ack(SHA_B, True, None), True, NOW, GRACE)


def test_no_ack_on_a_young_config_is_pending() -> None:
    assert FleetState.PENDING == device_state(young(), None, False, NOW, GRACE)


def test_other_ack_on_an_old_config_is_stale() -> None:
    assert FleetState.STALE == device_state(old(), Ack(SHA_B, True, None), True, NOW, GRACE)


def test_no_ack_on_an_old_config_is_never_applied() -> None:
    assert FleetState.NEVER_APPLIED == device_state(old(), None, True, NOW, GRACE)


def test_ack_or_status_without_config_is_unmanaged() -> None:
    assert FleetState.UNMANAGED == device_state(None, Ack(SHA_A, True, None), False, NOW, GRACE)
    assert FleetState.UNMANAGED == device_state(None, None, True, NOW, GRACE)


def test_nothing_retained_is_no_device() -> None:
    assert device_state(None, None, False, NOW, GRACE) is None


def test_grace_boundary_is_exclusive() -> None:
    at_boundary = RetainedConfig(SHA_A, NOW - GRACE)
    assert FleetState.NEVER_APPLIED == device_state(at_boundary, None, False, NOW, GRACE)


@given(
    config_sha=st.sampled_from([SHA_A, SHA_B]),
    ack_sha=st.one_of(st.none(), st.sampled_from([SHA_A, SHA_B])),
    ack_ok=st.booleans(),
    age=st.floats(min_value=0, max_value=10 * GRACE),
)
def test_state_rules_hold_for_any_combination(
    config_sha: str, ack_sha: str | None, ack_ok: bool, age: float
) -> None:
    the_ack = None if ack_sha is None else Ack(ack_sha, ack_ok, None)
    state = device_state(RetainedConfig(config_sha, NOW - age), the_ack, False, NOW, GRACE)
    if ack_sha == config_sha:
        assert (FleetState.IN_SYNC if ack_ok else FleetState.FAILED) == state
    elif age < GRACE:
        assert FleetState.PENDING == state
    else:
        assert (FleetState.STALE if the_ack else FleetState.NEVER_APPLIED) == state


def test_envelope_fast_path_reads_what_the_agent_publishes(tmp_path: Path) -> None:
    (tmp_path / "kitchen-01.json").write_text('{"b": 1, "a": [1, 2]}')
    published = load_config(tmp_path / "kitchen-01.json", FleetSchema(None), 4096)
    found = parse_envelope(published.envelope)
    assert found is not None
    assert (published.sha256, parse_timestamp(published.updated_at)) == (
        found.sha256,
        found.updated_at,
    )


def test_envelope_written_by_anyone_else_is_parsed_as_json() -> None:
    payload = json.dumps(
        {"config": {}, "updated_at": "2026-11-25T19:21:46Z", "sha256": SHA_A, "v": 1}
    ).encode()
    assert RetainedConfig(SHA_A, parse_timestamp("2026-11-25T19:21:46Z")) == parse_envelope(payload)


def test_envelope_that_is_not_one_is_none() -> None:
    assert parse_envelope(b"not json") is None
    assert parse_envelope(b'{"config": {}}') is None


@given(
    st.datetimes(datetime(1970, 1, 2), datetime(9999, 1, 1)).map(lambda d: d.replace(microsecond=0))
)
def test_timestamp_round_trip(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    assert aware.timestamp() == parse_timestamp(utc_timestamp(aware))


def test_malformed_ack_names_no_config() -> None:
    assert Ack(None, False, "malformed acknowledgement") == parse_ack(b"[1]")


def test_failed_ack_error_is_code_and_message() -> None:
    found = parse_ack(ack(SHA_A, False, {"code": "apply_failed", "message": "too low"}))
    assert "apply_failed: too low" == found.error


def test_v1_string_error_is_kept() -> None:
    assert "bad" == parse_ack(ack(SHA_A, False, "bad")).error


def test_presence_from_status() -> None:
    assert DevicePresence.ONLINE == parse_presence(b'{"state": "online", "fw_version": "1"}')
    assert DevicePresence.OFFLINE == parse_presence(b'{"state":"offline"}')
    assert DevicePresence.UNKNOWN == parse_presence(b'{"state":"rebooting"}')


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_view_counts_each_state_and_presence() -> None:
    view = FleetView(GRACE, Clock())
    config = {"x": 1}
    sha = config_sha256(config)
    view.on_config("a", envelope("a", config, NOW - 1000))
    view.on_ack("a", ack(sha))
    view.on_status("a", b'{"state":"online"}')
    view.on_config("b", envelope("b", config, NOW - 1000))
    view.on_ack("b", ack(sha, False, {"code": "c", "message": "m"}))
    view.on_status("b", b'{"state":"offline"}')
    view.on_config("c", envelope("c", config, NOW - 10))
    view.on_config("d", envelope("d", config, NOW - 1000))
    view.on_ack("d", ack(SHA_A))
    view.on_config("e", envelope("e", config, NOW - 1000))
    view.on_status("f", b'{"state":"online"}')
    summary = view.summary("2026-11-25T19:21:46Z")
    expected = dict(
        devices=5, in_sync=1, failed=1, pending=1, stale=1, never_applied=1, unmanaged=1
    )
    assert expected == summary.model_dump(include=set(expected))
    assert (1, 1, 3) == (summary.online, summary.offline, summary.unknown)


def test_view_forgets_a_device_once_nothing_is_retained() -> None:
    view = FleetView(GRACE, Clock())
    view.on_status("a", b'{"state":"online"}')
    view.on_status("a", b"")
    assert 0 == len(view)
    assert 0 == sum(view.counts().values())


def test_view_moves_pending_to_stale_when_the_grace_ends() -> None:
    clock = Clock()
    view = FleetView(GRACE, clock)
    view.on_config("a", envelope("a", {"x": 1}, NOW))
    view.on_ack("a", ack(SHA_A))
    assert 1 == view.counts()["pending"]
    expiry = view.next_expiry()
    assert expiry is not None
    assert NOW + GRACE == expiry
    clock.now = expiry
    assert 1 == view.advance()
    assert (0, 1) == (view.counts()["pending"], view.counts()["stale"])


def test_view_advance_ignores_a_config_changed_since() -> None:
    clock = Clock()
    view = FleetView(GRACE, clock)
    view.on_config("a", envelope("a", {"x": 1}, NOW))
    clock.now = NOW + 100
    view.on_config("a", envelope("a", {"x": 2}, NOW + 100))
    clock.now = NOW + GRACE
    assert 0 == view.advance()
    assert 1 == view.counts()["pending"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["config", "ack", "status"]),
            st.sampled_from([b"", b"1", b"2", b"3"]),
        ),
        max_size=40,
    )
)
def test_view_counts_equal_a_recount_from_scratch(
    steps: list[tuple[str, str, bytes]],
) -> None:
    clock = Clock()
    view = FleetView(GRACE, clock)
    configs = {b"1": {"n": 1}, b"2": {"n": 2}, b"3": {"n": 3}}
    for device, topic, choice in steps:
        clock.now += 50
        if topic == "config":
            payload = envelope(device, configs[choice], clock.now) if choice else b""
            view.on_config(device, payload)
        elif topic == "ack":
            sha = config_sha256(configs[choice]) if choice else ""
            view.on_ack(device, ack(sha, choice != b"3") if choice else b"")
        else:
            view.on_status(device, b'{"state":"online"}' if choice == b"1" else choice)
        view.advance()
    recount = dict.fromkeys(view.counts(), 0)
    for item in view:
        state = device_state(item.config, item.ack, item.presence is not None, clock.now, GRACE)
        assert state is not None
        recount[state.value] += 1
        if state is not FleetState.UNMANAGED:
            recount[item.shown_presence.value] += 1
    assert recount == view.counts()
