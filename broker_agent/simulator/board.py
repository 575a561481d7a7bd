"""The simulated ESP32 itself: SPI flash (1 to 16 MB), eFuse words, and the faults it can show.

A ``SimulatedBoard`` outlives connections: what one esptool session writes, the next one
reads back. The per-connection protocol state lives in ``session.py``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from enum import Enum

from broker_agent.simulator.tables import Md5Row, table_image, without_nvs
from firmware_contracts.partition_table import (
    DATA_SUBTYPE_NVS,
    NVS_PARTITION_NAME,
    PARTITION_TABLE_OFFSET,
    PartitionEntry,
    default_partition_table,
)

MB = 1024 * 1024
FLASH_SIZES = (1 * MB, 2 * MB, 4 * MB, 8 * MB, 16 * MB)
FLASH_SIZE = 4 * MB  # the default
SECTOR_SIZE = 0x1000
SFDP_SIGNATURE = 0x50444653  # "SFDP", little-endian

CHIP_MAGIC_REG = 0x40001000
ESP32_CHIP_MAGIC = 0x00F01D83
EFUSE_BASE = 0x3FF5A000
APB_CTL_DATE_REG = 0x3FF6607C
RTC_CALI_REG = 0x3FF5F06C
UART_CLKDIV_REG = 0x3FF40014
APB_CLOCK_HZ = 40_000_000

WRONG_NVS_SUBTYPE = 0x81  # data/fat: a plausible mistake in a partitions.csv

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Fault(Enum):
    """Ways a simulated board can misbehave, one per error path of a flash job."""

    NO_ANSWER = "no_answer"  # never answers SYNC: the chip is not in download mode
    NO_NVS_PARTITION = "no_nvs_partition"  # the table has no entry named "nvs"
    WRONG_NVS_SUBTYPE = "wrong_nvs_subtype"  # "nvs" is data/fat instead of data/nvs
    CORRUPT_TABLE_MD5 = "corrupt_table_md5"  # the table's MD5 entry does not match
    WRITE_DOES_NOT_STICK = "write_does_not_stick"  # writes are acked, flash is unchanged
    DROP_MID_WRITE = "drop_mid_write"  # the connection closes during FLASH_DEFL_DATA


def jedec_id(flash_size: int) -> int:
    """RDID answer of a Winbond W25Q chip: EF 40 then log2 of the size (``0x16`` = 4 MB)."""
    return (flash_size.bit_length() - 1) << 16 | 0x40EF


FLASH_JEDEC_ID = jedec_id(FLASH_SIZE)  # 0x1640EF

_TABLE_FAULTS = frozenset(
    {Fault.NO_NVS_PARTITION, Fault.WRONG_NVS_SUBTYPE, Fault.CORRUPT_TABLE_MD5}
)


def parse_mac(mac: str) -> bytes:
    """``'24:0a:c4:12:34:56'`` -> 6 bytes."""
    if not _MAC_RE.match(mac):
        raise ValueError(f"MAC must look like '24:0a:c4:12:34:56', got {mac!r}")
    return bytes(int(part, 16) for part in mac.split(":"))


@dataclass(frozen=True)
class BoardConfig:
    """What a simulated board looks like.

    What sits at ``0x8000`` comes from at most one of: ``partitions`` (entries built into a
    table with its MD5 row; ``None`` or empty means the default layout; ``tables.py`` has
    the variants), ``table_image`` (raw bytes, written as given) or ``erased=True`` (nothing:
    all of flash is ``0xFF``, as modules come from the factory). ``flash_size`` is one of
    ``FLASH_SIZES``: the chip's JEDEC ID reports it and accesses past it fail.
    """

    mac: str = "24:0a:c4:12:34:56"
    partitions: list[PartitionEntry] | None = None
    faults: frozenset[Fault] = field(default_factory=frozenset)
    baud_throttle: int | None = None
    flash_size: int = FLASH_SIZE
    erased: bool = False
    table_image: bytes | None = None

    def __post_init__(self) -> None:
        parse_mac(self.mac)
        if self.baud_throttle is not None and self.baud_throttle <= 0:
            raise ValueError("baud_throttle must be a positive baud rate or None")
        if self.flash_size not in FLASH_SIZES:
            sizes = ", ".join(f"{size // MB} MB" for size in FLASH_SIZES)
            raise ValueError(f"flash_size must be one of {sizes}, got {self.flash_size:#x}")
        given = [
            name
            for name, value in (
                ("partitions", self.partitions is not None),
                ("table_image", self.table_image is not None),
                ("erased", self.erased),
            )
            if value
        ]
        if len(given) > 1:
            raise ValueError(f"give at most one of partitions, table_image, erased: {given}")
        table_faults = self.faults & _TABLE_FAULTS
        if table_faults and (self.erased or self.table_image is not None):
            names = sorted(fault.value for fault in table_faults)
            raise ValueError(f"{names} change a built table: not with erased or table_image")
        if self.table_image is not None and (
            PARTITION_TABLE_OFFSET + len(self.table_image) > self.flash_size
        ):
            raise ValueError("table_image does not fit in flash")


def _table_for(config: BoardConfig) -> bytes:
    """The bytes at ``0x8000`` (empty for an erased board)."""
    if config.erased:
        return b""
    if config.table_image is not None:
        return config.table_image
    entries = list(config.partitions or default_partition_table())
    if Fault.NO_NVS_PARTITION in config.faults:
        entries = without_nvs(entries)
    if Fault.WRONG_NVS_SUBTYPE in config.faults:
        entries = [
            PartitionEntry(e.name, e.type, WRONG_NVS_SUBTYPE, e.offset, e.size, e.flags)
            if e.name == NVS_PARTITION_NAME and e.subtype == DATA_SUBTYPE_NVS
            else e
            for e in entries
        ]
    corrupt = Fault.CORRUPT_TABLE_MD5 in config.faults
    return table_image(entries, md5=Md5Row.CORRUPT if corrupt else Md5Row.VALID)


class SimulatedBoard:
    """An ESP32 with ``config.flash_size`` bytes of flash, a partition table at ``0x8000``.

    ``flash`` is the board's flash, readable (and writable) by tests; it never grows.
    Sessions serialise their flash access on ``lock``. Reads, writes, erases and MD5s that
    reach past the end of flash fail (``None`` / ``False``), as the ROM and stub refuse them.
    """

    def __init__(self, config: BoardConfig | None = None) -> None:
        self.config = config or BoardConfig()
        self.mac = parse_mac(self.config.mac)
        self.flash_size = self.config.flash_size
        self.jedec_id = jedec_id(self.flash_size)
        self.flash = bytearray(b"\xff" * self.flash_size)
        self.lock = threading.RLock()
        self.connections = 0
        table = _table_for(self.config)
        self.flash[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + len(table)] = table

    def has_fault(self, fault: Fault) -> bool:
        return fault in self.config.faults

    # -- registers ---------------------------------------------------------------------

    def efuse_word(self, index: int) -> int:
        """eFuse block 0 read words as esptool's ESP32 class decodes them."""
        if index == 1:
            return int.from_bytes(self.mac[2:6], "big")
        if index == 2:
            return int.from_bytes(self.mac[0:2], "big")  # upper half: MAC CRC (unchecked)
        if index == 3:
            return (1 << 15) | (1 << 9)  # chip revision bit 0, package ESP32-D0WD
        if index == 4:
            return 128  # CK8M frequency calibration (40 MHz crystal with RTC_CALI below)
        if index == 5:
            return 1 << 20  # chip revision bit 1
        return 0

    def read_register(self, address: int, baud: int) -> int:
        """Value of a chip register other than the SPI controller's."""
        if address == CHIP_MAGIC_REG:
            return ESP32_CHIP_MAGIC
        if EFUSE_BASE <= address < EFUSE_BASE + 0x100:
            return self.efuse_word((address - EFUSE_BASE) // 4)
        if address == APB_CTL_DATE_REG:
            return 1 << 31  # chip revision bit 2: together, revision v3.0
        if address == RTC_CALI_REG:
            return 800 << 7
        if address == UART_CLKDIV_REG:
            return round(APB_CLOCK_HZ / baud)
        return 0

    # -- flash -------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> bool:
        return offset >= 0 and length >= 0 and offset + length <= self.flash_size

    def read(self, offset: int, length: int) -> bytes | None:
        if not self._check_range(offset, length):
            return None
        with self.lock:
            return bytes(self.flash[offset : offset + length])

    def erase(self, offset: int, length: int) -> bool:
        """Erase every sector that ``[offset, offset + length)`` touches."""
        start = offset - offset % SECTOR_SIZE
        end = -(-(offset + length) // SECTOR_SIZE) * SECTOR_SIZE
        if not self._check_range(start, end - start):
            return False
        with self.lock:
            self.flash[start:end] = b"\xff" * (end - start)
        return True

    def program(self, offset: int, data: bytes) -> bool:
        """NOR-flash programming: bits can only go from 1 to 0 (erase first)."""
        if not self._check_range(offset, len(data)):
            return False
        size = len(data)
        with self.lock:
            current = int.from_bytes(self.flash[offset : offset + size], "big")
            programmed = current & int.from_bytes(data, "big")
            self.flash[offset : offset + size] = programmed.to_bytes(size, "big")
        return True

    def md5(self, offset: int, length: int) -> bytes | None:
        data = self.read(offset, length)
        return None if data is None else hashlib.md5(data, usedforsecurity=False).digest()
