"""Publishing the agent's events and status; every event is also logged (without secrets)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiomqtt

from broker_agent import __version__
from broker_agent.mqtt.client import Will
from broker_agent.logs import get_logger
from firmware_contracts.codes import AgentEventName, PresenceState
from firmware_contracts.payloads import AgentEvent, AgentStatus, ErrorDetail, utc_timestamp
from firmware_contracts.topics import TOPICS, TopicKind, Topics

log = get_logger("broker_agent.events")

# Frequent events whose log line would cost more than the work: thousands of configs at
# start-up (summarised at info by the publisher) and one per provisioning reply (the MQTT
# event and the stations' manufacturing logs are the record).
_QUIET_EVENTS = frozenset({AgentEventName.CONFIG_PUBLISHED, AgentEventName.PROVISIONED})


def _without_envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("event", "ts")}


class AgentPresence:
    def __init__(self, topics: Topics, agent_id: str) -> None:
        self.topics = topics
        self.agent_id = agent_id
        self.client: aiomqtt.Client | None = None
        self.since = utc_timestamp()

    @property
    def status_topic(self) -> str:
        return self.topics.agent_status(self.agent_id)

    def will(self) -> Will:
        offline = AgentStatus(state=PresenceState.OFFLINE, agent_id=self.agent_id)
        spec = TOPICS[TopicKind.AGENT_STATUS]
        return Will(self.status_topic, offline.to_json(), retain=spec.retained, qos=spec.qos)

    async def publish_status(self, client: aiomqtt.Client, devices: int) -> None:
        status = AgentStatus(
            state=PresenceState.ONLINE,
            agent_id=self.agent_id,
            version=__version__,
            devices=devices,
            since=self.since,
        )
        spec = TOPICS[TopicKind.AGENT_STATUS]
        await client.publish(
            self.status_topic, status.to_json(), qos=spec.qos, retain=spec.retained
        )

    async def publish_offline(self, client: aiomqtt.Client) -> None:
        will = self.will()
        await client.publish(will.topic, will.payload, qos=will.qos, retain=will.retain, timeout=2)

    async def emit(self, event: AgentEventName, **fields: Any) -> None:
        """Publish one event when connected; always log it."""
        error = fields.pop("error", None)
        if error is not None and not isinstance(error, ErrorDetail):
            error = ErrorDetail(code=str(error[0]), message=str(error[1]))
        # Built from the agent's own values, so not re-validated here (this runs for every
        # provisioning reply); the tests validate every event against the generated schema.
        payload = AgentEvent.model_construct(event=event, ts=utc_timestamp(), error=error, **fields)
        data = payload.dump()
        if event in (AgentEventName.CONFIG_REJECTED, AgentEventName.PRUNE_BLOCKED):
            log.warning(str(event), **_without_envelope(data))
        elif event in _QUIET_EVENTS:
            log.debug(str(event), **_without_envelope(data))
        else:
            log.info(str(event), **_without_envelope(data))
        client = self.client
        if client is None:
            return
        spec = TOPICS[TopicKind.AGENT_EVENTS]
        # a failure means the connection is going away; the session loop reconnects
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.topics.agent_events(self.agent_id),
                json.dumps(data, separators=(",", ":")).encode(),
                qos=spec.qos,
                retain=spec.retained,
            )
