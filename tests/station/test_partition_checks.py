"""find_nvs_partition names the real problem of a table (contract 6.5), pure, no board.

It is the check for a plain table: a station job asks ``targets.find_nvs_target``, which
serves a table with ``nvs_keys`` itself (test_targets.py) and passes the rest to it.
"""

from __future__ import annotations

import pytest

from broker_agent.simulator import MB, encrypted_nvs, nvs_past_end, with_nvs_keys
from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.partition_table import (
    PartitionTableError,
    build_partition_table,
    default_partition_table,
    find_nvs_partition,
    parse_partition_table,
)


def code_of(entries: object, flash_size: int | None = None) -> FlashErrorCode:
    with pytest.raises(PartitionTableError) as caught:
        find_nvs_partition(entries, flash_size=flash_size)  # type: ignore[arg-type]
    return caught.value.code


def test_an_erased_board_is_unreadable_and_asks_for_the_firmware() -> None:
    entries = parse_partition_table(b"\xff" * 0xC00)

    with pytest.raises(PartitionTableError, match="flash the firmware") as caught:
        find_nvs_partition(entries)

    assert FlashErrorCode.PARTITION_TABLE_UNREADABLE == caught.value.code


def test_a_table_with_no_entry_is_unreadable() -> None:
    entries = parse_partition_table(build_partition_table([]))

    assert FlashErrorCode.PARTITION_TABLE_UNREADABLE == code_of(entries)


def test_nvs_past_the_end_of_flash_is_out_of_range() -> None:
    assert FlashErrorCode.NVS_PARTITION_OUT_OF_RANGE == code_of(nvs_past_end(MB), MB)


def test_nvs_ending_exactly_at_the_end_of_flash_fits() -> None:
    entries = nvs_past_end(MB)

    assert entries[0] == find_nvs_partition(entries, flash_size=MB + 0x3000)


def test_an_unknown_flash_size_skips_the_range_check() -> None:
    assert "nvs" == find_nvs_partition(nvs_past_end(MB)).name


def test_nvs_flagged_encrypted_is_unsupported() -> None:
    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == code_of(encrypted_nvs(), 4 * MB)


def test_an_nvs_keys_partition_is_unsupported_with_a_hint() -> None:
    with pytest.raises(PartitionTableError, match="without NVS encryption") as caught:
        find_nvs_partition(with_nvs_keys(), flash_size=4 * MB)

    assert FlashErrorCode.NVS_ENCRYPTION_UNSUPPORTED == caught.value.code


def test_a_missing_nvs_is_still_missing_beside_an_nvs_keys_partition() -> None:
    entries = [e for e in with_nvs_keys() if e.name != "nvs"]

    assert FlashErrorCode.NVS_PARTITION_MISSING == code_of(entries)


def test_the_default_table_fits_a_1_mb_chip() -> None:
    assert "nvs" == find_nvs_partition(default_partition_table(), flash_size=MB).name
