"""Partition tables for simulated boards: the default layout and the variants a bench meets.

Pure code, no I/O. Entries are ``firmware_contracts.partition_table.PartitionEntry`` and the
binary image comes from its ``build_partition_table``; this module only adds the variants a
test asks for, each a function of a list of entries (the default table when ``None``)::

    BoardConfig(partitions=with_nvs_keys())              # an nvs_keys partition beside nvs
    BoardConfig(partitions=encrypted_nvs())              # nvs flagged encrypted
    BoardConfig(partitions=nvs_past_end(MB), flash_size=MB)   # nvs crosses the end of flash
    BoardConfig(partitions=without_nvs())                # no entry named "nvs"
    BoardConfig(table_image=table_image(entries, md5=Md5Row.CORRUPT))   # any raw table
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from firmware_contracts.partition_table import (
    ENTRY_SIZE,
    NVS_PARTITION_NAME,
    PARTITION_TYPE_DATA,
    PartitionEntry,
    build_partition_table,
    default_partition_table,
)

# ESP-IDF values the contract does not name yet (gen_esp32part.py).
DATA_SUBTYPE_NVS_KEYS = 0x04
PARTITION_FLAG_ENCRYPTED = 0x01  # flags bit 0
NVS_KEYS_PARTITION_NAME = "nvs_keys"
NVS_KEYS_SIZE = 0x1000
NVS_KEYS_DEFAULT_OFFSET = 0xF000  # the free sector between phy_init and factory
_MD5_DIGEST_AT = 16  # within the EB EB row


class Md5Row(enum.Enum):
    """What follows the entries of a built table."""

    VALID = "valid"  # EB EB row with the MD5 of the entries, as gen_esp32part.py writes it
    CORRUPT = "corrupt"  # EB EB row whose MD5 does not match
    ABSENT = "absent"  # no MD5 row (tables made with --disable-md5sum)


def _entries(entries: Sequence[PartitionEntry] | None) -> list[PartitionEntry]:
    return list(default_partition_table() if entries is None else entries)


def _replace_nvs(entries: list[PartitionEntry], **changes: int) -> list[PartitionEntry]:
    if not any(entry.name == NVS_PARTITION_NAME for entry in entries):
        raise ValueError(f"the table has no partition named {NVS_PARTITION_NAME!r}")
    fields = ("type", "subtype", "offset", "size", "flags")
    return [
        PartitionEntry(entry.name, *(changes.get(name, getattr(entry, name)) for name in fields))
        if entry.name == NVS_PARTITION_NAME
        else entry
        for entry in entries
    ]


def encrypted_nvs(entries: Sequence[PartitionEntry] | None = None) -> list[PartitionEntry]:
    """The table with its ``nvs`` partition flagged encrypted (flags bit 0)."""
    table = _entries(entries)
    flags = [entry.flags for entry in table if entry.name == NVS_PARTITION_NAME]
    return _replace_nvs(table, flags=(flags or [0])[0] | PARTITION_FLAG_ENCRYPTED)


def with_nvs_keys(
    entries: Sequence[PartitionEntry] | None = None,
    *,
    offset: int = NVS_KEYS_DEFAULT_OFFSET,
    size: int = NVS_KEYS_SIZE,
) -> list[PartitionEntry]:
    """The table plus an ``nvs_keys`` partition (data, subtype 4), as NVS encryption needs."""
    keys = PartitionEntry(
        NVS_KEYS_PARTITION_NAME, PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS_KEYS, offset, size
    )
    return [*_entries(entries), keys]


def with_nvs_at(
    offset: int, size: int, entries: Sequence[PartitionEntry] | None = None
) -> list[PartitionEntry]:
    """The table with its ``nvs`` partition moved to ``offset`` and resized to ``size``."""
    return _replace_nvs(_entries(entries), offset=offset, size=size)


def nvs_past_end(
    flash_size: int, entries: Sequence[PartitionEntry] | None = None
) -> list[PartitionEntry]:
    """``nvs`` starting two sectors before the end of a ``flash_size`` chip and 5 sectors long."""
    return with_nvs_at(flash_size - 0x2000, 0x5000, entries)


def without_nvs(entries: Sequence[PartitionEntry] | None = None) -> list[PartitionEntry]:
    """The table without its ``nvs`` entry."""
    return [entry for entry in _entries(entries) if entry.name != NVS_PARTITION_NAME]


def table_image(entries: Sequence[PartitionEntry], *, md5: Md5Row = Md5Row.VALID) -> bytes:
    """The ``0xC00`` bytes written at ``0x8000``: entries, MD5 row as asked, ``0xFF`` padding."""
    image = bytearray(build_partition_table(entries, with_md5=md5 is not Md5Row.ABSENT))
    if md5 is Md5Row.CORRUPT:
        image[len(entries) * ENTRY_SIZE + _MD5_DIGEST_AT] ^= 0xFF
    return bytes(image)
