"""Round trips over the contract: payloads through JSON, topics through build/parse, identifiers.

Every generated payload must also validate against its generated JSON Schema, so the Python
models and the schemas the firmware side reads cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError

from firmware_contracts import codegen
from firmware_contracts.codes import (
    AgentEventName,
    ConfigWriteErrorCode,
    FlashAfter,
    FlashErrorCode,
    FlashPhase,
    FlashStatus,
    PresenceState,
    ProvisionErrorCode,
)
from firmware_contracts.identifiers import (
    AgentId,
    DeviceId,
    InvalidIdentifierError,
    RequestId,
    StationId,
    check_identifier,
    is_identifier,
    is_request_id,
)
from firmware_contracts.payloads import (
    SCHEMA_MODELS,
    AgentEvent,
    AgentStatus,
    ChipInfo,
    ConfigApplied,
    ConfigApplyError,
    ConfigEnvelope,
    ConfigSetError,
    ConfigSetOk,
    ConfigSetRequest,
    ConfigWriteErrorDetail,
    ContractModel,
    DeviceStatus,
    ErrorDetail,
    FlashCancel,
    FlashErrorDetail,
    FlashEvent,
    FlashRequest,
    FleetSummary,
    PartitionInfo,
    PortInfo,
    ProvisionError,
    ProvisionErrorDetail,
    ProvisionOk,
    ProvisionRequest,
    StationStatus,
    config_sha256,
    utc_timestamp,
)
from firmware_contracts.topics import TOPIC_ROOT_MAX_LENGTH, TOPICS, TopicKind, TopicMatch, Topics

# The identifier rule as the contract text states it, written independently of the package.
SPEC_IDENTIFIER = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

identifiers = st.from_regex(SPEC_IDENTIFIER, fullmatch=True)
not_identifiers = st.text(max_size=80).filter(lambda s: SPEC_IDENTIFIER.fullmatch(s) is None)
request_ids = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64
)
hex_digests = {n: st.text("0123456789abcdef", min_size=n, max_size=n) for n in (32, 64)}
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(utc_timestamp)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in b)
)
texts = st.text(max_size=40)
counts = st.integers(min_value=0, max_value=2**31)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
configs = st.dictionaries(texts, json_values, max_size=6)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


error_details: st.SearchStrategy[ErrorDetail] = st.deferred(
    lambda: st.builds(ErrorDetail, code=texts, message=texts, cause=maybe(error_details))
)

# -- v1.1 payloads: strategies that respect each model's cross-field rules ----------------

_STATUS_FIELDS = set(DeviceStatus.model_fields)
device_statuses = st.builds(
    lambda state, fw_version, since, extra: DeviceStatus(
        state=state, fw_version=fw_version, since=since, **extra
    ),
    state=st.sampled_from(PresenceState),
    fw_version=maybe(texts),
    since=maybe(timestamps),
    extra=st.dictionaries(texts.filter(lambda k: k not in _STATUS_FIELDS), json_values, max_size=3),
)


@st.composite
def fleet_summaries(draw: st.DrawFn) -> FleetSummary:
    small = st.integers(0, 10_000)
    states = {
        name: draw(small) for name in ("in_sync", "failed", "pending", "stale", "never_applied")
    }
    devices = sum(states.values())
    online = draw(st.integers(0, devices))
    offline = draw(st.integers(0, devices - online))
    return FleetSummary(
        devices=devices,
        **states,
        unmanaged=draw(small),
        online=online,
        offline=offline,
        unknown=devices - online - offline,
        ts=draw(timestamps),
    )


@st.composite
def config_set_requests(draw: st.DrawFn) -> ConfigSetRequest:
    operation = draw(st.sampled_from(["config", "merge", "delete"]))
    fields: dict[str, Any] = {operation: True if operation == "delete" else draw(configs)}
    if draw(st.booleans()):
        fields["request_id"] = draw(request_ids)
    precondition = draw(st.sampled_from(["absent", "null", "sha256"]))
    if precondition != "absent":
        fields["if_sha256"] = None if precondition == "null" else draw(hex_digests[64])
    return ConfigSetRequest(**fields)


agent_events = st.builds(
    AgentEvent,
    event=st.sampled_from([e for e in AgentEventName if e is not AgentEventName.CONFIG_WRITTEN]),
    ts=timestamps,
    device_id=maybe(texts),
    file=maybe(texts),
    count=maybe(st.integers(min_value=1, max_value=2**31)),
    sha256=maybe(hex_digests[64]),
    error=maybe(error_details),
    reason=maybe(texts),
    would_clear=maybe(counts),
    fleet_size=maybe(counts),
    partition_size=maybe(st.integers()),
    md5=maybe(hex_digests[32]),
    request_id=maybe(texts),
    user=maybe(texts),
) | st.builds(
    AgentEvent,
    event=st.just(AgentEventName.CONFIG_WRITTEN),
    ts=timestamps,
    device_id=identifiers,
    request_id=request_ids,
    sha256=maybe(hex_digests[64]),
    user=maybe(texts),
)

MODELS: dict[str, st.SearchStrategy[Any]] = {
    "config_envelope": configs.flatmap(
        lambda config: st.builds(
            ConfigEnvelope,
            device_id=identifiers,
            sha256=st.just(config_sha256(config)),
            updated_at=timestamps,
            config=st.just(config),
        )
    ),
    "config_applied": st.builds(
        ConfigApplied,
        sha256=hex_digests[64],
        ok=st.booleans(),
        error=maybe(st.builds(ConfigApplyError, code=texts, message=texts) | texts),
        ts=maybe(timestamps),
    ),
    "device_status": device_statuses,
    "fleet_summary": fleet_summaries(),
    "config_set_request": config_set_requests(),
    "config_set_ok": st.builds(
        ConfigSetOk, request_id=texts, device_id=identifiers, sha256=maybe(hex_digests[64])
    ),
    "config_set_error": st.builds(
        ConfigSetError,
        request_id=texts,
        device_id=texts,
        error=st.builds(
            ConfigWriteErrorDetail, code=st.sampled_from(ConfigWriteErrorCode), message=texts
        ),
    ),
    "agent_status": st.builds(
        AgentStatus,
        state=st.sampled_from(PresenceState),
        agent_id=identifiers,
        version=maybe(texts),
        devices=maybe(counts),
        since=maybe(timestamps),
    ),
    "agent_event": agent_events,
    "provision_request": st.builds(
        ProvisionRequest, request_id=maybe(request_ids), partition_size=st.integers()
    ),
    "provision_ok": st.builds(
        ProvisionOk,
        request_id=texts,
        device_id=identifiers,
        partition_size=st.integers(),
        namespace=texts,
        keys=st.lists(texts, max_size=8),
        data=st.text("ABCDEFabcdef0123456789+/="),
        md5=hex_digests[32],
    ),
    "provision_error": st.builds(
        ProvisionError,
        request_id=texts,
        device_id=texts,
        error=st.builds(
            ProvisionErrorDetail, code=st.sampled_from(ProvisionErrorCode), message=texts
        ),
    ),
    "station_status": st.builds(
        StationStatus,
        state=st.sampled_from(PresenceState),
        station_id=identifiers,
        version=maybe(texts),
        ports=maybe(
            st.lists(
                st.builds(
                    PortInfo,
                    port=texts,
                    description=maybe(texts),
                    serial_number=maybe(texts),
                    vid=maybe(st.integers(0, 0xFFFF)),
                    pid=maybe(st.integers(0, 0xFFFF)),
                    busy=st.booleans(),
                ),
                max_size=3,
            )
        ),
    ),
    "flash_request": st.builds(
        FlashRequest,
        request_id=maybe(request_ids),
        device_id=identifiers,
        port=maybe(st.text(min_size=1, max_size=256)),
        baud=st.integers(9600, 5_000_000),
        after=st.sampled_from(FlashAfter),
        expected_mac=maybe(macs),
    ),
    "flash_cancel": st.builds(FlashCancel, request_id=request_ids),
    "flash_event": st.builds(
        FlashEvent,
        request_id=texts,
        status=st.sampled_from(FlashStatus),
        phase=st.sampled_from(FlashPhase),
        progress=st.integers(0, 100),
        device_id=maybe(texts),
        port=maybe(texts),
        chip=maybe(st.builds(ChipInfo, type=texts, mac=macs)),
        partition=maybe(st.builds(PartitionInfo, offset=counts, size=counts)),
        md5=maybe(hex_digests[32]),
        error=maybe(
            st.builds(
                FlashErrorDetail,
                code=st.sampled_from(FlashErrorCode),
                message=texts,
                cause=maybe(error_details),
            )
        ),
    ),
}


@cache
def schema_validator(stem: str) -> Draft202012Validator:
    path = codegen.GENERATED_DIR / codegen.schema_path(stem)
    return Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))


def test_every_payload_model_has_a_strategy() -> None:
    assert set(MODELS) == set(SCHEMA_MODELS)


@pytest.mark.parametrize("stem", sorted(SCHEMA_MODELS))
@settings(deadline=None)
@given(data=st.data())
def test_payload_round_trips_through_json_and_matches_its_schema(
    stem: str, data: st.DataObject
) -> None:
    model = SCHEMA_MODELS[stem]
    payload: ContractModel = data.draw(MODELS[stem])
    assert isinstance(payload, model)
    wire = payload.to_json()
    assert model.model_validate_json(wire) == payload
    assert model.from_json(wire) == payload  # the contract's strict JSON rules agree
    assert model.model_validate(payload.dump()) == payload
    assert json.loads(wire) == payload.dump()
    errors = [e.message for e in schema_validator(stem).iter_errors(json.loads(wire))]
    assert errors == []
    errors = [e.message for e in schema_validator(stem).iter_errors(payload.dump())]
    assert errors == []


def test_config_applied_to_json_keeps_error_null() -> None:
    ack = ConfigApplied(sha256="0" * 64, ok=True)
    assert (
        json.loads(ack.to_json()) == ack.dump() == {"sha256": "0" * 64, "ok": True, "error": None}
    )


# -- topics -------------------------------------------------------------------------------

roots = (
    st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), min_size=1, max_size=3)
    .map("/".join)
    .filter(lambda root: len(root) <= TOPIC_ROOT_MAX_LENGTH)
)
kinds = st.sampled_from(TopicKind)


def test_a_root_longer_than_the_header_buffers_allow_is_refused() -> None:
    Topics("a" * TOPIC_ROOT_MAX_LENGTH)
    with pytest.raises(ValueError, match="longer than 64"):
        Topics("a/" * 32 + "a")


@settings(deadline=None)
@given(root=roots, kind=kinds, identifier=identifiers)
def test_topic_build_then_parse_gives_back_kind_and_id(
    root: str, kind: TopicKind, identifier: str
) -> None:
    topics = Topics(root)
    topic = topics.build(kind, identifier)
    assert topics.parse(topic) == TopicMatch(kind, identifier, "")
    assert topic == f"{root}/" + TOPICS[kind].template.replace(
        "{" + TOPICS[kind].id_name + "}", identifier
    )
    assert "+" not in topic and "#" not in topic


RESPONSE_KINDS = [kind for kind, spec in TOPICS.items() if spec.below_allowed]
suffixes = st.lists(identifiers, min_size=1, max_size=3).map("/".join)


def test_the_response_topics_that_allow_a_suffix() -> None:
    assert [TopicKind.CONFIG_SET_RESPONSE, TopicKind.PROVISION_RESPONSE] == sorted(RESPONSE_KINDS)


@settings(deadline=None)
@given(root=roots, device_id=identifiers, suffix=suffixes)
def test_provision_response_below_the_default_topic(root: str, device_id: str, suffix: str) -> None:
    topics = Topics(root)
    topic = f"{topics.provision_response(device_id)}/{suffix}"
    assert topics.parse(topic) == TopicMatch(TopicKind.PROVISION_RESPONSE, device_id, suffix)
    assert topics.is_response_topic_for(device_id, topic)
    assert not topics.is_config_set_response_topic_for(device_id, topic)


@settings(deadline=None)
@given(root=roots, device_id=identifiers, suffix=suffixes)
def test_config_set_response_below_the_default_topic(
    root: str, device_id: str, suffix: str
) -> None:
    topics = Topics(root)
    base = topics.config_set_response(device_id)
    assert base == f"{root}/devices/{device_id}/config/set/response"
    topic = f"{base}/{suffix}"
    assert topics.parse(topic) == TopicMatch(TopicKind.CONFIG_SET_RESPONSE, device_id, suffix)
    assert topics.is_config_set_response_topic_for(device_id, base)
    assert topics.is_config_set_response_topic_for(device_id, topic)
    assert not topics.is_response_topic_for(device_id, topic)


@pytest.mark.parametrize(
    "topic",
    [
        "iot/devices/kitchen-01/config/set/response/",  # an empty suffix
        "iot/devices/kitchen-01/config/set/response/+",
        "iot/devices/kitchen-01/config/set/response/#",
        "iot/devices/kitchen-01/config/set/response/a\x00b",
        "iot/devices/kitchen-01/config/set/responses",
        "iot/devices/kitchen-01/config/set",
        "iot/devices/hall-02/config/set/response",  # another device's
        "iot/provision/kitchen-01/response",  # another kind's
    ],
)
def test_what_a_config_set_response_topic_may_not_be(topic: str) -> None:
    assert not Topics().is_config_set_response_topic_for("kitchen-01", topic)


@pytest.mark.parametrize(
    "kind", [kind for kind in TopicKind if not TOPICS[kind].below_allowed], ids=str
)
def test_other_topics_take_no_suffix(kind: TopicKind) -> None:
    topics = Topics()
    base = topics.build(kind, "kitchen-01")
    below = topics.parse(f"{base}/extra")
    assert below is None or below.kind is not kind
    assert topics.is_reply_topic_for(kind, "kitchen-01", base)
    assert not topics.is_reply_topic_for(kind, "kitchen-01", f"{base}/extra")


def test_v1_1_topics() -> None:
    topics = Topics("site-7/iot")
    expected = {
        topics.device_status("kitchen-01"): (TopicKind.DEVICE_STATUS, True, 1, "device"),
        topics.device_config_applied("kitchen-01"): (
            TopicKind.DEVICE_CONFIG_APPLIED,
            True,
            1,
            "device",
        ),
        topics.agent_fleet("agent-1"): (TopicKind.AGENT_FLEET, True, 1, "agent"),
        topics.config_set("kitchen-01"): (TopicKind.CONFIG_SET, False, 1, "operator"),
        topics.config_set_response("kitchen-01"): (
            TopicKind.CONFIG_SET_RESPONSE,
            False,
            1,
            "agent",
        ),
    }
    assert list(expected) == [
        "site-7/iot/devices/kitchen-01/status",
        "site-7/iot/devices/kitchen-01/config/applied",
        "site-7/iot/agents/agent-1/fleet",
        "site-7/iot/devices/kitchen-01/config/set",
        "site-7/iot/devices/kitchen-01/config/set/response",
    ]
    for topic, (kind, retained, qos, publisher) in expected.items():
        match = topics.parse(topic)
        assert match is not None and match.kind is kind
        spec = TOPICS[kind]
        assert (retained, qos, publisher) == (spec.retained, spec.qos, spec.publisher)


@settings(deadline=None)
@given(root=roots, kind=kinds, bad=not_identifiers)
def test_invalid_identifier_is_refused_by_build_and_not_matched_by_parse(
    root: str, kind: TopicKind, bad: str
) -> None:
    topics = Topics(root)
    with pytest.raises(InvalidIdentifierError):
        topics.build(kind, bad)
    spec = TOPICS[kind]
    forged = f"{root}/" + spec.template.replace("{" + spec.id_name + "}", bad)
    match = topics.parse(forged)
    if "/" not in bad:
        assert match is None
    else:  # the segments shift; whatever matches, it is never the invalid id
        assert match is None or (is_identifier(match.identifier) and match.identifier != bad)


@settings(deadline=None)
@given(root=roots, other=roots, kind=kinds, identifier=identifiers)
def test_topic_under_another_root_is_not_matched(
    root: str, other: str, kind: TopicKind, identifier: str
) -> None:
    if other == root or other.startswith(root + "/"):
        return
    assert Topics(root).parse(Topics(other).build(kind, identifier)) is None


# -- identifiers --------------------------------------------------------------------------


@given(text=st.text(max_size=80) | identifiers)
def test_is_identifier_follows_the_contract_text(text: str) -> None:
    assert is_identifier(text) == (SPEC_IDENTIFIER.fullmatch(text) is not None)


@given(identifier=identifiers)
def test_valid_identifiers_round_trip(identifier: str) -> None:
    assert check_identifier(identifier) == identifier
    for annotated in (DeviceId, StationId, AgentId):
        adapter: TypeAdapter[str] = TypeAdapter(annotated)
        assert adapter.validate_python(identifier) == identifier
        assert adapter.validate_json(adapter.dump_json(identifier)) == identifier


@given(bad=not_identifiers)
def test_invalid_identifiers_are_refused_everywhere(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        check_identifier(bad, "device_id")
    with pytest.raises(ValidationError):
        TypeAdapter(DeviceId).validate_python(bad)


@given(request_id=request_ids)
def test_valid_request_ids_round_trip(request_id: str) -> None:
    assert is_request_id(request_id)
    adapter: TypeAdapter[str] = TypeAdapter(RequestId)
    assert adapter.validate_json(adapter.dump_json(request_id)) == request_id


@given(text=st.text(max_size=80))
def test_request_id_rule(text: str) -> None:
    expected = 1 <= len(text) <= 64 and all(0x20 <= ord(ch) <= 0x7E for ch in text)
    assert is_request_id(text) == expected
