"""The secrets directory: fleet values, per-device values, and credential issuing.

    <secrets_dir>/_fleet.json        fleet values: token_url, base_url, mqtt_url, wifi_ssid,
                                     wifi_password
    <secrets_dir>/<device_id>.json   per-device values and overrides (any provisioning key)

The values for a device are the fleet values overlaid with the device's own; a device value of
``null`` removes a fleet value (the key is then omitted from the image). ``device_key`` defaults
to the device_id. Keys starting with ``_`` are comments and ignored; any other unknown key is an
error (a misspelt optional key would otherwise vanish silently from every image).

A device is *known* when it has a config file (``<config_dir>/<device_id>.json``) or a secrets
file. Files are parsed once and re-read when their inode, size or modification time changes, so
edits take effect on the next request without a restart.

Issuing (off unless ``BROKER_AGENT_ISSUE_CREDENTIALS=true``): a missing ``client_id``
(``iotdevice-<device_id>``) and ``client_secret`` (random) are generated once and written into
``<device_id>.json`` (other fields kept; temp file + fsync + rename, mode 0600). A thread lock
plus an ``flock`` on the secrets directory, with a fresh re-read under both, make two concurrent
requests (in one process or several) agree on one set of credentials.

Errors are ``ProvisionFailure`` with the contract's codes. Their messages name files and keys,
never a value, and never quote a file's content.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from broker_agent.files import write_atomically
from broker_agent.errors import ProvisionFailure
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import PROV_KEY_NAMES, PROV_KEYS

__all__ = [
    "FLEET_FILE",
    "FLEET_KEYS",
    "CredentialLookup",
    "CredentialStore",
    "issued_client_id",
]

FLEET_FILE = "_fleet.json"
MAX_SECRETS_FILE_BYTES = 64 * 1024
ISSUED_CLIENT_ID_PREFIX = "iotdevice-"
ISSUABLE_KEYS = ("client_id", "client_secret")
PER_DEVICE_KEYS = frozenset({"device_key", "client_id", "client_secret"})
FLEET_KEYS = frozenset(PROV_KEY_NAMES - PER_DEVICE_KEYS)
REQUIRED_ORDER = tuple(key.name for key in PROV_KEYS if key.required)
_SHOWN_KEY_CHARS = 32

_UNAVAILABLE = ProvisionErrorCode.CREDENTIALS_UNAVAILABLE


def issued_client_id(device_id: str) -> str:
    return f"{ISSUED_CLIENT_ID_PREFIX}{device_id}"


@dataclass(frozen=True)
class CredentialLookup:
    """What the secrets directory holds for one device right now."""

    device_id: str
    values: Mapping[str, str]  # merged, ``device_key`` defaulted, empty/None values dropped
    missing: tuple[str, ...]  # required keys without a value, in the contract's order

    @property
    def issuable(self) -> bool:
        """True when issuing could complete the values (only client_id/secret are missing)."""
        return bool(self.missing) and all(key in ISSUABLE_KEYS for key in self.missing)


@dataclass(frozen=True)
class _Parsed:
    """One secrets file as last read: its stat signature and its object (or why not)."""

    signature: tuple[int, int, int] | None  # (inode, size, mtime_ns); None: no such file
    document: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


_ABSENT = _Parsed(None)


class CredentialStore:
    """Credentials for devices, read from the secrets directory (see the module docstring)."""

    def __init__(self, secrets_dir: Path, config_dir: Path, *, issue: bool = False) -> None:
        self.secrets_dir = secrets_dir
        self.config_dir = config_dir
        self.issue_enabled = issue
        self._cache: dict[str, _Parsed] = {}
        self._merged: dict[str, tuple[_Parsed, _Parsed, CredentialLookup]] = {}
        self._issue_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def is_known(self, device_id: str) -> bool:
        return _exists(self.config_dir / f"{device_id}.json") or _exists(
            self._device_path(device_id)
        )

    def lookup(self, device_id: str) -> CredentialLookup:
        """The merged values of a known device; never writes.

        Raises ``ProvisionFailure``: ``unknown_device``, or ``credentials_unavailable`` when a
        secrets file is unreadable, not a JSON object, or holds unknown keys or non-string values.
        """
        device_name = f"{device_id}.json"
        device = self._load(device_name, fresh=False)
        if device.signature is None and not self.is_known(device_id):
            raise ProvisionFailure(
                ProvisionErrorCode.UNKNOWN_DEVICE,
                f"device {device_id!r} has neither a config file nor a secrets file",
            )
        fleet = self._load(FLEET_FILE, fresh=False)
        cached = self._merged.get(device_id)
        # The same parsed objects as last time means neither file changed: reuse the merge.
        if cached is not None and cached[0] is fleet and cached[1] is device:
            return cached[2]
        found = self._merge(device_id, fleet, device)
        self._merged[device_id] = (fleet, device, found)
        return found

    def values_for(self, device_id: str) -> Mapping[str, str]:
        """The complete values for a device's image, issuing credentials when that is enabled."""
        found = self.lookup(device_id)
        return found.values if not found.missing else self.complete(found)

    def complete(self, found: CredentialLookup) -> Mapping[str, str]:
        """Values for a lookup that has missing keys: issue them, or raise why not.

        Blocking file I/O (lock, fsync); callers on an event loop run it in a thread.
        """
        if not (self.issue_enabled and found.issuable):
            raise ProvisionFailure(_UNAVAILABLE, _missing_message(found))
        return self._issue(found.device_id)

    # -- issuing ---------------------------------------------------------------------------
    def _issue(self, device_id: str) -> Mapping[str, str]:
        name = f"{device_id}.json"
        with self._issue_lock, _locked_directory(self.secrets_dir):
            # Re-read under both locks: another task or process may have issued meanwhile.
            device = self._load(name, fresh=True)
            fleet = self._load(FLEET_FILE, fresh=True)
            found = self._merge(device_id, fleet, device)
            if not found.missing:
                return found.values
            if not found.issuable:
                raise ProvisionFailure(_UNAVAILABLE, _missing_message(found))
            document = dict(device.document)  # every existing field is kept
            if "client_id" in found.missing:
                document["client_id"] = issued_client_id(device_id)
            if "client_secret" in found.missing:
                document["client_secret"] = secrets.token_urlsafe(32)
            text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            try:
                write_atomically(self._device_path(device_id), text.encode("utf-8"), 0o600)
            except OSError as exc:
                raise ProvisionFailure(
                    ProvisionErrorCode.INTERNAL_ERROR,
                    f"could not store issued credentials in {name}: "
                    f"{exc.strerror or type(exc).__name__}",
                ) from None
            found = self._merge(device_id, fleet, self._load(name, fresh=True))
        if found.missing:  # the file changed under us in a way that lost the values
            raise ProvisionFailure(_UNAVAILABLE, _missing_message(found))
        return found.values

    # -- files -----------------------------------------------------------------------------
    def _device_path(self, device_id: str) -> Path:
        return self.secrets_dir / f"{device_id}.json"

    def _load(self, name: str, *, fresh: bool) -> _Parsed:
        """A secrets file, from the cache when its stat signature is unchanged."""
        path = self.secrets_dir / name
        try:
            info = path.stat()
        except FileNotFoundError:
            self._cache.pop(name, None)
            return _ABSENT
        except NotADirectoryError:
            return _Parsed(
                (0, 0, 0), error=f"secrets directory {self.secrets_dir.name!r} is not a directory"
            )
        except OSError as exc:
            return _Parsed((0, 0, 0), error=f"{name}: cannot read it ({exc.strerror})")
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._cache.get(name)
        if not fresh and cached is not None and cached.signature == signature:
            return cached
        parsed = _parse_file(path, name, signature)
        self._cache[name] = parsed
        return parsed

    def _merge(self, device_id: str, fleet: _Parsed, device: _Parsed) -> CredentialLookup:
        problems = [p for p in (fleet.error, device.error) if p is not None]
        problems += _key_problems(FLEET_FILE, fleet.document, FLEET_KEYS)
        problems += _key_problems(f"{device_id}.json", device.document, PROV_KEY_NAMES)
        if problems:
            raise ProvisionFailure(_UNAVAILABLE, "; ".join(problems))
        merged: dict[str, Any] = {}
        for document in (fleet.document, device.document):  # the device's own values win
            merged.update((k, v) for k, v in document.items() if not k.startswith("_"))
        values = {key: value for key, value in merged.items() if isinstance(value, str)}
        if not values.get("device_key"):
            values["device_key"] = device_id
        for key in REQUIRED_ORDER:  # an empty required value counts as missing
            if values.get(key) == "":
                del values[key]
        missing = tuple(key for key in REQUIRED_ORDER if key not in values)
        return CredentialLookup(device_id, MappingProxyType(values), missing)  # cached: read-only


def _parse_file(path: Path, name: str, signature: tuple[int, int, int]) -> _Parsed:
    """Read and parse one secrets file; an error names the file and the problem, not content."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRETS_FILE_BYTES + 1)
    except IsADirectoryError:
        return _Parsed(signature, error=f"{name} is a directory, not a file")
    except FileNotFoundError:  # removed between stat and open
        return _ABSENT
    except OSError as exc:
        return _Parsed(signature, error=f"{name}: cannot read it ({exc.strerror})")
    if len(raw) > MAX_SECRETS_FILE_BYTES:
        return _Parsed(signature, error=f"{name} is larger than {MAX_SECRETS_FILE_BYTES} bytes")
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return _Parsed(signature, error=f"{name} is not UTF-8 (invalid byte at offset {exc.start})")
    except json.JSONDecodeError as exc:
        # Only the position: the decoder's message is fixed text, but stay on the safe side.
        return _Parsed(
            signature, error=f"{name} is not valid JSON (line {exc.lineno} column {exc.colno})"
        )
    except (ValueError, RecursionError):
        return _Parsed(signature, error=f"{name} is not valid JSON")
    if not isinstance(document, dict):
        return _Parsed(signature, error=f"{name} must hold a JSON object")
    return _Parsed(signature, document)


def _key_problems(name: str, document: Mapping[str, Any], allowed: frozenset[str]) -> list[str]:
    problems: list[str] = []
    for key, value in document.items():
        if key.startswith("_"):
            continue
        shown = repr(key[:_SHOWN_KEY_CHARS]) + ("..." if len(key) > _SHOWN_KEY_CHARS else "")
        if key not in allowed:
            hint = (
                " (a per-device key: set it in <device_id>.json)" if key in PROV_KEY_NAMES else ""
            )
            problems.append(f"{name}: unknown key {shown}{hint}")
        elif value is not None and not isinstance(value, str):
            problems.append(f"{name}: {key} must be a string or null")
    return problems


def _missing_message(found: CredentialLookup) -> str:
    hint = ""
    if found.issuable:
        hint = " (set them, or enable credential issuing with BROKER_AGENT_ISSUE_CREDENTIALS=true)"
    return f"missing required keys for {found.device_id!r}: {', '.join(found.missing)}{hint}"


def _exists(path: Path) -> bool:
    try:
        path.stat()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _locked_directory(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the directory itself (no lock files left behind)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
