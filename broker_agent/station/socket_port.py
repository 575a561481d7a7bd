"""pyserial's ``socket://`` port, reporting how many bytes are really waiting.

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
import fcntl
import socket
import termios

from serial import PortNotOpenError
from serial.urlhandler.protocol_socket import Serial as _SocketSerial


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
