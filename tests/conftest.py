"""Fixtures that start real brokers. Every integration test gets its own Mosquitto (or, with
``BROKER_AGENT_TEST_BROKER_URL`` set, a topic root of its own on that broker)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.support.broker import PROJECT, Broker
from tests.support.conformance import ConformanceMonitor
from tests.support.external_broker import OWN_BROKER_REASON, ExternalBroker, external_url

# Services a test starts serve HTTP only when the test asks (http_listen=...): the defaults
# (127.0.0.1:8080 for run, :8081 for station) collide between tests run at the same time on
# one machine (seen: an agent of one run held 8080 while another run's agents exited 2).
os.environ.setdefault("BROKER_AGENT_HTTP_LISTEN", "")

# PROJECT and Broker live in tests/support/broker.py; they stay importable from here until
# tests/station/test_station.py and tests/commands/test_flash.py import them from there.
__all__ = ["PROJECT", "Broker", "broker"]


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults and the root logger as it found it.

    A test that runs the CLI in-process calls ``configure_logging`` (the ``status`` command
    sets the level to warning and caches its loggers), which hid a later test's debug events
    from ``structlog.testing.capture_logs`` (seen: the responder's ``provisioned`` log test
    failed only when run after the status tests).
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_own_broker: the test stops, restarts or reconfigures the broker; skipped when "
        "the suite runs against an external one (BROKER_AGENT_TEST_BROKER_URL)",
    )


@pytest.fixture
def broker(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Broker | ExternalBroker]:
    """A fresh Mosquitto per test, watched by a conformance monitor.

    Every message the agent or a station publishes on the contract's topics during the test is
    validated against the generated JSON Schemas; a drift fails the test at teardown. (Requests
    that tests send malformed on purpose are not held against anyone.)

    With ``BROKER_AGENT_TEST_BROKER_URL`` set: that broker instead, with a topic root of the
    test's own (``broker.root``, also in ``BROKER_AGENT_TOPIC_ROOT``), and no monitor (the
    default run checks conformance); see tests/support/external_broker.py.
    """
    url = external_url()
    if url is not None:
        if request.node.get_closest_marker("needs_own_broker") is not None:
            pytest.skip(OWN_BROKER_REASON)
        external = ExternalBroker.for_one_test(url)
        monkeypatch.setenv("BROKER_AGENT_TOPIC_ROOT", external.root)
        try:
            yield external
        finally:
            asyncio.run(external.clear_root())
        return
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
