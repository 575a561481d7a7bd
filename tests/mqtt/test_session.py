"""The reconnect loop over a URL list: where it goes after a failed or lost connection."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import pytest

from broker_agent.broker.process import free_port
from broker_agent.errors import SetupError
from broker_agent.mqtt import Backoff, Connection, make_connection, run_forever_connected
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker

SETTINGS = MqttSettings()


class Sessions:
    """Records the URL of each session; ``drop_first`` aborts the first one."""

    def __init__(self, urls: str, *, drop_first: bool = False) -> None:
        self.urls = urls
        self.drop_first = drop_first
        self.used: list[str] = []
        self.backoffs: list[str] = []  # the error before each backoff sleep
        self.changed = asyncio.Event()

    def connect(self) -> Connection:
        return make_connection(SETTINGS, self.urls, client_id=f"t-session-{len(self.used)}")

    async def session(self, connection: Connection) -> None:
        self.used.append(connection.url.display())
        self.changed.set()
        if self.drop_first and len(self.used) == 1:
            connection.abort()
        await connection.wait_disconnected()

    async def until(self, count: int) -> list[str]:
        loop = asyncio.create_task(
            run_forever_connected(self.connect, self.session, Backoff(0.01, 0.05), self.backoff),
            name="session-loop-under-test",
        )
        try:
            while len(self.used) < count:
                self.changed.clear()
                await asyncio.wait_for(self.changed.wait(), 10)
            return self.used
        finally:
            loop.cancel()
            with suppress(asyncio.CancelledError):
                await loop

    def backoff(self, error: Exception, delay: float) -> None:
        del delay
        self.backoffs.append(str(error))


async def test_a_lost_connection_resumes_at_the_next_url(make_broker: MakeBroker) -> None:
    first, second = make_broker(), make_broker()
    sessions = Sessions(f"{first.url},{second.url}", drop_first=True)

    assert [first.url, second.url] == await sessions.until(2)


async def test_a_stopped_broker_is_replaced_by_the_next_url(make_broker: MakeBroker) -> None:
    first, second = make_broker(), make_broker()
    sessions = Sessions(f"{first.url},{second.url}")
    loop = asyncio.ensure_future(sessions.until(2))
    await asyncio.wait_for(sessions.changed.wait(), 10)

    first.stop()

    assert [first.url, second.url] == await asyncio.wait_for(loop, 15)


async def test_a_dead_first_url_is_skipped_without_a_backoff(make_broker: MakeBroker) -> None:
    live = make_broker()
    sessions = Sessions(f"mqtt://127.0.0.1:{free_port()},{live.url}")

    assert [live.url] == await sessions.until(1)
    assert [] == sessions.backoffs


async def test_a_setup_error_ends_the_loop_instead_of_retrying(make_broker: MakeBroker) -> None:
    no_retain = make_broker("retain_available false")
    sessions = Sessions(no_retain.url)

    with pytest.raises(Exception) as caught:  # a group or the bare error
        await asyncio.wait_for(
            run_forever_connected(
                sessions.connect, sessions.session, Backoff(0.01, 0.05), sessions.backoff
            ),
            10,
        )

    error = caught.value
    errors = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
    assert [SetupError] == [type(error) for error in errors]
    assert [] == sessions.used
