"""The reconnect loop, its backoff, and the cancellation repairs Python 3.11 needs.

aiomqtt has no automatic reconnect; its documented pattern is a loop around ``async with``
that catches the error and sleeps. ``run_forever_connected`` is that loop, written once for
the agent and the station: a fresh ``Connection`` per attempt, a jittered exponential backoff
that resets once a session has lasted ``STABLE_AFTER_S``, and ``BrokerUnavailableError`` as the
only signal.

Several broker URLs (``BROKER_AGENT_BROKER_URL=a,b,c``): each attempt is one round over the
list, starting where the previous one left off; a URL that fails to connect passes to the next
at once, and the backoff sleeps only after a whole round failed (so a dead node costs one
connect timeout, not a backoff). A lost connection resumes at the URL after the lost one, after
the backoff's first, short delay when the session had lasted (a longer one after a session
that died young): a node that dropped us is tried last. The URL in use is logged on each
connect (``broker_connected``, display form).
A ``SetupError`` (a broker without retained messages, a refused subscription) is not retried:
it ends the loop and, through the service, the process (exit 2). The one exception is a
``SetupError`` from ``connect`` (building the connection reads the password file and the CA
file) after the first attempt: files that were good at start and fail now are being replaced
(a Kubernetes secret rotation), so that is logged through ``on_disconnect`` and backed off.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

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


STABLE_AFTER_S = 10.0
"""A session that lasted this long resets the backoff. Reset at every connect instead, a broker
that accepted and then dropped us at once (a client id taken over, an ACL that disconnects)
was reconnected to every 0.25-0.5 s, each time re-reading all retained state."""


async def _run_session(
    session: Callable[[Connection], Coroutine[Any, Any, None]], connection: Connection
) -> None:
    """Run ``session`` in a task of its own and wait for it.

    Python 3.11's TaskGroup cancels its parent task when a child fails after the body has
    finished, and never uncancels it (fixed in 3.12): run in the loop's own task, the next
    session inherited a phantom cancel, which ``raise_if_cancelled`` took for a shutdown. The
    repair used to uncancel every pending cancel after a failed session, which also erased a
    real one (a SIGTERM landing as the connection dropped: the TaskGroup raised only the error
    group, and the process went on reconnecting). In a task of its own, the leaks die with
    that task, and the loop's own ``cancelling()`` counts only real cancels.
    """
    # A cancel of the loop's task is passed on to this one, and the loop waits for it to end.
    await asyncio.create_task(session(connection), name="mqtt-session")


async def run_forever_connected(
    connect: Callable[[], Connection],
    session: Callable[[Connection], Coroutine[Any, Any, None]],
    backoff: Backoff,
    on_disconnect: Callable[[Exception, float], None],
    *,
    stable_after_s: float = STABLE_AFTER_S,
) -> None:
    """The reconnect loop: run ``session`` on a fresh connection until cancelled.

    ``connect`` may build each connection from the same URL string: the loop carries the
    position in the URL list from one connection to the next. The backoff is reset once a
    session has lasted ``stable_after_s``.
    """
    loop_task = asyncio.current_task()
    assert loop_task is not None
    shutdown_requests = loop_task.cancelling()  # cancels from before we started are not ours
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
        connected_at: float | None = None
        try:
            async with connection:
                connected_at = time.monotonic()
                if loop_task.cancelling() > shutdown_requests:
                    # a shutdown that aiomqtt's wait_for swallowed while connecting: the
                    # session's task would not see it (see raise_if_cancelled)
                    raise asyncio.CancelledError
                await _run_session(session, connection)
        except* BrokerUnavailableError as group:
            if loop_task.cancelling() > shutdown_requests:
                raise asyncio.CancelledError from None  # a shutdown that coincided with the drop
            connected = connected_at is not None
            if connected_at is not None and time.monotonic() - connected_at >= stable_after_s:
                backoff.reset()
            position = connection.urls.position + (1 if connected else 0)
            delay = backoff.next_delay()
            on_disconnect(group.exceptions[0], delay)
            await asyncio.sleep(delay)
