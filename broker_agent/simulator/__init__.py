"""A simulated ESP32 serial bootloader that the real esptool accepts over ``socket://``.

Start a board and point esptool (or the flash station) at its URL::

    with BoardServer(SimulatedBoard(BoardConfig(mac="24:0a:c4:00:00:01"))) as server:
        run_flash_job(FlashJobSpec(port=server.url), ...)

``BoardConfig`` sets the flash size (1 to 16 MB), the partition table (``tables.py``: nvs_keys,
encrypted or out-of-range nvs, no nvs, raw images with a corrupt MD5 row) or an erased
board; ``Fault`` makes a board misbehave in the ways a real bench does; ``SimulatedBench``
plugs boards in and out while a station runs. ``python -m broker_agent.simulator --boards 4``
serves a few boards for manual tests (``--help`` for the options).
"""

from broker_agent.simulator.bench import BenchPort, SimulatedBench, port_of
from broker_agent.simulator.board import FLASH_SIZES, MB, BoardConfig, Fault, SimulatedBoard
from broker_agent.simulator.server import BoardServer
from broker_agent.simulator.tables import (
    Md5Row,
    encrypted_nvs,
    nvs_past_end,
    table_image,
    with_nvs_at,
    with_nvs_keys,
    without_nvs,
)

__all__ = [
    "FLASH_SIZES",
    "MB",
    "BenchPort",
    "BoardConfig",
    "BoardServer",
    "Fault",
    "Md5Row",
    "SimulatedBench",
    "SimulatedBoard",
    "encrypted_nvs",
    "nvs_past_end",
    "port_of",
    "table_image",
    "with_nvs_at",
    "with_nvs_keys",
    "without_nvs",
]
