"""The ``fleet`` fixture: a fleet on disk beside the broker (tests/support/provisioning.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.provisioning import Fleet, make_fleet


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path) -> Fleet:
    return make_fleet(broker, tmp_path)
