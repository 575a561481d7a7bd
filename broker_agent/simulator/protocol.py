"""Wire format of the ESP32 serial bootloader: SLIP framing, requests and responses.

Pure code: no sockets, no threads. A request is ``<BBHI`` (direction 0x00, opcode, data
length, checksum) followed by the data; a response is ``<BBHI`` (direction 0x01, opcode,
data length, value) followed by the data and the status bytes (4 from the ROM, 2 from the
flasher stub). Every packet travels SLIP-framed between ``0xC0`` delimiters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

SLIP_END = 0xC0
SLIP_ESC = 0xDB
SLIP_ESC_END = 0xDC
SLIP_ESC_ESC = 0xDD

CHECKSUM_SEED = 0xEF
ROM_STATUS_LEN = 4
STUB_STATUS_LEN = 2

_HEADER = struct.Struct("<BBHI")


class Op(IntEnum):
    """Opcodes of the ROM loader and the flasher stub that the simulator knows."""

    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14
    ERASE_FLASH = 0xD0
    ERASE_REGION = 0xD1
    READ_FLASH = 0xD2
    RUN_USER_CODE = 0xD3


class RomError(IntEnum):
    """Second status byte of a failed command."""

    INVALID_MESSAGE = 0x05
    FAILED_TO_ACT = 0x06
    BAD_CHECKSUM = 0x07
    FLASH_WRITE_ERROR = 0x08
    FLASH_READ_ERROR = 0x09
    BAD_LENGTH = 0x0A
    DEFLATE_ERROR = 0x0B


def slip_encode(payload: bytes) -> bytes:
    """Frame ``payload`` between two ``0xC0`` bytes, escaping ``0xC0`` and ``0xDB``."""
    escaped = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + escaped + b"\xc0"


class SlipDecoder:
    """Incremental SLIP decoder: feed it raw bytes, collect complete frames.

    Bytes outside a frame are ignored (the ROM does the same with line noise); an empty
    frame (two adjacent delimiters) is dropped.
    """

    def __init__(self) -> None:
        self._frame = bytearray()
        self._in_frame = False
        self._escaped = False

    def feed(self, chunk: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for byte in chunk:
            if byte == SLIP_END:
                if self._in_frame and self._frame:
                    frames.append(bytes(self._frame))
                self._frame.clear()
                self._in_frame = True
                self._escaped = False
            elif not self._in_frame:
                continue
            elif self._escaped:
                self._escaped = False
                self._frame.append(SLIP_END if byte == SLIP_ESC_END else SLIP_ESC)
            elif byte == SLIP_ESC:
                self._escaped = True
            else:
                self._frame.append(byte)
        return frames


def checksum(data: bytes) -> int:
    """The ROM's checksum of a data block: XOR of every byte, seeded with ``0xEF``."""
    state = CHECKSUM_SEED
    for byte in data:
        state ^= byte
    return state


@dataclass(frozen=True)
class Request:
    """A decoded command packet from the host."""

    op: int
    chk: int
    data: bytes

    def words(self, count: int) -> tuple[int, ...]:
        """The first ``count`` little-endian 32-bit words of the data (missing ones are 0)."""
        padded = self.data[: count * 4].ljust(count * 4, b"\x00")
        return struct.unpack(f"<{count}I", padded)

    def block(self) -> bytes:
        """Payload of a ``*_DATA`` command: the bytes after its 16-byte header."""
        (length,) = struct.unpack_from("<I", self.data.ljust(4, b"\x00"))
        return self.data[16 : 16 + length]


def parse_request(frame: bytes) -> Request | None:
    """Decode a command frame; ``None`` for anything that is not one (acks, noise)."""
    if len(frame) < _HEADER.size or frame[0] != 0x00:
        return None
    _, op, length, chk = _HEADER.unpack_from(frame)
    return Request(op=op, chk=chk, data=frame[_HEADER.size : _HEADER.size + length])


def encode_response(
    op: int,
    *,
    value: int = 0,
    data: bytes = b"",
    status_len: int = ROM_STATUS_LEN,
    error: RomError | None = None,
) -> bytes:
    """Build a response packet (not yet SLIP-framed): header, data, status bytes."""
    status = bytearray(status_len)
    if error is not None:
        status[0] = 0x01
        status[1] = int(error)
    body = data + bytes(status)
    return _HEADER.pack(0x01, op, len(body), value & 0xFFFF_FFFF) + body
