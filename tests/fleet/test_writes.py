"""Config writes, the pure part: request parsing, RFC 7396 merge, the plan; no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_agent.fleet.files import FleetSchema
from broker_agent.fleet.writes import (
    CurrentConfig,
    WriteRefused,
    merge_patch,
    parse_write,
    plan_write,
)
from firmware_contracts.codes import ConfigWriteErrorCode as Code
from firmware_contracts.json_rules import loads_strict
from firmware_contracts.payloads import ConfigSetRequest, config_sha256

NO_SCHEMA = FleetSchema(None)


def request(**fields: Any) -> ConfigSetRequest:
    return parse_write(json.dumps(fields).encode(), 4096).request


def current(config: dict[str, Any]) -> CurrentConfig:
    return CurrentConfig(config_sha256(config), config)


def refusal(call: Any) -> WriteRefused:
    with pytest.raises(WriteRefused) as caught:
        call()
    return caught.value


# RFC 7396 appendix A, every example
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC_EXAMPLES)
def test_merge_patch_matches_every_rfc_7396_example(target: Any, patch: Any, expected: Any) -> None:
    assert expected == merge_patch(target, patch)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values, json_values)
def test_merge_patch_leaves_its_inputs_alone(target: Any, patch: Any) -> None:
    before = json.dumps([target, patch])
    merge_patch(target, patch)
    assert before == json.dumps([target, patch])


@given(st.dictionaries(st.text(max_size=2), json_values, max_size=4))
def test_merging_a_document_with_itself_without_nulls_changes_nothing(doc: dict[str, Any]) -> None:
    no_nulls = json.loads(json.dumps(doc).replace("null", "0"))
    assert no_nulls == merge_patch(no_nulls, no_nulls)


def test_if_sha256_absent_and_null_are_told_apart() -> None:
    absent = request(request_id="w", config={})
    null = request(request_id="w", config={}, if_sha256=None)
    assert (False, True) == (absent.has_precondition, null.has_precondition)


def test_a_request_without_request_id_gets_one() -> None:
    assert parse_write(b'{"delete": true}', 4096).request_id.startswith("agent-")


def test_nan_in_a_write_is_invalid_json() -> None:
    assert Code.INVALID_JSON == refusal(lambda: parse_write(b'{"config": {"x": NaN}}', 4096)).code


def test_config_that_is_not_an_object_is_not_an_object() -> None:
    found = refusal(lambda: parse_write(b'{"request_id": "w-9", "config": [1]}', 4096))
    assert (Code.NOT_AN_OBJECT, "w-9") == (found.code, found.request_id)


def test_two_operations_are_an_invalid_request() -> None:
    found = refusal(lambda: parse_write(b'{"config": {}, "delete": true}', 4096))
    assert Code.INVALID_REQUEST == found.code


def test_bad_request_id_is_refused_with_a_made_up_one() -> None:
    found = refusal(
        lambda: parse_write(json.dumps({"request_id": "", "delete": True}).encode(), 99)
    )
    assert (Code.INVALID_REQUEST, True) == (found.code, found.request_id.startswith("agent-"))


def test_replace_plans_the_canonical_sha_and_a_file_that_parses_back() -> None:
    planned = plan_write("d", request(config={"b": 1, "a": "é"}), None, NO_SCHEMA, 4096)
    assert planned.data is not None
    assert ({"b": 1, "a": "é"}, config_sha256({"a": "é", "b": 1})) == (
        loads_strict(planned.data),
        planned.sha256,
    )


def test_merge_applies_onto_the_current_config() -> None:
    planned = plan_write(
        "d", request(merge={"a": None, "c": 3}), current({"a": 1, "b": 2}), NO_SCHEMA, 4096
    )
    assert planned.data is not None
    assert {"b": 2, "c": 3} == loads_strict(planned.data)


def test_merge_without_a_config_is_unknown_device() -> None:
    found = refusal(lambda: plan_write("d", request(merge={}), None, NO_SCHEMA, 4096))
    assert Code.UNKNOWN_DEVICE == found.code


def test_delete_without_a_config_is_unknown_device() -> None:
    found = refusal(lambda: plan_write("d", request(delete=True), None, NO_SCHEMA, 4096))
    assert Code.UNKNOWN_DEVICE == found.code


def test_conflict_names_the_current_sha256() -> None:
    now = current({"a": 1})
    found = refusal(
        lambda: plan_write("d", request(config={}, if_sha256="0" * 64), now, NO_SCHEMA, 4096)
    )
    assert (Code.CONFLICT, True) == (found.code, str(now.sha256) in found.message)


def test_null_precondition_refuses_a_device_that_has_a_config() -> None:
    found = refusal(
        lambda: plan_write("d", request(config={}, if_sha256=None), current({}), NO_SCHEMA, 4096)
    )
    assert Code.CONFLICT == found.code


def test_null_precondition_allows_a_new_device() -> None:
    planned = plan_write("d", request(config={}, if_sha256=None), None, NO_SCHEMA, 4096)
    assert config_sha256({}) == planned.sha256


def test_schema_violation_names_the_json_path(tmp_path: Any) -> None:
    path = tmp_path / "_schema.json"
    path.write_text(json.dumps({"properties": {"interval": {"minimum": 5}}}))
    schema = FleetSchema.load(path, 4096)
    found = refusal(lambda: plan_write("d", request(config={"interval": 1}), None, schema, 4096))
    assert (Code.SCHEMA_VIOLATION, True) == (found.code, "$.interval" in found.message)


def test_file_over_the_size_limit_is_too_large() -> None:
    found = refusal(lambda: plan_write("d", request(config={"x": "y" * 200}), None, NO_SCHEMA, 100))
    assert Code.TOO_LARGE == found.code


json_objects = st.dictionaries(
    st.text(max_size=4),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=4),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)


@given(
    operation=st.sampled_from(["config", "merge", "delete"]),
    document=json_objects,
    precondition=st.sampled_from(["absent", "null", "sha"]),
)
def test_parse_write_round_trips_what_a_writer_sends(
    operation: str, document: dict[str, Any], precondition: str
) -> None:
    sent: dict[str, Any] = {
        "request_id": "w-1",
        operation: True if operation == "delete" else document,
    }
    if precondition != "absent":
        sent["if_sha256"] = None if precondition == "null" else "a" * 64
    parsed = parse_write(json.dumps(sent).encode(), 1 << 20)
    assert sent == parsed.request.dump()


@given(json_objects)
def test_a_replaced_config_reads_back_with_the_sha_it_was_answered_with(
    document: dict[str, Any],
) -> None:
    planned = plan_write("d", request(config=document), None, NO_SCHEMA, 1 << 20)
    assert planned.data is not None
    assert planned.sha256 == config_sha256(loads_strict(planned.data))
