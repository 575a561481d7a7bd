"""Fixtures that start real brokers. Every integration test gets its own Mosquitto."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import PROJECT, Broker
from tests.support.conformance import ConformanceMonitor

# PROJECT and Broker live in tests/support/broker.py; they stay importable from here until
# tests/station/test_station.py and tests/commands/test_flash.py import them from there.
__all__ = ["PROJECT", "Broker", "broker"]


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
