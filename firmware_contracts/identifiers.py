"""Identifiers that end up inside topics, and the request ids echoed in responses."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

IDENTIFIER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
IDENTIFIER_MAX_LENGTH = 64
REQUEST_ID_MAX_LENGTH = 64

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


class InvalidIdentifierError(ValueError):
    """An identifier that must never reach a topic."""


def is_identifier(value: str) -> bool:
    return _IDENTIFIER.fullmatch(value) is not None


def check_identifier(value: str, kind: str = "identifier") -> str:
    """Return ``value`` if it is a valid device/station/agent id, else raise with the reason."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{kind} must be a string")
    if is_identifier(value):
        return value
    if not value:
        reason = "is empty"
    elif len(value) > IDENTIFIER_MAX_LENGTH:
        reason = f"is longer than {IDENTIFIER_MAX_LENGTH} characters"
    else:
        reason = "may use only a-z, 0-9, '_' and '-' and must start with a letter or digit"
    raise InvalidIdentifierError(f"{kind} {value[:80]!r} {reason}")


def is_request_id(value: object) -> bool:
    """1..64 printable ASCII characters (space included, as in Python's printable range)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= REQUEST_ID_MAX_LENGTH
        and all(" " <= ch <= "~" for ch in value)
    )


def _device_id(value: str) -> str:
    return check_identifier(value, "device_id")


def _station_id(value: str) -> str:
    return check_identifier(value, "station_id")


def _agent_id(value: str) -> str:
    return check_identifier(value, "agent_id")


def _request_id(value: str) -> str:
    if not is_request_id(value):
        raise ValueError(
            f"request_id must be 1..{REQUEST_ID_MAX_LENGTH} printable ASCII characters"
        )
    return value


DeviceId = Annotated[str, AfterValidator(_device_id)]
StationId = Annotated[str, AfterValidator(_station_id)]
AgentId = Annotated[str, AfterValidator(_agent_id)]
RequestId = Annotated[str, AfterValidator(_request_id)]
