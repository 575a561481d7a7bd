"""Provisioning responder (interface only; implementation lands with issue 3)."""

from __future__ import annotations

import asyncio

import aiomqtt

from firmware_contracts.topics import TopicMatch, Topics
from broker_agent.services.agent_events import AgentPresence
from broker_agent.settings import AgentSettings


class ProvisioningResponder:
    def __init__(self, settings: AgentSettings, topics: Topics, presence: AgentPresence) -> None:
        self.settings = settings
        self.topics = topics
        self.presence = presence

    def on_message(self, match: TopicMatch, message: aiomqtt.Message) -> None:
        raise NotImplementedError

    async def start(self, client: aiomqtt.Client, group: asyncio.TaskGroup) -> None:
        return None

    async def watch_secrets(self) -> None:
        await asyncio.Event().wait()
