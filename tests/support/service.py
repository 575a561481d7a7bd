"""The one way tests run a service (agent, station, HTTP server, broker-auth sync) in their loop.

``running(service, ready)`` starts the service's coroutine as a named task, enters once it is
ready (an ``asyncio.Event`` it sets, or any awaitable), and cancels and awaits it on exit. A
service that fails before it is ready raises its own error here; one that is neither ready nor
failed within ``timeout`` fails the test. Nothing is slept for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

START_TIMEOUT_S = 15.0


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it; its error, if it failed, is raised here.

    Only the task's own cancellation is absorbed: a cancellation of the caller propagates.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def until_ready(
    task: asyncio.Task[Any], ready: asyncio.Event | Awaitable[object], timeout: float
) -> None:
    """Return once ``ready``; raise the service's error if ``task`` ends first."""
    waiter = asyncio.ensure_future(ready.wait() if isinstance(ready, asyncio.Event) else ready)
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        await stop(waiter)
    if task in done:
        task.result()  # the service's own error, if it failed
        raise AssertionError(f"{task.get_name()} ended before it was ready")
    if waiter not in done:
        raise AssertionError(f"{task.get_name()} was not ready within {timeout} s")


@asynccontextmanager
async def running(
    service: Coroutine[Any, Any, object],
    ready: asyncio.Event | Awaitable[object],
    *,
    name: str,
    timeout: float = START_TIMEOUT_S,
) -> AsyncIterator[asyncio.Task[object]]:
    """``service`` running as the task ``name`` for the block, entered once ``ready``."""
    task = asyncio.create_task(service, name=name)
    try:
        await until_ready(task, ready, timeout)
    except BaseException:
        with suppress(Exception):  # the error being raised already says what went wrong
            await stop(task)
        raise
    try:
        yield task
    finally:
        await stop(task)  # an error the service raised during the block surfaces here
