"""A simulated ESP32 serial bootloader that the real esptool accepts over ``socket://``.

Start a board and point esptool (or the flash station) at its URL::

    with BoardServer(SimulatedBoard(BoardConfig(mac="24:0a:c4:00:00:01"))) as server:
        run_flash_job(FlashJobSpec(port=server.url), ...)

``Fault`` makes a board misbehave in the ways a real bench does; ``python -m
broker_agent.simulator --boards 4`` serves a few boards for manual tests.
"""

from broker_agent.simulator.board import BoardConfig, Fault, SimulatedBoard
from broker_agent.simulator.server import BoardServer

__all__ = ["BoardConfig", "BoardServer", "Fault", "SimulatedBoard"]
