"""Partition table variants, read through the real esptool and parsed as the station parses them."""

from __future__ import annotations

import pytest

from broker_agent.simulator import (
    MB,
    BoardConfig,
    BoardServer,
    Md5Row,
    SimulatedBoard,
    encrypted_nvs,
    nvs_past_end,
    table_image,
    with_nvs_at,
    with_nvs_keys,
    without_nvs,
)
from broker_agent.simulator.tables import DATA_SUBTYPE_NVS_KEYS, PARTITION_FLAG_ENCRYPTED
from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.partition_table import (
    NVS_PARTITION_NAME,
    PARTITION_TYPE_DATA,
    PartitionEntry,
    PartitionTableError,
    default_partition_table,
    find_nvs_partition,
    parse_partition_table,
)
from tests.simulator.sessions import read_table

pytestmark = pytest.mark.timeout(60)


def table_read_from(config: BoardConfig) -> list[PartitionEntry]:
    with BoardServer(SimulatedBoard(config)) as server:
        return parse_partition_table(read_table(server.url))


def nvs_of(entries: list[PartitionEntry]) -> PartitionEntry:
    return next(entry for entry in entries if entry.name == NVS_PARTITION_NAME)


def test_nvs_keys_table_parses_as_built() -> None:
    built = with_nvs_keys()

    parsed = table_read_from(BoardConfig(partitions=built))

    assert built == parsed
    keys = parsed[-1]
    assert ("nvs_keys", PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS_KEYS, 0x1000) == (
        keys.name,
        keys.type,
        keys.subtype,
        keys.size,
    )


def test_encrypted_nvs_table_parses_with_flags_bit_0() -> None:
    built = encrypted_nvs()

    parsed = table_read_from(BoardConfig(partitions=built))

    assert built == parsed
    assert PARTITION_FLAG_ENCRYPTED == nvs_of(parsed).flags & PARTITION_FLAG_ENCRYPTED


def test_nvs_past_the_end_of_a_1mb_flash_parses_as_built() -> None:
    built = nvs_past_end(MB)

    parsed = table_read_from(BoardConfig(flash_size=MB, partitions=built))

    assert built == parsed
    nvs = find_nvs_partition(parsed)
    assert nvs.offset < MB < nvs.offset + nvs.size


def test_nvs_moved_wholly_past_the_end_parses_as_built() -> None:
    built = with_nvs_at(2 * MB, 0x5000)

    assert built == table_read_from(BoardConfig(flash_size=MB, partitions=built))


def test_table_without_nvs_is_nvs_partition_missing() -> None:
    parsed = table_read_from(BoardConfig(partitions=without_nvs()))

    with pytest.raises(PartitionTableError) as caught:
        find_nvs_partition(parsed)
    assert FlashErrorCode.NVS_PARTITION_MISSING == caught.value.code


def test_table_image_with_corrupt_md5_row_is_unreadable() -> None:
    image = table_image(with_nvs_keys(), md5=Md5Row.CORRUPT)

    with pytest.raises(PartitionTableError) as caught:
        table_read_from(BoardConfig(table_image=image))
    assert FlashErrorCode.PARTITION_TABLE_UNREADABLE == caught.value.code


def test_table_image_without_md5_row_parses_as_built() -> None:
    image = table_image(encrypted_nvs(), md5=Md5Row.ABSENT)

    assert encrypted_nvs() == table_read_from(BoardConfig(table_image=image))


def test_raw_table_image_is_written_as_given() -> None:
    image = b"\xaa\x50" + b"\x00" * 30  # one entry, no end marker: unreadable

    board = SimulatedBoard(BoardConfig(table_image=image))

    assert image + b"\xff" * 32 == board.flash[0x8000 : 0x8000 + 64]


def test_variants_leave_the_other_entries_of_the_default_table() -> None:
    others = [entry for entry in default_partition_table() if entry.name != NVS_PARTITION_NAME]

    for variant in (encrypted_nvs(), nvs_past_end(MB), without_nvs(), with_nvs_keys()[:-1]):
        assert others == [entry for entry in variant if entry.name != NVS_PARTITION_NAME]


def test_variants_need_an_nvs_entry_to_change() -> None:
    with pytest.raises(ValueError, match="no partition named 'nvs'"):
        encrypted_nvs(without_nvs())
