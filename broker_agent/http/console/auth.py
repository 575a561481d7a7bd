"""Who may use the console: the login rule, password hashes, sessions, CSRF, rate limiting.

The rule (issue 12): on a loopback address the console may run open; on any other address it
refuses to start unless an operator login is configured (``console_password_hash``). With a
hash configured, login is required on every address.

- Passwords: scrypt from the standard library (n=2**14, r=8, p=1, 16 MiB: 92 ms per check
  measured here, so it runs in a thread and the event loop does not stall), stored as
  ``scrypt$n$r$p$<salt b64>$<hash b64>``; compared in constant time.
- Sessions: a random 256-bit id in a cookie that is ``HttpOnly`` and ``SameSite=Strict``
  (``Secure`` as well when ``secure_cookies``), held in memory: a restart logs everyone out.
- CSRF: every state-changing request (POST, PUT, PATCH, DELETE) must carry the session's own
  token in ``X-CSRF-Token``. A cross-site page cannot read the token, and cannot send that
  header without a CORS preflight, which this server never approves. In open mode a session
  (with its token) is made on the first page or ``GET /api/session``.
- Login attempts: at most ``FAILURES_PER_ADDRESS`` failures per client address and
  ``FAILURES_TOTAL`` in all per ``WINDOW_S``; beyond that, 429 until the window moves on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from broker_agent.errors import SetupError
from broker_agent.http.listen import ListenAddress

SESSION_COOKIE = "broker_agent_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600
WINDOW_S = 60.0
FAILURES_PER_ADDRESS = 5
FAILURES_TOTAL = 30
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
OPEN_USER = "(open console on loopback)"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_hash(stored: str) -> None:
    """SetupError unless ``stored`` is a hash ``hash_password`` makes."""
    parts = stored.split("$")
    try:
        ok = len(parts) == 6 and parts[0] == "scrypt" and all(int(x) > 0 for x in parts[1:4])
        ok = ok and len(base64.b64decode(parts[4])) >= 8 and len(base64.b64decode(parts[5])) >= 16
    except ValueError:
        ok = False
    if not ok:
        raise SetupError(
            "BROKER_AGENT_CONSOLE_PASSWORD_HASH is not a password hash; make one with "
            "`broker-agent console --hash-password`"
        )


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, expected = stored.split("$")
        digest = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(expected)),
            maxmem=64 * 1024 * 1024,
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_loopback(address: ListenAddress) -> bool:
    if address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


@dataclass
class Session:
    user: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.monotonic() + SESSION_TTL_S)


class Gate:
    """The console's login state: the configured operator, sessions, and the login limiter."""

    def __init__(
        self,
        username: str,
        password_hash: str | None,
        address: ListenAddress,
        *,
        secure_cookies: bool = False,
    ) -> None:
        if password_hash is None and not is_loopback(address):
            raise SetupError(
                f"the console on {address} is reachable from other machines, so it needs an "
                "operator login: set BROKER_AGENT_CONSOLE_PASSWORD_HASH (from `broker-agent "
                "console --hash-password`), listen on 127.0.0.1, or turn the console off "
                "(BROKER_AGENT_CONSOLE=false for `run`)"
            )
        if password_hash is not None:
            check_hash(password_hash)
        self.username = username
        self.password_hash = password_hash
        self.secure_cookies = secure_cookies
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque[float]] = {}
        self._all_failures: deque[float] = deque()

    @property
    def login_required(self) -> bool:
        return self.password_hash is not None

    def session(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        found = self._sessions.get(session_id)
        if found is None or found.expires < time.monotonic():
            self._sessions.pop(session_id, None)
            return None
        return found

    def open_session(self) -> tuple[str, Session]:
        """A session for the open (loopback, no login) console."""
        assert not self.login_required
        return self._new(OPEN_USER)

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again; None when it may try now."""
        now = time.monotonic()
        mine = self._failures.get(client, deque())
        for window in (mine, self._all_failures):
            while window and window[0] <= now - WINDOW_S:
                window.popleft()
        if len(mine) >= FAILURES_PER_ADDRESS:
            return mine[0] + WINDOW_S - now
        if len(self._all_failures) >= FAILURES_TOTAL:
            return self._all_failures[0] + WINDOW_S - now
        return None

    async def login(self, client: str, username: str, password: str) -> tuple[str, Session] | None:
        """A new session, or None (counted against ``client``)."""
        stored = self.password_hash
        ok = stored is not None and await asyncio.to_thread(verify_password, password, stored)
        ok = hmac.compare_digest(username.encode(), self.username.encode()) and ok
        if not ok:
            now = time.monotonic()
            self._failures.setdefault(client, deque()).append(now)
            self._all_failures.append(now)
            return None
        self._failures.pop(client, None)
        return self._new(username)

    def logout(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _new(self, user: str) -> tuple[str, Session]:
        now = time.monotonic()
        for stale in [key for key, s in self._sessions.items() if s.expires < now]:
            del self._sessions[stale]
        session_id = secrets.token_urlsafe(32)
        session = self._sessions[session_id] = Session(user)
        return session_id, session
