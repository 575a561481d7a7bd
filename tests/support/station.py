"""Running the real flash station in-process for a test, and stopping it cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broker_agent.settings import StationSettings
from broker_agent.station.station import Station
from tests.support.service import running


@asynccontextmanager
async def running_station(
    settings: StationSettings, *, connect_attempts: int = 3
) -> AsyncIterator[Station]:
    """A ``Station`` in the test's loop, entered once it announced ``online``."""
    station = Station(settings, connect_attempts=connect_attempts)
    async with running(station.run(), station.online, name="station-under-test"):
        yield station
