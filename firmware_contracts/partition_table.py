"""The ESP-IDF binary partition table: parse, build, and find the NVS partition.

Pure code, no I/O. The layout (contract section 4): at most ``0xC00`` bytes at flash offset
``0x8000``, made of 32-byte entries ``<2sBBLL16sL`` (magic ``AA 50``, type, subtype, offset,
size, NUL-padded name, flags). An ``EB EB`` + 14 x ``FF`` entry carries, in its last 16 bytes,
the MD5 of every byte before it; the table ends at the first all-``FF`` entry.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from firmware_contracts.codes import FlashErrorCode

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_MAX_SIZE = 0xC00
NVS_PARTITION_NAME = "nvs"  # the partition a flash station provisions

ENTRY_SIZE = 32
MAX_ENTRY_SLOTS = PARTITION_TABLE_MAX_SIZE // ENTRY_SIZE
NAME_SIZE = 16

PARTITION_TYPE_APP = 0x00
PARTITION_TYPE_DATA = 0x01
APP_SUBTYPE_FACTORY = 0x00
DATA_SUBTYPE_PHY = 0x01
DATA_SUBTYPE_NVS = 0x02
DATA_SUBTYPE_NVS_KEYS = 0x04  # ESP-IDF gen_esp32part.py: the keys of an encrypted NVS
PARTITION_FLAG_ENCRYPTED = 0x01  # flags bit 0

_ENTRY = struct.Struct("<2sBBLL16sL")
_ENTRY_MAGIC = b"\xaa\x50"
_MD5_MARKER = b"\xeb\xeb" + b"\xff" * 14
_END_MARKER = b"\xff" * ENTRY_SIZE
_U32_MAX = 0xFFFF_FFFF


class PartitionTableError(Exception):
    """The partition table is unusable for flashing; ``code`` is the contract's error code."""

    def __init__(self, code: FlashErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PartitionEntry:
    """One row of the partition table."""

    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    def __post_init__(self) -> None:
        if not (self.name.isascii() and self.name.isprintable()) or len(self.name) > NAME_SIZE:
            raise ValueError(
                f"partition name must be at most 16 printable ASCII characters: {self.name!r}"
            )
        for field, value, limit in (
            ("type", self.type, 0xFF),
            ("subtype", self.subtype, 0xFF),
            ("offset", self.offset, _U32_MAX),
            ("size", self.size, _U32_MAX),
            ("flags", self.flags, _U32_MAX),
        ):
            if not 0 <= value <= limit:
                raise ValueError(f"partition {self.name!r}: {field} {value:#x} out of range")


def _unreadable(message: str) -> PartitionTableError:
    return PartitionTableError(FlashErrorCode.PARTITION_TABLE_UNREADABLE, message)


def _decode_name(raw: bytes, index: int) -> str:
    name_bytes = raw.split(b"\x00", 1)[0]
    try:
        name = name_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise _unreadable(f"partition table entry {index}: name is not ASCII") from None
    if not name.isprintable():
        raise _unreadable(f"partition table entry {index}: name is not printable")
    return name


def _parse_entry(raw: bytes, index: int) -> PartitionEntry:
    magic, ptype, subtype, offset, size, name_raw, flags = _ENTRY.unpack(raw)
    if magic != _ENTRY_MAGIC:
        raise _unreadable(
            f"partition table entry {index} at byte {index * ENTRY_SIZE:#x}: "
            f"bad magic {magic.hex()} (expected aa50)"
        )
    return PartitionEntry(_decode_name(name_raw, index), ptype, subtype, offset, size, flags)


def _check_md5(data: bytes, index: int) -> None:
    start = index * ENTRY_SIZE
    stored = data[start + 16 : start + ENTRY_SIZE]
    actual = hashlib.md5(data[:start], usedforsecurity=False).digest()
    if stored != actual:
        raise _unreadable(
            f"partition table MD5 mismatch at entry {index}: "
            f"stored {stored.hex()}, computed {actual.hex()}"
        )


def parse_partition_table(data: bytes) -> list[PartitionEntry]:
    """Parse a binary partition table (the bytes read at ``PARTITION_TABLE_OFFSET``).

    Raises ``PartitionTableError`` (code ``partition_table_unreadable``) on a bad magic, a
    non-ASCII name, an MD5 mismatch, or a table with no end marker within ``0xC00`` bytes.
    """
    data = bytes(data[:PARTITION_TABLE_MAX_SIZE])
    entries: list[PartitionEntry] = []
    for index in range(len(data) // ENTRY_SIZE):
        raw = data[index * ENTRY_SIZE : (index + 1) * ENTRY_SIZE]
        if raw == _END_MARKER:
            return entries
        if raw[:16] == _MD5_MARKER:
            _check_md5(data, index)
            continue
        entries.append(_parse_entry(raw, index))
    raise _unreadable(
        f"partition table has no end marker within {len(data)} bytes ({len(entries)} entries read)"
    )


def _pack_entry(entry: PartitionEntry) -> bytes:
    name = entry.name.encode("ascii").ljust(NAME_SIZE, b"\x00")
    return _ENTRY.pack(
        _ENTRY_MAGIC, entry.type, entry.subtype, entry.offset, entry.size, name, entry.flags
    )


def build_partition_table(entries: Iterable[PartitionEntry], *, with_md5: bool = True) -> bytes:
    """Build a binary table, padded with ``0xFF`` to ``PARTITION_TABLE_MAX_SIZE`` bytes."""
    body = b"".join(_pack_entry(entry) for entry in entries)
    if with_md5:
        body += _MD5_MARKER + hashlib.md5(body, usedforsecurity=False).digest()
    if len(body) + ENTRY_SIZE > PARTITION_TABLE_MAX_SIZE:
        raise ValueError(
            f"partition table of {len(body)} bytes leaves no room for the end marker "
            f"(max {PARTITION_TABLE_MAX_SIZE:#x} bytes)"
        )
    return body.ljust(PARTITION_TABLE_MAX_SIZE, b"\xff")


def _describe(entry: PartitionEntry) -> str:
    return f"type {entry.type:#04x} subtype {entry.subtype:#04x}"


def find_nvs_partition(
    entries: Sequence[PartitionEntry],
    name: str = NVS_PARTITION_NAME,
    *,
    flash_size: int | None = None,
) -> PartitionEntry:
    """The entry called ``name``, if a station can write a plain NVS image into it.

    Checked in this order, each its own contract code (6.5), so the operator is told the
    real problem: no entry at all (an erased board, ``partition_table_unreadable``), no entry
    called ``name`` (``nvs_partition_missing``), not data/nvs (``nvs_subtype_mismatch``),
    NVS encryption in use (the entry flagged encrypted, or an ``nvs_keys`` partition:
    ``nvs_encryption_unsupported``), and, when ``flash_size`` is known, an entry that does
    not fit the chip's flash (``nvs_partition_out_of_range``).
    """
    if not entries:
        raise _unreadable(
            "no partition table at 0x8000 (the flash there is erased): "
            "flash the firmware (bootloader, partition table, app) first"
        )
    entry = next((entry for entry in entries if entry.name == name), None)
    if entry is None:
        found = ", ".join(repr(entry.name) for entry in entries)
        raise PartitionTableError(
            FlashErrorCode.NVS_PARTITION_MISSING,
            f"no partition named {name!r} in the partition table (found: {found})",
        )
    if (entry.type, entry.subtype) != (PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS):
        raise PartitionTableError(
            FlashErrorCode.NVS_SUBTYPE_MISMATCH,
            f"partition {name!r} is {_describe(entry)}, "
            f"expected data/nvs (type {PARTITION_TYPE_DATA:#04x} "
            f"subtype {DATA_SUBTYPE_NVS:#04x})",
        )
    _check_not_encrypted(entries, entry)
    if flash_size is not None and entry.offset + entry.size > flash_size:
        raise PartitionTableError(
            FlashErrorCode.NVS_PARTITION_OUT_OF_RANGE,
            f"partition {name!r} ({entry.offset:#x}..{entry.offset + entry.size:#x}) does not "
            f"fit the chip's {_size_text(flash_size)} flash: nothing written; fix partitions.csv "
            "or the flash size the firmware was built for",
        )
    return entry


def _check_not_encrypted(entries: Sequence[PartitionEntry], entry: PartitionEntry) -> None:
    keys = [
        e.name
        for e in entries
        if (e.type, e.subtype) == (PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS_KEYS)
    ]
    if entry.flags & PARTITION_FLAG_ENCRYPTED:
        reason = f"partition {entry.name!r} is flagged encrypted"
    elif keys:
        reason = f"the table has an nvs_keys partition ({keys[0]!r}): NVS encryption is on"
    else:
        return
    raise PartitionTableError(
        FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED,
        f"{reason}; this station writes plain NVS images only: nothing written. "
        "Build the firmware without NVS encryption for provisioning, or provision this board "
        "with ESP-IDF's encrypted NVS tools",
    )


def _size_text(size: int) -> str:
    mb, kb = 1024 * 1024, 1024
    if size % mb == 0:
        return f"{size // mb} MB"
    return f"{size // kb} KB" if size % kb == 0 else f"{size} byte"


def default_partition_table() -> list[PartitionEntry]:
    """ESP-IDF's usual single-app layout, with a 20 KiB NVS partition at ``0x9000``."""
    return [
        PartitionEntry(NVS_PARTITION_NAME, PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS, 0x9000, 0x5000),
        PartitionEntry("phy_init", PARTITION_TYPE_DATA, DATA_SUBTYPE_PHY, 0xE000, 0x1000),
        PartitionEntry("factory", PARTITION_TYPE_APP, APP_SUBTYPE_FACTORY, 0x10000, 0x100000),
    ]
