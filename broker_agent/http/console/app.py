"""Mounting the console on an ``HttpServer``: its MQTT client, its login gate, its routes.

``mount_console(server, settings, broker_url, address)`` checks the login rule first (a
console reachable from other machines without an operator login refuses to start:
``SetupError``, exit 2), then adds the REST API, the pages and their static files to
``server.app`` and returns the ``ConsoleClient`` whose ``run()`` the caller starts as a task.

Every console answer carries ``Content-Security-Policy: default-src 'self'`` (scripts and
styles only from this server: no inline script, so an injected string cannot run),
``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``; API answers are ``no-store``.

``mount_console_off(server, reason)`` is the console's place when it may not run (beside an
agent that would have to share its MQTT account, ``http/embed.py``): ``GET /``, every
``/console`` page and every console API path answer 503 ``{"error": {"code": "console_off",
"message": reason}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.http.console import api, pages, session
from broker_agent.http.console.auth import Gate
from broker_agent.http.console.client import ConsoleClient
from broker_agent.http.console.docs import serve_docs_locally
from broker_agent.http.console.session import Console, ConsoleError
from broker_agent.http.listen import ListenAddress
from broker_agent.http.server import HttpServer
from broker_agent.settings import ConsoleSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount_console_off(server: HttpServer, reason: str) -> None:
    """Answer the console's paths with why it is off (see the module doc)."""

    async def console_off() -> JSONResponse:
        return ConsoleError(503, "console_off", reason).response()

    for path in ("/", "/console", "/console/{rest:path}", "/api/{rest:path}"):
        server.app.add_api_route(
            path,
            console_off,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            include_in_schema=False,
        )


def mount_console(
    server: HttpServer,
    settings: ConsoleSettings,
    broker_url: str | None,
    address: ListenAddress,
) -> ConsoleClient:
    url = broker_url or settings.broker_url
    if url is None:
        raise SetupError(
            "the console needs a broker: pass --broker-url or set BROKER_AGENT_BROKER_URL"
        )
    hashed = settings.console_password_hash
    gate = Gate(
        settings.console_username,
        hashed.get_secret_value() if hashed is not None else None,
        address,
    )
    client = ConsoleClient(settings, url)
    app = server.app
    app.state.console = Console(client, gate, server.stopping)
    app.include_router(session.router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    serve_docs_locally(app)

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(BrokerUnavailableError)
    async def broker_gone(request: Request, exc: BrokerUnavailableError) -> JSONResponse:
        return ConsoleError(503, "not_connected", str(exc)).response()

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path
        if path.startswith("/api/docs"):  # Swagger UI sets inline styles: no CSP there
            return response
        if path.startswith(("/console", "/api")) or path == "/":
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        if path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return client
