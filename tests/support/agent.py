"""Running the real agent in-process for a test, and stopping it cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from broker_agent.app import Agent, run_agent
from broker_agent.settings import AgentSettings


def agent_settings(
    broker_url: str, config_dir: Path, secrets_dir: Path | None = None, **extra: Any
) -> AgentSettings:
    extra.setdefault("agent_id", "test-agent")
    extra.setdefault("reconnect_min_s", 0.05)
    extra.setdefault("reconnect_max_s", 0.5)
    return AgentSettings(
        broker_url=broker_url,
        config_dir=config_dir,
        secrets_dir=secrets_dir or config_dir.parent / "secrets",
        **extra,
    )


@asynccontextmanager
async def running_agent(
    settings: AgentSettings, *, wait_online: bool = True
) -> AsyncIterator[Agent]:
    holder: list[Agent] = []
    started = asyncio.Event()

    def on_start(agent: Agent) -> None:
        holder.append(agent)
        started.set()

    task = asyncio.create_task(run_agent(settings, on_start), name="agent-under-test")
    await asyncio.wait_for(started.wait(), 10)
    agent = holder[0]
    if wait_online:
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(agent.online.wait()), task],
            timeout=15,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            task.result()
        assert agent.online.is_set(), "agent did not come online"
    try:
        yield agent
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
