"""A service's retained presence: ``online`` while connected, ``offline`` by will or on exit.

One helper for the agent and the station: the will is set at connect time, the ``online``
payload is published once the service's subscriptions are active (and again when it changes),
and a clean shutdown publishes the same ``offline`` payload the will would.

The retained ``online`` carries an MQTT v5 Message Expiry Interval (``expiry_s``, default
300 s) and ``keep_fresh`` re-publishes it every ``refresh_s`` (default 120 s, so two refreshes
may be lost before it expires). A broker that loses the will (a cluster node that dies with the
session, a broker restarted from a snapshot taken while we were online) then stops showing a
dead service online within ``expiry_s`` instead of for good: a new subscriber gets nothing
(presence unknown) rather than a stale ``online``. ``offline`` never expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from broker_agent.errors import BrokerUnavailableError
from broker_agent.mqtt.client import Connection, Will
from broker_agent.mqtt.session import raise_if_cancelled

OFFLINE_PUBLISH_TIMEOUT_S = 2.0
DEFAULT_EXPIRY_S = 300
DEFAULT_REFRESH_S = 120.0


class Presence:
    def __init__(
        self,
        topic: str,
        offline: bytes,
        *,
        qos: int = 1,
        expiry_s: int = DEFAULT_EXPIRY_S,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        self.topic = topic
        self.offline = offline
        self.qos = qos
        self.expiry_s = expiry_s
        self.refresh_s = refresh_s
        self._last: bytes | None = None
        self._published_at = 0.0

    def expiring(self, expiry_s: int, refresh_s: float) -> Presence:
        """Set the ``online`` expiry and refresh period (from settings); returns self."""
        self.expiry_s = expiry_s
        self.refresh_s = refresh_s
        return self

    def will(self) -> Will:
        return Will(self.topic, self.offline, retain=True, qos=self.qos)

    async def announce(
        self, connection: Connection, payload: bytes, *, force: bool = False
    ) -> None:
        """Publish the retained ``online`` payload; skipped when unchanged unless ``force``."""
        if payload == self._last and not force:
            return
        await connection.publish(
            self.topic, payload, qos=self.qos, retain=True, expiry_s=self.expiry_s
        )
        self._last = payload
        self._published_at = time.monotonic()

    async def keep_fresh(self, connection: Connection) -> None:
        """Re-publish the last ``online`` payload before it expires, until cancelled.

        Run it as a task of the session, next to the service's own announcements: a refresh is
        due ``refresh_s`` after the latest publish, whoever made it.
        """
        while True:
            due = self._published_at + self.refresh_s - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            if self._last is not None:
                await self.announce(connection, self._last, force=True)
                raise_if_cancelled()
            else:
                await asyncio.sleep(self.refresh_s)

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
