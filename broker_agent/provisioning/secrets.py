"""The secrets directory's one reader: what provisioning and the broker's password sync see.

    <secrets_dir>/_fleet.json        fleet values: token_url, base_url, mqtt_url, wifi_ssid,
                                     wifi_password
    <secrets_dir>/<device_id>.json   per-device values (device_key, client_id, client_secret)
                                     and overrides of any fleet value

Both the provisioning responder (``credentials.CredentialStore``) and the broker's password
file (``broker.users.collect_users``) read these files through ``SecretsReader``, so one rule
set decides whether a file is usable. (Before issue 10 they had their own readers: provisioning
refused unknown keys and the password sync never looked, so a device could get a broker login
while every provisioning request for it failed.)

The rules, checked once per version of a file:

- only a regular file is read (``files.read_regular_file``): a FIFO, socket, device node,
  directory, dangling symlink or symlink to outside the directory is ``unreadable``, logged
  once as ``secrets_file_unreadable``, and never blocks a reader;
- at most ``MAX_SECRETS_FILE_BYTES``; UTF-8 JSON under the contract's rules (``loads_strict``);
  a JSON object;
- keys starting with ``_`` are comments; any other key must be a provisioning key (in
  ``_fleet.json`` a fleet key: a per-device key there is an error), a misspelt optional key
  would otherwise vanish silently from every image; values are strings or ``null``;
- ``device_key`` is the device_id or absent (contract 6.6: the firmware subscribes with its
  device_key, and the agent publishes under the device_id): anything else is
  ``device_key_mismatch``.

A file is parsed once and re-read when its signature (inode, size, mtime of the entry and of a
symlink's target) changes, so edits take effect without a restart. Messages name files and
keys, never a value, and never quote a file's content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from broker_agent.errors import FileTooLarge, UnreadableFile
from broker_agent.files import file_signature, read_regular_file
from broker_agent.logs import get_logger
from firmware_contracts.json_rules import StrictJsonError, loads_strict
from firmware_contracts.nvs import PROV_KEY_NAMES

__all__ = [
    "DEVICE_KEYS",
    "FLEET_FILE",
    "FLEET_KEYS",
    "MAX_SECRETS_FILE_BYTES",
    "PER_DEVICE_KEYS",
    "SecretsFile",
    "SecretsProblem",
    "SecretsReader",
]

log = get_logger(__name__)

FLEET_FILE = "_fleet.json"
MAX_SECRETS_FILE_BYTES = 64 * 1024
PER_DEVICE_KEYS = frozenset({"device_key", "client_id", "client_secret"})
FLEET_KEYS = frozenset(PROV_KEY_NAMES - PER_DEVICE_KEYS)
DEVICE_KEYS = frozenset(PROV_KEY_NAMES)
_SHOWN_KEY_CHARS = 32


class SecretsProblem(StrEnum):
    """Why a secrets file cannot be used, most serious first."""

    UNREADABLE = "unreadable"  # not a regular file, unreadable, too large, not a JSON object
    DEVICE_KEY_MISMATCH = "device_key_mismatch"  # contract 6.6
    INVALID = "invalid"  # an unknown key, or a value that is not a string or null


@dataclass(frozen=True)
class SecretsFile:
    """One secrets file as last read: its object, or what is wrong with it."""

    name: str
    signature: tuple[int, ...] | None  # None: there is no such file
    document: Mapping[str, Any]  # the whole object (comments too); empty when absent or refused
    problem: SecretsProblem | None = None
    messages: tuple[str, ...] = ()  # one per problem; names the file and keys, never values

    @property
    def exists(self) -> bool:
        return self.signature is not None

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def values(self) -> dict[str, Any]:
        """The provisioning keys it sets (comments dropped); ``None`` removes a fleet value."""
        return {key: value for key, value in self.document.items() if not key.startswith("_")}

    def string(self, key: str) -> str | None:
        """A non-empty string value, or None."""
        value = self.document.get(key)
        return value if isinstance(value, str) and value else None


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _absent(name: str) -> SecretsFile:
    return SecretsFile(name, None, _EMPTY)


class SecretsReader:
    """Reads ``<secrets_dir>/<name>`` under the rules above, cached by file signature.

    Safe to share between threads (the provisioning responder issues credentials from a
    worker thread): the cache is a dict whose entries are replaced whole.
    """

    def __init__(self, secrets_dir: Path) -> None:
        self.secrets_dir = secrets_dir
        self._cache: dict[str, SecretsFile] = {}

    def device(self, device_id: str, *, fresh: bool = False) -> SecretsFile:
        return self.read(f"{device_id}.json", fresh=fresh)

    def fleet(self, *, fresh: bool = False) -> SecretsFile:
        return self.read(FLEET_FILE, fresh=fresh)

    def read(self, name: str, *, fresh: bool = False) -> SecretsFile:
        """The file ``name``, from the cache when its signature is unchanged (unless ``fresh``)."""
        path = self.secrets_dir / name
        try:
            signature = file_signature(path)
        except FileNotFoundError:
            self._cache.pop(name, None)
            return _absent(name)
        except OSError as exc:  # e.g. the secrets "directory" is a file: not cached
            return _refused(name, (0,), f"{name} cannot be read ({exc.strerror or exc})")
        cached = self._cache.get(name)
        if not fresh and cached is not None and cached.signature == signature:
            return cached
        parsed = _parse(path, name, signature)
        if parsed.exists:
            self._cache[name] = parsed
        else:
            self._cache.pop(name, None)
        return parsed


def _refused(name: str, signature: tuple[int, ...], message: str) -> SecretsFile:
    log.warning("secrets_file_unreadable", file=name, reason=message)
    return SecretsFile(name, signature, _EMPTY, SecretsProblem.UNREADABLE, (message,))


def _parse(path: Path, name: str, signature: tuple[int, ...]) -> SecretsFile:
    try:
        raw, _ = read_regular_file(path, MAX_SECRETS_FILE_BYTES)
    except FileNotFoundError:  # removed since we looked
        return _absent(name)
    except FileTooLarge:
        return _refused(name, signature, f"{name} is larger than {MAX_SECRETS_FILE_BYTES} bytes")
    except UnreadableFile as exc:
        return _refused(name, signature, f"{name} {exc.reason}")
    try:
        document = loads_strict(raw)
    except StrictJsonError as exc:
        return _refused(name, signature, f"{name} {_json_problem(exc.message)}")
    if not isinstance(document, dict):
        return _refused(name, signature, f"{name} must hold a JSON object")
    problems = _key_problems(name, document)
    frozen = MappingProxyType(document)
    if not problems:
        return SecretsFile(name, signature, frozen)
    kinds = {kind for kind, _ in problems}
    worst = min(kinds, key=list(SecretsProblem).index)
    return SecretsFile(name, signature, frozen, worst, tuple(message for _, message in problems))


def _json_problem(message: str) -> str:
    """The parser's message without anything quoted from the file: where, never what (its
    messages may name a token, e.g. a number literal, or an invalid byte)."""
    if message.startswith("not UTF-8"):
        return "is not UTF-8"
    if message.startswith("line "):
        return f"is not valid JSON ({message.split(':', 1)[0]})"
    return "is not valid JSON"


def _key_problems(name: str, document: Mapping[str, Any]) -> list[tuple[SecretsProblem, str]]:
    fleet = name == FLEET_FILE
    allowed = FLEET_KEYS if fleet else DEVICE_KEYS
    device_id = name[: -len(".json")]
    problems: list[tuple[SecretsProblem, str]] = []
    for key, value in document.items():
        if key.startswith("_"):
            continue
        shown = repr(key[:_SHOWN_KEY_CHARS]) + ("..." if len(key) > _SHOWN_KEY_CHARS else "")
        if key not in allowed:
            hint = " (a per-device key: set it in <device_id>.json)" if key in DEVICE_KEYS else ""
            problems.append((SecretsProblem.INVALID, f"{name}: unknown key {shown}{hint}"))
        elif key == "device_key" and value is not None and value != device_id:
            problems.append(
                (
                    SecretsProblem.DEVICE_KEY_MISMATCH,
                    f"{name}: device_key must be the device_id {device_id!r} or absent "
                    "(contract 6.6: the firmware subscribes with its device_key)",
                )
            )
        elif value is not None and not isinstance(value, str):
            problems.append((SecretsProblem.INVALID, f"{name}: {key} must be a string or null"))
    return problems
