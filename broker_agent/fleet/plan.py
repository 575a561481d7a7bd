"""Deciding what to publish and clear so the broker's retained state matches the directory.

Pure: a scan of config files and the broker's retained hashes in, a plan out. One rule for
both cases the publisher meets: the start-up (or reconnect) reconcile scans the whole
directory, a live change scans only the files the watcher named (``DirectoryScan.scope``);
either way a device is cleared only when its file is gone, and the mass-prune guard decides
whether that many may go at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker_agent.errors import ConfigFileError
from broker_agent.fleet.files import (
    SCHEMA_FILE,
    DeviceConfig,
    FleetSchema,
    device_id_of,
    is_candidate,
    load_config,
)


@dataclass(frozen=True)
class PruneGuard:
    """Refuse to clear more than ``max_share`` of the fleet when that is over ``min_devices``."""

    max_share: float = 0.5
    min_devices: int = 5

    def blocks(self, would_clear: int, fleet_size: int) -> bool:
        return would_clear > self.min_devices and would_clear > self.max_share * fleet_size


@dataclass
class DirectoryScan:
    """What reading some or all config files found.

    ``scope`` is None for the whole directory, else the device ids whose files were read
    (a live change): only those can be found deleted.
    """

    configs: dict[str, DeviceConfig] = field(default_factory=dict)
    rejected: list[ConfigFileError] = field(default_factory=list)
    error: str | None = None  # the directory itself is missing or unreadable
    scope: frozenset[str] | None = None

    @property
    def present(self) -> set[str]:
        """Device ids that have a file, valid or not (a rejected file keeps its last good)."""
        return set(self.configs) | {r.device_id for r in self.rejected if r.device_id}

    def read(
        self, config_dir: Path, names: Iterable[str], schema: FleetSchema, max_bytes: int
    ) -> Iterator[DeviceConfig]:
        """Read each named file into the scan, yielding every valid config as it is read."""
        for name in names:
            try:
                config = load_config(config_dir / name, schema, max_bytes)
            except FileNotFoundError:
                continue  # deleted (or never there): absent from the scan
            except ConfigFileError as exc:
                exc.file, exc.device_id = name, device_id_of(name)
                self.rejected.append(exc)
                continue
            self.configs[config.device_id] = config
            yield config


def list_candidates(config_dir: Path) -> list[str]:
    """The config file names in the directory, sorted. Raises OSError."""
    return sorted(
        entry.name
        for entry in os.scandir(config_dir)
        if is_candidate(entry.name) and entry.name != SCHEMA_FILE
    )


def open_scan(
    config_dir: Path, names: Iterable[str] | None = None
) -> tuple[DirectoryScan, list[str]]:
    """A scan to fill and the file names to read: every candidate, or just ``names``."""
    if names is None:
        scan = DirectoryScan()
        try:
            return scan, list_candidates(config_dir)
        except OSError as exc:
            scan.error = f"{config_dir}: {exc.strerror or exc}"
            return scan, []
    todo = sorted(name for name in names if is_candidate(name) and name != SCHEMA_FILE)
    scan = DirectoryScan(scope=frozenset(device_id_of(name) for name in todo))
    if not config_dir.is_dir():
        # the whole directory went away (rm -rf, an unmounted volume): that is not a fleet
        # deleting its devices, so nothing may be cleared
        scan.error = f"{config_dir}: not a directory any more"
        return scan, []
    return scan, todo


def scan_directory(
    config_dir: Path, schema: FleetSchema, max_bytes: int, names: Iterable[str] | None = None
) -> DirectoryScan:
    scan, todo = open_scan(config_dir, names)
    for _ in scan.read(config_dir, todo, schema, max_bytes):
        pass
    return scan


@dataclass(frozen=True)
class PruneBlocked:
    """The guard's decision not to clear (event ``prune_blocked``); a plan outcome, not an error."""

    reason: str
    would_clear: int
    fleet_size: int


@dataclass
class ReconcilePlan:
    publish: list[DeviceConfig]
    clear: list[str]
    unchanged: int
    blocked: PruneBlocked | None = None


def plan_reconcile(
    scan: DirectoryScan, retained: Mapping[str, str], guard: PruneGuard
) -> ReconcilePlan:
    """What to publish (new or changed hash) and clear (retained, in scope, no file at all)."""
    publish = [c for c in scan.configs.values() if retained.get(c.device_id) != c.sha256]
    unchanged = len(scan.configs) - len(publish)
    present = scan.present
    in_scope = retained if scan.scope is None else [d for d in scan.scope if d in retained]
    orphans = sorted(device for device in in_scope if device not in present)
    if scan.error is not None:
        blocked = PruneBlocked(
            f"config directory unavailable: {scan.error}", len(orphans), len(retained)
        )
        return ReconcilePlan(publish, [], unchanged, blocked)
    if guard.blocks(len(orphans), len(retained)):
        return ReconcilePlan(
            publish, [], unchanged, PruneBlocked("mass_prune", len(orphans), len(retained))
        )
    return ReconcilePlan(publish, orphans, unchanged)
