"""Starting the HTTP server inside a service's TaskGroup (``run``, ``station``, ``console``).

``start_http`` runs first in each service, before it connects to the broker, and returns only
once the server listens: a bad or busy address then stops the process at start with one line
(``SetupError``, exit 2) instead of after a broker session has begun. With the listen address
empty nothing is imported: the web framework costs ~0.25 s to import (``server``'s docstring).

``broker-agent run`` also mounts the operator console (``http/console``) on its listener,
with its own MQTT connection and operator account; ``start_http`` adds its task to the group.
Beside the agent (``beside_agent=True``) two more rules hold:

- The console never uses the agent's MQTT account. Under the production profile
  (``use_username_as_clientid`` on every listener) one user name is one client id, so a
  console logged in as the agent kicked the agent off at every connect (its will fired, a
  full reconcile followed, then it kicked the console: a loop). When the agent logs in with a
  user name (URL or settings) and no other console account is configured, the console is not
  started: one ``console_off`` warning names the settings that enable it, and ``GET /`` (and
  every ``/console`` and console API path) answers 503 saying so. ``/readyz`` stays about the
  agent.
- A failure of the console (a refused SUBSCRIBE on a stricter broker, say) is logged
  (``console_failed``) and reported by its API (503 with the reason); it no longer ends the
  agent's TaskGroup, which would have stopped ``run``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from broker_agent.http.listen import parse_listen
from broker_agent.http.metrics import ServiceMetrics
from broker_agent.logs import get_logger
from broker_agent.mqtt import BrokerUrls

if TYPE_CHECKING:
    from broker_agent.http.console.client import ConsoleClient
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
    beside_agent: bool = False,
) -> HttpServer | None:
    """Serve ``metrics`` (and the console) on ``listen`` as tasks of ``group``; None when off.

    ``beside_agent``: the console shares the agent's process and settings (module doc).
    """
    address = parse_listen(listen)
    if address is None:
        log.info("http_off", service=metrics.service)
        return None
    from broker_agent.http.server import HttpServer

    server = HttpServer(metrics)
    if console is not None:
        from broker_agent.http.console.app import mount_console, mount_console_off

        reason = shared_account_reason(console, broker_url) if beside_agent else None
        if reason is not None:
            log.warning("console_off", reason=reason)
            mount_console_off(server, reason)
        else:
            service = mount_console(server, console, broker_url, address)
            run = _guarded(service) if beside_agent else service.run()
            group.create_task(run, name="console-mqtt")
    task = group.create_task(server.serve(listen), name="http-server")
    started = asyncio.ensure_future(server.started.wait())
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        started.cancel()
        await asyncio.wait({started})  # ended, not just asked to end
    if task.done():
        task.result()  # the start-up error (SetupError), raised here and so by the group
    return server


def shared_account_reason(console: ConsoleSettings, broker_url: str | None) -> str | None:
    """Why the console beside the agent would log in with the agent's account, or None."""
    url = broker_url or console.broker_url
    agent_user = (BrokerUrls.parse(url).username if url else None) or console.mqtt_username
    if agent_user is None:
        return None  # anonymous: distinct client ids, nothing to collide
    own = console.console_mqtt_username
    if own is not None and own != agent_user:
        return None
    return (
        f"the console would log in as the agent's MQTT user {agent_user!r}; with "
        "use_username_as_clientid (the production profile) each connect would kick the other "
        "off. Give the console its own operator account (BROKER_AGENT_CONSOLE_MQTT_USERNAME "
        "and BROKER_AGENT_CONSOLE_MQTT_PASSWORD_FILE), or run `broker-agent console` "
        "separately; BROKER_AGENT_CONSOLE=false silences this"
    )


async def _guarded(service: ConsoleClient) -> None:
    """Run the console beside the agent: its failure is reported, never the agent's end."""
    try:
        await service.run()
    except Exception as exc:  # noqa: BLE001 - the one place that keeps the agent alive
        cause: BaseException = exc
        while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]  # the TaskGroup's wrapping says nothing
        service.failed(cause)
