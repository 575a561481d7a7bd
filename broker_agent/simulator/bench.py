"""A bench of simulated boards that appear and disappear while a station runs (hot-plug).

``SimulatedBench`` plays the USB hub: ``plug(board)`` starts a ``BoardServer`` and returns
its ``socket://`` URL, ``unplug(url)`` stops it (the listening socket closes, so new
connections are refused, and an open connection drops, as when a cable is pulled) and
hands the board back: its flash survives, so plugging it in again shows what was written.
``ports()`` lists the URLs plugged in now, oldest first; a port scanner polls it the way it
polls the serial ports of the host, or merges ``comports()`` (the same boards shaped like
pyserial's ``list_ports.comports()`` entries, with a CP210x bridge's USB id) into its scan.
Every change bumps ``generation``, and ``wait_for_change(seen)`` blocks until the
generation differs from ``seen`` (or a timeout)::

    with SimulatedBench() as bench:
        url = bench.plug(SimulatedBoard(BoardConfig(erased=True)))
        seen = bench.generation
        ...                                    # the station scans bench.ports()
        board = bench.unplug(url)
        bench.plug(board, port=port_of(url))   # back at the same URL, like a re-plugged cable

All methods are thread-safe. ``plug``/``unplug`` take a while (up to ~0.1 s to stop a
server); ``ports``, ``generation`` and ``wait_for_change`` never wait for them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from broker_agent.simulator.board import SimulatedBoard
from broker_agent.simulator.server import BoardServer


def port_of(url: str) -> int:
    """The TCP port of a ``socket://host:port`` URL."""
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"not a socket://host:port URL: {url!r}")
    return port


CP210X_VID = 0x10C4
CP210X_PID = 0xEA60


@dataclass(frozen=True)
class BenchPort:
    """A plugged board as ``list_ports.comports()`` lists a USB serial port (same names)."""

    device: str  # the socket:// URL
    serial_number: str  # the board's MAC, hex without colons
    description: str = "CP2102 USB to UART Bridge Controller (simulated ESP32)"
    vid: int = CP210X_VID
    pid: int = CP210X_PID


class SimulatedBench:
    """Boards plugged in and out at run time, each behind its own ``socket://`` URL."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._servers: dict[str, BoardServer] = {}
        self._generation = 0
        self._changed = threading.Condition()  # guards _servers and _generation
        self._plugging = threading.Lock()  # one plug or unplug at a time

    def plug(self, board: SimulatedBoard | None = None, *, port: int = 0) -> str:
        """Connect ``board`` (a default one when ``None``); return the URL it answers at.

        ``port=0`` takes any free TCP port; pass the old port to come back at the same URL.
        """
        board = board or SimulatedBoard()
        with self._plugging:
            with self._changed:
                if any(server.board is board for server in self._servers.values()):
                    raise ValueError("this board is already plugged in")
            server = BoardServer(board, host=self._host, port=port).start()
            with self._changed:
                self._servers[server.url] = server
                self._bump()
            return server.url

    def unplug(self, url: str) -> SimulatedBoard:
        """Disconnect the board at ``url``: refuse new connections, drop the open one."""
        with self._plugging:
            with self._changed:
                server = self._servers.pop(url, None)
            if server is None:
                raise KeyError(f"no board plugged in at {url}")
            server.unplug()
            with self._changed:
                self._bump()  # after stop(): a waiter woken now finds the port closed
            return server.board

    def ports(self) -> list[str]:
        """The URLs of the boards plugged in now, in the order they were plugged in."""
        with self._changed:
            return list(self._servers)

    def comports(self) -> list[BenchPort]:
        """``ports()`` as pyserial ``ListPortInfo``-like entries, for a station's port scan."""
        with self._changed:
            servers = list(self._servers.items())
        return [
            BenchPort(device=url, serial_number=server.board.mac.hex()) for url, server in servers
        ]

    def board(self, url: str) -> SimulatedBoard:
        """The board plugged in at ``url`` (``KeyError`` when none is)."""
        with self._changed:
            return self._servers[url].board

    @property
    def generation(self) -> int:
        """A counter that every plug and unplug increments."""
        with self._changed:
            return self._generation

    def wait_for_change(self, seen: int, timeout: float | None = None) -> int:
        """Block until ``generation != seen`` or ``timeout`` seconds pass; return the generation."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._generation == seen:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._generation

    def close(self) -> None:
        """Unplug every board."""
        for url in self.ports():
            try:
                self.unplug(url)
            except KeyError:  # another thread unplugged it meanwhile
                continue

    def __enter__(self) -> SimulatedBench:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _bump(self) -> None:
        self._generation += 1
        self._changed.notify_all()
