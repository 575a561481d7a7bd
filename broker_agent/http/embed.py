"""Starting the HTTP server inside a service's TaskGroup (``run``, ``station``, ``console``).

``start_http`` runs first in each service, before it connects to the broker, and returns only
once the server listens: a bad or busy address then stops the process at start with one line
(``SetupError``, exit 2) instead of after a broker session has begun. With the listen address
empty nothing is imported: the web framework costs ~0.25 s to import (``server``'s docstring).

``broker-agent run`` also mounts the operator console (``http/console``) on its listener,
with its own MQTT connection and operator account; ``start_http`` adds its task to the group.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from broker_agent.http.listen import parse_listen
from broker_agent.http.metrics import ServiceMetrics
from broker_agent.logs import get_logger

if TYPE_CHECKING:
    from broker_agent.http.server import HttpServer
    from broker_agent.settings import ConsoleSettings

log = get_logger(__name__)


async def start_http(
    group: asyncio.TaskGroup,
    metrics: ServiceMetrics,
    listen: str,
    *,
    console: ConsoleSettings | None = None,
    broker_url: str | None = None,
) -> HttpServer | None:
    """Serve ``metrics`` (and the console) on ``listen`` as tasks of ``group``; None when off."""
    address = parse_listen(listen)
    if address is None:
        log.info("http_off", service=metrics.service)
        return None
    from broker_agent.http.server import HttpServer

    server = HttpServer(metrics)
    if console is not None:
        from broker_agent.http.console.app import mount_console

        service = mount_console(server, console, broker_url, address)
        group.create_task(service.run(), name="console-mqtt")
    task = group.create_task(server.serve(listen), name="http-server")
    started = asyncio.ensure_future(server.started.wait())
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        started.cancel()
    if task.done():
        task.result()  # the start-up error (SetupError), raised here and so by the group
    return server
