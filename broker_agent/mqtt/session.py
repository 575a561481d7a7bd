"""The reconnect loop, its backoff, and the cancellation repairs Python 3.11 needs.

aiomqtt has no automatic reconnect; its documented pattern is a loop around ``async with``
that catches the error and sleeps. ``run_forever_connected`` is that loop, written once for
the agent and the station: a fresh ``Connection`` per attempt, a jittered exponential backoff
that resets after each successful connect, and ``BrokerUnavailableError`` as the only signal.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from broker_agent.errors import BrokerUnavailableError
from broker_agent.mqtt.client import Connection


class Backoff:
    """Jittered exponential backoff, capped: 0.5 s, ~1 s, ~2 s ... up to ``maximum``."""

    def __init__(self, minimum: float = 0.5, maximum: float = 30.0) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.minimum * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that ``asyncio.wait_for`` swallowed.

    On Python 3.11, ``wait_for`` (which aiomqtt uses for every call) returns the result instead
    of raising when cancellation and completion race; a loop that goes on waiting would then
    never stop. Long-lived loops call this after each await on the broker.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _forget_leaked_cancels() -> None:
    """Undo cancel requests that a failed session's TaskGroup left on this task.

    Python 3.11's TaskGroup cancels its parent when a child fails after the body has finished,
    and then never uncancels it (fixed in 3.12): the reconnect loop would carry a phantom
    cancel into the next session, where ``raise_if_cancelled`` takes it for a shutdown. A real
    shutdown arrives as CancelledError, not as the error that brings us here.
    """
    task = asyncio.current_task()
    while task is not None and task.cancelling():
        task.uncancel()


async def run_forever_connected(
    connect: Callable[[], Connection],
    session: Callable[[Connection], Awaitable[None]],
    backoff: Backoff,
    on_disconnect: Callable[[Exception, float], None],
) -> None:
    """The reconnect loop: run ``session`` on a fresh connection until cancelled."""
    while True:
        try:
            async with connect() as connection:
                backoff.reset()
                await session(connection)
        except* BrokerUnavailableError as group:
            _forget_leaked_cancels()
            delay = backoff.next_delay()
            on_disconnect(group.exceptions[0], delay)
            await asyncio.sleep(delay)
