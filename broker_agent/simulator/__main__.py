"""``python -m broker_agent.simulator --boards N``: serve N simulated boards until Ctrl-C.

Prints one line per board, ``URL  mac=MAC``. With ``--replug-every S`` the boards are
unplugged and plugged in again at the same URL every S seconds, printing ``URL  unplugged``
and then ``URL  mac=MAC`` again, so a station's port scanning can be watched by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from broker_agent.simulator.bench import SimulatedBench, port_of
from broker_agent.simulator.board import (
    FLASH_SIZE,
    FLASH_SIZES,
    MB,
    BoardConfig,
    Fault,
    SimulatedBoard,
)
from broker_agent.simulator.tables import (
    encrypted_nvs,
    nvs_past_end,
    with_nvs_keys,
    without_nvs,
)
from firmware_contracts.partition_table import PartitionEntry

TABLES = ("default", "nvs-keys", "encrypted-nvs", "nvs-past-end", "no-nvs")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m broker_agent.simulator",
        description="Serve simulated ESP32 boards that esptool reaches at socket://HOST:PORT.",
    )
    parser.add_argument("--boards", type=int, default=1, help="number of boards (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--base-port", type=int, default=0, help="first TCP port (default: any free port)"
    )
    parser.add_argument(
        "--baud-throttle", type=int, default=None, help="pace bytes at this baud rate"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=[fault.value for fault in Fault],
        help="make every board misbehave this way (repeatable)",
    )
    parser.add_argument(
        "--flash-size",
        default=f"{FLASH_SIZE // MB}MB",
        choices=[f"{size // MB}MB" for size in FLASH_SIZES],
        help="size of each board's flash, reported by its JEDEC ID (default 4MB)",
    )
    parser.add_argument(
        "--erased",
        action="store_true",
        help="flash all 0xFF, no partition table (a module fresh from the factory)",
    )
    parser.add_argument(
        "--table",
        default="default",
        choices=TABLES,
        help="partition table variant: an nvs_keys partition, nvs flagged encrypted, "
        "nvs crossing the end of flash, or no nvs (default: the usual single-app layout)",
    )
    parser.add_argument(
        "--replug-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="unplug every board, then plug it in again, every SECONDS (hot-plug)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.boards <= 254:
        parser.error("--boards must be between 1 and 254")
    if args.erased and args.table != "default":
        parser.error("--erased leaves no partition table: it excludes --table")
    if args.replug_every is not None and args.replug_every <= 0:
        parser.error("--replug-every must be a positive number of seconds")
    return args


def _partitions(table: str, flash_size: int) -> list[PartitionEntry] | None:
    match table:
        case "nvs-keys":
            return with_nvs_keys()
        case "encrypted-nvs":
            return encrypted_nvs()
        case "nvs-past-end":
            return nvs_past_end(flash_size)
        case "no-nvs":
            return without_nvs()
    return None  # "default"


def _configs(args: argparse.Namespace) -> list[BoardConfig]:
    faults = frozenset(Fault(value) for value in args.fault)
    flash_size = int(args.flash_size.removesuffix("MB")) * MB
    return [
        BoardConfig(
            mac=f"24:0a:c4:00:00:{index + 1:02x}",
            faults=faults,
            baud_throttle=args.baud_throttle,
            flash_size=flash_size,
            erased=args.erased,
            partitions=_partitions(args.table, flash_size),
        )
        for index in range(args.boards)
    ]


def _replug_forever(bench: SimulatedBench, period: float) -> None:
    tick = threading.Event()  # never set: a sleep that Ctrl-C interrupts
    while True:
        tick.wait(period)
        unplugged = [(url, bench.unplug(url)) for url in bench.ports()]
        for url, _board in unplugged:
            print(f"{url}  unplugged", flush=True)
        tick.wait(period)
        for url, board in unplugged:
            bench.plug(board, port=port_of(url))
            print(f"{url}  mac={board.config.mac}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        configs = _configs(args)
    except ValueError as exc:  # e.g. --erased with a fault that edits the table
        print(f"python -m broker_agent.simulator: error: {exc}", file=sys.stderr)
        return 2
    with SimulatedBench(host=args.host) as bench:
        for index, config in enumerate(configs):
            port = args.base_port + index if args.base_port else 0
            url = bench.plug(SimulatedBoard(config), port=port)
            print(f"{url}  mac={config.mac}", flush=True)
        print("Serving; press Ctrl-C to stop.", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            if args.replug_every is None:
                threading.Event().wait()
            else:
                _replug_forever(bench, args.replug_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
