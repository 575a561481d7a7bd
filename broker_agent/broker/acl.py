"""Mosquitto's ACL file for the production profile (docs/security.md).

Devices get ``pattern`` lines (``%u`` = the user name = the device_id); every service account
(agents, stations, operators from the service accounts file) gets an explicit ``user`` block,
with ``deny`` lines where the device patterns, which Mosquitto applies to every user, would
otherwise grant a service something it must not have. Pure: text out, nothing read or logged.
"""

from __future__ import annotations

from broker_agent.broker.passwords import GENERATED_HEADER
from broker_agent.broker.users import ServiceAccounts
from firmware_contracts.topics import check_root


def render_acl(topic_root: str, accounts: ServiceAccounts) -> str:
    """The ACL file for ``accounts`` under ``topic_root`` (devices are covered by patterns)."""
    r = check_root(topic_root)
    out = [
        GENERATED_HEADER.rstrip("\n"),
        f"# Topic root: {r}. Rules: docs/security.md. Anything not granted here is denied.",
        "",
        "# Devices (user name = device_key): their own config in, their own acknowledgement and",
        "# status (presence, and its will) out. Mosquitto applies patterns to every user; the",
        "# service accounts below are built so that these lines grant them nothing.",
        f"pattern read {r}/devices/%u/config",
        f"pattern write {r}/devices/%u/config/applied",
        f"pattern write {r}/devices/%u/status",
    ]
    for agent_id in sorted(accounts.agents):
        out += [
            "",
            f"# Agent {agent_id}: presence/events/sync, every device config, provisioning.",
            f"user {agent_id}",
            f"topic readwrite {r}/agents/{agent_id}/#",
            f"topic readwrite {r}/devices/+/config",
            "# fleet state: acks (a deleted device's is cleared) and presence",
            f"topic readwrite {r}/devices/+/config/applied",
            f"topic read {r}/devices/+/status",
            "# config writes in (via $share/<group>/...), retained ones cleared, answers out",
            f"topic readwrite {r}/devices/+/config/set",
            f"topic write {r}/devices/+/config/set/response/#",
            "# requests in (also via $share/<group>/...), retained requests cleared",
            f"topic readwrite {r}/provision/+/request",
            f"topic write {r}/provision/+/response/#",
        ]
    for station_id in sorted(accounts.stations):
        out += [
            "",
            f"# Station {station_id}: its own topics; images only when addressed to it.",
            f"user {station_id}",
            f"topic deny {r}/devices/#",
            f"topic readwrite {r}/stations/{station_id}/#",
            f"topic write {r}/provision/+/request",
            f"topic read {r}/provision/+/response/{station_id}/#",
            f"topic read {r}/agents/+/status",
        ]
    for operator in sorted(accounts.operators):
        out += [
            "",
            f"# Operator {operator}: commands stations, reads presence, events and job streams,",
            "# reads the fleet state and writes configs through the agents; provisioning only",
            "# when listed under provisioners (NVS images hold device secrets). The first deny",
            "# line voids the device patterns.",
            f"user {operator}",
            f"topic deny {r}/devices/{operator}/#",
            *_provisioning_lines(r, operator, operator in accounts.provisioners),
            f"topic read {r}/devices/+/config",
            f"topic read {r}/devices/+/config/applied",
            f"topic read {r}/devices/+/status",
            f"topic write {r}/devices/+/config/set",
            f"topic read {r}/devices/+/config/set/response/#",
            "# the sync marker of `broker-agent status` and `config get`",
            f"topic readwrite {r}/operators/{operator}/#",
            f"topic read {r}/agents/+/status",
            f"topic read {r}/agents/+/events",
            f"topic read {r}/agents/+/fleet",
            f"topic read {r}/stations/+/status",
            f"topic write {r}/stations/+/flash/request",
            f"topic write {r}/stations/+/flash/cancel",
            f"topic read {r}/stations/+/flash/response/#",
            "topic read $SYS/#",
        ]
    return "\n".join(out) + "\n"


def _provisioning_lines(root: str, operator: str, granted: bool) -> list[str]:
    if not granted:
        return [f"topic deny {root}/provision/#"]
    return [
        "# listed under provisioners: may fetch NVS images (device credentials), answers only",
        "# below its own name",
        f"topic write {root}/provision/+/request",
        f"topic read {root}/provision/+/response/{operator}/#",
    ]
