"""The HTTP listen address (``BROKER_AGENT_HTTP_LISTEN``): parsed, validated, bound.

Pure parsing lives here, apart from the web framework, so settings and the CLI can check a
value without importing FastAPI (~0.25 s measured on this VM). Accepted forms: ``host:port``
with an IPv4 address or a host name, ``[ipv6]:port``; port ``0`` asks the kernel for a free
port (tests; the bound port is then logged). An empty value turns the HTTP server off.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from broker_agent.errors import SetupError

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")
_BACKLOG = 128  # a scrape every few seconds and a few console users
_EXAMPLES = "expected host:port such as 127.0.0.1:8080 or [::1]:8080, or '' to turn HTTP off"


@dataclass(frozen=True)
class ListenAddress:
    """Where the HTTP server listens; ``host`` is an IP literal or a host name, unbracketed."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


def parse_listen(value: str) -> ListenAddress | None:
    """``"127.0.0.1:8080"`` -> ``ListenAddress``; ``""`` -> ``None`` (off); else ``SetupError``."""
    text = value.strip()
    if not text:
        return None
    if "://" in text:
        _refuse(value, "a URL; give host:port without a scheme")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            _refuse(value, "an IPv6 address needs ']:' and a port after it")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            _refuse(value, f"{host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            _refuse(value, "no port")
        if ":" in host:
            _refuse(value, "an IPv6 address goes in brackets, e.g. [::1]:8080")
        if not host:
            _refuse(value, "no host (use 0.0.0.0:PORT to listen on every interface)")
        if not _HOSTNAME.match(host):
            _refuse(value, f"{host!r} is not an IPv4 address or a host name")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        _refuse(value, f"port {port_text!r} is not a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


def _refuse(value: str, why: str) -> None:
    raise SetupError(f"invalid HTTP listen address {value!r}: {why}; {_EXAMPLES}")


async def open_listener(address: ListenAddress) -> socket.socket:
    """A listening, non-blocking socket on ``address``, or ``SetupError`` naming it.

    The project binds the socket itself and hands it to the server rather than letting
    uvicorn bind: uvicorn answers a bind error with ``sys.exit(1)``, which inside the agent's
    TaskGroup would skip the MQTT offline message. ``SO_REUSEADDR`` (as every server sets)
    lets a restarted process reuse a port still in TIME_WAIT; on Linux it does not allow two
    listeners on one port, so a port in use is still refused. IP literals are not resolved
    (no resolver thread); host names go through the loop's resolver.
    """
    family, sockaddr = await _resolve(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot listen for HTTP on {address}: {_why(exc)}") from None
    return sock


async def _resolve(address: ListenAddress) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        literal = ipaddress.ip_address(address.host)
    except ValueError:
        pass
    else:
        if literal.version == 6:
            return socket.AF_INET6, (address.host, address.port, 0, 0)
        return socket.AF_INET, (address.host, address.port)
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise SetupError(f"cannot listen for HTTP on {address}: {exc.strerror}") from None
    family, _type, _proto, _name, sockaddr = found[0]
    return family, sockaddr


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            "the port is in use by another process; set BROKER_AGENT_HTTP_LISTEN to another "
            "address, or to '' to turn HTTP off"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)
