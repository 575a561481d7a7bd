"""The agent's live fleet state (contract 6.2) and its retained summary on ``agents/{id}/fleet``.

Inputs: the retained ``config/applied`` and ``status`` of every device (subscribed here, QoS 0
so the broker's queue limits cannot drop any of a large fleet) and every change of the retained
configs, which the publisher reports (``ConfigPublisher.retained_listeners``: its own publishes
come back to it only through that, its config subscription being No Local). The session
subscribes here *before* the publisher publishes its sync marker, so once the publisher is
synced every retained ack and status has been seen too: no fixed sleep.

Output: the retained ``FleetSummary``, published when the counts change (and once per
session), at most once every ``min_interval_s`` (1 s, contract 6.2); pending devices whose
grace period runs out are moved at their deadline, so that alone also republishes it.

For the HTTP/metrics side: ``counts()`` (None until the first sync) and ``view`` (the devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from broker_agent.fleet.publisher import RETAINED_READ_TIMEOUT_S
from broker_agent.fleet.state import FleetView
from broker_agent.logs import get_logger
from broker_agent.mqtt import Connection, Message, raise_if_cancelled
from firmware_contracts.topics import TOPICS, TopicKind, TopicMatch, Topics

log = get_logger(__name__)

SUMMARY_MIN_INTERVAL_S = 1.0
_EXPIRY_SLACK_S = 0.01  # wake just after a deadline, so advance() sees it passed


class FleetTracker:
    def __init__(
        self,
        topics: Topics,
        agent_id: str,
        grace_s: float,
        *,
        min_interval_s: float = SUMMARY_MIN_INTERVAL_S,
    ) -> None:
        self.topics = topics
        self.topic = topics.agent_fleet(agent_id)
        self.view = FleetView(grace_s)
        self.min_interval_s = min_interval_s
        self.synced = False
        self.summaries_published = 0
        self._changed = asyncio.Event()

    # -- inputs (sync, from the dispatcher) ----------------------------------------------------
    def on_message(self, match: TopicMatch, message: Message) -> None:
        if match.kind is TopicKind.DEVICE_CONFIG_APPLIED:
            self.view.on_ack(match.identifier, message.payload)
        elif match.kind is TopicKind.DEVICE_STATUS:
            self.view.on_status(match.identifier, message.payload)
        else:
            return
        self._changed.set()

    def on_config(self, device_id: str, payload: bytes) -> None:
        """A retained config changed (``ConfigPublisher.retained_listeners``)."""
        self.view.on_config(device_id, payload)
        self._changed.set()

    # -- for the HTTP/metrics side ---------------------------------------------------------
    def counts(self) -> dict[str, int] | None:
        """Devices per fleet state and presence; None until the first full read."""
        return self.view.counts() if self.synced else None

    # -- per connection ------------------------------------------------------------------------
    async def subscribe(self, connection: Connection) -> None:
        """Start reading acks and statuses; call before the publisher's sync marker."""
        self.synced = False
        self.view.clear()
        for kind in (TopicKind.DEVICE_CONFIG_APPLIED, TopicKind.DEVICE_STATUS):
            await connection.subscribe(
                self.topics.filter(kind), qos=0, timeout=RETAINED_READ_TIMEOUT_S
            )

    async def publish_summaries(self, connection: Connection) -> None:
        """Once synced: keep the retained summary current for as long as the connection lives."""
        self.synced = True
        spec = TOPICS[TopicKind.AGENT_FLEET]
        last: dict[str, int] | None = None
        while True:
            self.view.advance()
            counts = self.view.counts()
            if counts != last:
                summary = self.view.summary()
                await connection.publish(
                    self.topic, summary.to_json(), qos=spec.qos, retain=spec.retained
                )
                raise_if_cancelled()
                last = counts
                self.summaries_published += 1
                log.debug("fleet_summary_published", **summary.dump())
                await asyncio.sleep(self.min_interval_s)
                continue
            self._changed.clear()
            expiry = self.view.next_expiry()
            timeout = None if expiry is None else max(0.0, expiry - time.time()) + _EXPIRY_SLACK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
