"""Running the real agent in-process for a test, and stopping it cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from broker_agent.app import Agent, run_agent
from broker_agent.settings import AgentSettings
from tests.support.service import running


def agent_settings(
    broker_url: str, config_dir: Path, secrets_dir: Path | None = None, **extra: Any
) -> AgentSettings:
    extra.setdefault("agent_id", "test-agent")
    extra.setdefault("http_listen", "")  # tests that want HTTP ask for 127.0.0.1:0
    extra.setdefault("reconnect_min_s", 0.05)
    extra.setdefault("reconnect_max_s", 0.5)
    return AgentSettings(
        broker_url=broker_url,
        config_dir=config_dir,
        secrets_dir=secrets_dir or config_dir.parent / "secrets",
        **extra,
    )


@asynccontextmanager
async def running_agent(settings: AgentSettings) -> AsyncIterator[Agent]:
    """The real agent (``run_agent``) in the test's loop, entered once it announced ``online``."""
    started: list[Agent] = []
    constructed = asyncio.Event()

    def on_start(agent: Agent) -> None:
        started.append(agent)
        constructed.set()

    async def online() -> None:
        await constructed.wait()
        await started[0].online.wait()

    async with running(run_agent(settings, on_start), online(), name="agent-under-test"):
        yield started[0]
