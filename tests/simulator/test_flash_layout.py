"""Erased boards and flash sizes, as the real esptool sees them."""

from __future__ import annotations

import pytest
from esptool import cmds
from esptool.util import FatalError

from broker_agent.simulator import FLASH_SIZES, MB, BoardConfig, BoardServer, SimulatedBoard
from firmware_contracts.partition_table import PARTITION_TABLE_MAX_SIZE
from tests.simulator.sessions import read_table, stub_session

pytestmark = pytest.mark.timeout(60)

SIZE_NAMES = {1 * MB: "1MB", 2 * MB: "2MB", 4 * MB: "4MB", 8 * MB: "8MB", 16 * MB: "16MB"}


def serve(config: BoardConfig) -> BoardServer:
    return BoardServer(SimulatedBoard(config)).start()


def test_erased_board_reads_back_ff_at_the_partition_table() -> None:
    with serve(BoardConfig(erased=True)) as server:
        assert b"\xff" * PARTITION_TABLE_MAX_SIZE == read_table(server.url)


def test_erased_board_is_ff_everywhere() -> None:
    board = SimulatedBoard(BoardConfig(erased=True))

    assert bytes(board.flash) == b"\xff" * len(board.flash)


@pytest.mark.parametrize("flash_size", FLASH_SIZES, ids=SIZE_NAMES.values())
def test_esptool_detects_the_configured_flash_size(flash_size: int) -> None:
    with (
        serve(BoardConfig(flash_size=flash_size)) as server,
        cmds.detect_chip(server.url, connect_attempts=1) as esp,
    ):
        cmds.attach_flash(esp)
        assert SIZE_NAMES[flash_size] == cmds.detect_flash_size(esp)


@pytest.mark.parametrize("flash_size", FLASH_SIZES, ids=SIZE_NAMES.values())
def test_flash_array_matches_the_jedec_size(flash_size: int) -> None:
    board = SimulatedBoard(BoardConfig(flash_size=flash_size))

    assert flash_size == len(board.flash)
    assert flash_size == 1 << (board.jedec_id >> 16)


def test_last_sector_of_a_1mb_board_reads_back() -> None:
    with serve(BoardConfig(flash_size=MB)) as server:
        server.board.flash[MB - 0x1000 :] = b"\xa5" * 0x1000
        with stub_session(server.url) as esp:
            assert b"\xa5" * 0x1000 == cmds.read_flash(esp, MB - 0x1000, 0x1000)


def test_stub_read_past_the_end_of_flash_fails_with_esptools_error() -> None:
    with (
        serve(BoardConfig(flash_size=MB)) as server,
        stub_session(server.url) as esp,
        pytest.raises(FatalError, match="Failed to read flash"),
    ):
        cmds.read_flash(esp, MB - 0x1000, 0x2000)


def test_rom_read_past_the_end_of_flash_fails_with_esptools_error() -> None:
    with (
        serve(BoardConfig(flash_size=MB)) as server,
        cmds.detect_chip(server.url, connect_attempts=1) as esp,
        pytest.raises(FatalError, match="Failed to read"),
    ):
        cmds.attach_flash(esp)
        esp.read_flash(MB - 0x20, 0x40)


def test_write_past_the_end_of_flash_is_refused_and_flash_does_not_grow() -> None:
    with serve(BoardConfig(flash_size=MB)) as server:
        with (
            stub_session(server.url) as esp,
            pytest.raises(FatalError, match="Failed to enter compressed flash mode"),
        ):
            esp.flash_defl_begin(0x2000, 0x100, MB - 0x1000)  # below cmds' own size check

        assert MB == len(server.board.flash)
        assert b"\xff" * 0x1000 == server.board.flash[MB - 0x1000 :]


def test_rom_write_past_the_end_of_flash_is_refused() -> None:
    with (
        serve(BoardConfig(flash_size=MB)) as server,
        cmds.detect_chip(server.url, connect_attempts=1) as esp,
        pytest.raises(FatalError, match="Failed to enter flash download mode"),
    ):
        cmds.attach_flash(esp)
        esp.flash_begin(0x2000, MB - 0x1000)


def test_md5_past_the_end_of_flash_fails_with_esptools_error() -> None:
    with (
        serve(BoardConfig(flash_size=2 * MB)) as server,
        stub_session(server.url) as esp,
        pytest.raises(FatalError, match="Failed to calculate md5sum"),
    ):
        esp.flash_md5sum(2 * MB - 0x1000, 0x2000)


def test_erase_past_the_end_of_flash_fails_with_esptools_error() -> None:
    with (
        serve(BoardConfig(flash_size=MB)) as server,
        stub_session(server.url) as esp,
        pytest.raises(FatalError, match="Failed to erase region"),
    ):
        esp.erase_region(MB, 0x1000)


def test_write_flash_past_a_detected_1mb_fails_before_touching_the_board() -> None:
    with (
        serve(BoardConfig(flash_size=MB)) as server,
        stub_session(server.url) as esp,
        pytest.raises(FatalError, match="will not fit in 1048576 bytes of flash"),
    ):
        cmds.write_flash(esp, [(MB - 0x1000, b"\x00" * 0x2000)])


@pytest.mark.parametrize(
    "config",
    [
        {"flash_size": 3 * MB},
        {"erased": True, "partitions": []},
        {"erased": True, "table_image": b""},
        {"table_image": b"\xaa\x50", "partitions": []},
        {"table_image": b"\xff" * MB, "flash_size": MB},
    ],
    ids=["odd-size", "erased+partitions", "erased+image", "image+partitions", "image-too-big"],
)
def test_contradictory_or_impossible_configs_are_rejected(config: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BoardConfig(**config)  # type: ignore[arg-type]
