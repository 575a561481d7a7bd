"""Fixtures for the production profile: ``certs`` (per module) and ``secure_broker`` (per test)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import secure_broker as profile


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return profile.make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def secure_broker(tmp_path: Path, certs: Any) -> Iterator[profile.SecureBroker]:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    with profile.secure_broker(tmp_path, certs) as broker:
        yield broker
