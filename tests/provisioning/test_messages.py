"""Provisioning requests and responses as bytes: parsing, refusals, and the response payloads."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from broker_agent.errors import ProvisionFailure
from broker_agent.mqtt.properties import paho_publish_properties, publish_properties
from broker_agent.provisioning.messages import (
    MAX_REQUEST_BYTES,
    build_image,
    error_response,
    ok_response,
    parse_request,
    parse_response,
)
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.identifiers import is_request_id
from firmware_contracts.nvs import NVS_NAMESPACE, partition_size_error
from firmware_contracts.payloads import ProvisionError, ProvisionOk, ProvisionRequest
from firmware_contracts.topics import PROVISION_RESPONSE_EXPIRY_S
from tests.support.nvs_parser import parse_nvs

pytestmark = pytest.mark.timeout(60)

VALUES = {
    "device_key": "kitchen-01",
    "client_id": "iotdevice-kitchen-01",
    "client_secret": "not-a-real-secret",
    "token_url": "https://auth.example.invalid/token",
    "base_url": "https://api.example.invalid/",
}
INVALID = ProvisionErrorCode.INVALID_REQUEST
SIZE = ProvisionErrorCode.INVALID_PARTITION_SIZE


def rejected(payload: bytes) -> ProvisionFailure:
    with pytest.raises(ProvisionFailure) as info:
        parse_request(payload)
    return info.value


def test_a_valid_request() -> None:
    parsed = parse_request(b'{"request_id": "r-17", "partition_size": 20480}')
    assert ("r-17", 20480, False) == (
        parsed.request_id,
        parsed.partition_size,
        parsed.request_id_generated,
    )


@pytest.mark.parametrize(
    "payload", [b'{"partition_size": 20480}', b'{"request_id": null, "partition_size": 20480}']
)
def test_a_request_without_request_id_gets_a_made_up_one(payload: bytes) -> None:
    parsed = parse_request(payload)
    assert parsed.request_id_generated
    assert is_request_id(parsed.request_id)
    assert parsed.request_id != parse_request(payload).request_id


@pytest.mark.parametrize(
    ("payload", "code", "in_message"),
    [
        (b"", INVALID, "not JSON"),
        (b"partition_size=20480", INVALID, "not JSON"),
        (b"\xff\xfe{}", INVALID, "not UTF-8"),
        (b"[20480]", INVALID, "JSON object"),
        (b'"r-17"', INVALID, "JSON object"),
        (b"{" + b'"a":' * 100_000, INVALID, "larger than"),
        (b'{"request_id": "r-17"}', INVALID, "partition_size is required"),
        (b'{"request_id": "r-17", "partition_size": "20480"}', INVALID, "must be an integer"),
        (b'{"request_id": "r-17", "partition_size": 20480.0}', INVALID, "must be an integer"),
        (b'{"request_id": "r-17", "partition_size": true}', INVALID, "must be an integer"),
        (b'{"request_id": "r-17", "partition_size": null}', INVALID, "must be an integer"),
        (
            b'{"request_id": "r-17", "partition_size": 20480, "device_id": "x"}',
            INVALID,
            "'device_id'",
        ),
        (b'{"request_id": "r-17", "partition_size": 8192}', SIZE, "multiple of 4096 and >= 12288"),
        (b'{"request_id": "r-17", "partition_size": 20481}', SIZE, "multiple of 4096"),
        (b'{"request_id": "r-17", "partition_size": 0}', SIZE, ">= 12288"),
        (b'{"request_id": "r-17", "partition_size": -4096}', SIZE, ">= 12288"),
        (b'{"request_id": "r-17", "partition_size": 1052672}', SIZE, "<= 1048576"),
        (b'{"request_id": "r-17", "partition_size": 1' + b"0" * 4000 + b"}", SIZE, "<= 1048576"),
    ],
)
def test_refusals(payload: bytes, code: ProvisionErrorCode, in_message: str) -> None:
    error = rejected(payload)
    assert code == error.code
    assert in_message in error.message
    document = _maybe_json(payload)
    if isinstance(document, dict) and document.get("request_id") == "r-17":
        assert "r-17" == error.request_id  # a valid request_id is echoed
    else:
        assert is_request_id(error.request_id)


@pytest.mark.parametrize("request_id", ["", "x" * 65, "tab\there", "é", 17, ["r"], {"id": 1}])
def test_an_invalid_request_id_is_refused_with_a_made_up_one(request_id: Any) -> None:
    payload = json.dumps({"request_id": request_id, "partition_size": 20480}).encode()
    error = rejected(payload)
    assert INVALID == error.code
    assert "request_id" in error.message
    assert is_request_id(error.request_id)
    assert request_id != error.request_id


def _maybe_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


# -- against the contract's pydantic model ------------------------------------------------------

_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)
_request_ids = st.one_of(
    st.text(max_size=70),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64),
    _json_value,
)
_sizes = st.one_of(
    st.sampled_from([0x3000, 0x5000, 0x100000, 0x101000, 0x2000, 0x5001]),
    st.integers(-(2**70), 2**70),
    _json_value,
)
_requests = st.dictionaries(
    st.sampled_from(["request_id", "partition_size", "extra"]),
    st.one_of(_request_ids, _sizes),
    max_size=3,
) | st.fixed_dictionaries({"request_id": _request_ids, "partition_size": _sizes})


@settings(max_examples=400, deadline=None)
@given(document=_requests)
def test_parse_request_agrees_with_the_contract_model(document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    try:
        model: ProvisionRequest | None = ProvisionRequest.model_validate(document)
    except ValidationError:
        model = None
    try:
        parsed = parse_request(payload)
    except ProvisionFailure as exc:
        assert is_request_id(exc.request_id)
        if is_request_id(document.get("request_id")):
            assert document["request_id"] == exc.request_id
        if exc.code is SIZE:
            assert model is not None
            assert partition_size_error(model.partition_size) == exc.message
        else:
            assert INVALID == exc.code
            assert model is None
        return
    assert model is not None
    assert model.partition_size == parsed.partition_size
    assert partition_size_error(parsed.partition_size) is None
    assert (model.request_id or parsed.request_id) == parsed.request_id


# -- responses --------------------------------------------------------------------------------


def test_ok_response_is_contract_valid_and_round_trips() -> None:
    image = build_image("kitchen-01", VALUES, 0x5000)
    payload = ok_response("r-17", image)
    ok = ProvisionOk.model_validate_json(payload)
    data = base64.b64decode(ok.data)
    assert ("r-17", "kitchen-01", 0x5000, NVS_NAMESPACE, "nvs-v2") == (
        ok.request_id,
        ok.device_id,
        ok.partition_size,
        ok.namespace,
        ok.format,
    )
    assert ["device_key", "client_id", "client_secret", "token_url", "base_url"] == ok.keys
    assert hashlib.md5(data).hexdigest() == ok.md5 == image.md5
    assert VALUES == parse_nvs(data).strings(NVS_NAMESPACE)
    assert json.loads(payload) == ok.dump()
    assert image == parse_response(payload, device_id="kitchen-01", partition_size=0x5000)


def test_error_response_is_contract_valid() -> None:
    payload = error_response(
        "r-17", "kitchen-01", ProvisionErrorCode.UNKNOWN_DEVICE, "no such device"
    )
    error = ProvisionError.model_validate_json(payload)
    assert ("r-17", "kitchen-01", ProvisionErrorCode.UNKNOWN_DEVICE, "no such device") == (
        error.request_id,
        error.device_id,
        error.error.code,
        error.error.message,
    )
    with pytest.raises(ProvisionFailure) as info:
        parse_response(payload, device_id="kitchen-01", partition_size=0x5000)
    assert (ProvisionErrorCode.UNKNOWN_DEVICE, "no such device") == (
        info.value.code,
        info.value.message,
    )


def _tampered(**changes: Any) -> bytes:
    document = json.loads(ok_response("r-1", build_image("kitchen-01", VALUES, 0x5000)))
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("payload", "in_message"),
    [
        (b"not json", "not JSON"),
        (_tampered(md5="0" * 32), "md5 does not match"),
        (
            _tampered(data=base64.b64encode(b"\xff" * 0x4000).decode()),
            "16384 bytes instead of 20480",
        ),
        (_tampered(data="***"), "not base64"),
        (_tampered(device_id="garage-door"), "not for 'kitchen-01'"),
        (_tampered(format="nvs-v1"), "malformed ok response (format)"),
        (b'{"status": "error", "error": "x"}', "malformed error response"),
    ],
)
def test_parse_response_refuses_bad_answers(payload: bytes, in_message: str) -> None:
    with pytest.raises(ProvisionFailure) as info:
        parse_response(payload, device_id="kitchen-01", partition_size=0x5000)
    assert ProvisionErrorCode.INTERNAL_ERROR == info.value.code
    assert in_message in info.value.message


def test_request_size_limit_is_generous_for_real_requests() -> None:
    payload = json.dumps({"request_id": "r" * 64, "partition_size": 0x100000}).encode()
    assert len(payload) < MAX_REQUEST_BYTES
    assert 0x100000 == parse_request(payload).partition_size


@pytest.mark.parametrize("correlation", [None, b"", b"\x00corr-17\xff"])
def test_reply_properties_pack_like_paho_builds_them_and_are_never_shared(
    correlation: bytes | None,
) -> None:
    fast = publish_properties(correlation_data=correlation, expiry_s=PROVISION_RESPONSE_EXPIRY_S)
    built = paho_publish_properties(
        correlation_data=correlation, expiry_s=PROVISION_RESPONSE_EXPIRY_S
    )
    assert fast is not None
    assert built.pack() == fast.pack()  # type: ignore[no-untyped-call]
    assert fast is not publish_properties(correlation_data=correlation, expiry_s=60)
    assert 60 == fast.MessageExpiryInterval  # type: ignore[attr-defined]


def test_request_properties_pack_like_paho_builds_them() -> None:
    fast = publish_properties(response_topic="iot/provision/a/response/x", correlation_data=b"c")
    built = paho_publish_properties(
        response_topic="iot/provision/a/response/x", correlation_data=b"c"
    )
    assert fast is not None
    assert built.pack() == fast.pack()  # type: ignore[no-untyped-call]
