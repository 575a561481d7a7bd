"""The HTTP server of ``broker-agent run`` and ``broker-agent station`` (contract 6.4).

``/healthz``, ``/readyz`` and ``/metrics`` now; the operator console, its REST API (OpenAPI at
``/api/docs``) and its live updates (server-sent events) join this app next (issue 12).
This module is the only one that imports the web framework and the ASGI server.

Why FastAPI on uvicorn (compared with aiohttp and plain Starlette on this VM, Python 3.11):
- In-process, one task: ``uvicorn.Server.serve(sockets=[...])`` runs inside the agent's own
  event loop and TaskGroup, next to the MQTT session, so handlers read the services' state
  directly (no threads, no locks). aiohttp's ``AppRunner`` does this too; what decides is:
- OpenAPI: FastAPI generates OpenAPI 3.1 and the ``/api/docs`` page from pydantic models,
  and the project already models its settings and payloads with pydantic v2. aiohttp needs
  third-party apispec plugins for that; plain Starlette only reads YAML from docstrings.
- SSE: FastAPI >= 0.135 ships ``EventSourceResponse`` (``fastapi.sse``), no extra package.
- Tests over real HTTP: the server binds port 0 inside the test's loop and httpx talks to
  it; no ASGI-transport shortcut that would skip uvicorn.
- Cost: importing FastAPI + uvicorn adds ~0.25 s (median of 6, on top of pydantic, structlog
  and aiomqtt; 121 ms of it is building FastAPI's OpenAPI models), aiohttp.web ~0.3 s,
  Starlette + uvicorn ~0.06 s. Paid once per daemon start; the one-shot commands
  (``provision``, ``flash``) should not import this module.
uvicorn is used without ``[standard]``: the pure-Python h11 protocol and the plain asyncio
loop the rest of the process runs on (no uvloop, no httptools).

How it is embedded, and why:
- uvicorn's ``serve()`` replaces SIGINT/SIGTERM handlers for its lifetime and re-raises the
  signal afterwards; the CLI owns signals (``loop.add_signal_handler`` -> cancel), so
  ``capture_signals`` is turned into a no-op.
- The listening socket is bound here (``listen.open_listener``): uvicorn answers a bind error
  with ``sys.exit(1)``; ours is a one-line ``SetupError`` that names the address.
- Cancelling ``serve()`` shuts uvicorn down at once (it otherwise polls a flag every 0.1 s):
  listener closed, idle keep-alive connections closed, running requests given
  ``shutdown_grace_s``. An event stream never ends by itself: measured, one left open held
  shutdown forever with uvicorn's default (no grace), and was cancelled mid-chunk after the
  grace (the client sees an incomplete body). Streams should end on ``stopping`` instead:
  measured ~0.1 s to stop with one open.
- Every route is ``async def``: FastAPI runs plain ``def`` routes in a thread pool, which
  would read the services' state from another thread.
- ``log_config=None`` keeps uvicorn off the logging setup (its loggers go through the
  project's structlog renderer); access logs are off (a line per Prometheus scrape), and
  uvicorn's own info lines are raised to warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from broker_agent import __version__
from broker_agent.errors import SetupError
from broker_agent.http.listen import ListenAddress, open_listener, parse_listen
from broker_agent.http.metrics import ServiceMetrics
from broker_agent.logs import get_logger

log = get_logger(__name__)

DEFAULT_SHUTDOWN_GRACE_S = 2
"""How long running requests may finish after a cancel; well inside Kubernetes' 30 s."""


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    version: str


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None


class HttpServer:
    """Serves the app on one address until cancelled; ``started`` is set once it listens.

    ``HttpServer(metrics)`` then ``await server.serve("127.0.0.1:8080")`` in a named task;
    cancel the task to stop it (``stopping`` is set, then requests get ``shutdown_grace_s``).
    ``metrics.readiness`` answers ``/readyz``; ``metrics.registry`` is ``/metrics``.
    ``listen=""`` turns the server off: ``serve`` returns at once, ``started`` is set and
    ``address`` stays ``None``. ``app`` is the FastAPI app, for the console's routers.
    """

    def __init__(
        self, metrics: ServiceMetrics, *, shutdown_grace_s: int = DEFAULT_SHUTDOWN_GRACE_S
    ) -> None:
        self.metrics = metrics
        self.shutdown_grace_s = shutdown_grace_s
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        """Set when a cancel begins the shutdown: long-lived responses (the console's event
        streams) wait on it and end cleanly instead of being cut after the grace period."""
        self.address: ListenAddress | None = None
        """The bound address (the real port when 0 was asked for), once ``started``."""
        self.app = build_app(metrics)

    @property
    def port(self) -> int | None:
        return None if self.address is None else self.address.port

    @property
    def url(self) -> str | None:
        return None if self.address is None else f"http://{self.address}"

    async def serve(self, listen: str) -> None:
        requested = parse_listen(listen)
        if requested is None:
            log.info("http_off", service=self.metrics.service)
            self.started.set()
            return
        sock = await open_listener(requested)
        self.address = ListenAddress(requested.host, sock.getsockname()[1])
        server = _InLoopServer(self._config(), on_started=self._on_started)
        self.stopping.clear()
        try:
            await server.serve(sockets=[sock])
        except asyncio.CancelledError:
            self.stopping.set()
            if server.started:
                await server.shutdown(sockets=[sock])
            raise
        except SystemExit as exc:  # uvicorn's answer to a failed start-up
            raise SetupError(f"the HTTP server on {self.address} could not start") from exc
        finally:
            for listener in getattr(server, "servers", []):
                listener.close()
            sock.close()
            self.started.clear()
            log.info("http_stopped", service=self.metrics.service)

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=self.shutdown_grace_s,
        )

    def _on_started(self) -> None:
        self.started.set()
        log.info("http_listening", service=self.metrics.service, url=self.url)


class _InLoopServer(uvicorn.Server):
    """uvicorn in someone else's loop: no signal handlers, and a hook once it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


def build_app(metrics: ServiceMetrics) -> FastAPI:
    """The FastAPI app: probes and metrics, the base the console's routers are added to."""
    app = FastAPI(
        title=f"broker-agent {metrics.service}",
        version=__version__,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> Health:
        """200 while the process runs (a liveness probe)."""
        return Health(service=metrics.service, version=__version__)

    @app.get(
        "/readyz",
        tags=["probes"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready; `reason` says why."}},
    )
    async def readyz() -> JSONResponse:
        """200 once the service is ready (connected; for the agent, first reconcile done)."""
        reason = metrics.not_ready_reason()
        body = Readiness(ready=reason is None, reason=reason)
        return JSONResponse(body.model_dump(), status_code=200 if reason is None else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus text exposition (OpenMetrics when the scraper asks for it)."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(metrics.registry), media_type=content_type)

    return app
