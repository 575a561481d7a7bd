"""The agent's event stream (``{root}/agents/{agent_id}/events``); every event is also logged.

Used by the fleet publisher and the provisioning responder alike. Events go out at QoS 0 when
connected (they are informational; the retained configs are the record) and are always logged,
never with a secret.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from broker_agent import __version__
from broker_agent.errors import BrokerUnavailableError
from broker_agent.logs import get_logger
from broker_agent.mqtt import Connection, Presence
from firmware_contracts.codes import AgentEventName, PresenceState
from firmware_contracts.payloads import AgentEvent, AgentStatus, ErrorDetail, utc_timestamp
from firmware_contracts.topics import TOPICS, TopicKind, Topics

log = get_logger("broker_agent.events")

# Frequent events whose log line would cost more than the work: thousands of configs at
# start-up (summarised at info by the publisher) and one per provisioning reply (the MQTT
# event and the stations' manufacturing logs are the record).
_QUIET_EVENTS = frozenset({AgentEventName.CONFIG_PUBLISHED, AgentEventName.PROVISIONED})
_WARNINGS = frozenset({AgentEventName.CONFIG_REJECTED, AgentEventName.PRUNE_BLOCKED})


def _without_envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("event", "ts")}


def agent_presence(topics: Topics, agent_id: str) -> Presence:
    offline = AgentStatus(state=PresenceState.OFFLINE, agent_id=agent_id)
    spec = TOPICS[TopicKind.AGENT_STATUS]
    return Presence(topics.agent_status(agent_id), offline.to_json(), qos=spec.qos)


def agent_online(agent_id: str, devices: int, since: str) -> bytes:
    return AgentStatus(
        state=PresenceState.ONLINE,
        agent_id=agent_id,
        version=__version__,
        devices=devices,
        since=since,
    ).to_json()


class AgentEvents:
    def __init__(self, topics: Topics, agent_id: str) -> None:
        self.agent_id = agent_id
        self.topic = topics.agent_events(agent_id)
        self.connection: Connection | None = None  # set while connected
        self.listeners: list[Callable[[AgentEventName, dict[str, Any]], None]] = []
        """Told every event with its wire form, connected or not (the agent's metrics)."""

    async def emit(self, event: AgentEventName, **fields: Any) -> None:
        """Publish one event when connected; always log it."""
        error = fields.pop("error", None)
        if error is not None and not isinstance(error, ErrorDetail):
            error = ErrorDetail(code=str(error[0]), message=str(error[1]))
        # Built from the agent's own values, so not re-validated here (this runs for every
        # provisioning reply); the tests validate every event against the generated schema.
        payload = AgentEvent.model_construct(event=event, ts=utc_timestamp(), error=error, **fields)
        data = payload.dump()
        for listener in self.listeners:
            listener(event, data)
        if event in _WARNINGS:
            log.warning(str(event), **_without_envelope(data))
        elif event in _QUIET_EVENTS:
            log.debug(str(event), **_without_envelope(data))
        else:
            log.info(str(event), **_without_envelope(data))
        connection = self.connection
        if connection is None:
            return
        spec = TOPICS[TopicKind.AGENT_EVENTS]
        # a failure means the connection is going away; the session loop reconnects
        with contextlib.suppress(BrokerUnavailableError):
            await connection.publish(
                self.topic,
                json.dumps(data, separators=(",", ":")).encode(),
                qos=spec.qos,
                retain=spec.retained,
            )
