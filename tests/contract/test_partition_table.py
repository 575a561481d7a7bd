"""The binary partition table: build/parse round trips and every way a table is refused."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.partition_table import (
    DATA_SUBTYPE_NVS,
    DATA_SUBTYPE_PHY,
    PARTITION_TABLE_MAX_SIZE,
    PARTITION_TYPE_DATA,
    PartitionEntry,
    PartitionTableError,
    build_partition_table,
    default_partition_table,
    find_nvs_partition,
    parse_partition_table,
)

pytestmark = pytest.mark.timeout(60)

U32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)
BYTE = st.integers(min_value=0, max_value=0xFF)
NAMES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16)
ENTRIES = st.builds(PartitionEntry, NAMES, BYTE, BYTE, U32, U32, U32)


@given(entries=st.lists(ENTRIES, max_size=40), with_md5=st.booleans())
def test_parse_inverts_build(entries: list[PartitionEntry], with_md5: bool) -> None:
    table = build_partition_table(entries, with_md5=with_md5)

    assert len(table) == PARTITION_TABLE_MAX_SIZE
    assert entries == parse_partition_table(table)


@given(data=st.binary(max_size=PARTITION_TABLE_MAX_SIZE + 64))
def test_garbage_is_refused_as_unreadable_or_parsed(data: bytes) -> None:
    try:
        entries = parse_partition_table(data)
    except PartitionTableError as exc:
        assert exc.code == FlashErrorCode.PARTITION_TABLE_UNREADABLE
    else:
        assert isinstance(entries, list)


def test_default_table_has_the_usual_single_app_layout() -> None:
    table = build_partition_table(default_partition_table())

    nvs = find_nvs_partition(parse_partition_table(table))

    assert PartitionEntry("nvs", PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS, 0x9000, 0x5000) == nvs
    assert table.endswith(b"\xff" * 32)


def test_known_binary_layout() -> None:
    entry = PartitionEntry("nvs", 1, 2, 0x9000, 0x5000)

    table = build_partition_table([entry])

    expected_row = b"\xaa\x50\x01\x02" + struct.pack("<LL", 0x9000, 0x5000)
    expected_row += b"nvs".ljust(16, b"\x00") + b"\x00" * 4
    assert expected_row == table[:32]
    assert b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(expected_row).digest() == table[32:64]
    assert table[64:] == b"\xff" * (PARTITION_TABLE_MAX_SIZE - 64)


def test_md5_mismatch_is_unreadable() -> None:
    table = bytearray(build_partition_table(default_partition_table()))
    table[8] ^= 0x01  # change the nvs offset, keep the old MD5

    with pytest.raises(PartitionTableError) as caught:
        parse_partition_table(bytes(table))

    assert caught.value.code == FlashErrorCode.PARTITION_TABLE_UNREADABLE
    assert "MD5 mismatch at entry 3" in str(caught.value)


def test_bad_magic_names_the_entry() -> None:
    table = bytearray(build_partition_table(default_partition_table(), with_md5=False))
    table[32:34] = b"\x12\x34"

    with pytest.raises(PartitionTableError) as caught:
        parse_partition_table(bytes(table))

    assert caught.value.code == FlashErrorCode.PARTITION_TABLE_UNREADABLE
    assert "entry 1" in caught.value.message
    assert "1234" in caught.value.message


def test_table_without_end_marker_is_unreadable() -> None:
    row = build_partition_table([PartitionEntry("x", 1, 2, 0, 0x1000)], with_md5=False)[:32]

    with pytest.raises(PartitionTableError, match="no end marker"):
        parse_partition_table(row * (PARTITION_TABLE_MAX_SIZE // 32))


@pytest.mark.parametrize("data", [b"", b"\xaa\x50", b"\x00" * 32])
def test_truncated_or_zeroed_tables_are_unreadable(data: bytes) -> None:
    with pytest.raises(PartitionTableError) as caught:
        parse_partition_table(data)

    assert caught.value.code == FlashErrorCode.PARTITION_TABLE_UNREADABLE


def test_non_ascii_name_is_unreadable() -> None:
    table = bytearray(build_partition_table(default_partition_table(), with_md5=False))
    table[12] = 0xC3  # first byte of the first name

    with pytest.raises(PartitionTableError, match="entry 0: name is not ASCII"):
        parse_partition_table(bytes(table))


def test_bytes_after_end_marker_are_ignored() -> None:
    table = build_partition_table(default_partition_table())[:160] + b"\x00" * 32

    assert default_partition_table() == parse_partition_table(table)


def test_missing_nvs_partition_lists_what_is_there() -> None:
    entries = [e for e in default_partition_table() if e.name != "nvs"]

    with pytest.raises(PartitionTableError) as caught:
        find_nvs_partition(entries)

    assert caught.value.code == FlashErrorCode.NVS_PARTITION_MISSING
    assert "'phy_init', 'factory'" in caught.value.message


def test_nvs_with_wrong_subtype_is_refused() -> None:
    entries = [PartitionEntry("nvs", PARTITION_TYPE_DATA, DATA_SUBTYPE_PHY, 0x9000, 0x5000)]

    with pytest.raises(PartitionTableError) as caught:
        find_nvs_partition(entries)

    assert caught.value.code == FlashErrorCode.NVS_SUBTYPE_MISMATCH
    assert "subtype 0x01" in caught.value.message


def test_nvs_with_app_type_is_refused() -> None:
    with pytest.raises(PartitionTableError) as caught:
        find_nvs_partition([PartitionEntry("nvs", 0, DATA_SUBTYPE_NVS, 0x9000, 0x5000)])

    assert caught.value.code == FlashErrorCode.NVS_SUBTYPE_MISMATCH


def test_find_by_another_name() -> None:
    entry = PartitionEntry("nvs_keys", PARTITION_TYPE_DATA, DATA_SUBTYPE_NVS, 0x20000, 0x3000)

    assert entry == find_nvs_partition([*default_partition_table(), entry], name="nvs_keys")


def test_too_many_entries_do_not_fit() -> None:
    entries = [PartitionEntry(f"p{i}", 1, 2, i * 0x1000, 0x1000) for i in range(95)]

    with pytest.raises(ValueError, match="no room for the end marker"):
        build_partition_table(entries)


@pytest.mark.parametrize("name", ["x" * 17, "nvs\x00", "nvs\n", "nvß"])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="partition name"):
        PartitionEntry(name, 1, 2, 0, 0)


def test_out_of_range_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="subtype"):
        PartitionEntry("nvs", 1, 0x100, 0, 0)
