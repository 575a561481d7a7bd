"""Deciding what to publish and clear so the broker's retained state matches the directory.

Pure: a directory scan and the broker's retained hashes in, a plan out. The mass-prune guard
lives here so the start-up reconcile and a live burst of deletions obey the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker_agent.fleet.files import (
    SCHEMA_FILE,
    DeviceConfig,
    FleetSchema,
    device_id_of,
    is_candidate,
    load_config,
)
from broker_agent.errors import ConfigFileError


@dataclass(frozen=True)
class PruneGuard:
    """Refuse to clear more than ``max_share`` of the fleet when that is over ``min_devices``."""

    max_share: float = 0.5
    min_devices: int = 5

    def blocks(self, would_clear: int, fleet_size: int) -> bool:
        return would_clear > self.min_devices and would_clear > self.max_share * fleet_size


@dataclass(frozen=True)
class Rejection:
    file: str
    device_id: str
    error: ConfigFileError


@dataclass
class DirectoryScan:
    configs: dict[str, DeviceConfig] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None  # the directory itself is missing or unreadable

    @property
    def present(self) -> set[str]:
        """Device ids that have a file, valid or not (a rejected file keeps its last good)."""
        return set(self.configs) | {r.device_id for r in self.rejected}


def list_candidates(config_dir: Path) -> list[str]:
    """The config file names in the directory, sorted. Raises OSError."""
    return sorted(
        entry.name
        for entry in os.scandir(config_dir)
        if is_candidate(entry.name) and entry.name != SCHEMA_FILE
    )


def scan_file(
    scan: DirectoryScan, config_dir: Path, name: str, schema: FleetSchema, max_bytes: int
) -> DeviceConfig | None:
    """Read one file into ``scan``; returns the config when it is valid."""
    try:
        config = load_config(config_dir / name, schema, max_bytes)
    except FileNotFoundError:
        return None  # deleted while we scanned; the watcher reports it
    except ConfigFileError as exc:
        scan.rejected.append(Rejection(name, device_id_of(name), exc))
        return None
    scan.configs[config.device_id] = config
    return config


def scan_directory(config_dir: Path, schema: FleetSchema, max_bytes: int) -> DirectoryScan:
    scan = DirectoryScan()
    try:
        names = list_candidates(config_dir)
    except OSError as exc:
        scan.error = f"{config_dir}: {exc.strerror or exc}"
        return scan
    for name in names:
        scan_file(scan, config_dir, name, schema, max_bytes)
    return scan


@dataclass(frozen=True)
class PruneBlocked:
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
    """What to publish (new or changed hash) and clear (retained, but no file at all)."""
    publish = [c for c in scan.configs.values() if retained.get(c.device_id) != c.sha256]
    unchanged = len(scan.configs) - len(publish)
    present = scan.present
    orphans = sorted(device for device in retained if device not in present)
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
