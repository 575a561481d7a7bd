"""The ``bench`` fixture of the station tests (see harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.station.harness import Bench, make_bench
from tests.support.broker import Broker


@pytest.fixture
def bench(broker: Broker, tmp_path: Path) -> Bench:
    """A broker with a monitor, a secrets directory for the test devices, a log path."""
    return make_bench(broker, tmp_path)
