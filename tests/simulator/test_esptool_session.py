"""The real esptool against the simulated board: the simulator speaks the ROM and stub protocol."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from esptool import cmds
from esptool.util import FatalError
from serial import SerialException

from broker_agent.simulator import BoardConfig, BoardServer, Fault, SimulatedBoard
from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.partition_table import (
    PARTITION_TABLE_OFFSET,
    PartitionTableError,
    find_nvs_partition,
    parse_partition_table,
)
from tests.simulator.sessions import read_table, stub_session

pytestmark = pytest.mark.timeout(60)

NVS_OFFSET = 0x9000
NVS_SIZE = 0x5000


def serve(config: BoardConfig | None = None) -> BoardServer:
    return BoardServer(SimulatedBoard(config)).start()


@pytest.fixture
def server() -> Iterator[BoardServer]:
    with BoardServer(SimulatedBoard(BoardConfig(mac="24:0a:c4:aa:bb:01"))) as running:
        yield running


def test_detect_chip_sees_an_esp32_with_the_configured_mac(server: BoardServer) -> None:
    with cmds.detect_chip(server.url, connect_attempts=1) as esp:
        assert esp.CHIP_NAME == "ESP32"
        assert esp.read_mac() == (0x24, 0x0A, 0xC4, 0xAA, 0xBB, 0x01)
        assert esp.get_chip_description() == "ESP32-D0WD-V3 (revision v3.0)"
        assert esp.get_crystal_freq() == 40
        assert not esp.IS_STUB


def test_stub_reads_the_partition_table(server: BoardServer) -> None:
    data = read_table(server.url)

    board_table = server.board.flash[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + 0xC00]
    assert bytes(board_table) == data
    assert find_nvs_partition(parse_partition_table(data)).offset == NVS_OFFSET


def test_stub_writes_verifies_and_erases(server: BoardServer) -> None:
    image = os.urandom(NVS_SIZE)  # incompressible: several FLASH_DEFL_DATA blocks
    with stub_session(server.url) as esp:
        assert esp.IS_STUB
        esp.change_baud(921600)
        cmds.write_flash(esp, [(NVS_OFFSET, image)])
        md5 = esp.flash_md5sum(NVS_OFFSET, NVS_SIZE)
        esp.erase_region(NVS_OFFSET, 0x1000)

    assert hashlib.md5(image).hexdigest() == md5
    assert server.board.flash[NVS_OFFSET : NVS_OFFSET + 0x1000] == b"\xff" * 0x1000
    assert image[0x1000:] == server.board.flash[NVS_OFFSET + 0x1000 : NVS_OFFSET + NVS_SIZE]


def test_rom_loader_reads_writes_and_hashes_without_stub(server: BoardServer) -> None:
    image = bytes(range(256)) * 16
    with cmds.detect_chip(server.url, connect_attempts=1) as esp:
        cmds.attach_flash(esp)
        table = cmds.read_flash(esp, PARTITION_TABLE_OFFSET, 0x100)
        cmds.write_flash(esp, [(0x20000, image)])
        md5 = esp.flash_md5sum(0x20000, len(image))

    assert server.board.flash[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + 0x100] == table
    assert hashlib.md5(image).hexdigest() == md5
    assert image == server.board.flash[0x20000 : 0x20000 + len(image)]


def test_no_reset_returns_from_stub_to_rom_and_a_new_connection_works(
    server: BoardServer,
) -> None:
    with stub_session(server.url) as esp:
        cmds.reset_chip(esp, "no-reset")
        assert esp.read_reg(0x40001000) == 0x00F01D83  # the ROM answers again

    assert find_nvs_partition(parse_partition_table(read_table(server.url))).offset == NVS_OFFSET
    assert server.board.connections == 2


def test_abrupt_disconnects_leave_the_board_serving(
    server: BoardServer, caplog: pytest.LogCaptureFixture
) -> None:
    for payload in (b"", b"\xc0\x00\x08\x24", b"\xc0" + b"\x55" * 100):
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.sendall(payload)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # RST, mid-frame

    assert read_table(server.url)[:2] == b"\xaa\x50"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_no_answer_fails_to_connect() -> None:
    with (
        serve(BoardConfig(faults=frozenset({Fault.NO_ANSWER}))) as server,
        pytest.raises(FatalError, match="Failed to connect"),
    ):
        cmds.detect_chip(server.url, connect_attempts=1)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.NO_NVS_PARTITION, FlashErrorCode.NVS_PARTITION_MISSING),
        (Fault.WRONG_NVS_SUBTYPE, FlashErrorCode.NVS_SUBTYPE_MISMATCH),
        (Fault.CORRUPT_TABLE_MD5, FlashErrorCode.PARTITION_TABLE_UNREADABLE),
    ],
)
def test_table_faults_show_in_the_table_read_back(fault: Fault, code: FlashErrorCode) -> None:
    with serve(BoardConfig(faults=frozenset({fault}))) as server:
        data = read_table(server.url)

    with pytest.raises(PartitionTableError) as caught:
        find_nvs_partition(parse_partition_table(data))
    assert code == caught.value.code


def test_write_that_does_not_stick_fails_esptools_md5_check() -> None:
    with serve(BoardConfig(faults=frozenset({Fault.WRITE_DOES_NOT_STICK}))) as server:
        before = bytes(server.board.flash)
        with stub_session(server.url) as esp, pytest.raises(FatalError, match=r"Write failed|MD5"):
            cmds.write_flash(esp, [(NVS_OFFSET, b"\x00" * NVS_SIZE)])

        assert before == server.board.flash


def test_drop_mid_write_breaks_the_link_on_every_attempt() -> None:
    with serve(BoardConfig(faults=frozenset({Fault.DROP_MID_WRITE}))) as server:
        with stub_session(server.url) as esp, pytest.raises(SerialException):
            cmds.write_flash(esp, [(NVS_OFFSET, b"\x00" * NVS_SIZE)])

        assert server.board.connections >= 2  # esptool reconnected once and lost it again
        assert server.board.flash[NVS_OFFSET : NVS_OFFSET + NVS_SIZE] == b"\xff" * NVS_SIZE


def test_baud_throttle_paces_bytes_and_follows_change_baudrate() -> None:
    with serve(BoardConfig(baud_throttle=115200)) as server, stub_session(server.url) as esp:
        esp.change_baud(921600)
        started = time.monotonic()
        data = esp.read_flash(0x100000, 0x8000)
        elapsed = time.monotonic() - started

    assert len(data) == 0x8000
    # 32 KiB take 0.36 s at 921600 baud (2.8 s at the initial 115200)
    assert 0.3 < elapsed < 2.2


def test_command_line_serves_boards_until_interrupted() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker_agent.simulator", "--boards", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().split() for _ in range(2)]
        urls = [line[0] for line in lines]
        assert [line[1] for line in lines] == ["mac=24:0a:c4:00:00:01", "mac=24:0a:c4:00:00:02"]
        with cmds.detect_chip(urls[1], connect_attempts=1) as esp:
            assert esp.read_mac() == (0x24, 0x0A, 0xC4, 0, 0, 2)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
