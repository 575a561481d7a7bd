"""A service's retained presence: ``online`` while connected, ``offline`` by will or on exit.

One helper for the agent and the station: the will is set at connect time, the ``online``
payload is published once the service's subscriptions are active (and again when it changes),
and a clean shutdown publishes the same ``offline`` payload the will would.
"""

from __future__ import annotations

import contextlib

from broker_agent.errors import BrokerUnavailableError
from broker_agent.mqtt.client import Connection, Will

OFFLINE_PUBLISH_TIMEOUT_S = 2.0


class Presence:
    def __init__(self, topic: str, offline: bytes, *, qos: int = 1) -> None:
        self.topic = topic
        self.offline = offline
        self.qos = qos
        self._last: bytes | None = None

    def will(self) -> Will:
        return Will(self.topic, self.offline, retain=True, qos=self.qos)

    async def announce(
        self, connection: Connection, payload: bytes, *, force: bool = False
    ) -> None:
        """Publish the retained ``online`` payload; skipped when unchanged unless ``force``."""
        if payload == self._last and not force:
            return
        await connection.publish(self.topic, payload, qos=self.qos, retain=True)
        self._last = payload

    async def withdraw(self, connection: Connection) -> None:
        """Publish ``offline`` (clean shutdown); a connection already gone is fine."""
        self._last = None
        with contextlib.suppress(BrokerUnavailableError):
            await connection.publish(
                self.topic,
                self.offline,
                qos=self.qos,
                retain=True,
                timeout=OFFLINE_PUBLISH_TIMEOUT_S,
            )
