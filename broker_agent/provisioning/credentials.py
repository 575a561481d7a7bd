"""Credentials for a device's image: fleet values, per-device values, and credential issuing.

The files and the rules they must follow are ``secrets.py``'s (the one secrets reader, shared
with the broker's password sync). The values for a device are the fleet values overlaid with
the device's own; a device value of ``null`` removes a fleet value (the key is then omitted
from the image). ``device_key`` is always the device_id (contract 6.6): a file setting another
one is refused with ``invalid_credentials``; any other problem with either file is
``credentials_unavailable``.

A device is *known* when it has a config file (``<config_dir>/<device_id>.json``) or a secrets
file (any directory entry: a FIFO or a dangling symlink is known, and unreadable).

Issuing (off unless ``BROKER_AGENT_ISSUE_CREDENTIALS=true``): a missing ``client_id``
(``iotdevice-<device_id>``) and ``client_secret`` (random) are generated once and written into
``<device_id>.json`` (other fields kept; temp file + fsync + rename, mode 0600). A thread lock
plus an ``flock`` on the secrets directory, with a fresh re-read under both, make two concurrent
requests (in one process or several) agree on one set of credentials.

Errors are ``ProvisionFailure`` with the contract's codes. Their messages name files and keys,
never a value, and never quote a file's content.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from broker_agent.errors import ProvisionFailure
from broker_agent.files import locked_directory, write_atomically
from broker_agent.provisioning.secrets import (
    FLEET_FILE,
    FLEET_KEYS,
    SecretsFile,
    SecretsProblem,
    SecretsReader,
)
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import PROV_KEYS

__all__ = [
    "FLEET_FILE",
    "FLEET_KEYS",
    "CredentialLookup",
    "CredentialStore",
    "issued_client_id",
]

ISSUED_CLIENT_ID_PREFIX = "iotdevice-"
ISSUABLE_KEYS = ("client_id", "client_secret")
REQUIRED_ORDER = tuple(key.name for key in PROV_KEYS if key.required)

_UNAVAILABLE = ProvisionErrorCode.CREDENTIALS_UNAVAILABLE


def issued_client_id(device_id: str) -> str:
    return f"{ISSUED_CLIENT_ID_PREFIX}{device_id}"


@dataclass(frozen=True)
class CredentialLookup:
    """What the secrets directory holds for one device right now."""

    device_id: str
    values: Mapping[str, str]  # merged, ``device_key`` = device_id, empty/None values dropped
    missing: tuple[str, ...]  # required keys without a value, in the contract's order

    @property
    def issuable(self) -> bool:
        """True when issuing could complete the values (only client_id/secret are missing)."""
        return bool(self.missing) and all(key in ISSUABLE_KEYS for key in self.missing)


class CredentialStore:
    """Credentials for devices, read from the secrets directory (see the module docstring)."""

    def __init__(self, secrets_dir: Path, config_dir: Path, *, issue: bool = False) -> None:
        self.secrets_dir = secrets_dir
        self.config_dir = config_dir
        self.issue_enabled = issue
        self.reader = SecretsReader(secrets_dir)
        self._merged: dict[str, tuple[SecretsFile, SecretsFile, CredentialLookup]] = {}
        self._issue_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def is_known(self, device_id: str) -> bool:
        return _exists(self.config_dir / f"{device_id}.json") or _exists(
            self._device_path(device_id)
        )

    def lookup(self, device_id: str) -> CredentialLookup:
        """The merged values of a known device; never writes.

        Raises ``ProvisionFailure``: ``unknown_device``; ``invalid_credentials`` when the
        device's file sets another ``device_key``; ``credentials_unavailable`` when a secrets
        file is unreadable, not a JSON object, or holds unknown keys or non-string values.
        """
        device = self.reader.device(device_id)
        if not device.exists and not self.is_known(device_id):
            raise ProvisionFailure(
                ProvisionErrorCode.UNKNOWN_DEVICE,
                f"device {device_id!r} has neither a config file nor a secrets file",
            )
        fleet = self.reader.fleet()
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
        with self._issue_lock, locked_directory(self.secrets_dir):
            # Re-read under both locks: another task or process may have issued meanwhile.
            device = self.reader.device(device_id, fresh=True)
            fleet = self.reader.fleet(fresh=True)
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
            found = self._merge(device_id, fleet, self.reader.device(device_id, fresh=True))
        if found.missing:  # the file changed under us in a way that lost the values
            raise ProvisionFailure(_UNAVAILABLE, _missing_message(found))
        return found.values

    # -- files -----------------------------------------------------------------------------
    def _device_path(self, device_id: str) -> Path:
        return self.secrets_dir / f"{device_id}.json"

    def _merge(self, device_id: str, fleet: SecretsFile, device: SecretsFile) -> CredentialLookup:
        problems = [*fleet.messages, *device.messages]
        if problems:
            code = (
                ProvisionErrorCode.INVALID_CREDENTIALS
                if device.problem is SecretsProblem.DEVICE_KEY_MISMATCH
                else _UNAVAILABLE
            )
            raise ProvisionFailure(code, "; ".join(problems))
        merged = {**fleet.values, **device.values}  # the device's own values win
        values = {key: value for key, value in merged.items() if isinstance(value, str)}
        values["device_key"] = device_id
        for key in REQUIRED_ORDER:  # an empty required value counts as missing
            if values.get(key) == "":
                del values[key]
        missing = tuple(key for key in REQUIRED_ORDER if key not in values)
        return CredentialLookup(device_id, MappingProxyType(values), missing)  # cached: read-only


def _missing_message(found: CredentialLookup) -> str:
    hint = ""
    if found.issuable:
        hint = " (set them, or enable credential issuing with BROKER_AGENT_ISSUE_CREDENTIALS=true)"
    return f"missing required keys for {found.device_id!r}: {', '.join(found.missing)}{hint}"


def _exists(path: Path) -> bool:
    """A directory entry of any kind (lstat: a dangling symlink or a FIFO counts, unopened)."""
    try:
        os.lstat(path)
    except OSError:
        return False
    return True
