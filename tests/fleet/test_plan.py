"""The reconcile plan and the mass-prune guard, without a broker."""

from __future__ import annotations

from pathlib import Path

from broker_agent.fleet.files import FleetSchema
from broker_agent.fleet.plan import PruneGuard, plan_reconcile, scan_directory

GUARD = PruneGuard(0.5, 5)


def make_dir(tmp_path: Path, devices: dict[str, str]) -> Path:
    for device, text in devices.items():
        (tmp_path / f"{device}.json").write_text(text)
    return tmp_path


def test_plan_publishes_changes_only_and_clears_orphans(tmp_path: Path) -> None:
    scan = scan_directory(
        make_dir(tmp_path, {"a": '{"v": 1}', "b": '{"v": 2}'}), FleetSchema(None), 4096
    )
    retained = {"a": scan.configs["a"].sha256, "b": "0" * 64, "gone": "1" * 64}
    plan = plan_reconcile(scan, retained, GUARD)
    assert ["b"] == [c.device_id for c in plan.publish]
    assert ["gone"] == plan.clear
    assert 1 == plan.unchanged
    assert plan.blocked is None


def test_a_rejected_file_keeps_its_last_good_retained_config(tmp_path: Path) -> None:
    scan = scan_directory(make_dir(tmp_path, {"a": "{broken"}), FleetSchema(None), 4096)
    plan = plan_reconcile(scan, {"a": "0" * 64}, GUARD)
    assert [] == plan.clear
    assert ["a.json"] == [r.file for r in scan.rejected]


def test_guard_blocks_clearing_most_of_a_large_fleet(tmp_path: Path) -> None:
    scan = scan_directory(make_dir(tmp_path, {"keep": "{}"}), FleetSchema(None), 4096)
    retained = {f"d{i}": "0" * 64 for i in range(10)}
    plan = plan_reconcile(scan, retained, GUARD)
    assert [] == plan.clear
    assert plan.blocked is not None
    assert (10, 10) == (plan.blocked.would_clear, plan.blocked.fleet_size)


def test_guard_allows_small_prunes() -> None:
    assert not GUARD.blocks(5, 6)  # not more than 5 devices
    assert not GUARD.blocks(6, 12)  # not more than half
    assert GUARD.blocks(7, 12)


def test_missing_directory_clears_nothing(tmp_path: Path) -> None:
    scan = scan_directory(tmp_path / "nope", FleetSchema(None), 4096)
    plan = plan_reconcile(scan, {"a": "0" * 64}, GUARD)
    assert [] == plan.clear
    assert plan.blocked is not None and "unavailable" in plan.blocked.reason
