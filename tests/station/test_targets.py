"""find_nvs_target and regions: what a job writes on a board with or without NVS encryption.

Pure, no board: the tables come from the simulator's variants (``broker_agent.simulator``).
"""

from __future__ import annotations

import pytest

from broker_agent.simulator import MB, encrypted_nvs, with_nvs_keys
from broker_agent.station.targets import (
    ImageMismatch,
    NvsImage,
    NvsTarget,
    Region,
    find_nvs_target,
    regions,
)
from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.partition_table import (
    PartitionEntry,
    PartitionTableError,
    default_partition_table,
)

NVS = PartitionEntry("nvs", 1, 2, 0x9000, 0x5000)
KEYS = PartitionEntry("nvs_keys", 1, 4, 0xF000, 0x1000)


def refusal(entries: list[PartitionEntry], flash_size: int | None = 4 * MB) -> PartitionTableError:
    with pytest.raises(PartitionTableError) as caught:
        find_nvs_target(entries, flash_size=flash_size)
    return caught.value


def test_a_plain_table_targets_nvs_alone() -> None:
    assert NvsTarget(NVS) == find_nvs_target(default_partition_table(), flash_size=4 * MB)


def test_a_table_with_nvs_keys_targets_both_and_is_encrypted() -> None:
    target = find_nvs_target(with_nvs_keys(), flash_size=4 * MB)

    assert (NVS, KEYS, True) == (target.nvs, target.nvs_keys, target.encrypted)


@pytest.mark.parametrize(
    "entries",
    [encrypted_nvs(), encrypted_nvs(with_nvs_keys())],
    ids=["plain-table", "beside-nvs-keys"],
)
def test_nvs_flagged_encrypted_is_unsupported_with_the_fix(entries: list[PartitionEntry]) -> None:
    error = refusal(entries)

    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == error.code
    assert "not how ESP-IDF uses it" in error.message
    assert "put it on nvs_keys" in error.message


def test_two_nvs_keys_partitions_are_unsupported() -> None:
    second = PartitionEntry("nvs_keys2", 1, 4, 0x3F0000, 0x1000)

    error = refusal([*with_nvs_keys(), second])

    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == error.code
    assert "'nvs_keys', 'nvs_keys2'" in error.message


def test_an_nvs_keys_partition_under_4_kib_is_unsupported() -> None:
    error = refusal(with_nvs_keys(size=0x800))

    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == error.code
    assert "smaller than the 0x1000 bytes" in error.message


def test_an_nvs_keys_partition_off_a_sector_boundary_is_unsupported() -> None:
    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == refusal(with_nvs_keys(offset=0xF800)).code


def test_an_nvs_keys_partition_overlapping_nvs_is_unsupported() -> None:
    error = refusal(with_nvs_keys(offset=0xD000))

    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == error.code
    assert "overlaps 'nvs'" in error.message


def test_an_nvs_keys_partition_past_the_end_of_flash_is_out_of_range() -> None:
    assert FlashErrorCode.NVS_PARTITION_OUT_OF_RANGE == refusal(with_nvs_keys(offset=MB), MB).code


def test_a_table_with_only_nvs_keys_is_missing_nvs() -> None:
    assert FlashErrorCode.NVS_PARTITION_MISSING == refusal([KEYS]).code


def test_an_nvs_entry_with_the_nvs_keys_subtype_is_a_subtype_mismatch() -> None:
    entries = [PartitionEntry("nvs", 1, 4, 0x9000, 0x5000)]

    assert FlashErrorCode.NVS_SUBTYPE_MISMATCH == refusal(entries).code


def test_an_encrypted_image_is_written_as_nvs_then_its_keys() -> None:
    image = NvsImage(b"\x01" * NVS.size, b"\x02" * 0x1000)

    written = regions(NvsTarget(NVS, KEYS), image)

    assert [Region("nvs", 0x9000, image.data), Region("nvs_keys", 0xF000, b"\x02" * 0x1000)] == (
        written
    )


def test_an_encrypted_target_without_a_keys_image_is_a_mismatch() -> None:
    with pytest.raises(ImageMismatch, match="nvs_keys image is none"):
        regions(NvsTarget(NVS, KEYS), NvsImage(b"\x01" * NVS.size))


def test_a_keys_image_for_a_plain_target_is_a_mismatch() -> None:
    with pytest.raises(ImageMismatch, match="without an nvs_keys partition"):
        regions(NvsTarget(NVS), NvsImage(b"\x01" * NVS.size, b"\x02" * 0x1000))


def test_an_image_shows_no_bytes_in_its_repr() -> None:
    key = bytes(range(64)) + b"\xff" * (0x1000 - 64)

    shown = repr(NvsImage(b"SECRET" * 10, key)) + repr(Region("nvs_keys", 0xF000, key))

    assert "SECRET" not in shown
    assert "\\x00\\x01" not in shown and key[:16].hex() not in shown
