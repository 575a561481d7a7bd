"""Reading one device config file into a publishable envelope, or a specific rejection.

Pure and synchronous: the watcher and the publisher call these; nothing here talks to MQTT.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

from broker_agent.errors import ConfigFileError
from firmware_contracts.codes import ConfigErrorCode
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.payloads import canonical_config, utc_timestamp

SCHEMA_FILE = "_schema.json"
_IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp")
_MAX_SCHEMA_ERRORS = 10


def is_candidate(name: str) -> bool:
    """A file the publisher looks at: ``*.json`` that is not an editor artefact."""
    if name.startswith((".", "#")) or name.endswith(_IGNORED_SUFFIXES):
        return False
    return name.endswith(".json")


def device_id_of(name: str) -> str:
    """The device id a candidate file name stands for (maybe invalid)."""
    return name[: -len(".json")]


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    file: str
    sha256: str
    updated_at: str
    envelope: bytes  # the retained payload, ready to publish


def _envelope(device_id: str, sha256: str, updated_at: str, canonical: bytes) -> bytes:
    # Spliced rather than re-serialised: the canonical bytes are already the config's JSON, and
    # the other fields (a validated id, hex, a timestamp) never need escaping.
    head = f'{{"v":1,"device_id":"{device_id}","sha256":"{sha256}","updated_at":"{updated_at}"'
    return head.encode() + b',"config":' + canonical + b"}"


class FleetSchema:
    """The optional ``_schema.json``; validates configs and reports every error with its path."""

    def __init__(self, validator: Validator | None) -> None:
        self.validator = validator

    @classmethod
    def load(cls, path: Path, max_bytes: int) -> FleetSchema:
        """Read the schema; a missing file means "no schema". Raises ConfigFileError."""
        try:
            document, _ = _read_json(path, max_bytes)
        except FileNotFoundError:
            return cls(None)
        if not isinstance(document, dict):
            raise ConfigFileError(
                ConfigErrorCode.NOT_AN_OBJECT, "the fleet schema must be a JSON object"
            )
        validator_class = jsonschema.validators.validator_for(document)
        try:
            validator_class.check_schema(document)
        except SchemaError as exc:
            raise ConfigFileError(
                ConfigErrorCode.SCHEMA_VIOLATION,
                f"the fleet schema is not a valid JSON Schema at {exc.json_path}: {exc.message}",
            ) from exc
        return cls(validator_class(document))

    def check(self, config: dict[str, Any]) -> None:
        if self.validator is None:
            return
        errors = sorted(self.validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        if not errors:
            return
        shown = "; ".join(
            f"{err.json_path}: {err.message[:200]}" for err in errors[:_MAX_SCHEMA_ERRORS]
        )
        more = (
            f" (and {len(errors) - _MAX_SCHEMA_ERRORS} more)"
            if len(errors) > _MAX_SCHEMA_ERRORS
            else ""
        )
        raise ConfigFileError(ConfigErrorCode.SCHEMA_VIOLATION, shown + more)


def _read_json(path: Path, max_bytes: int) -> tuple[Any, float]:
    """The parsed document and the file's mtime. Raises FileNotFoundError or ConfigFileError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigFileError(ConfigErrorCode.UNREADABLE, exc.strerror or str(exc)) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigFileError(ConfigErrorCode.UNREADABLE, "is a directory")
        if info.st_size > max_bytes:
            raise ConfigFileError(
                ConfigErrorCode.TOO_LARGE, f"{info.st_size} bytes is over the limit of {max_bytes}"
            )
        # read exactly what fstat promised (+1 to notice growth): a max_bytes buffer per file
        # would cost more than the parsing
        raw = os.read(fd, info.st_size + 1)
        while len(raw) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(raw))):
            raw += chunk
    except OSError as exc:
        raise ConfigFileError(ConfigErrorCode.UNREADABLE, exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # grew while we read it
        raise ConfigFileError(ConfigErrorCode.TOO_LARGE, f"over the limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            ConfigErrorCode.INVALID_JSON, f"not UTF-8: invalid byte at offset {exc.start}"
        ) from exc
    try:
        return json.loads(text), info.st_mtime
    except json.JSONDecodeError as exc:
        raise ConfigFileError(
            ConfigErrorCode.INVALID_JSON, f"line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except RecursionError as exc:
        raise ConfigFileError(ConfigErrorCode.INVALID_JSON, "nested too deeply") from exc


def load_config(path: Path, schema: FleetSchema, max_bytes: int) -> DeviceConfig:
    """Read and validate ``<device_id>.json``. Raises FileNotFoundError or ConfigFileError."""
    device_id = device_id_of(path.name)
    if not is_identifier(device_id):
        raise ConfigFileError(
            ConfigErrorCode.INVALID_DEVICE_ID,
            f"file name {path.name!r} is not <device_id>.json with a device_id of a-z, 0-9, "
            "'_', '-' (at most 64, starting with a letter or digit)",
        )
    document, mtime = _read_json(path, max_bytes)
    if not isinstance(document, dict):
        raise ConfigFileError(
            ConfigErrorCode.NOT_AN_OBJECT,
            f"top level is a JSON {_json_type(document)}, not an object",
        )
    schema.check(document)
    canonical = canonical_config(document)
    sha256 = hashlib.sha256(canonical).hexdigest()
    updated_at = utc_timestamp(mtime)
    return DeviceConfig(
        device_id,
        path.name,
        sha256,
        updated_at,
        _envelope(device_id, sha256, updated_at, canonical),
    )


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


_SHA_FIELD = b'"sha256":"'


def envelope_sha256(payload: bytes) -> str | None:
    """The sha256 field of a retained envelope; None when the payload is not one of ours.

    Envelopes we published start with a fixed head, so the hash is found without parsing the
    whole config (thousands arrive at every reconnect); anything else is parsed properly.
    """
    at = payload.find(_SHA_FIELD, 0, 120)
    if (
        payload.startswith(b'{"v":1,"device_id":"')
        and at > 0
        and payload[at + 74 : at + 75] == b'"'
    ):
        return payload[at + 10 : at + 74].decode("ascii", "replace")
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    found = document.get("sha256") if isinstance(document, dict) else None
    return found if isinstance(found, str) else None
