"""Hot-plug: boards plugged into and out of a ``SimulatedBench`` while esptool uses them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from esptool import cmds
from esptool.util import FatalError
from serial import SerialException

from broker_agent.simulator import BoardConfig, SimulatedBench, SimulatedBoard, port_of
from tests.simulator.sessions import stub_session

pytestmark = pytest.mark.timeout(60)

MAC = (0x24, 0x0A, 0xC4, 0x00, 0x00, 0x07)


@pytest.fixture
def bench() -> Iterator[SimulatedBench]:
    with SimulatedBench() as running:
        yield running


def board() -> SimulatedBoard:
    return SimulatedBoard(BoardConfig(mac="24:0a:c4:00:00:07"))


def test_plugged_board_answers_esptool_at_its_url(bench: SimulatedBench) -> None:
    url = bench.plug(board())

    with cmds.detect_chip(url, connect_attempts=1) as esp:
        assert MAC == esp.read_mac()


def test_ports_lists_plugged_boards_in_plug_order(bench: SimulatedBench) -> None:
    first, second, third = (bench.plug() for _ in range(3))
    bench.unplug(second)

    assert [first, third] == bench.ports()


def test_comports_lists_plugged_boards_as_cp210x_serial_ports(bench: SimulatedBench) -> None:
    url = bench.plug(board())

    [port] = bench.comports()
    assert (url, "240ac4000007", 0x10C4, 0xEA60) == (
        port.device,
        port.serial_number,
        port.vid,
        port.pid,
    )


def test_connection_to_an_unplugged_board_is_refused(bench: SimulatedBench) -> None:
    url = bench.plug(board())
    bench.unplug(url)

    with pytest.raises(FatalError, match="Could not open"):
        cmds.detect_chip(url, connect_attempts=1)


def test_unplug_drops_the_open_connection(bench: SimulatedBench) -> None:
    url = bench.plug(board())
    with cmds.detect_chip(url, connect_attempts=1) as esp:
        bench.unplug(url)

        with pytest.raises(SerialException):
            esp.read_reg(0x40001000)


def test_unplug_mid_read_fails_the_read(bench: SimulatedBench) -> None:
    url = bench.plug(SimulatedBoard(BoardConfig(baud_throttle=115200)))  # 256 KiB take 23 s
    unplug = threading.Timer(0.3, bench.unplug, args=(url,))
    with stub_session(url) as esp, pytest.raises(SerialException):
        unplug.start()
        esp.read_flash(0, 0x40000)
    unplug.join()


def test_replugged_board_answers_at_the_same_url_with_its_flash(bench: SimulatedBench) -> None:
    url = bench.plug(board())
    with cmds.detect_chip(url, connect_attempts=1) as esp:
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(0x20000, b"\x5a" * 0x1000)])
    unplugged = bench.unplug(url)

    assert url == bench.plug(unplugged, port=port_of(url))
    with cmds.detect_chip(url, connect_attempts=1) as esp:
        cmds.attach_flash(esp)
        assert b"\x5a" * 0x1000 == cmds.read_flash(esp, 0x20000, 0x1000)


def test_a_board_cannot_be_plugged_in_twice(bench: SimulatedBench) -> None:
    plugged = board()
    bench.plug(plugged)

    with pytest.raises(ValueError, match="already plugged in"):
        bench.plug(plugged)


def test_unplugging_an_unknown_url_is_a_key_error(bench: SimulatedBench) -> None:
    with pytest.raises(KeyError):
        bench.unplug("socket://127.0.0.1:9")


def test_wait_for_change_wakes_when_another_thread_plugs_a_board(bench: SimulatedBench) -> None:
    seen = bench.generation
    plugger = threading.Timer(0.05, bench.plug)
    plugger.start()

    assert seen + 1 == bench.wait_for_change(seen, timeout=10)
    plugger.join()
    assert 1 == len(bench.ports())


def test_wait_for_change_times_out_when_nothing_changes(bench: SimulatedBench) -> None:
    seen = bench.generation

    assert seen == bench.wait_for_change(seen, timeout=0.05)


def test_closing_the_bench_unplugs_every_board() -> None:
    with SimulatedBench() as bench:
        urls = [bench.plug(), bench.plug()]

    assert [] == bench.ports()
    with pytest.raises(FatalError, match="Could not open"):
        cmds.detect_chip(urls[0], connect_attempts=1)
