"""The reconnect loop's own behaviour: shutdowns that coincide with a drop, and its backoff."""

from __future__ import annotations

import asyncio

import pytest

from broker_agent.errors import BrokerUnavailableError
from broker_agent.mqtt import Backoff, Connection, make_connection, run_forever_connected
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker

pytestmark = pytest.mark.timeout(30)

SETTINGS = MqttSettings()


async def test_a_cancel_landing_as_the_connection_drops_ends_the_loop(
    make_broker: MakeBroker,
) -> None:
    url = make_broker().url
    sessions = 0

    def connect() -> Connection:
        return make_connection(SETTINGS, url, client_id=f"t-sigterm-{sessions}")

    async def session(connection: Connection) -> None:
        nonlocal sessions
        sessions += 1

        async def watch() -> None:
            try:
                await connection.wait_disconnected()
            except BrokerUnavailableError:
                loop.cancel()  # the SIGTERM lands right as the drop is noticed
                raise

        async with asyncio.TaskGroup() as group:  # as every service's session does
            group.create_task(watch(), name="mqtt-connection")
            connection.abort()
            await asyncio.Event().wait()

    loop = asyncio.create_task(
        run_forever_connected(connect, session, Backoff(0.01, 0.05), lambda e, d: None),
        name="session-loop-under-test",
    )
    done, _ = await asyncio.wait({loop}, timeout=5)

    assert {loop} == done
    assert loop.cancelled()
    assert 1 == sessions


async def test_sessions_dropped_at_once_back_off_longer_each_time(
    make_broker: MakeBroker,
) -> None:
    url = make_broker().url
    delays: list[float] = []
    enough = asyncio.Event()

    def connect() -> Connection:
        return make_connection(SETTINGS, url, client_id="t-flapping")

    async def session(connection: Connection) -> None:
        connection.abort()  # the broker accepts, then the session dies at once
        await connection.wait_disconnected()

    def backed_off(error: Exception, delay: float) -> None:
        del error
        delays.append(delay)
        if len(delays) == 5:
            enough.set()

    loop = asyncio.create_task(
        run_forever_connected(connect, session, Backoff(0.02, 10.0), backed_off),
        name="session-loop-under-test",
    )
    try:
        await asyncio.wait_for(enough.wait(), 10)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    # ceilings 0.02, 0.04, 0.08, 0.16, 0.32, each delay drawn from [ceiling / 2, ceiling]
    assert delays[:5] == sorted(delays[:5])
    assert delays[4] >= 0.16


async def test_sessions_that_lasted_reconnect_after_the_shortest_delay(
    make_broker: MakeBroker,
) -> None:
    url = make_broker().url
    delays: list[float] = []
    enough = asyncio.Event()

    def connect() -> Connection:
        return make_connection(SETTINGS, url, client_id="t-stable")

    async def session(connection: Connection) -> None:
        await asyncio.sleep(0.15)  # longer than stable_after_s below
        connection.abort()
        await connection.wait_disconnected()

    def backed_off(error: Exception, delay: float) -> None:
        del error
        delays.append(delay)
        if len(delays) == 4:
            enough.set()

    loop = asyncio.create_task(
        run_forever_connected(
            connect, session, Backoff(0.02, 10.0), backed_off, stable_after_s=0.1
        ),
        name="session-loop-under-test",
    )
    try:
        await asyncio.wait_for(enough.wait(), 10)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    assert all(delay <= 0.02 for delay in delays[:4])
