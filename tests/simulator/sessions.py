"""The real esptool against a simulated board: the few calls the simulator tests share."""

from __future__ import annotations

from typing import Any

from esptool import cmds

from firmware_contracts.partition_table import PARTITION_TABLE_MAX_SIZE, PARTITION_TABLE_OFFSET


def stub_session(url: str) -> Any:
    """Connect, upload the flasher stub, attach the SPI flash; close with ``esp._port.close()``."""
    esp = cmds.detect_chip(url, connect_attempts=1)
    esp = cmds.run_stub(esp)
    cmds.attach_flash(esp)
    return esp


def read_table(url: str) -> bytes:
    """The ``0xC00`` bytes at ``0x8000``, read through the stub as a flash station reads them."""
    esp = stub_session(url)
    try:
        data: bytes = cmds.read_flash(esp, PARTITION_TABLE_OFFSET, PARTITION_TABLE_MAX_SIZE)
    finally:
        esp._port.close()
    return data
