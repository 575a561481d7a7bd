"""Reading one device config file into a publishable envelope, or a specific rejection.

Synchronous, no MQTT: the watcher and the publisher call these. What is read and what is
refused with which code is written down in docs/input-rules.md; the rule behind it is that
nothing in one file can stop the agent: ``load_config`` raises only FileNotFoundError (no such
entry) or ConfigFileError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

from broker_agent.errors import ConfigFileError, FileTooLarge, UnreadableFile
from broker_agent.files import read_regular_file
from firmware_contracts.codes import ConfigErrorCode
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.json_rules import StrictJsonError, loads_strict
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
        """Read the schema; a missing file means "no schema". Raises ConfigFileError only.

        Besides ``check_schema`` (which also compiles every ``pattern``), the new validator is
        tried once on ``{}``: some faults only show when validating (an unresolvable ``$ref``,
        a ``$schema`` that is not a string), and such a schema is rejected here, keeping the
        last good one, rather than rejecting every config later.
        """
        try:
            document, _ = _read_json(path, max_bytes, None)
        except FileNotFoundError:
            return cls(None)
        if not isinstance(document, dict):
            raise ConfigFileError(
                ConfigErrorCode.NOT_AN_OBJECT, "the fleet schema must be a JSON object"
            )
        try:
            validator_class = jsonschema.validators.validator_for(document)
            validator_class.check_schema(document)
            validator = validator_class(document)
            for _ in validator.iter_errors({}):
                pass
        except SchemaError as exc:
            raise ConfigFileError(
                ConfigErrorCode.SCHEMA_VIOLATION,
                f"the fleet schema is not a valid JSON Schema at {exc.json_path}: {exc.message}",
            ) from None
        except Exception as exc:  # noqa: BLE001 - jsonschema raises many types; one file, one event
            raise ConfigFileError(
                ConfigErrorCode.SCHEMA_VIOLATION,
                f"the fleet schema cannot be used: {_describe(exc)}",
            ) from None
        return cls(validator)

    def check(self, config: dict[str, Any]) -> None:
        """Raise ConfigFileError (``schema_violation``) unless ``config`` validates.

        A schema that passed ``load`` can still fail on some configs only (a ``$ref`` reached
        only through a property, a recursion limit): that is reported for the config, never
        raised past the publisher.
        """
        if self.validator is None:
            return
        try:
            errors = sorted(self.validator.iter_errors(config), key=_path_order)
        except Exception as exc:  # noqa: BLE001 - see the docstring: one config, one event
            raise ConfigFileError(
                ConfigErrorCode.SCHEMA_VIOLATION,
                f"the fleet schema could not be applied: {_describe(exc)}",
            ) from None
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


def _path_order(error: ValidationError) -> list[tuple[bool, Any]]:
    # sorts by path without ever comparing an array index with a property name (a TypeError)
    return [(isinstance(part, str), part) for part in error.absolute_path]


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _read_json(path: Path, max_bytes: int, inside: Path | str | None) -> tuple[Any, float]:
    """The parsed document and the file's mtime. Raises FileNotFoundError or ConfigFileError.

    Only regular files are read (``read_regular_file``: a FIFO, socket, device node, directory,
    dangling symlink or symlink to outside ``inside`` is ``unreadable``), and parsed under the
    contract's JSON rules (6.5: ``NaN``, ``Infinity``, ``1e400``, over-long integers and lone
    surrogates are ``invalid_json``).
    """
    try:
        raw, info = read_regular_file(path, max_bytes, inside=inside)
    except FileTooLarge as exc:
        raise ConfigFileError(
            ConfigErrorCode.TOO_LARGE, f"{exc.size} bytes is over the limit of {exc.limit}"
        ) from None
    except UnreadableFile as exc:
        raise ConfigFileError(ConfigErrorCode.UNREADABLE, exc.reason) from None
    try:
        return loads_strict(raw), info.st_mtime
    except StrictJsonError as exc:
        raise ConfigFileError(ConfigErrorCode.INVALID_JSON, exc.message) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # the parser's own bugs stay here
        raise ConfigFileError(
            ConfigErrorCode.INVALID_JSON, f"cannot be parsed ({type(exc).__name__})"
        ) from None


def load_config(
    path: Path, schema: FleetSchema, max_bytes: int, *, inside: Path | str | None = None
) -> DeviceConfig:
    """Read and validate ``<device_id>.json``. Raises FileNotFoundError or ConfigFileError.

    FileNotFoundError means "no directory entry" (the file was deleted). Anything else that
    goes wrong with this one file, reading, parsing, validating or hashing it, is a
    ConfigFileError, so nothing in a file can raise past the publisher (issue 9). ``inside``:
    the config directory's real path, where a symlinked config may point (default: resolved
    from ``path`` when a symlink is met).
    """
    device_id = device_id_of(path.name)
    if not is_identifier(device_id):
        raise ConfigFileError(
            ConfigErrorCode.INVALID_DEVICE_ID,
            f"file name {path.name!r} is not <device_id>.json with a device_id of a-z, 0-9, "
            "'_', '-' (at most 64, starting with a letter or digit)",
        )
    document, mtime = _read_json(path, max_bytes, inside)
    if not isinstance(document, dict):
        raise ConfigFileError(
            ConfigErrorCode.NOT_AN_OBJECT,
            f"top level is a JSON {_json_type(document)}, not an object",
        )
    schema.check(document)
    try:
        canonical = canonical_config(document)
        sha256 = hashlib.sha256(canonical).hexdigest()
        updated_at = utc_timestamp(mtime)
    except RecursionError:
        raise ConfigFileError(ConfigErrorCode.INVALID_JSON, "nested too deeply") from None
    except (ValueError, TypeError, OverflowError, OSError) as exc:  # e.g. an mtime out of range
        raise ConfigFileError(
            ConfigErrorCode.INVALID_JSON, f"cannot be hashed ({type(exc).__name__}: {exc})"
        ) from None
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
