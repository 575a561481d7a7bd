"""How a job opens a board's port, and pyserial's ``socket://`` port that reports real counts.

``open_port`` opens any port a command may name (a device path, or a pyserial URL) exclusively,
mapping failures to the contract's codes (``port_not_found``, ``port_busy``, ``connect_failed``);
``socket://`` URLs get ``SocketPort``:

pyserial's socket handler answers ``in_waiting`` with 0 or 1 (it only asks select whether the
socket is readable), so esptool reads replies one byte per call: ~4,300 calls per flash job,
and four jobs in one process then fight over the GIL (measured: 4 boards took 2x one board's
time). Asking the kernel (FIONREAD) gives the real count and lets esptool read whole frames.

Its ``close`` also sleeps 0.3 s ("give the server some time" before a quick reconnect): most of
a job's time against a simulated board. A flash job closes its port once, at the end, and the
next job on that port starts when an operator asks, so ours closes without the sleep.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import socket
import sys
import termios
from pathlib import Path
from typing import Any

import serial
from serial import PortNotOpenError
from serial.urlhandler.protocol_socket import Serial as _SocketSerial

from broker_agent.errors import FlashJobError
from broker_agent.station.ports import is_url
from firmware_contracts.codes import FlashErrorCode, FlashPhase

_NOT_FOUND_ERRNOS = {errno.ENOENT, errno.ENODEV, errno.ENXIO}
_BUSY_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK}


class SocketPort(_SocketSerial):  # type: ignore[misc]  # pyserial is untyped
    _socket: socket.socket | None
    is_open: bool

    @property
    def in_waiting(self) -> int:
        if not self.is_open or self._socket is None:
            raise PortNotOpenError()
        count = array.array("i", [0])
        fcntl.ioctl(self._socket, termios.FIONREAD, count)
        # a closed peer shows as readable with nothing to read: let read() find that out
        return count[0] or int(super().in_waiting)

    def close(self) -> None:
        if self.is_open:
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    self._socket.close()
                self._socket = None
            self.is_open = False


def open_url(url: str, **kwargs: object) -> SocketPort:
    """Like ``serial.serial_for_url(url, do_not_open=True)``, for ``socket://`` URLs."""
    port = SocketPort(None, **kwargs)
    port.port = url
    return port


def open_port(name: str, baudrate: int) -> Any:
    """Open ``name`` exclusively; raises ``FlashJobError`` (phase connecting) when it cannot."""

    def failed(code: FlashErrorCode, message: str) -> FlashJobError:
        return FlashJobError(code, message, FlashPhase.CONNECTING)

    if not is_url(name) and not Path(name).exists():
        raise failed(FlashErrorCode.PORT_NOT_FOUND, f"serial port {name} does not exist")
    try:
        if name.lower().startswith("socket://"):
            port: Any = open_url(name, baudrate=baudrate, exclusive=True)
        else:
            port = serial.serial_for_url(name, baudrate=baudrate, exclusive=True, do_not_open=True)
        if sys.platform == "win32":  # as esptool does: keep RTS/DTR from resetting the chip
            port.rts = False
            port.dtr = False
        port.open()
    except (OSError, ValueError) as exc:
        code = FlashErrorCode.CONNECT_FAILED
        if getattr(exc, "errno", None) in _NOT_FOUND_ERRNOS:
            code = FlashErrorCode.PORT_NOT_FOUND
        elif getattr(exc, "errno", None) in _BUSY_ERRNOS:
            code = FlashErrorCode.PORT_BUSY
        reason = " ".join(str(exc).split()) or type(exc).__name__
        message = reason if name in reason else f"could not open serial port {name}: {reason}"
        raise failed(code, message) from exc
    return port
