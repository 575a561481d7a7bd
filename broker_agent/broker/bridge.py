"""A site's Mosquitto bridged to the central broker: the bridge sections and the central ACL.

Pure rendering (no I/O); ``broker-agent bridge-config`` prints it, docs/multi-site.md explains it.

Two bridge connections per site, because Mosquitto 2.0.11 cannot give one connection both things
the contract needs (measured with three real brokers, tests/broker/test_bridge_sites.py):

- **configs** (``<site>-configs``), MQTT 3.1.1, ``cleansession false``: retained configs in,
  acks, device and station presence out. Only a 3.1.1 bridge keeps its session at the central
  broker while the link is down: a config cleared (deleted) during the outage reaches the site
  when it reconnects. With ``mqttv50`` the session ended at the disconnect (2.0.11 sets no session
  expiry for bridges), the clear was lost and the site kept serving the deleted config.
- **requests** (``<site>-requests``), MQTT v5: provisioning, config/set and flash commands with
  their responses. Only a v5 bridge carries Response Topic, Correlation Data and Message Expiry
  across; over 3.1.1 they are dropped, so the agent answers on the default topic, where a station
  (which listens below ``.../response/<station_id>/``) never looks. ``cleansession true``: a v5
  bridge keeps no session in 2.0.11 anyway, and a requester times out and asks again. What
  comes down this link is bridged at QoS 0: without a session QoS 1 redelivers nothing more,
  and the bridge's PUBACK for an answer held the next request behind it (Nagle and delayed ACK
  on the bridge's own socket): 42 ms per round trip one at a time, 5 ms at QoS 0 (measured,
  bench/bench_multi_site.py).

Every pattern has one direction, and no ``in`` filter overlaps an ``out`` filter, so nothing a
bridge carries one way can come back the other way (no loops, also with many sites).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from firmware_contracts.identifiers import check_identifier
from firmware_contracts.topics import check_root

NOTIFICATION_TOPIC = "$SYS/broker/connection/{clientid}/state"  # Mosquitto's default


class Direction(StrEnum):
    IN = "in"  # central -> site
    OUT = "out"  # site -> central


class Link(StrEnum):
    CONFIGS = "configs"
    REQUESTS = "requests"


@dataclass(frozen=True)
class BridgeTopic:
    link: Link
    pattern: str
    direction: Direction
    qos: int
    why: str


@dataclass(frozen=True)
class CentralBroker:
    host: str
    port: int
    tls: bool = False

    def __post_init__(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ValueError(f"central broker host {self.host!r} is empty or has spaces")
        if not 0 < self.port < 65536:
            raise ValueError(f"central broker port {self.port} is out of range")


@dataclass(frozen=True)
class SiteBridge:
    """Everything the rendering needs. ``password`` is plaintext: never log a ``SiteBridge``."""

    site: str
    central: CentralBroker
    topic_root: str = "iot"
    username: str | None = None  # the configs account; the requests one is ``<username>-rr``
    password: str | None = field(default=None, repr=False)
    cafile: Path | None = None
    stations: tuple[str, ...] = ()  # scope the station topics to these; empty: every station
    restart_timeout: tuple[int, ...] = (2, 30)  # seconds: constant, or jittered base and cap

    def __post_init__(self) -> None:
        check_identifier(self.site, "site")
        check_root(self.topic_root)
        if self.username is not None:
            check_identifier(self.username, "username")
        for station in self.stations:
            check_identifier(station, "station_id")
        if self.password is not None and ("\n" in self.password or not self.password):
            raise ValueError("the bridge password must be one non-empty line")
        if not 1 <= len(self.restart_timeout) <= 2 or min(self.restart_timeout) < 1:
            raise ValueError("restart_timeout is one or two whole seconds >= 1 (base, cap)")
        if self.password is not None and self.username is None:
            raise ValueError("a bridge password needs a user name (--username)")

    def clientid(self, link: Link) -> str:
        """The remote client id; equal to the user name, as ``use_username_as_clientid``
        makes it at the central broker, so the notification topic and the ACL agree."""
        base = self.username or f"bridge-{self.site}"
        return base if link is Link.CONFIGS else f"{base}-rr"

    def account(self, link: Link) -> str | None:
        return None if self.username is None else self.clientid(link)


def bridge_topics(topic_root: str, stations: tuple[str, ...] = ()) -> list[BridgeTopic]:
    """Every contract topic family that crosses a site bridge, with its direction and QoS."""
    r = check_root(topic_root)
    ids = stations or ("+",)
    c, q = Link.CONFIGS, Link.REQUESTS
    i, o = Direction.IN, Direction.OUT
    down = 0  # the requests link's QoS downwards (module docstring)
    topics = [
        BridgeTopic(c, f"{r}/devices/+/config", i, 1, "retained configs (and clears) down"),
        BridgeTopic(c, f"{r}/devices/+/config/applied", o, 1, "retained acks up (v1.1)"),
        BridgeTopic(c, f"{r}/devices/+/status", o, 1, "retained device presence up (v1.1)"),
        BridgeTopic(c, f"{r}/agents/+/status", i, 1, "agent presence down (stations read it)"),
    ]
    topics += [BridgeTopic(c, f"{r}/stations/{s}/status", o, 1, "station presence up") for s in ids]
    topics += [
        BridgeTopic(q, f"{r}/provision/+/request", o, 1, "provisioning requests up"),
        BridgeTopic(q, f"{r}/devices/+/config/set", o, 1, "config writes up (v1.1)"),
        BridgeTopic(q, f"{r}/devices/+/config/set/response/#", i, down, "config answers down"),
    ]
    for s in ids:
        topics += [
            BridgeTopic(q, f"{r}/provision/+/response/{s}/#", i, down, "NVS images down"),
            BridgeTopic(q, f"{r}/stations/{s}/flash/request", i, down, "flash commands down"),
            BridgeTopic(q, f"{r}/stations/{s}/flash/cancel", i, down, "flash cancels down"),
            BridgeTopic(q, f"{r}/stations/{s}/flash/response/#", o, 1, "job events up"),
        ]
    return topics


def filters_overlap(a: str, b: str) -> bool:
    """True when some topic matches both MQTT filters (``a/#`` also matches ``a``)."""
    left, right = a.split("/"), b.split("/")
    for x, y in zip(left, right, strict=False):
        if "#" in (x, y):
            return True
        if x != y and "+" not in (x, y):
            return False
    if len(left) == len(right):
        return True
    longer = left if len(left) > len(right) else right
    return longer[min(len(left), len(right))] == "#"


_LINK_SETTINGS = {
    Link.CONFIGS: (
        "mqttv311",
        "false",
        "# MQTT 3.1.1 with a persistent session: the central broker queues what this site misses\n"
        "# while the link is down (a config cleared meanwhile included) and delivers it on\n"
        "# reconnect. Mosquitto 2.0.11 keeps no session for an mqttv50 bridge (measured).",
    ),
    Link.REQUESTS: (
        "mqttv50",
        "true",
        "# MQTT v5: Response Topic, Correlation Data and Message Expiry cross the bridge (they\n"
        "# are dropped over 3.1.1, measured). No session to keep (2.0.11 keeps none for v5):\n"
        "# a request lost while the link is down times out at the requester, which asks again.\n"
        "# QoS 0 downwards: without a session QoS 1 adds nothing, and the bridge's PUBACK held\n"
        "# the next request ~40 ms (Nagle + delayed ACK; 42 vs 5 ms per round trip, measured).",
    ),
}


def render_bridge(bridge: SiteBridge, *, include_password: bool = False) -> str:
    """The site broker's bridge sections (append to its mosquitto.conf, or ``include_dir``).

    Without ``include_password`` the ``remote_password`` line is a placeholder comment: the
    password is printed only where the operator asked for it.
    """
    central = bridge.central
    out = [
        f"# Site {bridge.site}: bridges to the central broker {central.host}:{central.port}.",
        "# Generated by `broker-agent bridge-config`; docs/multi-site.md explains every line.",
    ]
    topics = bridge_topics(bridge.topic_root, bridge.stations)
    for link in Link:
        protocol, clean, why = _LINK_SETTINGS[link]
        clientid = bridge.clientid(link)
        out += [
            "",
            f"connection {bridge.site}-{link.value}",
            f"address {central.host}:{central.port}",
            f"bridge_protocol_version {protocol}",
            why,
            f"cleansession {clean}",
            f"local_cleansession {clean}",
            f"remote_clientid {clientid}",
            f"local_clientid {clientid}.local",
            "# Retained 1/0 on $SYS/broker/connection/<remote_clientid>/state at both ends (the",
            "# 0 is the bridge's will): the centre sees which sites are connected.",
            "notifications true",
            "restart_timeout " + " ".join(str(s) for s in bridge.restart_timeout),
            "keepalive_interval 30",
        ]
        account = bridge.account(link)
        if account is not None:
            out.append(f"remote_username {account}")
            if include_password and bridge.password is not None:
                out.append(f"remote_password {bridge.password}")
            else:
                out.append("# remote_password <from --password-file; not printed>")
        if central.tls:
            out += [
                f"bridge_cafile {bridge.cafile}"
                if bridge.cafile is not None
                else "bridge_capath /etc/ssl/certs",
                "bridge_tls_version tlsv1.2",
                "bridge_insecure false",
            ]
        out.append("# topic PATTERN DIRECTION QOS   (in: central -> site, out: site -> central)")
        for t in topics:
            if t.link is link:
                out += [f"# {t.why}", f"topic {t.pattern} {t.direction.value} {t.qos}"]
    return "\n".join(out) + "\n"


def render_central_acl(bridge: SiteBridge) -> str:
    """``user`` blocks for the central broker's ACL file: what each bridge account may do.

    A bridge subscribes to its ``in`` patterns (read) and publishes its ``out`` patterns
    (write) and its connection notifications.
    """
    if bridge.username is None:
        raise ValueError("the central ACL needs the bridge account's user name (--username)")
    topics = bridge_topics(bridge.topic_root, bridge.stations)
    out = [f"# Site {bridge.site}: the bridge accounts (append to the central broker's ACL file)."]
    for link in Link:
        account = bridge.clientid(link)
        out += ["", f"user {account}"]
        out += [
            f"topic {'read' if t.direction is Direction.IN else 'write'} {t.pattern}"
            for t in topics
            if t.link is link
        ]
        out.append(f"topic write {NOTIFICATION_TOPIC.format(clientid=account)}")
    return "\n".join(out) + "\n"
