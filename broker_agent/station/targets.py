"""What a flash job writes, and where: the ``nvs`` image, plus the keys when NVS encryption is on.

Pure code, no I/O. ``find_nvs_target`` reads a parsed partition table:

- a plain table (no ``nvs_keys`` partition): the ``nvs`` partition, checked by
  ``find_nvs_partition`` exactly as before (contract sections 4 and 6.5);
- a table with one ``nvs_keys`` partition (type data, subtype 4) and an ``nvs`` partition that
  is *not* flagged encrypted: both (docs/contract.md, "NVS encryption"). The job then asks the
  agent for an encrypted image, writes the 4 KiB keys image at the start of ``nvs_keys`` and
  the encrypted image into ``nvs``, and checks both by MD5.

Refused, nothing written, each ``nvs_encryption_unsupported`` (the table is readable; it is
the encryption layout the station cannot serve) with what to change in ``partitions.csv``:
``nvs`` flagged ``encrypted`` (flash encryption would encrypt the already XTS-encrypted
entries a second time, and ESP-IDF's NVS cannot read that back: the ``encrypted`` flag belongs
on ``nvs_keys``), two ``nvs_keys`` partitions (which one the firmware reads is its choice, not
the station's), an ``nvs_keys`` smaller than 4 KiB or not on a 4 KiB boundary (the image is one
flash sector; writing it elsewhere would erase a neighbour's bytes), or one that overlaps
``nvs``. An ``nvs_keys`` past the end of the chip's flash is ``nvs_partition_out_of_range``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.partition_table import (
    DATA_SUBTYPE_NVS,
    DATA_SUBTYPE_NVS_KEYS,
    NVS_PARTITION_NAME,
    PARTITION_FLAG_ENCRYPTED,
    PARTITION_TYPE_DATA,
    PartitionEntry,
    PartitionTableError,
    find_nvs_partition,
)

NVS_KEYS_IMAGE_SIZE = 0x1000  # provisioning.nvs_keys.NVS_KEYS_PARTITION_SIZE: one flash sector
SECTOR_SIZE = 0x1000


@dataclass(frozen=True)
class NvsTarget:
    """Where a job writes: ``nvs``, and ``nvs_keys`` when the board uses NVS encryption."""

    nvs: PartitionEntry
    nvs_keys: PartitionEntry | None = None

    @property
    def encrypted(self) -> bool:
        """The board needs an encrypted image and its keys."""
        return self.nvs_keys is not None


@dataclass(frozen=True)
class NvsImage:
    """What the agent (or ``--offline``) gave for a target: the ``nvs`` image and, for an
    encrypted one, the 4 KiB ``nvs_keys`` image. Both hold secrets: ``repr`` shows neither."""

    data: bytes = field(repr=False)
    nvs_keys: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Region:
    """One write of a job: ``data`` at ``offset`` of flash, checked by its MD5."""

    name: str
    offset: int
    data: bytes = field(repr=False)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()


class ImageMismatch(ValueError):
    """The image does not fit its target (``blob_size_mismatch``); the message names sizes only."""


def _is_nvs_keys(entry: PartitionEntry) -> bool:
    return (entry.type, entry.subtype) == (PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS_KEYS)


def _unsupported(message: str) -> PartitionTableError:
    return PartitionTableError(
        FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED, f"{message}: nothing written"
    )


def find_nvs_target(
    entries: Sequence[PartitionEntry], *, flash_size: int | None = None
) -> NvsTarget:
    """The partitions a job writes (module docstring). Raises ``PartitionTableError``."""
    nvs = next((entry for entry in entries if entry.name == NVS_PARTITION_NAME), None)
    if (
        nvs is not None
        and (nvs.type, nvs.subtype) == (PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS)
        and nvs.flags & PARTITION_FLAG_ENCRYPTED
    ):
        raise _unsupported(
            f"partition {nvs.name!r} is flagged encrypted; flash-encrypting NVS is not how "
            "ESP-IDF uses it (NVS encrypts its entries itself, with the keys in an nvs_keys "
            "partition). Drop the encrypted flag from nvs and put it on nvs_keys in "
            "partitions.csv"
        )
    # an entry named nvs stays, so a wrong subtype is still nvs_subtype_mismatch
    keys = [e for e in entries if _is_nvs_keys(e) and e.name != NVS_PARTITION_NAME]
    # without the keys partitions, the rest is checked as any plain table is
    rest = [e for e in entries if e not in keys] or entries
    nvs = find_nvs_partition(rest, flash_size=flash_size)
    if not keys:
        return NvsTarget(nvs)
    if len(keys) > 1:
        names = ", ".join(repr(entry.name) for entry in keys)
        raise _unsupported(
            f"the table has {len(keys)} nvs_keys partitions ({names}); keep one in partitions.csv"
        )
    [nvs_keys] = keys
    _check_keys_partition(nvs_keys, nvs, flash_size)
    return NvsTarget(nvs, nvs_keys)


def _check_keys_partition(
    keys: PartitionEntry, nvs: PartitionEntry, flash_size: int | None
) -> None:
    where = f"nvs_keys partition {keys.name!r} ({keys.offset:#x}, {keys.size:#x} bytes)"
    if keys.size < NVS_KEYS_IMAGE_SIZE:
        raise _unsupported(f"{where} is smaller than the {NVS_KEYS_IMAGE_SIZE:#x} bytes it needs")
    if keys.offset % SECTOR_SIZE:
        raise _unsupported(f"{where} does not start on a {SECTOR_SIZE:#x}-byte flash sector")
    if keys.offset < nvs.offset + nvs.size and nvs.offset < keys.offset + keys.size:
        raise _unsupported(f"{where} overlaps {nvs.name!r}; fix partitions.csv")
    if flash_size is not None and keys.offset + keys.size > flash_size:
        raise PartitionTableError(
            FlashErrorCode.NVS_PARTITION_OUT_OF_RANGE,
            f"{where} does not fit the chip's {flash_size:#x}-byte flash: nothing written; fix "
            "partitions.csv or the flash size the firmware was built for",
        )


def regions(target: NvsTarget, image: NvsImage) -> list[Region]:
    """The writes for ``image`` on ``target``, ``nvs`` first. Raises ``ImageMismatch``."""
    if len(image.data) != target.nvs.size:
        raise ImageMismatch(
            f"the NVS image is {len(image.data)} bytes, the {target.nvs.name!r} partition "
            f"is {target.nvs.size} bytes"
        )
    found = [Region(target.nvs.name, target.nvs.offset, image.data)]
    if target.nvs_keys is None:
        if image.nvs_keys is not None:
            raise ImageMismatch("an nvs_keys image came for a table without an nvs_keys partition")
        return found
    if image.nvs_keys is None or len(image.nvs_keys) != NVS_KEYS_IMAGE_SIZE:
        size = "none" if image.nvs_keys is None else f"{len(image.nvs_keys)} bytes"
        raise ImageMismatch(
            f"the nvs_keys image is {size}, the {target.nvs_keys.name!r} partition needs "
            f"{NVS_KEYS_IMAGE_SIZE} bytes"
        )
    return [*found, Region(target.nvs_keys.name, target.nvs_keys.offset, image.nvs_keys)]
