"""Config writes over MQTT (contract 6.3), the pure part: request in, file content or refusal out.

No MQTT and no file I/O here (``fleet/writer.py`` is the service). ``parse_write`` reads a
``config/set`` payload under the contract's JSON rules; ``plan_write`` decides what the
device's file becomes, checking the ``if_sha256`` precondition and validating the result with
the same pieces ``fleet/files.load_config`` applies to a file an operator saves: a JSON object,
the fleet schema (``FleetSchema.check``, errors with their JSON path), the size limit (on the
bytes that will be written) and the canonical sha256. The publisher then reads the written file
through ``load_config`` itself, so a write and an edit are held to one rule set.

The JSON merge patch (RFC 7396) is the RFC's own ten-line algorithm, written out here rather
than taken from a library: the maintained packages (``json-merge-patch``, ``jsonmerge``) either
mutate their input or implement a wider merge language, and a merge is too small to be worth a
dependency that the whole config path would then rely on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from broker_agent.errors import BrokerAgentError, ConfigFileError
from broker_agent.fleet.files import FleetSchema
from broker_agent.mqtt.intake import new_request_id
from firmware_contracts.codes import ConfigWriteErrorCode
from firmware_contracts.identifiers import REQUEST_ID_MAX_LENGTH, is_request_id
from firmware_contracts.json_rules import StrictJsonError, loads_strict
from firmware_contracts.payloads import ConfigSetRequest, config_sha256

Code = ConfigWriteErrorCode


class WriteRefused(BrokerAgentError):
    """One config write refused: answered with ``code`` (contract 6.3) and ``message``."""

    def __init__(self, code: ConfigWriteErrorCode, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"WriteRefused({self.code.value!r}, {self.message!r})"


@dataclass(frozen=True)
class WriteRequest:
    request_id: str
    request: ConfigSetRequest


def max_request_bytes(max_bytes: int) -> int:
    """The largest ``config/set`` payload read at all: more than any config that fits needs."""
    return 2 * max_bytes + 1024


def parse_write(payload: bytes, max_bytes: int) -> WriteRequest:
    """A ``config/set`` payload, or ``WriteRefused`` with the request_id to answer with."""
    if len(payload) > max_request_bytes(max_bytes):
        raise WriteRefused(Code.TOO_LARGE, f"the request is {len(payload)} bytes", new_request_id())
    try:
        document = loads_strict(payload)
    except StrictJsonError as exc:
        raise WriteRefused(Code.INVALID_JSON, exc.message, new_request_id()) from None
    if not isinstance(document, dict):
        raise WriteRefused(
            Code.INVALID_REQUEST, "the request must be a JSON object", new_request_id()
        )
    raw_id = document.get("request_id")
    if raw_id is not None and not is_request_id(raw_id):
        raise WriteRefused(
            Code.INVALID_REQUEST,
            f"request_id must be 1..{REQUEST_ID_MAX_LENGTH} printable ASCII characters",
            new_request_id(),
        )
    request_id = raw_id if raw_id is not None else new_request_id()
    for name in ("config", "merge"):
        value = document.get(name)
        if value is not None and not isinstance(value, dict):
            raise WriteRefused(
                Code.NOT_AN_OBJECT,
                f"{name} is a JSON {_json_type(value)}, not an object",
                request_id,
            )
    try:
        request = ConfigSetRequest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise WriteRefused(Code.INVALID_REQUEST, problems, request_id) from None
    return WriteRequest(request_id, request)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 section 2, as written there; neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


@dataclass(frozen=True)
class CurrentConfig:
    """The device's file as the publisher would read it now."""

    sha256: str | None  # None: the file exists but is not a valid config
    document: dict[str, Any] | None
    problem: str | None = None  # why it is not valid ("invalid_json: line 1 ...")


@dataclass(frozen=True)
class PlannedWrite:
    device_id: str
    data: bytes | None  # the new file; None: delete it
    sha256: str | None  # the canonical sha256 the publisher will retain; None after a delete


def render_config(document: dict[str, Any]) -> bytes:
    """The file a write leaves: indented for the people who also edit these files by hand."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def plan_write(
    device_id: str,
    request: ConfigSetRequest,
    current: CurrentConfig | None,
    schema: FleetSchema,
    max_bytes: int,
) -> PlannedWrite:
    """What the file becomes; ``WriteRefused`` (without request_id) when it must not change."""
    _check_precondition(request, current)
    operation = request.operation
    if operation != "config" and current is None:
        raise WriteRefused(Code.UNKNOWN_DEVICE, f"{device_id} has no config to {operation}")
    if operation == "delete":
        return PlannedWrite(device_id, None, None)
    if operation == "merge":
        if current is None or current.document is None:
            raise WriteRefused(Code.CONFLICT, _invalid_current(current))
        document = merge_patch(current.document, request.merge)
    else:
        document = request.config
    assert isinstance(document, dict)
    try:
        schema.check(document)
        data = render_config(document)
        sha256 = config_sha256(document)
    except ConfigFileError as exc:
        raise WriteRefused(Code(exc.code.value), exc.message) from None
    except RecursionError:
        raise WriteRefused(Code.INVALID_JSON, "nested too deeply") from None
    if len(data) > max_bytes:
        raise WriteRefused(
            Code.TOO_LARGE, f"the file would be {len(data)} bytes, over the limit of {max_bytes}"
        )
    return PlannedWrite(device_id, data, sha256)


def _check_precondition(request: ConfigSetRequest, current: CurrentConfig | None) -> None:
    if not request.has_precondition:
        return
    if current is not None and current.sha256 is None:
        raise WriteRefused(Code.CONFLICT, _invalid_current(current))
    current_sha = current.sha256 if current is not None else None
    if request.precondition_holds(current_sha):
        return
    if current_sha is None:
        raise WriteRefused(Code.CONFLICT, "the device has no config (current sha256: null)")
    raise WriteRefused(Code.CONFLICT, f"the current config has sha256 {current_sha}")


def _invalid_current(current: CurrentConfig | None) -> str:
    problem = current.problem if current is not None else None
    return (
        f"the device's current file is not a valid config ({problem}); "
        "replace it without if_sha256, or fix the file"
    )


def _json_type(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean"}.get(type(value), "number")
