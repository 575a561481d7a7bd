"""What a flash command may say (contract section 4), checked before any job starts.

Pure and synchronous: the station calls these from its message router. A command that fails
here is answered with one ``error`` event (``FlashJobError`` in phase ``connecting``) and never
becomes a job. ``JobRequest`` is the one type of a job to run, for the station, the ``flash``
command and the flasher alike.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from broker_agent.errors import FlashJobError
from broker_agent.station.ports import is_url
from firmware_contracts.codes import FlashAfter, FlashErrorCode
from firmware_contracts.identifiers import is_request_id
from firmware_contracts.payloads import MAC_PATTERN, FlashRequest
from firmware_contracts.topics import Topics

MAX_COMMAND_BYTES = 4096
"""A command is a handful of short fields; anything bigger is refused before parsing."""

_MAC = re.compile(MAC_PATTERN)
_SHOWN_PROBLEMS = 3


@dataclass(frozen=True)
class JobRequest:
    """A flash job to run: a command that passed validation and has a port.

    ``port`` is a device path or any pyserial URL (``socket://host:port``). ``device_id`` is
    None for a zero-touch job (``station/auto.py``): the chip's MAC decides it. ``force``
    writes the image even when the partition already holds it.
    """

    request_id: str
    device_id: str | None
    port: str
    baud: int = 460800
    after: FlashAfter = FlashAfter.NO_RESET
    expected_mac: str | None = None
    connect_attempts: int = 3
    force: bool = False

    def __post_init__(self) -> None:
        if self.baud <= 0:
            raise ValueError(f"baud must be positive, got {self.baud}")
        if self.connect_attempts < 1:  # esptool reads 0 as "retry forever"
            raise ValueError(f"connect_attempts must be at least 1, got {self.connect_attempts}")


def normalise_mac(mac: str) -> str:
    """``'24-0A-C4-12-34-56'`` -> ``'24:0a:c4:12:34:56'``."""
    return mac.strip().lower().replace("-", ":")


def refused(code: FlashErrorCode, message: str, request_id: str | None = None) -> FlashJobError:
    """A command refused before it became a job (answered in phase ``connecting``)."""
    return FlashJobError(code, message, request_id=request_id)


def new_request_id() -> str:
    """A request_id for a command that came without a usable one."""
    return f"station-{secrets.token_hex(8)}"


def request_id_in(payload: bytes) -> str | None:
    """The command's own request_id when it has a valid one (for refusing it, e.g. retained)."""
    if len(payload) > MAX_COMMAND_BYTES:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    raw_id = document.get("request_id") if isinstance(document, dict) else None
    return raw_id if is_request_id(raw_id) else None


def parse_command(payload: bytes) -> FlashRequest:
    """A flash command -> ``FlashRequest``; raises ``FlashJobError(invalid_request)``.

    The rejection carries the command's request_id when that one is valid.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise refused(FlashErrorCode.INVALID_REQUEST, f"larger than {MAX_COMMAND_BYTES} bytes")
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise refused(FlashErrorCode.INVALID_REQUEST, "not a JSON document") from None
    if not isinstance(document, dict):
        raise refused(FlashErrorCode.INVALID_REQUEST, "must be a JSON object")
    raw_id = document.get("request_id")
    request_id = raw_id if is_request_id(raw_id) else None
    try:
        command = FlashRequest.model_validate(document)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in err['loc']) or 'request'}: {err['msg']}"
            for err in exc.errors()[:_SHOWN_PROBLEMS]
        ]
        raise refused(FlashErrorCode.INVALID_REQUEST, "; ".join(problems), request_id) from None
    if command.expected_mac is not None and not _MAC.match(normalise_mac(command.expected_mac)):
        raise refused(
            FlashErrorCode.INVALID_REQUEST,
            "expected_mac must look like 24:0a:c4:12:34:56",
            request_id,
        )
    return command


def response_topic_problem(topics: Topics, station_id: str, topic: object) -> str | None:
    """Why the station will not publish a job's events to ``topic`` (None: it will).

    Only the station's own response topic or a topic below it
    (``{root}/stations/{id}/flash/response/<anything>``), as the agent does for provisioning
    answers: a flash command must not make the station publish onto another topic (a device's
    config, say), and under the production broker profile it may write nowhere else anyway.
    """
    if topic is None:
        return None
    if not isinstance(topic, str) or not topic:
        return "the response topic is empty"
    if any(ch in topic for ch in "+#\x00"):
        return "the response topic must not contain a wildcard ('+', '#') or NUL"
    base = topics.flash_response(station_id)
    if topic != base and not (topic.startswith(base + "/") and len(topic) > len(base) + 1):
        return f"the response topic must be {base} or a topic below it"
    return None


def select_port(
    requested: str | None, candidates: Sequence[str], is_attached: Callable[[str], bool]
) -> str:
    """The port a command runs on; raises ``FlashJobError`` (``port_not_found``, ``port_required``).

    A named port must be a pyserial URL or an attached serial port; with none named, exactly
    one candidate must be attached.
    """
    shown = ", ".join(candidates) or "none"
    if requested is not None:
        if is_url(requested) or is_attached(requested):
            return requested
        raise refused(
            FlashErrorCode.PORT_NOT_FOUND,
            f"serial port {requested} is not attached to this station (candidates: {shown})",
        )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise refused(
            FlashErrorCode.PORT_REQUIRED,
            "no candidate serial port is attached: connect a board or name a port",
        )
    raise refused(
        FlashErrorCode.PORT_REQUIRED,
        f"{len(candidates)} candidate ports are attached, name one of: {shown}",
    )
