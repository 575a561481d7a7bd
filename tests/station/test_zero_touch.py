"""Zero-touch bench mode end to end: boards plugged into a running station's simulated bench
are flashed without a command (real Mosquitto, agent, esptool; the bench plugs and unplugs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_agent.simulator import BoardConfig, SimulatedBoard
from tests.station.harness import (
    Bench,
    assert_stream,
    bench_of,
    commander,
    credentials,
    next_auto_final,
    nvs_region,
    simulated,
)
from tests.support.nvs_parser import parse_nvs
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(90)

FIRST_MAC = "24:0a:c4:00:00:01"  # the board --simulate 1 starts with


async def test_a_board_plugged_in_is_flashed_with_the_id_its_mac_maps_to(
    bench: Bench, tmp_path: Path
) -> None:
    mac_map = tmp_path / "boards.csv"
    mac_map.write_text(f"mac,device_id\n{FIRST_MAC},kitchen-01\n24:0a:c4:00:00:42,dev-1\n")
    settings = bench.station_settings(simulate=1, auto=mac_map)
    async with (
        bench.agent(),
        commander(bench.broker.url) as operator,
        running_station(settings) as station,
    ):
        at_start = await next_auto_final(operator, 0)
        url = bench_of(station).plug(SimulatedBoard(BoardConfig(mac="24:0a:c4:00:00:42")))
        plugged = await next_auto_final(operator, 1)
        image = nvs_region(simulated(station)[1])

    assert ("ok", "kitchen-01", FIRST_MAC) == (
        at_start["status"],
        at_start["device_id"],
        at_start["chip"]["mac"],
    )
    assert ("ok", "dev-1", url) == (plugged["status"], plugged["device_id"], plugged["port"])
    assert plugged["request_id"].startswith("auto-240ac4000042-")
    assert credentials("dev-1") == parse_nvs(image).strings("prov")
    assert ["kitchen-01", "dev-1"] == [line["device_id"] for line in bench.log_lines()]


async def test_a_board_missing_from_the_mac_map_is_refused_and_not_written(
    bench: Bench, tmp_path: Path
) -> None:
    mac_map = tmp_path / "boards.csv"
    mac_map.write_text("24:0a:c4:00:00:42,dev-1\n")
    settings = bench.station_settings(simulate=1, auto=mac_map)
    async with commander(bench.broker.url) as operator, running_station(settings) as station:
        refused = await next_auto_final(operator, 0)
        untouched = nvs_region(simulated(station)[0])

    assert ("mac_mismatch", FIRST_MAC) == (refused["error"]["code"], refused["chip"]["mac"])
    assert b"\xff" * 0x5000 == untouched


async def test_a_replugged_board_is_recognised_by_its_md5_and_not_rewritten(
    bench: Bench, tmp_path: Path
) -> None:
    queue = tmp_path / "queue.txt"
    queue.write_text("dev-1\ndev-2\n")
    settings = bench.station_settings(simulate=1, auto=queue)
    async with (
        bench.agent(),
        commander(bench.broker.url) as operator,
        running_station(settings) as station,
    ):
        first = await next_auto_final(operator, 0)
        written = nvs_region(simulated(station)[0])
        board = bench_of(station).unplug(first["port"])
        await operator.wait(lambda: operator.statuses[-1]["ports"] == [])
        bench_of(station).plug(board)
        again = await next_auto_final(operator, 1)
        after = nvs_region(simulated(station)[0])

    assert ("ok", "dev-1", None) == (first["status"], first["device_id"], first.get("skipped"))
    assert ("ok", "dev-1", True) == (again["status"], again["device_id"], again["skipped"])
    assert "writing" not in [e["phase"] for e in operator.events(again["request_id"])]
    assert written == after
    assert [False, True] == [line["skipped"] for line in bench.log_lines()]
    assert f"dev-1,{FIRST_MAC}\ndev-2\n" == queue.read_text()


async def test_the_queue_hands_out_ids_in_order_and_persists_across_restarts(
    bench: Bench, tmp_path: Path
) -> None:
    queue = tmp_path / "queue.txt"
    queue.write_text("dev-1\ndev-2\ndev-3\n")
    settings = bench.station_settings(simulate=1, auto=queue)
    async with bench.agent(), commander(bench.broker.url) as operator:
        async with running_station(settings) as station:
            await next_auto_final(operator, 0)
            bench_of(station).plug(SimulatedBoard(BoardConfig(mac="24:0a:c4:00:00:02")))
            await next_auto_final(operator, 1)
        after_first_run = queue.read_text()
        async with running_station(settings) as station:  # its board has the first MAC again
            await next_auto_final(operator, 2)
            bench_of(station).plug(SimulatedBoard(BoardConfig(mac="24:0a:c4:00:00:03")))
            await next_auto_final(operator, 3)

    assert "dev-1,24:0a:c4:00:00:01\ndev-2,24:0a:c4:00:00:02\ndev-3\n" == after_first_run
    assert [
        ("dev-1", "24:0a:c4:00:00:01"),
        ("dev-2", "24:0a:c4:00:00:02"),
        ("dev-1", "24:0a:c4:00:00:01"),
        ("dev-3", "24:0a:c4:00:00:03"),
    ] == [(line["device_id"], line["mac"]) for line in bench.log_lines()]
    assert ["ok"] * 4 == [line["result"] for line in bench.log_lines()]


async def test_a_commanded_job_skips_a_board_holding_its_image_unless_forced(
    bench: Bench,
) -> None:
    async with (
        bench.agent(),
        running_station(bench.station_settings(simulate=1)),
        commander(bench.broker.url) as operator,
    ):
        first = await operator.run({"request_id": "c-1", "device_id": "kitchen-01"})
        second = await operator.run({"request_id": "c-2", "device_id": "kitchen-01"})
        forced = await operator.run({"request_id": "c-3", "device_id": "kitchen-01", "force": True})

    for events in (first, second, forced):
        assert_stream(events, ok=True)
    assert [None, True, None] == [e[-1].get("skipped") for e in (first, second, forced)]
    assert ["writing" in [e["phase"] for e in events] for events in (first, second, forced)] == [
        True,
        False,
        True,
    ]
    assert first[-1]["md5"] == second[-1]["md5"] == forced[-1]["md5"]
