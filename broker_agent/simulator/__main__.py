"""``python -m broker_agent.simulator --boards N``: serve N simulated boards until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from broker_agent.simulator.board import BoardConfig, Fault, SimulatedBoard
from broker_agent.simulator.server import BoardServer


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
    args = parser.parse_args(argv)
    if not 1 <= args.boards <= 254:
        parser.error("--boards must be between 1 and 254")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    faults = frozenset(Fault(value) for value in args.fault)
    servers: list[BoardServer] = []
    with contextlib.ExitStack() as stack:
        for index in range(args.boards):
            config = BoardConfig(
                mac=f"24:0a:c4:00:00:{index + 1:02x}",
                faults=faults,
                baud_throttle=args.baud_throttle,
            )
            port = args.base_port + index if args.base_port else 0
            server = BoardServer(SimulatedBoard(config), host=args.host, port=port)
            servers.append(stack.enter_context(server))
        for server in servers:
            print(f"{server.url}  mac={server.board.config.mac}", flush=True)
        print("Serving; press Ctrl-C to stop.", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
