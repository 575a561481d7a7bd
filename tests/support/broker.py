"""The plain Mosquitto every integration test runs against (the ``broker`` fixture's type)."""

from __future__ import annotations

from pathlib import Path

from broker_agent.broker.process import MosquittoProcess, free_port
from firmware_contracts.topics import DEFAULT_ROOT

PROJECT = Path(__file__).resolve().parents[2]


class Broker:
    """A Mosquitto from the project's mosquitto.conf, on a free loopback port."""

    root = DEFAULT_ROOT  # the topic root tests use (one per test on an external broker)

    def __init__(self, data_dir: Path, config_text: str | None = None) -> None:
        text = config_text or (PROJECT / "mosquitto.conf").read_text()
        self.process = MosquittoProcess(text, data_dir, port=free_port())

    @property
    def port(self) -> int:
        assert self.process.port is not None
        return self.process.port

    @property
    def url(self) -> str:
        return self.process.url

    def start(self) -> None:
        self.process.start()

    def stop(self, *, kill: bool = False) -> None:
        self.process.stop(kill=kill)

    def restart(self) -> None:
        self.stop()
        self.start()
