"""Running the real HTTP server in the test's own loop, on a free port, and stopping it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from broker_agent.http.server import HttpServer
from tests.support.service import running

START_TIMEOUT_S = 10.0


@asynccontextmanager
async def serving(server: HttpServer, listen: str = "127.0.0.1:0") -> AsyncIterator[HttpServer]:
    """``server`` listening (``started`` set) for the block; cancelled and awaited after it.

    A start-up error (``SetupError``) is raised here instead of waiting for ``started``.
    """
    serve = server.serve(listen)
    async with running(serve, server.started, name="http-server", timeout=START_TIMEOUT_S):
        yield server


def client(server: HttpServer) -> httpx.AsyncClient:
    assert server.url is not None
    return httpx.AsyncClient(base_url=server.url, timeout=5.0)
