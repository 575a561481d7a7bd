"""Provisioning requests and responses (contract section 3), as bytes in and bytes out.

Pure and synchronous: the responder service and the ``provision`` command call these; nothing
here talks to MQTT or reads files.

- ``parse_request``: a request payload -> ``ProvisionRequestData`` or ``ProvisionFailure``
  (``invalid_request`` / ``invalid_partition_size``) carrying the request_id to answer with: the
  requester's when it is valid, a made-up one when it is missing or invalid.
- ``build_image``: credential values -> ``ProvisionedImage`` (the NVS blob, its md5, its keys).
- ``ok_response`` / ``error_response``: the response payloads. The ok response is spliced
  together around the base64 text instead of ``json.dumps``-ing a dict holding ~27 KB of it
  (measured: the dump alone cost ~40 us per 0x5000 reply, more than the base64 itself).
- ``parse_response``: the requester's side: a response payload -> ``ProvisionedImage``, with the
  blob decoded and its size and md5 checked, or ``ProvisionFailure``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from broker_agent.errors import ProvisionFailure
from broker_agent.mqtt.intake import new_request_id
from broker_agent.provisioning.nvs_image import NvsImageError, build_nvs_image
from broker_agent.provisioning.nvs_keys import nvs_keys_partition
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.identifiers import REQUEST_ID_MAX_LENGTH, is_request_id
from firmware_contracts.nvs import NVS_FORMAT, NVS_NAMESPACE, PROV_KEYS, partition_size_error
from firmware_contracts.payloads import ProvisionError, ProvisionOk

__all__ = [
    "MAX_REQUEST_BYTES",
    "ProvisionRequestData",
    "ProvisionedImage",
    "build_image",
    "error_response",
    "new_request_id",
    "ok_response",
    "parse_request",
    "parse_response",
]

MAX_REQUEST_BYTES = 4096
"""A request is two small fields; anything bigger is refused before it is parsed."""

_FIELDS = frozenset({"request_id", "partition_size", "encrypted"})
_SHOWN_FIELDS = 3
_SHOWN_FIELD_CHARS = 32
_INVALID = ProvisionErrorCode.INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class ProvisionRequestData:
    request_id: str
    partition_size: int
    request_id_generated: bool = False
    encrypted: bool = False


def parse_request(payload: bytes) -> ProvisionRequestData:
    """Validate a request payload; ``ProvisionFailure`` carries the request_id to answer with."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ProvisionFailure(
            _INVALID,
            f"request is larger than {MAX_REQUEST_BYTES} bytes",
            request_id=new_request_id(),
        )
    document = _json_object(payload)
    if isinstance(document, str):
        raise ProvisionFailure(_INVALID, document, request_id=new_request_id())
    raw_id = document.get("request_id")
    generated = raw_id is None
    if raw_id is None:
        request_id = new_request_id()
    elif is_request_id(raw_id):
        request_id = raw_id
    else:
        raise ProvisionFailure(
            _INVALID,
            f"request_id must be 1..{REQUEST_ID_MAX_LENGTH} printable ASCII characters",
            request_id=new_request_id(),
        )
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        shown = ", ".join(repr(name[:_SHOWN_FIELD_CHARS]) for name in unknown[:_SHOWN_FIELDS])
        more = f" and {len(unknown) - _SHOWN_FIELDS} more" if len(unknown) > _SHOWN_FIELDS else ""
        raise ProvisionFailure(
            _INVALID,
            f"unknown field(s) {shown}{more}: a request has only request_id, partition_size "
            "and encrypted",
            request_id=request_id,
        )
    if "partition_size" not in document:
        raise ProvisionFailure(_INVALID, "partition_size is required", request_id=request_id)
    size = document["partition_size"]
    if type(size) is not int:  # bool is an int subclass; 20480.0 is not an integer here
        raise ProvisionFailure(_INVALID, "partition_size must be an integer", request_id=request_id)
    encrypted = document.get("encrypted", False)
    if type(encrypted) is not bool:
        raise ProvisionFailure(_INVALID, "encrypted must be true or false", request_id=request_id)
    problem = partition_size_error(size)
    if problem is not None:
        raise ProvisionFailure(
            ProvisionErrorCode.INVALID_PARTITION_SIZE, problem, request_id=request_id
        )
    return ProvisionRequestData(request_id, size, generated, encrypted)


def _json_object(payload: bytes) -> dict[str, Any] | str:
    """The payload's JSON object, or the reason it is not one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "request is not UTF-8"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"request is not JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
    except (ValueError, RecursionError):  # e.g. an integer of more than 4300 digits
        return "request is not JSON that can be read"
    if not isinstance(document, dict):
        return "request must be a JSON object"
    return document


@dataclass(frozen=True, slots=True)
class ProvisionedImage:
    """An NVS partition image for one device, ready to write at the partition's offset."""

    device_id: str
    partition_size: int
    data: bytes
    md5: str
    keys: tuple[str, ...]  # the keys written, in the contract's table order
    namespace: str = NVS_NAMESPACE
    format: str = NVS_FORMAT
    nvs_keys: bytes | None = None  # the nvs_keys partition image, for an encrypted image

    @property
    def nvs_keys_md5(self) -> str | None:
        return _md5(self.nvs_keys) if self.nvs_keys is not None else None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def build_image(
    device_id: str,
    values: Mapping[str, str],
    partition_size: int,
    *,
    encryption_key: bytes | None = None,
) -> ProvisionedImage:
    """Build the blob from a device's credential values. Raises ``ProvisionFailure``.

    With ``encryption_key`` the image is encrypted and carries its ``nvs_keys`` partition.
    """
    try:
        data = build_nvs_image(values, partition_size, encryption_key=encryption_key)
    except NvsImageError as exc:
        raise ProvisionFailure(exc.code, exc.message) from None
    keys = tuple(key.name for key in PROV_KEYS if key.name in values)
    nvs_keys = nvs_keys_partition(encryption_key) if encryption_key is not None else None
    return ProvisionedImage(device_id, partition_size, data, _md5(data), keys, nvs_keys=nvs_keys)


def ok_response(request_id: str, image: ProvisionedImage) -> bytes:
    head = json.dumps(
        {
            "request_id": request_id,
            "status": "ok",
            "device_id": image.device_id,
            "partition_size": image.partition_size,
            "format": image.format,
            "namespace": image.namespace,
            "keys": list(image.keys),
            "encoding": "base64",
        },
        separators=(",", ":"),
    )
    # base64 text needs no JSON escaping, nor does a hex digest.
    parts = [
        head[:-1].encode("ascii"),
        b',"data":"',
        base64.b64encode(image.data),
        b'","md5":"',
        image.md5.encode("ascii"),
        b'"',
    ]
    if image.nvs_keys is not None:
        parts += [
            b',"encrypted":true,"nvs_keys":{"size":%d,"encoding":"base64","data":"'
            % len(image.nvs_keys),
            base64.b64encode(image.nvs_keys),
            b'","md5":"',
            _md5(image.nvs_keys).encode("ascii"),
            b'"}',
        ]
    return b"".join([*parts, b"}"])


def error_response(
    request_id: str, device_id: str, code: ProvisionErrorCode, message: str
) -> bytes:
    document = {
        "request_id": request_id,
        "status": "error",
        "device_id": device_id,
        "error": {"code": code.value, "message": message},
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def parse_response(payload: bytes, *, device_id: str, partition_size: int) -> ProvisionedImage:
    """Check an agent's response and decode its blob. Raises ``ProvisionFailure``.

    An ``error`` response raises with the agent's code and message; a response that is
    malformed, for another device or size, or whose blob fails its md5 raises ``internal_error``.
    """
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise _bad_response("it is not JSON") from None
    if isinstance(document, dict) and document.get("status") == "error":
        try:
            refusal = ProvisionError.model_validate(document)
        except ValidationError:
            raise _bad_response("a malformed error response") from None
        raise ProvisionFailure(refusal.error.code, refusal.error.message)
    try:
        ok = ProvisionOk.model_validate(document)
    except ValidationError as exc:
        fields = ", ".join(sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]}))
        raise _bad_response(f"a malformed ok response ({fields or 'not an object'})") from None
    if ok.device_id != device_id or ok.partition_size != partition_size:
        raise _bad_response(
            f"an image for {ok.device_id!r} of {ok.partition_size} bytes, not for "
            f"{device_id!r} of {partition_size} bytes"
        )
    try:
        data = base64.b64decode(ok.data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_response("data that is not base64") from None
    if len(data) != partition_size:
        raise _bad_response(f"a blob of {len(data)} bytes instead of {partition_size}")
    md5 = _md5(data)
    if md5 != ok.md5:
        raise _bad_response("a blob whose md5 does not match")
    nvs_keys = None
    if ok.nvs_keys is not None:
        try:
            nvs_keys = base64.b64decode(ok.nvs_keys.data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad_response("nvs_keys data that is not base64") from None
        if len(nvs_keys) != ok.nvs_keys.size or _md5(nvs_keys) != ok.nvs_keys.md5:
            raise _bad_response("an nvs_keys image whose size or md5 does not match")
    return ProvisionedImage(
        ok.device_id,
        ok.partition_size,
        data,
        md5,
        tuple(ok.keys),
        ok.namespace,
        ok.format,
        nvs_keys=nvs_keys,
    )


def _bad_response(what: str) -> ProvisionFailure:
    return ProvisionFailure(ProvisionErrorCode.INTERNAL_ERROR, f"the agent answered with {what}")
