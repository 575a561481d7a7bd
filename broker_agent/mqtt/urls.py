"""Broker URLs: one (``BrokerUrl``) and the comma-separated list of a setting (``BrokerUrls``).

``BROKER_AGENT_BROKER_URL=mqtts://node-a:8883,mqtts://node-b:8883`` names several entry points
to one broker (a cluster, or a broker behind two addresses). A connection tries them in order
from where the last one left off (``BrokerUrls.position``): a failed connect moves on to the
next URL at once, a lost connection makes the next attempt start at the URL after the lost one.
Only ``display()`` forms are logged: URLs may carry a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from broker_agent.errors import SetupError

UNIX_DUMMY_PORT = 1
"""The port a ``unix://`` URL carries. paho 2.2 checks the port even for ``transport="unix"``
(``ValueError("Invalid port number.")`` for 0, measured) and never uses it there."""


@dataclass(frozen=True)
class BrokerUrl:
    scheme: str  # mqtt | mqtts | unix
    host: str
    port: int
    path: str = ""
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme == "unix":
            path = parts.path or parts.netloc
            if not path:
                raise SetupError(f"broker URL {url!r}: unix:// needs a socket path")
            return cls("unix", "", UNIX_DUMMY_PORT, path=path)
        if scheme not in ("mqtt", "mqtts"):
            raise SetupError(
                f"broker URL {redact(url)!r}: scheme must be mqtt://, mqtts:// or unix://"
            )
        if not parts.hostname:
            raise SetupError(f"broker URL {redact(url)!r} has no host")
        try:
            port = parts.port or (8883 if scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise SetupError(f"broker URL {redact(url)!r}: bad port") from exc
        return cls(
            scheme,
            parts.hostname,
            port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def display(self) -> str:
        """The URL without credentials, for logs."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for error messages."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password is None:
        return url
    return url.replace(f":{password}@", ":***@", 1)


class BrokerUrls:
    """The URLs of one broker, tried in order; ``position`` is the one to try next (or in use).

    ``parse`` accepts one URL or a comma-separated list (spaces around commas are ignored).
    """

    def __init__(self, urls: tuple[BrokerUrl, ...], position: int = 0) -> None:
        if not urls:
            raise SetupError("no broker URL given")
        self.urls = urls
        self.position = position % len(urls)

    @classmethod
    def parse(cls, text: str) -> BrokerUrls:
        entries = [entry.strip() for entry in text.split(",")]
        if not any(entries):
            raise SetupError("the broker URL is empty")
        if not all(entries):
            raise SetupError(
                f"broker URL list {redact_list(text)!r} has an empty entry (a stray comma?)"
            )
        return cls(tuple(BrokerUrl.parse(entry) for entry in entries))

    @property
    def current(self) -> BrokerUrl:
        return self.urls[self.position]

    def next(self) -> BrokerUrl:
        """Move on to the following URL (wrapping around) and return it."""
        self.position = (self.position + 1) % len(self.urls)
        return self.current

    @property
    def username(self) -> str | None:
        """The user name in the first URL that has one (all URLs should use one account)."""
        return next((url.username for url in self.urls if url.username), None)

    def display(self) -> str:
        return ", ".join(url.display() for url in self.urls)

    def __len__(self) -> int:
        return len(self.urls)


def redact_list(text: str) -> str:
    return ",".join(redact(entry) for entry in text.split(","))
