"""A strict parser of ESP-IDF NVS partition images, written for the tests.

``esp-idf-nvs-partition-gen`` has no reader, and a test that only checks a blob's length proves
nothing, so the tests parse every image back with this module. It checks what ESP-IDF's own
checker (``nvs_partition_tool``) checks and raises ``NvsParseError`` with the page, entry and
key on the first violation:

- the image is whole pages of 4096 bytes, at least three, at least one of them Empty;
- page header: state (Empty 0xFFFFFFFF, Active 0xFFFFFFFE, Full 0xFFFFFFFC), sequence number,
  version (0xFE = v2, 0xFF = v1), CRC32 of bytes [4:28] stored at [28:32]; an Empty page is
  all 0xFF; at most one Active page; sequence numbers unique; one version throughout;
- entry-state bitmap, 2 bits per entry: 0b11 empty, 0b10 written, 0b00 erased;
- entries of 32 bytes: namespace index u8, type u8, span u8, chunk index u8, CRC32 u32 of bytes
  [0:4] + [8:32], key of 16 bytes NUL-padded, 8 data bytes;
- namespace entries (namespace index 0, type u8, value = the index they define);
- integers u8..i64 (unused data bytes 0xFF); strings (0x21) and v1 blobs (0x41): size u16,
  0xFFFF, CRC32 of the data, data in the next span-1 entries of the same page, a string ends
  in its only NUL; v2 blobs: blob_data chunks (0x42) and a blob_idx entry (0x48: size u32,
  chunk count u8, chunk start u8);
- spans stay within their page and cover written entries only; no key appears twice.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

PAGE_SIZE = 4096
HEADER_SIZE = 32
BITMAP_SIZE = 32
ENTRY_SIZE = 32
ENTRIES_PER_PAGE = 126
FIRST_ENTRY_OFFSET = HEADER_SIZE + BITMAP_SIZE

STATE_EMPTY = 0xFFFFFFFF
STATE_ACTIVE = 0xFFFFFFFE
STATE_FULL = 0xFFFFFFFC
PAGE_STATES = {STATE_EMPTY: "empty", STATE_ACTIVE: "active", STATE_FULL: "full"}
VERSIONS = {0xFE: 2, 0xFF: 1}

ENTRY_EMPTY = 0b11
ENTRY_WRITTEN = 0b10
ENTRY_ERASED = 0b00

TYPE_U8, TYPE_I8, TYPE_U16, TYPE_I16 = 0x01, 0x11, 0x02, 0x12
TYPE_U32, TYPE_I32, TYPE_U64, TYPE_I64 = 0x04, 0x14, 0x08, 0x18
TYPE_STR, TYPE_BLOB, TYPE_BLOB_DATA, TYPE_BLOB_IDX = 0x21, 0x41, 0x42, 0x48
INT_FORMATS = {
    TYPE_U8: "<B",
    TYPE_I8: "<b",
    TYPE_U16: "<H",
    TYPE_I16: "<h",
    TYPE_U32: "<I",
    TYPE_I32: "<i",
    TYPE_U64: "<Q",
    TYPE_I64: "<q",
}
CHUNK_ANY = 0xFF
NAMESPACE_ANY = 0xFF

Value = str | bytes | int


class NvsParseError(ValueError):
    """The image is not a valid NVS partition; the message says where and why."""


@dataclass(frozen=True)
class PageInfo:
    index: int
    state: str  # "empty", "active" or "full"
    seq: int | None = None
    version: int | None = None  # 1 or 2
    written: int = 0  # entries marked written
    erased: int = 0  # entries marked erased


@dataclass(frozen=True)
class NvsItem:
    """One key's item in image order (a v2 blob is listed where its index entry is)."""

    page: int
    entry: int
    namespace: str
    key: str
    type: int
    value: Value


@dataclass
class ParsedNvs:
    pages: list[PageInfo]
    namespaces: dict[str, int]
    entries: dict[tuple[str, str], Value]
    items: list[NvsItem] = field(default_factory=list)

    def strings(self, namespace: str) -> dict[str, str]:
        """The string entries of one namespace, by key."""
        if namespace not in self.namespaces:
            raise KeyError(f"no namespace {namespace!r} in the image")
        return {
            key: value
            for (ns, key), value in self.entries.items()
            if ns == namespace and isinstance(value, str)
        }


@dataclass(frozen=True)
class _RawItem:
    page: int
    entry: int
    ns_index: int
    type: int
    chunk_index: int
    key: str
    value: Value
    header: bytes


def crc32(data: bytes) -> int:
    """ESP-IDF's crc32_le with an all-ones seed, as the NVS format uses it."""
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def parse_nvs(image: bytes) -> ParsedNvs:
    """Parse and check a whole NVS partition image."""
    if len(image) % PAGE_SIZE:
        raise NvsParseError(f"image size {len(image)} is not a multiple of {PAGE_SIZE}")
    page_count = len(image) // PAGE_SIZE
    if page_count < 3:
        raise NvsParseError(f"image has {page_count} pages, an NVS partition needs at least 3")
    pages: list[PageInfo] = []
    raw_items: list[_RawItem] = []
    for index in range(page_count):
        page = image[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
        info, items = _parse_page(index, page)
        pages.append(info)
        raw_items.extend(items)
    _check_pages(pages)
    return _resolve(pages, raw_items)


def _check_pages(pages: list[PageInfo]) -> None:
    used = [page for page in pages if page.state != "empty"]
    if len(used) == len(pages):
        raise NvsParseError("no Empty page: NVS needs one free page for garbage collection")
    active = [page.index for page in used if page.state == "active"]
    if len(active) > 1:
        raise NvsParseError(f"pages {active} are all Active; at most one page may be")
    seqs = [page.seq for page in used]
    if len(set(seqs)) != len(seqs):
        raise NvsParseError(f"page sequence numbers repeat: {seqs}")
    versions = {page.version for page in used}
    if len(versions) > 1:
        raise NvsParseError(f"pages mix format versions {sorted(v or 0 for v in versions)}")


def _parse_page(index: int, page: bytes) -> tuple[PageInfo, list[_RawItem]]:
    where = f"page {index}"
    state, seq, version_byte = struct.unpack_from("<IIB", page, 0)
    if state not in PAGE_STATES:
        raise NvsParseError(f"{where}: invalid page state 0x{state:08X}")
    if state == STATE_EMPTY:
        if page != b"\xff" * PAGE_SIZE:
            offset = next(i for i, byte in enumerate(page) if byte != 0xFF)
            raise NvsParseError(f"{where}: Empty page has data at offset {offset}")
        return PageInfo(index, "empty"), []
    (stored_crc,) = struct.unpack_from("<I", page, 28)
    computed = crc32(page[4:28])
    if stored_crc != computed:
        raise NvsParseError(
            f"{where}: header CRC mismatch (stored 0x{stored_crc:08X}, computed 0x{computed:08X})"
        )
    if version_byte not in VERSIONS:
        raise NvsParseError(f"{where}: unknown format version byte 0x{version_byte:02X}")
    version = VERSIONS[version_byte]
    states = _entry_states(where, page[HEADER_SIZE : HEADER_SIZE + BITMAP_SIZE])
    items = _parse_entries(index, page, states, version)
    info = PageInfo(
        index,
        PAGE_STATES[state],
        seq=seq,
        version=version,
        written=states.count(ENTRY_WRITTEN),
        erased=states.count(ENTRY_ERASED),
    )
    return info, items


def _entry_states(where: str, bitmap: bytes) -> list[int]:
    states = [(bitmap[i // 4] >> ((i % 4) * 2)) & 0b11 for i in range(len(bitmap) * 4)]
    for entry, state in enumerate(states[:ENTRIES_PER_PAGE]):
        if state not in (ENTRY_EMPTY, ENTRY_WRITTEN, ENTRY_ERASED):
            raise NvsParseError(f"{where} entry {entry}: invalid entry state 0b{state:02b}")
    if any(state != ENTRY_EMPTY for state in states[ENTRIES_PER_PAGE:]):
        raise NvsParseError(f"{where}: bitmap bits beyond entry {ENTRIES_PER_PAGE - 1} are set")
    return states[:ENTRIES_PER_PAGE]


def _entry_bytes(page: bytes, entry: int) -> bytes:
    start = FIRST_ENTRY_OFFSET + entry * ENTRY_SIZE
    return page[start : start + ENTRY_SIZE]


def _parse_entries(index: int, page: bytes, states: list[int], version: int) -> list[_RawItem]:
    items: list[_RawItem] = []
    entry = 0
    while entry < ENTRIES_PER_PAGE:
        where = f"page {index} entry {entry}"
        state = states[entry]
        raw = _entry_bytes(page, entry)
        if state == ENTRY_EMPTY:
            if raw != b"\xff" * ENTRY_SIZE:
                raise NvsParseError(f"{where}: entry marked empty holds data")
            entry += 1
            continue
        if state == ENTRY_ERASED:
            entry += 1
            continue
        item, span = _parse_item(index, entry, page, states, version)
        items.append(item)
        entry += span
    return items


def _parse_item(
    index: int, entry: int, page: bytes, states: list[int], version: int
) -> tuple[_RawItem, int]:
    raw = _entry_bytes(page, entry)
    ns_index, item_type, span, chunk_index, stored_crc = struct.unpack_from("<BBBBI", raw, 0)
    computed = crc32(raw[0:4] + raw[8:32])
    where = f"page {index} entry {entry}"
    if stored_crc != computed:
        raise NvsParseError(
            f"{where}: entry CRC mismatch (stored 0x{stored_crc:08X}, computed 0x{computed:08X})"
        )
    key = _decode_key(where, raw[8:24])
    where = f"{where} (key {key!r})"
    if span < 1 or entry + span > ENTRIES_PER_PAGE:
        raise NvsParseError(f"{where}: span {span} does not fit in the page")
    for covered in range(entry + 1, entry + span):
        if states[covered] != ENTRY_WRITTEN:
            raise NvsParseError(f"{where}: spanned entry {covered} is not marked written")
    if ns_index == NAMESPACE_ANY:
        raise NvsParseError(f"{where}: namespace index 0xFF is reserved")
    data = raw[24:32]
    value: Value
    if item_type in INT_FORMATS:
        value = _parse_int(where, item_type, span, data)
    elif item_type in (TYPE_STR, TYPE_BLOB, TYPE_BLOB_DATA):
        value = _parse_varlen(where, page, entry, item_type, span, data)
    elif item_type == TYPE_BLOB_IDX:
        if span != 1:
            raise NvsParseError(f"{where}: blob index span is {span}, not 1")
        value = data
    else:
        raise NvsParseError(f"{where}: unknown item type 0x{item_type:02X}")
    if version == 1 and item_type in (TYPE_BLOB_DATA, TYPE_BLOB_IDX):
        raise NvsParseError(f"{where}: multi-page blob entry in a format v1 page")
    if version == 2 and item_type == TYPE_BLOB:
        raise NvsParseError(f"{where}: v1 blob entry in a format v2 page")
    if (item_type == TYPE_BLOB_DATA) == (chunk_index == CHUNK_ANY):
        raise NvsParseError(
            f"{where}: chunk index {chunk_index} does not suit type 0x{item_type:02X}"
        )
    item = _RawItem(index, entry, ns_index, item_type, chunk_index, key, value, bytes(raw))
    return item, span


def _decode_key(where: str, field_bytes: bytes) -> str:
    end = field_bytes.find(b"\x00")
    if end < 0:
        raise NvsParseError(f"{where}: key field has no NUL terminator")
    if end == 0:
        raise NvsParseError(f"{where}: empty key")
    if field_bytes[end:] != b"\x00" * (len(field_bytes) - end):
        raise NvsParseError(f"{where}: key field is not NUL-padded")
    try:
        return field_bytes[:end].decode("ascii")
    except UnicodeDecodeError:
        raise NvsParseError(f"{where}: key is not ASCII") from None


def _parse_int(where: str, item_type: int, span: int, data: bytes) -> int:
    if span != 1:
        raise NvsParseError(f"{where}: integer item has span {span}, not 1")
    fmt = INT_FORMATS[item_type]
    width = struct.calcsize(fmt)
    if data[width:] != b"\xff" * (8 - width):
        raise NvsParseError(f"{where}: unused integer data bytes are not 0xFF")
    (number,) = struct.unpack_from(fmt, data, 0)
    return int(number)


def _parse_varlen(
    where: str, page: bytes, entry: int, item_type: int, span: int, data: bytes
) -> Value:
    size, reserved, data_crc = struct.unpack_from("<HHI", data, 0)
    if reserved != 0xFFFF:
        raise NvsParseError(f"{where}: reserved bytes after the size are 0x{reserved:04X}")
    expected_span = 1 + (size + ENTRY_SIZE - 1) // ENTRY_SIZE
    if span != expected_span:
        raise NvsParseError(f"{where}: span {span} does not match data size {size}")
    start = FIRST_ENTRY_OFFSET + (entry + 1) * ENTRY_SIZE
    end = FIRST_ENTRY_OFFSET + (entry + span) * ENTRY_SIZE
    payload, padding = page[start : start + size], page[start + size : end]
    if padding != b"\xff" * len(padding):
        raise NvsParseError(f"{where}: padding after the data is not 0xFF")
    computed = crc32(payload)
    if data_crc != computed:
        raise NvsParseError(
            f"{where}: data CRC mismatch (stored 0x{data_crc:08X}, computed 0x{computed:08X})"
        )
    if item_type != TYPE_STR:
        return payload
    if size == 0 or payload[-1] != 0:
        raise NvsParseError(f"{where}: string data does not end in NUL")
    if b"\x00" in payload[:-1]:
        raise NvsParseError(f"{where}: string holds a NUL before its end")
    try:
        return payload[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise NvsParseError(f"{where}: string is not valid UTF-8") from None


def _resolve(pages: list[PageInfo], raw_items: list[_RawItem]) -> ParsedNvs:
    namespaces: dict[str, int] = {}
    for item in raw_items:
        if item.ns_index != 0:
            continue
        where = f"page {item.page} entry {item.entry} (namespace {item.key!r})"
        if item.type != TYPE_U8 or not isinstance(item.value, int):
            raise NvsParseError(f"{where}: namespace entry is not of type u8")
        if not 0 < item.value < NAMESPACE_ANY:
            raise NvsParseError(f"{where}: namespace index {item.value} out of range")
        if item.key in namespaces:
            raise NvsParseError(f"{where}: namespace defined twice")
        if item.value in namespaces.values():
            raise NvsParseError(f"{where}: namespace index {item.value} already used")
        namespaces[item.key] = item.value
    names = {index: name for name, index in namespaces.items()}
    chunks: dict[tuple[str, str, int], _RawItem] = {}
    entries: dict[tuple[str, str], Value] = {}
    ordered: list[NvsItem] = []
    for item in raw_items:
        if item.ns_index == 0:
            continue
        where = f"page {item.page} entry {item.entry} (key {item.key!r})"
        if item.ns_index not in names:
            raise NvsParseError(f"{where}: namespace index {item.ns_index} is not defined")
        namespace = names[item.ns_index]
        if item.type == TYPE_BLOB_DATA:
            chunk_key = (namespace, item.key, item.chunk_index)
            if chunk_key in chunks:
                raise NvsParseError(f"{where}: blob chunk {item.chunk_index} appears twice")
            chunks[chunk_key] = item
            continue
        if (namespace, item.key) in entries:
            raise NvsParseError(f"{where}: duplicate key in namespace {namespace!r}")
        value = item.value
        if item.type == TYPE_BLOB_IDX:
            value = _assemble_blob(where, namespace, item, chunks)
        entries[(namespace, item.key)] = value
        ordered.append(NvsItem(item.page, item.entry, namespace, item.key, item.type, value))
    if chunks:
        namespace, key, chunk = next(iter(chunks))
        raise NvsParseError(f"blob chunk {chunk} of {namespace}/{key} has no blob index")
    return ParsedNvs(pages=pages, namespaces=namespaces, entries=entries, items=ordered)


def _assemble_blob(
    where: str, namespace: str, index_item: _RawItem, chunks: dict[tuple[str, str, int], _RawItem]
) -> bytes:
    size, chunk_count, chunk_start = struct.unpack_from("<IBB", index_item.header, 24)
    if index_item.header[30:32] != b"\xff\xff":
        raise NvsParseError(f"{where}: blob index reserved bytes are not 0xFF")
    parts: list[bytes] = []
    for chunk in range(chunk_start, chunk_start + chunk_count):
        part = chunks.pop((namespace, index_item.key, chunk), None)
        if part is None:
            raise NvsParseError(f"{where}: blob chunk {chunk} is missing")
        assert isinstance(part.value, bytes)
        parts.append(part.value)
    blob = b"".join(parts)
    if len(blob) != size:
        raise NvsParseError(f"{where}: blob chunks hold {len(blob)} bytes, index says {size}")
    return blob


def decrypt_nvs(image: bytes, key: bytes) -> bytes:
    """The plaintext of an encrypted NVS image, decrypted here with ``key`` (64 bytes).

    Written from ESP-IDF's description of NVS encryption, independently of the generator:
    each written (or erased) 32-byte entry is AES-256-XTS encrypted with the XTS key pair
    ``key`` and, as tweak, the entry's byte offset in the partition (16 bytes, little-endian);
    page headers, bitmaps and empty entries stay as they are.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(key) != 64:
        raise ValueError("an NVS XTS key pair is 64 bytes")
    out = bytearray(image)
    for page_start in range(0, len(image), PAGE_SIZE):
        page = image[page_start : page_start + PAGE_SIZE]
        if struct.unpack_from("<I", page, 0)[0] == STATE_EMPTY:
            continue
        bitmap = page[HEADER_SIZE : HEADER_SIZE + BITMAP_SIZE]
        for entry in range(ENTRIES_PER_PAGE):
            if (bitmap[entry // 4] >> ((entry % 4) * 2)) & 0b11 == ENTRY_EMPTY:
                continue
            offset = page_start + FIRST_ENTRY_OFFSET + entry * ENTRY_SIZE
            tweak = offset.to_bytes(16, "little")
            decryptor = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
            plain = decryptor.update(image[offset : offset + ENTRY_SIZE]) + decryptor.finalize()
            out[offset : offset + ENTRY_SIZE] = plain
    return bytes(out)
