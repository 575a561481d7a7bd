"""``broker-agent console``: the operator console and REST API, standalone, against any broker.

It is an MQTT client with its own operator account (``--mqtt-username``/``--mqtt-password-file``
or ``BROKER_AGENT_CONSOLE_MQTT_*``); it never touches a config or secrets directory, so it can
run on any machine that reaches the broker. ``--hash-password`` prints the hash to put in
``BROKER_AGENT_CONSOLE_PASSWORD_HASH`` (the password is read from stdin, never from argv, where
``ps`` would show it).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker_agent.errors import SetupError
from broker_agent.http.embed import start_http
from broker_agent.http.metrics import ServiceMetrics
from broker_agent.logs import configure_logging
from broker_agent.settings import ConsoleSettings

if TYPE_CHECKING:
    from broker_agent.http.server import HttpServer


def console_command(args: argparse.Namespace) -> int:
    from broker_agent.cli import run_async, settings_from

    if args.hash_password:
        from broker_agent.http.console.auth import hash_password

        if sys.stdin.isatty():
            password = getpass.getpass("operator password: ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise SetupError("an empty password cannot be hashed")
        print(hash_password(password))
        return 0
    settings: ConsoleSettings = settings_from(args, ConsoleSettings)
    configure_logging(settings.log_format, settings.log_level)
    return run_async(lambda: run_console(settings))


async def run_console(
    settings: ConsoleSettings, started: Callable[[HttpServer], None] | None = None
) -> None:
    """Serve the console until cancelled; ``started`` is told the server once it listens."""
    if not settings.http_listen:
        raise SetupError("the console needs an address to serve on (--http-listen)")
    metrics = ServiceMetrics("console")
    async with asyncio.TaskGroup() as group:
        server = await start_http(
            group, metrics, settings.http_listen, console=settings, broker_url=settings.broker_url
        )
        assert server is not None
        client = server.app.state.console.client
        metrics.readiness = lambda: (
            None if client.connected.is_set() else "not connected to the broker"
        )
        if started is not None:
            started(server)
