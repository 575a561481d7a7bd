"""Running the real HTTP server in the test's own loop, on a free port, and stopping it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx

from broker_agent.http.server import HttpServer

START_TIMEOUT_S = 10.0


@asynccontextmanager
async def serving(server: HttpServer, listen: str = "127.0.0.1:0") -> AsyncIterator[HttpServer]:
    """``server`` listening (``started`` set) for the block; cancelled and awaited after it.

    A start-up error (``SetupError``) is raised here instead of waiting for ``started``.
    """
    task = asyncio.create_task(server.serve(listen), name="http-server-under-test")
    started = asyncio.create_task(server.started.wait(), name="http-started")
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        started.cancel()
    if task.done():
        task.result()  # raises the start-up error
    try:
        yield server
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def client(server: HttpServer) -> httpx.AsyncClient:
    assert server.url is not None
    return httpx.AsyncClient(base_url=server.url, timeout=5.0)
