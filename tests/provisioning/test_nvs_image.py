"""The provisioning blob: built in memory, parsed back by our own parser, and compared with the
NVS generator's CSV command path byte for byte."""

from __future__ import annotations

import contextlib
import csv
import io
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace

import pytest
from esp_idf_nvs_partition_gen import nvs_partition_gen as nvs_gen
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker_agent.provisioning.nvs_image import (
    NvsImageError,
    build_nvs_image,
    required_partition_size,
)
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import (
    MAX_PARTITION_SIZE,
    MIN_PARTITION_SIZE,
    NVS_NAMESPACE,
    NVS_PAGE_SIZE,
    NVS_STRING_MAX_BYTES,
    PROV_KEYS,
    SECRET_KEYS,
    partition_size_error,
)
from tests.support.nvs_parser import (
    PAGE_SIZE,
    STATE_ACTIVE,
    TYPE_STR,
    NvsParseError,
    crc32,
    parse_nvs,
)

pytestmark = pytest.mark.timeout(120)

SIZE_MESSAGE = "partition_size must be a multiple of 4096 and >= 12288"
REQUIRED = {key.name for key in PROV_KEYS if key.required}
SECRET = "S3cr3t-do-not-leak"

FULL_VALUES = {
    "device_key": "kitchen-01",
    "client_id": "iotdevice-kitchen-01",
    "client_secret": "s3cr3t, with \"quotes\" and 'apostrophes'",
    "token_url": "https://auth.example.com/oauth/token?a=1&b=2",
    "base_url": "https://api.example.com/v1/",
    "mqtt_url": "mqtts://broker.example.com:8883",
    "wifi_ssid": "Küche 🍳 5GHz",
    "wifi_password": "pässwörd€",
}
REQUIRED_VALUES = {key: value for key, value in FULL_VALUES.items() if key in REQUIRED}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def csv_path_image(tmp_path: Path, rows: list[tuple[str, str, str, str]], size: int) -> bytes:
    """Make an image the way `esp-idf-nvs-partition-gen generate in.csv out.bin SIZE` does."""
    source = tmp_path / "nvs.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "type", "encoding", "value"])
        writer.writerows(rows)
    # The CLI's own argument object (see _build_cli.generate_cmd); generate() prints a banner.
    args = SimpleNamespace(
        input=[str(source)], output="nvs.bin", size=hex(size), version=2, outdir=str(tmp_path)
    )
    with contextlib.redirect_stdout(io.StringIO()):
        nvs_gen.generate(args)
    return (tmp_path / "nvs.bin").read_bytes()


def prov_rows(values: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    rows = [(NVS_NAMESPACE, "namespace", "", "")]
    rows += [
        (key.name, "data", "string", values[key.name]) for key in PROV_KEYS if key.name in values
    ]
    return rows


def library_image(values: Mapping[str, str], size: int) -> bytes:
    """The library's in-memory writer driven directly, without our checks, in contract order."""
    order = {key.name: index for index, key in enumerate(PROV_KEYS)}
    output = io.BytesIO()
    nvs = nvs_gen.nvs_open(output, size - NVS_PAGE_SIZE, nvs_gen.Page.VERSION2)
    nvs_gen.write_entry(nvs, NVS_NAMESPACE, "namespace", "", "")
    for key in sorted(values, key=lambda name: order.get(name, len(order))):
        nvs_gen.write_entry(nvs, key, "data", "string", values[key])
    nvs_gen.nvs_close(nvs)
    return output.getvalue()


# --- building and parsing back ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0x3000, 0x5000, 0x6000, 0x10000, MAX_PARTITION_SIZE])
def test_image_parses_back_to_the_values(size: int) -> None:
    image = build_nvs_image(FULL_VALUES, size)

    parsed = parse_nvs(image)
    assert size == len(image)
    assert size // PAGE_SIZE == len(parsed.pages)
    assert parsed.namespaces == {NVS_NAMESPACE: 1}
    assert parsed.strings(NVS_NAMESPACE) == FULL_VALUES
    assert {(NVS_NAMESPACE, k): v for k, v in FULL_VALUES.items()} == parsed.entries
    assert [key.name for key in PROV_KEYS] == [item.key for item in parsed.items]
    assert {TYPE_STR} == {item.type for item in parsed.items}
    # The namespace entry comes first: page 0, entry 0; the keys follow it.
    assert (parsed.items[0].page, parsed.items[0].entry) == (0, 1)
    assert parsed.pages[-1].state == "empty"


def test_optional_keys_are_absent_when_unset() -> None:
    parsed = parse_nvs(build_nvs_image(REQUIRED_VALUES, 0x5000))

    assert parsed.strings(NVS_NAMESPACE) == REQUIRED_VALUES
    assert [key.name for key in PROV_KEYS if key.required] == [i.key for i in parsed.items]


def test_empty_optional_value_is_written_as_empty_string() -> None:
    values = {**REQUIRED_VALUES, "wifi_password": ""}

    assert values == parse_nvs(build_nvs_image(values, 0x3000)).strings(NVS_NAMESPACE)


def test_keys_are_written_in_contract_order_whatever_the_mapping_order() -> None:
    reversed_values = dict(reversed(list(FULL_VALUES.items())))

    assert build_nvs_image(FULL_VALUES, 0x5000) == build_nvs_image(reversed_values, 0x5000)


def test_longest_values_spread_over_pages() -> None:
    values = {key.name: chr(ord("a") + i) * NVS_STRING_MAX_BYTES for i, key in enumerate(PROV_KEYS)}
    size = required_partition_size(values)

    parsed = parse_nvs(build_nvs_image(values, size))

    assert values == parsed.strings(NVS_NAMESPACE)
    assert (len(PROV_KEYS) + 2) * PAGE_SIZE == size  # one page each + the namespace + reserved
    assert [page.state for page in parsed.pages] == ["full"] * 8 + ["active", "empty"]


def test_building_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    build_nvs_image(FULL_VALUES, 0x5000)

    assert tuple(capsys.readouterr()) == ("", "")


def test_string_limit_is_the_library_limit() -> None:
    ok = {"client_secret": "x" * NVS_STRING_MAX_BYTES}
    too_long = {"client_secret": "x" * (NVS_STRING_MAX_BYTES + 1)}

    assert ok == parse_nvs(library_image(ok, 0x4000)).strings(NVS_NAMESPACE)
    with pytest.raises(nvs_gen.PageFullError):
        library_image(too_long, 0x10000)


def test_contract_key_table() -> None:
    assert [(key.name, key.required) for key in PROV_KEYS] == [
        ("device_key", True),
        ("client_id", True),
        ("client_secret", True),
        ("token_url", True),
        ("base_url", True),
        ("mqtt_url", False),
        ("wifi_ssid", False),
        ("wifi_password", False),
    ]
    assert {key.name for key in PROV_KEYS} >= SECRET_KEYS


# --- the same bytes as the library's CSV path --------------------------------------------------


@pytest.mark.parametrize("size", [0x3000, 0x5000, 0x20000])
@pytest.mark.parametrize("values", [FULL_VALUES, REQUIRED_VALUES], ids=["all", "required"])
def test_in_memory_image_is_byte_identical_to_csv_path(
    tmp_path: Path, values: dict[str, str], size: int
) -> None:
    expected = csv_path_image(tmp_path, prov_rows(values), size)

    actual = build_nvs_image(values, size)

    assert expected == actual
    assert values == parse_nvs(expected).strings(NVS_NAMESPACE)


def test_long_values_are_byte_identical_to_csv_path(tmp_path: Path) -> None:
    values = {**FULL_VALUES, "client_secret": "€" * 1322, "token_url": "t" * 3000}
    size = required_partition_size(values)

    assert csv_path_image(tmp_path, prov_rows(values), size) == build_nvs_image(values, size)


def test_parser_reads_every_type_the_csv_path_writes(tmp_path: Path) -> None:
    big_blob = bytes(range(256)) * 20  # 5120 bytes: more than a page, so several chunks
    integers = {
        "u8": 255,
        "i8": -128,
        "u16": 65535,
        "i16": -32768,
        "u32": 2**32 - 1,
        "i32": -(2**31),
        "u64": 2**64 - 1,
        "i64": -(2**63),
    }
    rows = [("prov", "namespace", "", "")]
    rows += [(f"n_{enc}", "data", enc, str(value)) for enc, value in integers.items()]
    rows += [
        ("text", "data", "string", "hé,llo"),
        ("big", "data", "hex2bin", big_blob.hex()),
        ("small", "data", "base64", "AAEC/w=="),
        ("other", "namespace", "", ""),
        ("text", "data", "string", "other namespace"),
    ]

    parsed = parse_nvs(csv_path_image(tmp_path, rows, 0x8000))

    expected: dict[tuple[str, str], str | bytes | int] = {
        ("prov", f"n_{enc}"): value for enc, value in integers.items()
    }
    expected |= {
        ("prov", "text"): "hé,llo",
        ("prov", "big"): big_blob,
        ("prov", "small"): b"\x00\x01\x02\xff",
        ("other", "text"): "other namespace",
    }
    assert parsed.namespaces == {"prov": 1, "other": 2}
    assert expected == parsed.entries
    assert parsed.strings("other") == {"text": "other namespace"}


# --- the parser rejects broken images ------------------------------------------------------------


def flip(offset: int) -> Callable[[bytearray], None]:
    def mutate(image: bytearray) -> None:
        image[offset] ^= 0x01

    return mutate


def set_byte(offset: int, value: int) -> Callable[[bytearray], None]:
    def mutate(image: bytearray) -> None:
        image[offset] = value

    return mutate


def set_u32(offset: int, value: int) -> Callable[[bytearray], None]:
    def mutate(image: bytearray) -> None:
        struct.pack_into("<I", image, offset, value)

    return mutate


ENTRY = 64  # first entry's offset in a page; entry 1 is device_key's header, entry 2 its data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (flip(4), r"^page 0: header CRC mismatch"),
        (flip(29), r"^page 0: header CRC mismatch"),
        (flip(ENTRY + 32 + 9), r"^page 0 entry 1: entry CRC mismatch"),
        (flip(ENTRY + 32 + 24), r"^page 0 entry 1: entry CRC mismatch"),
        (flip(ENTRY + 64), r"^page 0 entry 1 \(key 'device_key'\): data CRC mismatch"),
        (set_u32(0, 0xFFFFFFF0), r"^page 0: invalid page state 0xFFFFFFF0"),
        (set_u32(0, 0x12345678), r"^page 0: invalid page state 0x12345678"),
        (set_byte(32, 0b10101001), r"^page 0 entry 0: invalid entry state 0b01"),
        (flip(4 * PAGE_SIZE + 100), r"^page 4: Empty page has data at offset 100"),
        (flip(ENTRY + 125 * 32), r"^page 0 entry 125: entry marked empty holds data"),
    ],
)
def test_parser_rejects_corruption(mutate: Callable[[bytearray], None], message: str) -> None:
    image = bytearray(build_nvs_image(FULL_VALUES, 0x5000))
    parse_nvs(bytes(image))
    mutate(image)

    with pytest.raises(NvsParseError, match=message):
        parse_nvs(bytes(image))


def test_parser_rejects_string_without_nul() -> None:
    image = bytearray(build_nvs_image(REQUIRED_VALUES, 0x3000))
    data_at = ENTRY + 64  # device_key "kitchen-01\0" in entry 2
    image[data_at + 10] = ord("!")
    header = ENTRY + 32
    struct.pack_into("<I", image, header + 28, crc32(bytes(image[data_at : data_at + 11])))
    entry = bytes(image[header : header + 32])
    struct.pack_into("<I", image, header + 4, crc32(entry[0:4] + entry[8:32]))

    with pytest.raises(
        NvsParseError, match=r"\(key 'device_key'\): string data does not end in NUL"
    ):
        parse_nvs(bytes(image))


def test_parser_rejects_two_active_pages() -> None:
    values = {**REQUIRED_VALUES, "client_secret": "x" * NVS_STRING_MAX_BYTES}
    image = bytearray(build_nvs_image(values, 0x5000))
    assert parse_nvs(bytes(image)).pages[0].state == "full"
    struct.pack_into("<I", image, 0, STATE_ACTIVE)  # the state is outside the header CRC

    with pytest.raises(NvsParseError, match=r"^pages \[0, 2\] are all Active"):
        parse_nvs(bytes(image))


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda image: image[:-1], r"^image size 20479 is not a multiple of 4096"),
        (lambda image: image[: 2 * PAGE_SIZE], r"^image has 2 pages"),
    ],
)
def test_parser_rejects_bad_image_size(cut: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(NvsParseError, match=message):
        parse_nvs(cut(build_nvs_image(FULL_VALUES, 0x5000)))


def test_parser_rejects_duplicate_key() -> None:
    output = io.BytesIO()
    nvs = nvs_gen.nvs_open(output, 0x2000, nvs_gen.Page.VERSION2)
    nvs_gen.write_entry(nvs, "prov", "namespace", "", "")
    nvs_gen.write_entry(nvs, "client_id", "data", "string", "a")
    nvs_gen.write_entry(nvs, "client_id", "data", "string", "b")
    nvs_gen.nvs_close(nvs)

    with pytest.raises(NvsParseError, match=r"^page 0 entry 3 \(key 'client_id'\): duplicate key"):
        parse_nvs(output.getvalue())


def test_parser_rejects_undefined_namespace() -> None:
    output = io.BytesIO()
    nvs = nvs_gen.nvs_open(output, 0x2000, nvs_gen.Page.VERSION2)
    nvs_gen.write_entry(nvs, "prov", "namespace", "", "")
    nvs_gen.set_namespace_idx_unsafe(nvs, 5)
    nvs_gen.write_entry(nvs, "client_id", "data", "string", "a", namespace_idx=5)
    nvs_gen.nvs_close(nvs)

    with pytest.raises(NvsParseError, match=r"namespace index 5 is not defined"):
        parse_nvs(output.getvalue())


def test_parser_rejects_image_without_empty_page() -> None:
    output = io.BytesIO()
    nvs = nvs_gen.nvs_open(output, 0x3000, nvs_gen.Page.VERSION2, read_only=True)
    nvs_gen.write_entry(nvs, "prov", "namespace", "", "")
    for key in ("a", "b"):  # each fills a page of its own
        nvs_gen.write_entry(nvs, key, "data", "string", key * NVS_STRING_MAX_BYTES)
    nvs_gen.nvs_close(nvs)
    assert len(output.getvalue()) == 0x3000

    with pytest.raises(NvsParseError, match=r"^no Empty page"):
        parse_nvs(output.getvalue())


# --- validation errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (0, SIZE_MESSAGE),
        (-0x3000, SIZE_MESSAGE),
        (0x2000, SIZE_MESSAGE),
        (0x3001, SIZE_MESSAGE),
        (0x4800, SIZE_MESSAGE),
        (0x101000, SIZE_MESSAGE + " and <= 1048576"),
        (0x100001, SIZE_MESSAGE + " and <= 1048576"),
    ],
)
def test_bad_partition_size(size: int, message: str) -> None:
    with pytest.raises(NvsImageError) as caught:
        build_nvs_image(FULL_VALUES, size)

    assert caught.value.code == ProvisionErrorCode.INVALID_PARTITION_SIZE
    assert message == caught.value.message == partition_size_error(size)


@pytest.mark.parametrize("size", [MIN_PARTITION_SIZE, 0x5000, MAX_PARTITION_SIZE])
def test_good_partition_size(size: int) -> None:
    assert partition_size_error(size) is None


def test_partition_too_small_for_entries() -> None:
    values = {**REQUIRED_VALUES, "client_secret": "x" * 3967, "token_url": "y" * 3967}

    with pytest.raises(NvsImageError) as caught:
        build_nvs_image(values, 0x3000)

    assert caught.value.code == ProvisionErrorCode.INVALID_PARTITION_SIZE
    # namespace + 2 short keys | client_secret | token_url | base_url | reserved
    assert "at least 20480 bytes" in caught.value.message
    assert values == parse_nvs(build_nvs_image(values, 0x5000)).strings(NVS_NAMESPACE)


def credentials_error(values: Mapping[str, object]) -> NvsImageError:
    with pytest.raises(NvsImageError) as caught:
        build_nvs_image(values, 0x5000)  # type: ignore[arg-type]
    assert caught.value.code == ProvisionErrorCode.CREDENTIALS_UNAVAILABLE
    assert str(caught.value) == caught.value.message
    return caught.value


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_missing_required_key(missing: str) -> None:
    values = {k: v for k, v in FULL_VALUES.items() if k != missing}

    assert f"{missing}: required key is missing" in credentials_error(values).message


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("client_secret", SECRET * 300, "client_secret: value is 5400 UTF-8 bytes, more than"),
        ("client_secret", "€" * 1323, "client_secret: value is 3969 UTF-8 bytes"),
        ("wifi_password", SECRET + "\x00tail", "wifi_password: value contains a NUL character"),
        ("client_secret", SECRET + "\udc80", "client_secret: value is not encodable as UTF-8"),
        ("client_secret", None, "client_secret: value must be a string, not NoneType"),
        ("client_id", 42, "client_id: value must be a string, not int"),
        ("client_secret", "", "client_secret: required value is empty"),
        ("client_secret_16", SECRET, "key 'client_secret_16' is longer than 15 characters"),
        ("sta.ssid", SECRET, "key 'sta.ssid' is not a provisioning key"),
    ],
)
def test_invalid_value_is_named_but_never_shown(key: str, value: object, problem: str) -> None:
    error = credentials_error({**FULL_VALUES, key: value})

    assert problem in error.message
    assert SECRET not in error.message
    assert SECRET not in repr(error)
    assert error.__cause__ is None


def test_every_problem_is_reported_at_once() -> None:
    values = {k: v for k, v in FULL_VALUES.items() if k != "client_id"}
    values |= {"wifi_password": "a\x00b", "bogus": "x"}

    message = credentials_error(values).message

    for problem in ("client_id: required", "wifi_password: value contains", "'bogus'"):
        assert problem in message


def test_size_is_checked_before_values() -> None:
    with pytest.raises(NvsImageError) as caught:
        build_nvs_image({}, 0x1000)

    assert caught.value.code == ProvisionErrorCode.INVALID_PARTITION_SIZE


# --- properties ----------------------------------------------------------------------------------

no_nul = st.characters(codec="utf-8", exclude_characters="\x00")
good_text = st.one_of(
    st.text(no_nul, min_size=1, max_size=40),
    st.text(no_nul, min_size=1, max_size=900),
    st.integers(3900, NVS_STRING_MAX_BYTES).map(lambda n: "v" * n),
)
bad_text = st.one_of(
    st.none(),  # absent
    st.just(""),
    st.text(max_size=40),  # may hold a NUL
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
    st.integers(NVS_STRING_MAX_BYTES + 1, 4100).map(lambda n: "v" * n),
)
credentials = st.fixed_dictionaries(
    {key.name: good_text for key in PROV_KEYS if key.required},
    optional={key.name: good_text for key in PROV_KEYS if not key.required},
)
# At most one value spoiled, so that about half the examples are usable credentials.
spoiled = st.one_of(st.none(), st.tuples(st.sampled_from([k.name for k in PROV_KEYS]), bad_text))


def is_usable(key: str, value: str) -> bool:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    required = key in REQUIRED
    return (
        b"\x00" not in data and len(data) <= NVS_STRING_MAX_BYTES and (bool(data) or not required)
    )


@SETTINGS
@given(
    values=credentials,
    spoil=spoiled,
    size=st.sampled_from([0x3000, 0x4000, 0x6000, 0xA000]),
)
def test_any_credentials_build_exactly_or_fail_cleanly(
    values: dict[str, str], spoil: tuple[str, str | None] | None, size: int
) -> None:
    if spoil is not None:
        key, bad = spoil
        values.pop(key, None)
        if bad is not None:
            values[key] = bad
    usable = values.keys() >= REQUIRED and all(is_usable(k, v) for k, v in values.items())
    try:
        image = build_nvs_image(values, size)
    except NvsImageError as error:
        event(f"refused: {error.code.value}")
        if error.code is ProvisionErrorCode.CREDENTIALS_UNAVAILABLE:
            assert not usable
        else:
            assert error.code == ProvisionErrorCode.INVALID_PARTITION_SIZE
            assert usable
            # Only refused when the library itself cannot fit the entries either.
            with pytest.raises((nvs_gen.PageFullError, nvs_gen.InsufficientSizeError)):
                library_image(values, size)
        return
    event("built")
    assert usable
    assert values == parse_nvs(image).strings(NVS_NAMESPACE)
    assert size == len(image)


@SETTINGS
@given(
    size=st.one_of(
        st.integers(-2, MAX_PARTITION_SIZE // PAGE_SIZE + 2).map(lambda pages: pages * PAGE_SIZE),
        st.integers(-(2**40), 2**40),
        st.sampled_from([MIN_PARTITION_SIZE - 1, MIN_PARTITION_SIZE + 1, MAX_PARTITION_SIZE + 1]),
    )
)
def test_any_partition_size_gives_that_size_or_the_contract_error(size: int) -> None:
    valid = MIN_PARTITION_SIZE <= size <= MAX_PARTITION_SIZE and size % PAGE_SIZE == 0
    try:
        image = build_nvs_image(FULL_VALUES, size)
    except NvsImageError as error:
        event("refused")
        assert not valid
        assert error.code == ProvisionErrorCode.INVALID_PARTITION_SIZE
        assert partition_size_error(size) == error.message
        return
    event("built")
    assert valid
    assert partition_size_error(size) is None
    parsed = parse_nvs(image)
    assert size == len(image)
    assert parsed.strings(NVS_NAMESPACE) == FULL_VALUES


@SETTINGS
@given(lengths=st.lists(st.integers(0, NVS_STRING_MAX_BYTES), min_size=5, max_size=8))
def test_required_size_is_the_smallest_that_fits(lengths: list[int]) -> None:
    values = {key.name: "x" * max(n, 1) for key, n in zip(PROV_KEYS, lengths, strict=False)}
    needed = required_partition_size(values)

    assert values == parse_nvs(build_nvs_image(values, needed)).strings(NVS_NAMESPACE)
    if needed > MIN_PARTITION_SIZE:
        with pytest.raises((nvs_gen.PageFullError, nvs_gen.InsufficientSizeError)):
            library_image(values, needed - PAGE_SIZE)
