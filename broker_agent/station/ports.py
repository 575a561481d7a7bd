"""Which serial ports a flash station can use: pyserial's ``list_ports``, filtered by USB id.

A *candidate* port (contract section 4) is the USB serial port of a known USB-UART bridge
(CP210x, CH340/CH9102, FTDI, Prolific) or of Espressif's native USB (any product of vendor
``0x303a``). Only candidates are offered when a flash command names no port; a command that
names a device path may use any serial port pyserial lists (``attached_paths``), so a bridge
missing from the table below still works when named.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from serial.tools import list_ports

from firmware_contracts.payloads import PortInfo

ESPRESSIF_VID = 0x303A

KNOWN_BRIDGES: frozenset[tuple[int, int]] = frozenset(
    {
        (0x10C4, 0xEA60),  # Silicon Labs CP210x
        (0x1A86, 0x7523),  # WCH CH340
        (0x1A86, 0x55D4),  # WCH CH9102
        (0x0403, 0x6001),  # FTDI FT232R
        (0x0403, 0x6010),  # FTDI FT2232
        (0x0403, 0x6014),  # FTDI FT232H
        (0x0403, 0x6015),  # FTDI FT231X
        (0x067B, 0x2303),  # Prolific PL2303
    }
)


def is_candidate(vid: int | None, pid: int | None) -> bool:
    """True for a known USB-UART bridge or Espressif's native USB."""
    if vid is None:
        return False
    return vid == ESPRESSIF_VID or (pid is not None and (vid, pid) in KNOWN_BRIDGES)


def is_url(port: str) -> bool:
    """A pyserial URL (``socket://``, ``rfc2217://``, ...) rather than a device path."""
    return "://" in port


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1"})


def port_key(port: str) -> str:
    """The identity of a port for "is it busy" (contract 6.5): one key for every spelling.

    A device path is resolved (``/dev/serial/by-id/usb-...-port0`` and the ``/dev/ttyUSB0`` it
    links to are one port; so are ``/dev/ttyUSB0/`` and ``/dev/../dev/ttyUSB0``). A URL keeps
    only what picks the board: the scheme and host in lower case, ``localhost`` as
    ``127.0.0.1``, the port as a number; a trailing ``/`` and pyserial's options
    (``?logging=debug``) are dropped. No name lookup: this runs on the event loop.
    """
    if not is_url(port):
        return os.path.realpath(port)
    try:
        parts = urlsplit(port.strip())
        number = parts.port
    except ValueError:  # a malformed URL is its own key; opening it fails later
        return port
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    where = host if number is None else f"{host}:{number}"
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{where}{path}"


@dataclass(frozen=True)
class PortScan:
    """One look at the serial ports: the candidates, and every device path pyserial lists."""

    candidates: tuple[PortInfo, ...]
    attached_paths: frozenset[str]  # port_key() of every listed port, candidate or not

    def is_attached(self, port: str) -> bool:
        return port_key(port) in self.attached_paths


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text if text and text != "n/a" else None


def port_info(entry: Any) -> PortInfo:
    """A pyserial ``ListPortInfo`` as the contract's ``PortInfo`` (``busy`` false)."""
    return PortInfo(
        port=str(entry.device),
        description=_text(entry.description),
        serial_number=_text(entry.serial_number),
        vid=entry.vid,
        pid=entry.pid,
    )


def scan_entries(entries: Iterable[Any]) -> PortScan:
    """Filter pyserial ``ListPortInfo`` entries (the pure part of ``scan_ports``)."""
    listed = list(entries)
    candidates = sorted(
        (port_info(entry) for entry in listed if is_candidate(entry.vid, entry.pid)),
        key=lambda info: info.port,
    )
    paths = frozenset(port_key(str(entry.device)) for entry in listed)
    return PortScan(tuple(candidates), paths)


def scan_ports(extra: Iterable[Any] = ()) -> PortScan:
    """Ask the OS which serial ports exist now (a few milliseconds; call it off the loop).

    ``extra``: more entries shaped like pyserial's, e.g. ``SimulatedBench.comports()``.
    """
    return scan_entries([*list_ports.comports(), *extra])
