"""Who may log in to the production broker (docs/security.md): service accounts and devices.

``collect_users`` gives the password file's users; what each may do is ``broker.acl``.

Identities. Every MQTT user name is an identifier of the contract, so none can carry a
wildcard, a ``/`` or a ``:`` into an ACL line or a password file line:

    agent     user = agent_id     service account: its own agents/<id>/#, all device configs,
                                  acks (read, clear) and statuses (read), config writes in
                                  and their answers out, provisioning requests in, responses out
    station   user = station_id   service account: its own stations/<id>/#, provisioning
                                  requests out, responses addressed to it in
    operator  user = any id       service account: commands stations, reads status and events,
                                  reads every device's config, ack and status, writes config/set
                                  and reads its answers (contract 6.1, 6.3)
    device    user = device_id    password = client_secret from ``<secrets_dir>/<device_id>.json``;
                                  reads <root>/devices/<user>/config, writes .../config/applied
                                  and .../status
                                  (its device_key, which contract 6.6 makes the device_id)

Service accounts live in one JSON file, by default ``<secrets_dir>/_broker_users.json``::

    {"agents":    {"agent-1": "<password>"},
     "stations":  {"station-1": "<password>", "station-2": "<password>"},
     "operators": {"operator": "<password>", "console-1": "<password>"},
     "provisioners": ["console-1"]}

(``provisioners``: operators also allowed to fetch NVS images, opt-in.)

Devices get two ``pattern`` lines (``%u`` = the user name); every service account gets an
explicit ``user`` block, and stations and operators also get ``deny`` lines for the device
topics (operators: those named after themselves) and (for operators) provisioning topics, so
the device patterns, which Mosquitto applies to every user, grant them nothing. A device is
left out of the password file (see ``Refusal``) when its secrets file breaks the rules
provisioning applies (``provisioning.secrets``, the one reader both use: unreadable, unknown
keys, a ``device_key`` other than the device_id) or when its id
is also a service account's name.

The password file is Mosquitto's own format (``broker.passwords``).

Only the secrets reader logs (an unreadable file, once); messages name files, users and
reasons, never a password.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from broker_agent.broker.passwords import (
    PBKDF2_ITERATIONS,
    SALT_BYTES,
    PasswordFile,
    PasswordHash,
    parse_password_file,
)
from broker_agent.errors import FileTooLarge, SetupError, UnreadableFile
from broker_agent.files import read_regular_file
from broker_agent.fleet.files import is_candidate
from broker_agent.provisioning.secrets import MAX_SECRETS_FILE_BYTES, SecretsProblem, SecretsReader
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.json_rules import StrictJsonError, loads_strict

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
]

SERVICE_ACCOUNTS_FILE = "_broker_users.json"


# -- service accounts -------------------------------------------------------------------------
class Role(StrEnum):
    AGENT = "agent"
    STATION = "station"
    OPERATOR = "operator"
    DEVICE = "device"


_ROLE_KEYS = {"agents": Role.AGENT, "stations": Role.STATION, "operators": Role.OPERATOR}
PROVISIONERS_KEY = "provisioners"


def _provisioners(value: object, operators: Mapping[str, str]) -> tuple[frozenset[str], list[str]]:
    """The ``provisioners`` list: operator names only (and the problems found)."""
    if value is None:
        return frozenset(), []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return frozenset(), [f"{PROVISIONERS_KEY} must be a list of operator names"]
    unknown = [name[:64] for name in value if name not in operators]
    if unknown:
        return frozenset(), [f"{PROVISIONERS_KEY}: {', '.join(unknown)} not listed under operators"]
    return frozenset(value), []


@dataclass(frozen=True)
class ServiceAccounts:
    """The agents, stations and operators allowed on the broker, with their passwords."""

    agents: Mapping[str, str] = field(default_factory=dict)
    stations: Mapping[str, str] = field(default_factory=dict)
    operators: Mapping[str, str] = field(default_factory=dict)
    # operators granted provisioning (an NVS image holds a device's credentials): e.g. the
    # console's account for its image download; opt-in, listed by name
    provisioners: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path) -> ServiceAccounts:
        """Read the service accounts file; ``SetupError`` lists every problem at once."""
        try:
            raw, _ = read_regular_file(path, MAX_SECRETS_FILE_BYTES)
        except FileNotFoundError:
            raise SetupError(
                f"service accounts file {path} does not exist (see docs/security.md)"
            ) from None
        except FileTooLarge:
            raise SetupError(f"{path.name} is larger than {MAX_SECRETS_FILE_BYTES} bytes") from None
        except UnreadableFile as exc:
            raise SetupError(f"cannot read service accounts file {path}: {exc.reason}") from None
        try:
            document = loads_strict(raw)
        except StrictJsonError:
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
            if key == PROVISIONERS_KEY:
                continue  # checked below, once every operator is known
            role = _ROLE_KEYS.get(key)
            if role is None:
                problems.append(
                    f"{source}: unknown key {key[:32]!r} "
                    "(use agents, stations, operators, provisioners)"
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
        provisioners = _provisioners(document.get(PROVISIONERS_KEY), groups[Role.OPERATOR])
        problems += [f"{source}: {problem}" for problem in provisioners[1]]
        if problems:
            raise SetupError("; ".join(problems))
        return cls(
            agents=MappingProxyType(groups[Role.AGENT]),
            stations=MappingProxyType(groups[Role.STATION]),
            operators=MappingProxyType(groups[Role.OPERATOR]),
            provisioners=provisioners[0],
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
    SECRETS_UNREADABLE = "secrets_unreadable"  # not a regular file, not a JSON object, ...
    SECRETS_INVALID = "secrets_invalid"  # unknown keys or non-string values (as provisioning)
    DEVICE_KEY_MISMATCH = "device_key_mismatch"  # contract 6.6
    KEY_IS_A_SERVICE_ACCOUNT = "device_key_is_a_service_account"


_REASONS = {
    SecretsProblem.UNREADABLE: RefusalReason.SECRETS_UNREADABLE,
    SecretsProblem.INVALID: RefusalReason.SECRETS_INVALID,
    SecretsProblem.DEVICE_KEY_MISMATCH: RefusalReason.DEVICE_KEY_MISMATCH,
}


@dataclass(frozen=True)
class Refusal:
    """A device left out of the password file; ``detail`` never holds a secret value."""

    device_id: str
    reason: RefusalReason
    detail: str = ""


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
    accounts: ServiceAccounts,
    *,
    reader: SecretsReader | None = None,
) -> BrokerUsers:
    """Service accounts plus one user per device whose secrets file is usable and has a
    ``client_secret``; the user name is the device_id (= its device_key, contract 6.6).

    ``reader``: a ``SecretsReader`` on ``secrets_dir`` kept between calls (its cache skips
    unchanged files). Raises ``SetupError`` when the secrets directory is missing or
    unreadable: writing a password file without the fleet would lock every device out at its
    next connect.
    """
    if not secrets_dir.is_dir():
        raise SetupError(f"secrets directory {secrets_dir} is missing or not a directory")
    try:
        secret_ids = _device_ids(secrets_dir)
    except OSError as exc:
        raise SetupError(f"cannot list secrets directory {secrets_dir}: {exc.strerror}") from None
    reader = reader or SecretsReader(secrets_dir)
    services = accounts.roles()
    refused: list[Refusal] = []
    passwords = accounts.passwords()
    roles: dict[str, Role] = dict(services)
    without_secret = 0
    for device_id in secret_ids:
        found = reader.device(device_id)
        if not found.exists:
            continue
        if found.problem is not None:
            refused.append(Refusal(device_id, _REASONS[found.problem], "; ".join(found.messages)))
        elif device_id in services:
            detail = f"{services[device_id]} {device_id}"
            refused.append(Refusal(device_id, RefusalReason.KEY_IS_A_SERVICE_ACCOUNT, detail))
        elif (secret := found.string("client_secret")) is None:
            without_secret += 1
        else:
            passwords[device_id] = secret
            roles[device_id] = Role.DEVICE
    refused.sort(key=lambda refusal: (refusal.device_id, refusal.reason))
    return BrokerUsers(
        MappingProxyType(passwords), MappingProxyType(roles), tuple(refused), without_secret
    )


def password_entries(secrets_dir: Path, service_accounts: ServiceAccounts | Path) -> dict[str, str]:
    """User name -> plaintext password for every broker user (devices and service accounts)."""
    accounts = (
        ServiceAccounts.load(service_accounts)
        if isinstance(service_accounts, Path)
        else service_accounts
    )
    return dict(collect_users(secrets_dir, accounts).passwords)
