"""The reconnect loop, its backoff, and the cancellation repairs Python 3.11 needs.

aiomqtt has no automatic reconnect; its documented pattern is a loop around ``async with``
that catches the error and sleeps. ``run_forever_connected`` is that loop, written once for
the agent and the station: a fresh ``Connection`` per attempt, a jittered exponential backoff
that resets after each successful connect, and ``BrokerUnavailableError`` as the only signal.

Several broker URLs (``BROKER_AGENT_BROKER_URL=a,b,c``): each attempt is one round over the
list, starting where the previous one left off; a URL that fails to connect passes to the next
at once, and the backoff sleeps only after a whole round failed (so a dead node costs one
connect timeout, not a backoff). A lost connection resumes at the URL after the lost one, after
the backoff's first, short delay (it was reset by the connect): a node that dropped us is
tried last. The URL in use is logged on each connect (``broker_connected``, display form).
A ``SetupError`` (a broker without retained messages, a refused subscription) is not retried:
it ends the loop and, through the service, the process (exit 2). The one exception is a
``SetupError`` from ``connect`` (building the connection reads the password file and the CA
file) after the first attempt: files that were good at start and fail now are being replaced
(a Kubernetes secret rotation), so that is logged through ``on_disconnect`` and backed off.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from broker_agent.errors import BrokerUnavailableError, SetupError
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
    """The reconnect loop: run ``session`` on a fresh connection until cancelled.

    ``connect`` may build each connection from the same URL string: the loop carries the
    position in the URL list from one connection to the next.
    """
    position = 0
    first = True
    while True:
        try:
            connection = connect()
        except SetupError as error:  # its files: the password file, the CA file
            if first:
                raise  # bad at start: exit 2 with the reason
            delay = backoff.next_delay()  # good before: mid-rotation, try again
            on_disconnect(error, delay)
            await asyncio.sleep(delay)
            continue
        first = False
        connection.urls.position = position % len(connection.urls)
        connected = False
        try:
            async with connection:
                connected = True
                backoff.reset()
                await session(connection)
        except* BrokerUnavailableError as group:
            _forget_leaked_cancels()
            position = connection.urls.position + (1 if connected else 0)
            delay = backoff.next_delay()
            on_disconnect(group.exceptions[0], delay)
            await asyncio.sleep(delay)
