"""Mosquitto's password file and ACL file for the production profile (docs/security.md).

Identities. Every MQTT user name is an identifier of the contract, so none can carry a
wildcard, a ``/`` or a ``:`` into an ACL line or a password file line:

    agent     user = agent_id     service account: its own agents/<id>/#, all device configs,
                                  provisioning requests in, responses out
    station   user = station_id   service account: its own stations/<id>/#, provisioning
                                  requests out, responses addressed to it in
    operator  user = any id       service account: commands stations, reads status and events
    device    user = device_key   password = client_secret from ``<secrets_dir>/<device_id>.json``;
                                  reads <root>/devices/<user>/config, writes .../config/applied

Service accounts live in one JSON file, by default ``<secrets_dir>/_broker_users.json``::

    {"agents":    {"agent-1": "<password>"},
     "stations":  {"station-1": "<password>", "station-2": "<password>"},
     "operators": {"operator": "<password>"}}

Devices get two ``pattern`` lines (``%u`` = the user name); every service account gets an
explicit ``user`` block, and stations and operators also get ``deny`` lines for the device and
(for operators) provisioning topics, so the device patterns, which Mosquitto applies to every
user, grant them nothing. A device whose key would collide with a service account or with
another device is left out of the password file (see ``Refusal``).

The password file is Mosquitto's own format (``mosquitto_passwords``).

Nothing here logs; messages name files, users and reasons, never a password.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from broker_agent.fleet.files import is_candidate
from broker_agent.broker.passwords import (
    GENERATED_HEADER,
    PBKDF2_ITERATIONS,
    SALT_BYTES,
    PasswordFile,
    PasswordHash,
    parse_password_file,
)
from broker_agent.errors import SetupError
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.topics import check_root

__all__ = [
    "PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "SERVICE_ACCOUNTS_FILE",
    "BrokerUsers",
    "PasswordFile",
    "PasswordHash",
    "Refusal",
    "RefusalReason",
    "Role",
    "SecretsReader",
    "ServiceAccounts",
    "collect_users",
    "parse_password_file",
    "password_entries",
    "render_acl",
]

SERVICE_ACCOUNTS_FILE = "_broker_users.json"
MAX_SECRETS_FILE_BYTES = 64 * 1024


# -- service accounts -------------------------------------------------------------------------
class Role(StrEnum):
    AGENT = "agent"
    STATION = "station"
    OPERATOR = "operator"
    DEVICE = "device"


_ROLE_KEYS = {"agents": Role.AGENT, "stations": Role.STATION, "operators": Role.OPERATOR}


@dataclass(frozen=True)
class ServiceAccounts:
    """The agents, stations and operators allowed on the broker, with their passwords."""

    agents: Mapping[str, str] = field(default_factory=dict)
    stations: Mapping[str, str] = field(default_factory=dict)
    operators: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ServiceAccounts:
        """Read the service accounts file; ``SetupError`` lists every problem at once."""
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_SECRETS_FILE_BYTES + 1)
        except FileNotFoundError:
            raise SetupError(
                f"service accounts file {path} does not exist (see docs/security.md)"
            ) from None
        except OSError as exc:
            raise SetupError(f"cannot read service accounts file {path}: {exc.strerror}") from None
        if len(raw) > MAX_SECRETS_FILE_BYTES:
            raise SetupError(f"{path.name} is larger than {MAX_SECRETS_FILE_BYTES} bytes")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise SetupError(f"{path.name} is not valid UTF-8 JSON") from None
        return cls.parse(document, path.name)

    @classmethod
    def parse(cls, document: object, source: str = SERVICE_ACCOUNTS_FILE) -> ServiceAccounts:
        if not isinstance(document, dict):
            raise SetupError(f"{source} must hold a JSON object")
        problems: list[str] = []
        groups: dict[Role, dict[str, str]] = {role: {} for role in _ROLE_KEYS.values()}
        seen: dict[str, str] = {}
        for key, members in document.items():
            if key.startswith("_"):
                continue  # comments
            role = _ROLE_KEYS.get(key)
            if role is None:
                problems.append(
                    f"{source}: unknown key {key[:32]!r} (use agents, stations, operators)"
                )
                continue
            if not isinstance(members, dict):
                problems.append(f"{source}: {key} must be an object of user name -> password")
                continue
            for user, password in members.items():
                where = f"{source}: {key}.{user[:64]}"
                if not is_identifier(user):
                    problems.append(f"{where}: not a valid identifier")
                elif user in seen:
                    problems.append(f"{where}: also listed under {seen[user]}")
                elif not isinstance(password, str) or not password:
                    problems.append(f"{where}: the password must be a non-empty string")
                else:
                    seen[user] = key
                    groups[role][user] = password
        if problems:
            raise SetupError("; ".join(problems))
        return cls(
            agents=MappingProxyType(groups[Role.AGENT]),
            stations=MappingProxyType(groups[Role.STATION]),
            operators=MappingProxyType(groups[Role.OPERATOR]),
        )

    def passwords(self) -> dict[str, str]:
        return {**self.agents, **self.stations, **self.operators}

    def roles(self) -> dict[str, Role]:
        found = {user: Role.AGENT for user in self.agents}
        found.update((user, Role.STATION) for user in self.stations)
        found.update((user, Role.OPERATOR) for user in self.operators)
        return found


# -- devices ----------------------------------------------------------------------------------
class RefusalReason(StrEnum):
    SECRETS_UNREADABLE = "secrets_unreadable"
    INVALID_DEVICE_KEY = "invalid_device_key"
    KEY_IS_A_SERVICE_ACCOUNT = "device_key_is_a_service_account"
    KEY_NAMES_ANOTHER_DEVICE = "device_key_names_another_device"
    KEY_SHARED = "device_key_shared"


@dataclass(frozen=True)
class Refusal:
    """A device left out of the password file; ``detail`` never holds a secret value."""

    device_id: str
    reason: RefusalReason
    detail: str = ""


@dataclass(frozen=True)
class _DeviceSecret:
    device_id: str
    device_key: str
    client_secret: str | None


@dataclass
class SecretsReader:
    """``device_key``/``client_secret`` per secrets file, re-read when its stat changes."""

    cache: dict[str, tuple[tuple[int, int, int], _DeviceSecret | Refusal]] = field(
        default_factory=dict
    )

    def read(self, path: Path, device_id: str) -> _DeviceSecret | Refusal | None:
        try:
            info = path.stat()
        except FileNotFoundError:
            self.cache.pop(device_id, None)
            return None
        except OSError as exc:
            return Refusal(device_id, RefusalReason.SECRETS_UNREADABLE, str(exc.strerror))
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self.cache.get(device_id)
        if cached is not None and cached[0] == signature:
            return cached[1]
        found = _read_device_secret(path, device_id)
        self.cache[device_id] = (signature, found)
        return found


def _read_device_secret(path: Path, device_id: str) -> _DeviceSecret | Refusal:
    unreadable = RefusalReason.SECRETS_UNREADABLE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRETS_FILE_BYTES + 1)
    except OSError as exc:
        return Refusal(device_id, unreadable, f"cannot read it ({exc.strerror})")
    if len(raw) > MAX_SECRETS_FILE_BYTES:
        return Refusal(device_id, unreadable, f"larger than {MAX_SECRETS_FILE_BYTES} bytes")
    try:
        document: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Refusal(device_id, unreadable, "not valid UTF-8 JSON")
    if not isinstance(document, dict):
        return Refusal(device_id, unreadable, "not a JSON object")
    key = document.get("device_key")
    secret = document.get("client_secret")
    if key is not None and not isinstance(key, str):
        return Refusal(device_id, unreadable, "device_key must be a string or null")
    if secret is not None and not isinstance(secret, str):
        return Refusal(device_id, unreadable, "client_secret must be a string or null")
    return _DeviceSecret(device_id, key or device_id, secret or None)


def _device_ids(directory: Path) -> list[str]:
    """The valid device ids named by ``<id>.json`` files (editor artefacts, ``_*`` skipped)."""
    try:
        names = [entry.name for entry in os.scandir(directory)]
    except FileNotFoundError:
        return []
    ids = [name[: -len(".json")] for name in names if is_candidate(name)]
    return sorted(device_id for device_id in ids if is_identifier(device_id))


@dataclass(frozen=True)
class BrokerUsers:
    """What goes into the password file, and which devices were left out and why."""

    passwords: Mapping[str, str]  # user -> plaintext; never log it
    roles: Mapping[str, Role]
    refused: tuple[Refusal, ...] = ()
    without_secret: int = 0  # devices with a secrets file but no client_secret yet

    @property
    def devices(self) -> int:
        return sum(1 for role in self.roles.values() if role is Role.DEVICE)


def collect_users(
    secrets_dir: Path,
    config_dir: Path,
    accounts: ServiceAccounts,
    *,
    reader: SecretsReader | None = None,
) -> BrokerUsers:
    """Service accounts plus one user per device that has a ``client_secret``.

    Raises ``SetupError`` when the secrets directory is missing or unreadable: writing a
    password file without the fleet would lock every device out at its next connect.
    """
    if not secrets_dir.is_dir():
        raise SetupError(f"secrets directory {secrets_dir} is missing or not a directory")
    try:
        secret_ids = _device_ids(secrets_dir)
    except OSError as exc:
        raise SetupError(f"cannot list secrets directory {secrets_dir}: {exc.strerror}") from None
    try:
        config_ids = _device_ids(config_dir)
    except OSError:
        config_ids = []  # only used to spot collisions; the config publisher reports it
    reader = reader or SecretsReader()
    services = accounts.roles()
    known_ids = set(secret_ids) | set(config_ids)
    refused: list[Refusal] = []
    candidates: dict[str, list[_DeviceSecret]] = {}
    without_secret = 0
    for device_id in secret_ids:
        found = reader.read(secrets_dir / f"{device_id}.json", device_id)
        if found is None:
            continue
        if isinstance(found, Refusal):
            refused.append(found)
            continue
        key = found.device_key
        if not is_identifier(key):
            refused.append(Refusal(device_id, RefusalReason.INVALID_DEVICE_KEY))
        elif key in services:
            refused.append(
                Refusal(device_id, RefusalReason.KEY_IS_A_SERVICE_ACCOUNT, f"{services[key]} {key}")
            )
        elif key != device_id and key in known_ids:
            refused.append(Refusal(device_id, RefusalReason.KEY_NAMES_ANOTHER_DEVICE, key))
        elif found.client_secret is None:
            without_secret += 1
        else:
            candidates.setdefault(key, []).append(found)
    passwords = accounts.passwords()
    roles: dict[str, Role] = dict(services)
    for key, holders in candidates.items():
        if len(holders) > 1:
            others = ", ".join(sorted(h.device_id for h in holders))
            refused += [Refusal(h.device_id, RefusalReason.KEY_SHARED, others) for h in holders]
            continue
        secret = holders[0].client_secret
        assert secret is not None
        passwords[key] = secret
        roles[key] = Role.DEVICE
    refused.sort(key=lambda refusal: (refusal.device_id, refusal.reason))
    return BrokerUsers(
        MappingProxyType(passwords), MappingProxyType(roles), tuple(refused), without_secret
    )


def password_entries(
    secrets_dir: Path, config_dir: Path, service_accounts: ServiceAccounts | Path
) -> dict[str, str]:
    """User name -> plaintext password for every broker user (devices and service accounts)."""
    accounts = (
        ServiceAccounts.load(service_accounts)
        if isinstance(service_accounts, Path)
        else service_accounts
    )
    return dict(collect_users(secrets_dir, config_dir, accounts).passwords)


# -- ACL --------------------------------------------------------------------------------------
def render_acl(topic_root: str, accounts: ServiceAccounts) -> str:
    """The ACL file for ``accounts`` under ``topic_root`` (devices are covered by patterns)."""
    r = check_root(topic_root)
    out = [
        GENERATED_HEADER.rstrip("\n"),
        f"# Topic root: {r}. Rules: docs/security.md. Anything not granted here is denied.",
        "",
        "# Devices (user name = device_key): their own config in, their own acknowledgement out.",
        "# Mosquitto applies patterns to every user; the service accounts below are built so",
        "# that these two lines grant them nothing they should not have.",
        f"pattern read {r}/devices/%u/config",
        f"pattern write {r}/devices/%u/config/applied",
    ]
    for agent_id in sorted(accounts.agents):
        out += [
            "",
            f"# Agent {agent_id}: presence/events/sync, every device config, provisioning.",
            f"user {agent_id}",
            f"topic readwrite {r}/agents/{agent_id}/#",
            f"topic readwrite {r}/devices/+/config",
            f"topic read {r}/devices/+/config/applied",
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
            f"# Operator {operator}: commands stations, reads presence, events and job streams;",
            "# never device configs or provisioning (NVS images hold device secrets).",
            f"user {operator}",
            f"topic deny {r}/devices/#",
            f"topic deny {r}/provision/#",
            f"topic read {r}/agents/+/status",
            f"topic read {r}/agents/+/events",
            f"topic read {r}/stations/+/status",
            f"topic write {r}/stations/+/flash/request",
            f"topic write {r}/stations/+/flash/cancel",
            f"topic read {r}/stations/+/flash/response/#",
            "topic read $SYS/#",
        ]
    return "\n".join(out) + "\n"
