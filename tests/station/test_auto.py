"""Zero-touch identity sources (station/auto.py) on real files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker_agent.errors import FlashJobError, SetupError
from broker_agent.station.auto import IdQueue, MacMap, open_source
from firmware_contracts.codes import FlashErrorCode, FlashPhase

MAC_1, MAC_2, MAC_3 = "24:0a:c4:00:00:01", "24:0a:c4:00:00:02", "24:0a:c4:00:00:03"


def queue_file(tmp_path: Path, *ids: str) -> Path:
    path = tmp_path / "queue.txt"
    path.write_text("# device ids for today's batch\n" + "".join(f"{i}\n" for i in ids))
    return path


def test_a_csv_source_is_a_mac_map_and_anything_else_a_queue(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text(f"mac,device_id\n{MAC_1},dev-1\n")

    assert isinstance(open_source(tmp_path / "map.csv"), MacMap)
    assert isinstance(open_source(queue_file(tmp_path, "dev-1")), IdQueue)


def test_the_mac_map_finds_a_board_by_its_mac_in_any_spelling(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text(f"mac,device_id\n24-0A-C4-00-00-01, dev-1  # the first\n{MAC_2},dev-2\n")

    assert ["dev-1", "dev-2"] == [MacMap(path).device_for(mac) for mac in (MAC_1, MAC_2)]


def test_a_mac_not_in_the_map_is_mac_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text(f"{MAC_1},dev-1\n")

    with pytest.raises(FlashJobError, match=MAC_3) as caught:
        MacMap(path).device_for(MAC_3)

    assert (FlashErrorCode.MAC_MISMATCH, FlashPhase.FETCHING_NVS) == (
        caught.value.code,
        caught.value.phase,
    )


def test_a_broken_map_stops_the_start_with_every_problem_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text(f"mac,device_id\nnot-a-mac,dev-1\n{MAC_2},Dev 2\n{MAC_3},dev-3,extra\n")

    with pytest.raises(SetupError) as caught:
        MacMap(path)

    message = str(caught.value)
    assert "line 2" in message and "line 3" in message and "line 4" in message


def test_a_missing_source_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="cannot read"):
        open_source(tmp_path / "nope.txt")


def test_the_queue_hands_out_ids_in_order_each_once(tmp_path: Path) -> None:
    queue = IdQueue(queue_file(tmp_path, "dev-1", "dev-2"))

    assert ["dev-1", "dev-2"] == [queue.device_for(mac) for mac in (MAC_1, MAC_2)]


def test_a_board_that_comes_back_gets_its_own_id_again(tmp_path: Path) -> None:
    queue = IdQueue(queue_file(tmp_path, "dev-1", "dev-2"))
    first = queue.device_for(MAC_1)

    assert first == queue.device_for(MAC_1.upper())
    assert "dev-2" == queue.device_for(MAC_2)


def test_the_queue_file_records_each_binding_and_survives_a_restart(tmp_path: Path) -> None:
    path = queue_file(tmp_path, "dev-1", "dev-2", "dev-3")
    IdQueue(path).device_for(MAC_1)

    restarted = IdQueue(path)  # a new station process reads the file again

    assert "dev-2" == restarted.device_for(MAC_2)
    assert "dev-1" == restarted.device_for(MAC_1)
    assert [
        "# device ids for today's batch",
        f"dev-1,{MAC_1}",
        f"dev-2,{MAC_2}",
        "dev-3",
    ] == path.read_text().splitlines()


def test_the_queue_is_rewritten_by_rename_never_in_place(tmp_path: Path) -> None:
    """A crash mid-write must leave the old file whole: the new one is renamed over it."""
    path = queue_file(tmp_path, "dev-1", "dev-2")
    before = path.stat().st_ino

    IdQueue(path).device_for(MAC_1)

    assert before != path.stat().st_ino
    assert [] == [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_exhausted_queue_is_provisioning_failed(tmp_path: Path) -> None:
    queue = IdQueue(queue_file(tmp_path, "dev-1"))
    queue.device_for(MAC_1)

    with pytest.raises(FlashJobError, match="no device_id left") as caught:
        queue.device_for(MAC_2)

    assert FlashErrorCode.PROVISIONING_FAILED == caught.value.code


def test_a_fifo_as_the_source_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "queue.txt"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever

    with pytest.raises(SetupError, match="not a regular file"):
        open_source(fifo)


def test_a_queue_turned_unreadable_while_running_fails_the_job_not_the_station(
    tmp_path: Path,
) -> None:
    path = queue_file(tmp_path, "dev-1")
    queue = IdQueue(path)
    path.unlink()
    path.symlink_to("/etc/hostname")  # outside its directory: refused

    with pytest.raises(FlashJobError) as caught:
        queue.device_for(MAC_1)

    assert FlashErrorCode.INTERNAL_ERROR == caught.value.code
