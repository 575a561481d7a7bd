"""Zero-touch bench mode (issue 14): which device a board becomes, decided by its MAC.

``broker-agent station --auto SOURCE`` flashes every board plugged in without a command. A
job reads the chip's MAC first, then asks the source for the board's device_id:

- ``MacMap`` (SOURCE ends in ``.csv``): lines ``mac,device_id`` (a ``mac,device_id`` header
  line is allowed, ``#`` starts a comment). A MAC not in the map is ``mac_mismatch``: the
  board is not one this bench expects, and nothing is written.
- ``IdQueue`` (any other SOURCE): one device_id per line, handed out in order, each once. The
  hand-out is written into the file itself, atomically (``files.write_atomically``): the line
  becomes ``device_id,mac``. One rename both takes the id and binds it to the board, so a crash
  never hands one id to two boards or skips one, and a board that comes back (replugged,
  or a failed job retried) gets its own id again. The job's line in the manufacturing log
  records the same binding. An exhausted queue is ``provisioning_failed`` (nothing written).

Both re-read the file on every board, so an operator may extend them while the station runs.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from broker_agent.errors import FlashJobError, RefusedFile, SetupError
from broker_agent.files import read_regular_file, write_atomically
from broker_agent.station.commands import JobRequest, normalise_mac
from broker_agent.station.ports import port_key
from firmware_contracts.codes import FlashErrorCode, FlashPhase
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.payloads import MAC_PATTERN, PortInfo

MAX_SOURCE_BYTES = 4 * 1024 * 1024
_MAC = re.compile(MAC_PATTERN)
_MAC_SERIAL = re.compile(r"^[0-9a-f]{12}$")  # Espressif native USB and the simulator


class IdentitySource(Protocol):
    """Where a zero-touch job learns its device_id; raises ``FlashJobError`` when it cannot."""

    path: Path

    def device_for(self, mac: str) -> str: ...


@dataclass(frozen=True)
class _Line:
    number: int
    text: str  # as in the file, without its newline
    fields: tuple[str, ...]  # the comma-separated values; empty for a blank or comment line


def _refused(code: FlashErrorCode, message: str) -> FlashJobError:
    return FlashJobError(code, message, FlashPhase.FETCHING_NVS)


def _read_lines(path: Path) -> list[_Line]:
    try:
        raw, _ = read_regular_file(path, MAX_SOURCE_BYTES)
        text = raw.decode("utf-8")
    except (OSError, RefusedFile, UnicodeDecodeError) as exc:
        raise SetupError(f"--auto: cannot read {path}: {exc}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        fields = tuple(field.strip() for field in content.split(",")) if content else ()
        lines.append(_Line(number, line, fields))
    return lines


def _check(path: Path, lines: list[_Line], columns: tuple[str, ...]) -> None:
    """Every problem of the file at once, with line numbers (``SetupError``)."""
    problems = []
    for line in lines:
        if not line.fields or line.fields == columns:
            continue
        where = f"line {line.number}"
        if len(line.fields) > len(columns):
            problems.append(f"{where}: expected {','.join(columns)}")
            continue
        values = dict(zip(columns, line.fields, strict=False))
        device_id = values.get("device_id", "")
        if not is_identifier(device_id):
            problems.append(f"{where}: {device_id!r} is not a valid device_id")
        mac = values.get("mac")
        if mac is not None and not _MAC.match(normalise_mac(mac)):
            problems.append(f"{where}: {mac!r} is not a MAC like 24:0a:c4:12:34:56")
    if problems:
        raise SetupError(f"--auto {path}: " + "; ".join(problems))


class MacMap:
    """``mac,device_id`` lines: the board's MAC decides its device_id."""

    COLUMNS = ("mac", "device_id")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.load()  # at start-up: a broken map stops the station with every problem listed

    def load(self) -> dict[str, str]:
        lines = _read_lines(self.path)
        _check(self.path, lines, self.COLUMNS)
        return {
            normalise_mac(line.fields[0]): line.fields[1]
            for line in lines
            if len(line.fields) == 2 and line.fields != self.COLUMNS
        }

    def device_for(self, mac: str) -> str:
        try:
            mapping = self.load()
        except SetupError as exc:
            raise _refused(FlashErrorCode.INTERNAL_ERROR, str(exc)) from None
        device_id = mapping.get(normalise_mac(mac))
        if device_id is None:
            raise _refused(
                FlashErrorCode.MAC_MISMATCH,
                f"the chip's MAC {mac} is not in the MAC map {self.path.name}: nothing written; "
                "add it, or set the board aside",
            )
        return device_id


class IdQueue:
    """device_ids handed out in order, each once; the file records ``device_id,mac``."""

    COLUMNS = ("device_id", "mac")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one hand-out at a time (jobs run on threads)
        _check(path, _read_lines(path), self.COLUMNS)

    def device_for(self, mac: str) -> str:
        mac = normalise_mac(mac)
        with self._lock:
            try:
                lines = _read_lines(self.path)
                _check(self.path, lines, self.COLUMNS)
            except SetupError as exc:
                raise _refused(FlashErrorCode.INTERNAL_ERROR, str(exc)) from None
            entries = [line for line in lines if line.fields and line.fields != self.COLUMNS]
            for line in entries:
                if len(line.fields) == 2 and normalise_mac(line.fields[1]) == mac:
                    return line.fields[0]  # this board's id from before
            free = next((line for line in entries if len(line.fields) == 1), None)
            if free is None:
                raise _refused(
                    FlashErrorCode.PROVISIONING_FAILED,
                    f"no device_id left in the queue {self.path.name} for the chip {mac}: "
                    "nothing written; add device_ids to the file",
                )
            device_id = free.fields[0]
            text = [f"{device_id},{mac}" if line is free else line.text for line in lines]
            write_atomically(self.path, ("\n".join(text) + "\n").encode(), mode=0o644)
            return device_id


def open_source(path: Path) -> IdentitySource:
    """The source ``--auto`` names: a MAC map for ``*.csv``, else a queue (``SetupError``)."""
    if path.suffix.lower() == ".csv":
        return MacMap(path)
    return IdQueue(path)


class ZeroTouch:
    """Which ports a zero-touch station starts a job on: those that appeared since last time.

    Ports attached when the station first looks count as appeared. A port must be gone for
    one look to count as plugged in again; a port busy with a commanded job is left alone.
    A job's request_id is ``auto-<board>-<run>-<n>``: ``<board>`` the port's USB serial number
    when that is a MAC (Espressif's native USB, the simulator), else ``board``; ``<run>`` a
    random tag of this station run, so ids stay unique across restarts.
    """

    def __init__(self, source: IdentitySource, connect_attempts: int = 3) -> None:
        self.source = source
        self.connect_attempts = connect_attempts
        self._present: set[str] = set()
        self._count = 0
        self._run = secrets.token_hex(3)

    def new_jobs(
        self, candidates: Sequence[PortInfo], busy: Container[str]
    ) -> list[tuple[str, JobRequest]]:
        """(port_key, request) for every candidate port new since the last call."""
        present = {port_key(info.port): info for info in candidates}
        new = [
            (key, self._request(info))
            for key, info in present.items()
            if key not in self._present and key not in busy
        ]
        self._present = set(present)
        return new

    def _request(self, info: PortInfo) -> JobRequest:
        self._count += 1
        serial = (info.serial_number or "").lower()
        board = serial if _MAC_SERIAL.match(serial) else "board"
        return JobRequest(
            request_id=f"auto-{board}-{self._run}-{self._count}",
            device_id=None,  # the chip's MAC decides it (run_job's identify)
            port=info.port,
            connect_attempts=self.connect_attempts,
        )
