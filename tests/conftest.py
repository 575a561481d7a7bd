"""Fixtures that start real brokers. Every integration test gets its own Mosquitto."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_agent.broker.process import MosquittoProcess, free_port
from tests.support.conformance import ConformanceMonitor

PROJECT = Path(__file__).resolve().parent.parent


class Broker:
    """A Mosquitto from the project's mosquitto.conf, on a free loopback port."""

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


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A fresh Mosquitto per test, watched by a conformance monitor.

    Every message the agent or a station publishes on the contract's topics during the test is
    validated against the generated JSON Schemas; a drift fails the test at teardown. (Requests
    that tests send malformed on purpose are not held against anyone.)
    """
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    instance = Broker(tmp_path / "broker")
    instance.start()
    monitor = ConformanceMonitor("127.0.0.1", instance.port)
    monitor.start()
    try:
        yield instance
        if instance.process.process is not None and instance.process.process.poll() is None:
            monitor.flush()
        if request.node.get_closest_marker("allow_contract_violations") is None:
            monitor.assert_clean("agent", "station")
    finally:
        monitor.stop()
        instance.stop()
