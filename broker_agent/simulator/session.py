"""One connection to a simulated board: the ROM loader, then the flasher stub.

Every connection starts in the ROM loader, as after a reset into download mode. After
MEM_END with an entry point the board greets with a raw ``OHAI`` frame and speaks the stub
dialect (2 status bytes, raw MD5, streamed READ_FLASH) until a FLASH_END asking to reboot
sends it back to the ROM loader.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from broker_agent.simulator.board import (
    SECTOR_SIZE,
    SFDP_SIGNATURE,
    Fault,
    SimulatedBoard,
)
from broker_agent.simulator.protocol import (
    ROM_STATUS_LEN,
    STUB_STATUS_LEN,
    Op,
    Request,
    RomError,
    checksum,
    encode_response,
    parse_request,
)

SPI_BASE = 0x3FF42000
SPI_CMD = SPI_BASE + 0x00
SPI_ADDR = SPI_BASE + 0x04
SPI_USR2 = SPI_BASE + 0x24
SPI_W0 = SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
SYNC_REPLIES = 8
ROM_SYNC_VALUE = 0x20120707


class LinkClosed(Exception):
    """The host went away (or the board decided to drop the line)."""


class Link(Protocol):
    """The serial line as a session sees it: SLIP frames in and out, at some baud rate."""

    baud: int

    def read_frame(self) -> bytes: ...

    def send_frames(self, payloads: list[bytes]) -> None: ...

    def set_baud(self, baud: int) -> None: ...

    def close(self) -> None: ...


class SpiController:
    """Just enough of the SPI1 peripheral for esptool's ``run_spiflash_command``."""

    def __init__(self, jedec_id: int) -> None:
        self.jedec_id = jedec_id
        self.registers: dict[int, int] = {}

    @staticmethod
    def owns(address: int) -> bool:
        return SPI_BASE <= address < SPI_BASE + 0x100

    def read(self, address: int) -> int:
        return self.registers.get(address, 0)

    def write(self, address: int, value: int, mask: int) -> None:
        old = self.registers.get(address, 0)
        self.registers[address] = (old & ~mask | value & mask) & 0xFFFF_FFFF
        if address == SPI_CMD and self.registers[address] & SPI_CMD_USR:
            self._execute()
            self.registers[SPI_CMD] &= ~SPI_CMD_USR

    def _execute(self) -> None:
        command = self.registers.get(SPI_USR2, 0) & 0xFF
        address = self.registers.get(SPI_ADDR, 0) >> 8  # 24-bit address, MSB-aligned
        result = 0
        if command == 0x9F:  # RDID
            result = self.jedec_id
        elif command == 0x5A and address == 0:  # RDSFDP header
            result = SFDP_SIGNATURE
        self.registers[SPI_W0] = result


@dataclass
class _FlashWrite:
    """A FLASH_BEGIN / FLASH_DEFL_BEGIN in progress."""

    offset: int
    size: int
    block_size: int
    compressed: bool
    cursor: int = 0
    erased_until: int = 0
    inflater: zlib._Decompress = field(default_factory=zlib.decompressobj)


Handler = Callable[[Request], None]


class BootloaderSession:
    """Serves one host connection until it closes."""

    def __init__(self, board: SimulatedBoard, link: Link) -> None:
        self.board = board
        self.link = link
        self.stub = False
        self.silent = False  # the "app" runs: nothing answers any more
        self.spi = SpiController(board.jedec_id)
        self.write: _FlashWrite | None = None
        self._handlers: dict[int, Handler] = {
            Op.SYNC: self._sync,
            Op.READ_REG: self._read_reg,
            Op.WRITE_REG: self._write_reg,
            Op.SPI_SET_PARAMS: self._ok,
            Op.SPI_ATTACH: self._ok,
            Op.CHANGE_BAUDRATE: self._change_baudrate,
            Op.MEM_BEGIN: self._ok,
            Op.MEM_DATA: self._mem_data,
            Op.MEM_END: self._mem_end,
            Op.SPI_FLASH_MD5: self._flash_md5,
            Op.READ_FLASH_SLOW: self._read_flash_slow,
            Op.FLASH_BEGIN: self._flash_begin,
            Op.FLASH_DATA: self._flash_data,
            Op.FLASH_END: self._flash_end,
            Op.FLASH_DEFL_BEGIN: self._flash_begin,
            Op.FLASH_DEFL_DATA: self._flash_data,
            Op.FLASH_DEFL_END: self._flash_end,
            Op.ERASE_FLASH: self._erase_flash,
            Op.ERASE_REGION: self._erase_region,
            Op.READ_FLASH: self._read_flash,
        }

    def run(self) -> None:
        try:
            while True:
                frame = self.link.read_frame()
                if self.silent or self.board.has_fault(Fault.NO_ANSWER):
                    continue
                request = parse_request(frame)
                if request is not None:
                    self._dispatch(request)
        except LinkClosed:
            return

    def _dispatch(self, request: Request) -> None:
        handler = self._handlers.get(request.op)
        stub_only = request.op in (Op.ERASE_FLASH, Op.ERASE_REGION, Op.READ_FLASH)
        rom_only = request.op == Op.READ_FLASH_SLOW
        if handler is None or (stub_only and not self.stub) or (rom_only and self.stub):
            self._reply(request.op, error=RomError.INVALID_MESSAGE)
            return
        handler(request)

    # -- replies -----------------------------------------------------------------------

    def _response(
        self, op: int, value: int = 0, data: bytes = b"", error: RomError | None = None
    ) -> bytes:
        status_len = STUB_STATUS_LEN if self.stub else ROM_STATUS_LEN
        return encode_response(op, value=value, data=data, status_len=status_len, error=error)

    def _reply(
        self, op: int, value: int = 0, data: bytes = b"", error: RomError | None = None
    ) -> None:
        self.link.send_frames([self._response(op, value, data, error)])

    def _ok(self, request: Request) -> None:
        self._reply(request.op)

    # -- ROM basics --------------------------------------------------------------------

    def _sync(self, request: Request) -> None:
        value = 0 if self.stub else ROM_SYNC_VALUE
        self.link.send_frames([self._response(Op.SYNC, value)] * SYNC_REPLIES)

    def _read_reg(self, request: Request) -> None:
        (address,) = request.words(1)
        if self.spi.owns(address):
            value = self.spi.read(address)
        else:
            value = self.board.read_register(address, self.link.baud)
        self._reply(request.op, value=value)

    def _write_reg(self, request: Request) -> None:
        for start in range(0, len(request.data) - 15, 16):
            address, value, mask, _delay = struct.unpack_from("<IIII", request.data, start)
            if self.spi.owns(address):
                self.spi.write(address, value, mask)
        self._reply(request.op)

    def _change_baudrate(self, request: Request) -> None:
        new_baud, _old_baud = request.words(2)
        self._reply(request.op)
        if new_baud > 0:
            self.link.set_baud(new_baud)

    def _mem_data(self, request: Request) -> None:
        if checksum(request.block()) != request.chk:
            self._reply(request.op, error=RomError.BAD_CHECKSUM)
        else:
            self._reply(request.op)

    def _mem_end(self, request: Request) -> None:
        no_entry, entry = request.words(2)
        self._reply(request.op)
        if not no_entry and entry:
            self.link.send_frames([b"OHAI"])
            self.stub = True

    # -- flash reads -------------------------------------------------------------------

    def _flash_md5(self, request: Request) -> None:
        offset, length = request.words(2)
        digest = self.board.md5(offset, length)
        if digest is None:
            self._reply(request.op, error=RomError.FLASH_READ_ERROR)
        else:
            self._reply(request.op, data=digest if self.stub else digest.hex().encode())

    def _read_flash_slow(self, request: Request) -> None:
        offset, length = request.words(2)
        data = self.board.read(offset, length) if length <= 64 else None
        if data is None:
            self._reply(request.op, error=RomError.FLASH_READ_ERROR)
        else:
            self._reply(request.op, data=data.ljust(64, b"\x00"))

    def _read_flash(self, request: Request) -> None:
        offset, length, block_size, in_flight = request.words(4)
        data = self.board.read(offset, length)
        if data is None or block_size == 0:
            self._reply(request.op, error=RomError.FLASH_READ_ERROR)
            return
        self._reply(request.op)
        window = block_size * max(in_flight, 1)
        sent = acked = 0
        while acked < length:
            while sent < length and sent - acked < window:
                self.link.send_frames([data[sent : sent + block_size]])
                sent = min(sent + block_size, length)
            ack = self.link.read_frame()
            if len(ack) != 4:
                return  # the host gave up on the stream and sent a command instead
            acked = max(acked, int.from_bytes(ack, "little"))
        self.link.send_frames([self.board.md5(offset, length) or b""])

    # -- flash writes ------------------------------------------------------------------

    def _flash_begin(self, request: Request) -> None:
        size, _blocks, block_size, offset = request.words(4)
        if offset + size > self.board.flash_size or block_size == 0:
            self._reply(request.op, error=RomError.FAILED_TO_ACT)
            return
        write = _FlashWrite(offset, size, block_size, request.op == Op.FLASH_DEFL_BEGIN)
        write.erased_until = offset
        if not self.stub and size:
            self._erase(offset, size)  # the ROM erases the whole region up front
            write.erased_until = offset + size
        self.write = write
        self._reply(request.op)

    def _flash_data(self, request: Request) -> None:
        write = self.write
        if write is None or write.compressed != (request.op == Op.FLASH_DEFL_DATA):
            self._reply(request.op, error=RomError.FAILED_TO_ACT)
            return
        if self.board.has_fault(Fault.DROP_MID_WRITE):
            self.link.close()
            raise LinkClosed("simulated drop during a flash write")
        block = request.block()
        if checksum(block) != request.chk:
            self._reply(request.op, error=RomError.BAD_CHECKSUM)
            return
        if write.compressed:
            try:
                payload = write.inflater.decompress(block)
            except zlib.error:
                self._reply(request.op, error=RomError.DEFLATE_ERROR)
                return
        else:
            (seq,) = struct.unpack_from("<I", request.data, 4)
            write.cursor = seq * write.block_size
            payload = block
        self._store(write, payload)
        self._reply(request.op)

    def _store(self, write: _FlashWrite, payload: bytes) -> None:
        payload = payload[: max(write.size - write.cursor, 0)]
        start = write.offset + write.cursor
        end = start + len(payload)
        if end > write.erased_until:  # the stub erases sector by sector as it writes
            self._erase(write.erased_until, end - write.erased_until)
            write.erased_until = -(-end // SECTOR_SIZE) * SECTOR_SIZE
        if not self.board.has_fault(Fault.WRITE_DOES_NOT_STICK):
            self.board.program(start, payload)
        write.cursor += len(payload)

    def _erase(self, offset: int, length: int) -> bool:
        if self.board.has_fault(Fault.WRITE_DOES_NOT_STICK):
            return True
        return self.board.erase(offset, length)

    def _flash_end(self, request: Request) -> None:
        (stay,) = request.words(1)
        self.write = None
        self._reply(request.op)
        if not stay:
            if self.stub:
                self.stub = False  # the stub reboots into the ROM loader
            else:
                self.silent = True  # the ROM leaves download mode and runs the app

    def _erase_flash(self, request: Request) -> None:
        self._erase(0, self.board.flash_size)
        self._reply(request.op)

    def _erase_region(self, request: Request) -> None:
        offset, length = request.words(2)
        aligned = offset % SECTOR_SIZE == 0 and length % SECTOR_SIZE == 0
        if not aligned or not self._erase(offset, length):
            self._reply(request.op, error=RomError.FAILED_TO_ACT)
        else:
            self._reply(request.op)
