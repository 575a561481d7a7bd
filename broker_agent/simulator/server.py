"""A TCP server that puts a simulated board behind ``socket://127.0.0.1:PORT``.

One board, one line: a new connection takes the line over from the previous one (as a
re-opened serial port would), and each connection starts in the ROM loader. The server is a
plain thread so blocking esptool code and both sync and async tests can use it.

``stop()`` closes everything at once; ``unplug()`` hangs the open connection up the way a
pulled cable would look to a host that keeps using its port (see ``SocketLink.hang_up``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from types import TracebackType

from broker_agent.simulator.board import SimulatedBoard
from broker_agent.simulator.protocol import SlipDecoder, slip_encode
from broker_agent.simulator.session import BootloaderSession, LinkClosed

ROM_BAUD = 115200
BITS_PER_BYTE = 10  # start bit, 8 data bits, stop bit
_JOIN_TIMEOUT = 5.0
HANG_UP_GRACE = 10.0  # seconds a hung-up line waits for the host to close its end

logger = logging.getLogger(__name__)


class _LineClock:
    """Paces one direction of a UART: ``n`` bytes take ``n * 10 / baud`` seconds."""

    def __init__(self) -> None:
        self._free_at = 0.0

    def wait(self, nbytes: int, baud: int) -> None:
        now = time.monotonic()
        self._free_at = max(now, self._free_at) + nbytes * BITS_PER_BYTE / baud
        time.sleep(self._free_at - now)


class SocketLink:
    """A board's serial line over a connected TCP socket, optionally paced at the baud rate."""

    def __init__(self, sock: socket.socket, throttle_baud: int | None) -> None:
        self._sock = sock
        self._throttled = throttle_baud is not None
        self.baud = throttle_baud or ROM_BAUD
        self._decoder = SlipDecoder()
        self._pending: list[bytes] = []
        self._rx_clock = _LineClock()
        self._tx_clock = _LineClock()
        self._close_lock = threading.Lock()
        self._closed = False
        self.hung_up = False
        self._grace: threading.Timer | None = None

    def read_frame(self) -> bytes:
        while not self._pending or self.hung_up:
            if self.hung_up:
                raise LinkClosed("the board was unplugged")
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise LinkClosed(str(exc)) from exc
            if not chunk:
                raise LinkClosed("host closed the connection")
            if self._throttled:
                self._rx_clock.wait(len(chunk), self.baud)
            self._pending.extend(self._decoder.feed(chunk))
        return self._pending.pop(0)

    def send_frames(self, payloads: list[bytes]) -> None:
        wire = b"".join(slip_encode(payload) for payload in payloads)
        if self._throttled:
            self._tx_clock.wait(len(wire), self.baud)
        try:
            self._sock.sendall(wire)
        except OSError as exc:
            raise LinkClosed(str(exc)) from exc

    def set_baud(self, baud: int) -> None:
        self.baud = baud

    def hang_up(self) -> None:
        """End the line as an unplugged board: the host reads end-of-file, nothing answers.

        Only our sending half closes now; ``drain()`` then discards what the host still
        sends until it closes its end (or ``HANG_UP_GRACE`` passes). Closing at once would
        answer the host's next write with a reset, after which pyserial's ``close()`` cannot
        close its socket (a ``ResourceWarning`` in the host's tests).
        """
        with self._close_lock:
            if self._closed or self.hung_up:
                return
            self.hung_up = True
            self._grace = threading.Timer(HANG_UP_GRACE, self.close)
            self._grace.daemon = True
            self._grace.start()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def drain(self) -> None:
        """Discard incoming bytes until the host closes its end or the line is closed."""
        with contextlib.suppress(OSError):
            while self._sock.recv(65536):
                pass

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._grace is not None:
                self._grace.cancel()
        with contextlib.suppress(OSError):  # the host may have gone already
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class BoardServer:
    """Serves one ``SimulatedBoard`` on a TCP port, one connection at a time."""

    def __init__(self, board: SimulatedBoard, host: str = "127.0.0.1", port: int = 0) -> None:
        self.board = board
        self._host = host
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._session: tuple[SocketLink, threading.Thread] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("BoardServer is not started")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The pyserial URL esptool opens, e.g. ``socket://127.0.0.1:40123``."""
        return f"socket://{self._host}:{self.port}"

    def start(self) -> BoardServer:
        if self._listener is not None:
            return self
        listener = socket.create_server((self._host, self._requested_port))
        listener.settimeout(0.1)  # lets the accept loop notice stop()
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"sim-board-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the open connection, if any."""
        self._stop(hang_up=False)

    def unplug(self) -> None:
        """Stop listening and hang the open connection up (``SocketLink.hang_up``)."""
        self._stop(hang_up=True)

    def _stop(self, *, hang_up: bool) -> None:
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT)
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._end_session(hang_up=hang_up)

    def __enter__(self) -> BoardServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._begin_session(conn)

    def _begin_session(self, conn: socket.socket) -> None:
        self._end_session()  # the new host takes the line over
        link = SocketLink(conn, self.board.config.baud_throttle)
        thread = threading.Thread(
            target=self._serve, args=(link,), name=f"sim-board-{self.port}", daemon=True
        )
        with self._lock:
            self._session = (link, thread)
            self.board.connections += 1
        thread.start()

    def _end_session(self, *, hang_up: bool = False) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        link, thread = session
        if hang_up:
            link.hang_up()  # the session thread drains and closes the line
        else:
            link.close()
            thread.join(_JOIN_TIMEOUT)

    def _serve(self, link: SocketLink) -> None:
        try:
            BootloaderSession(self.board, link).run()
        except Exception:  # keeps the board serving; a simulator bug shows in the log
            logger.exception("simulated board session failed")
        finally:
            if link.hung_up:
                link.drain()
            link.close()
