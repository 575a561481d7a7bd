"""What a broker says it supports, read from its CONNACK (MQTT v5, section 3.2.2.3).

A property the broker leaves out means the protocol's default: shared subscriptions,
subscription identifiers, retained messages and wildcards available, QoS 2, 65,535 messages in
flight, no packet size limit. Measured on Mosquitto 2.0.11: it sends ``RetainAvailable 0``
with ``retain_available false``, ``MaximumPacketSize`` with ``max_packet_size``,
``MaximumQoS 0`` with ``max_qos 0`` and ``ReceiveMaximum`` (its ``max_inflight_messages``,
default 20), and never announces missing shared subscriptions or wildcards: it has both.

What the project does about each (``required_problem``, ``shared_filter``):

- no retained messages: refused (exit 2); device configs and presence are retained;
- no wildcard subscriptions: refused (exit 2); every service subscribes to ``+`` filters;
- QoS 0 only: refused (exit 2); configs, requests and answers are QoS 1;
- no shared subscriptions: plain filters instead, with a warning: one agent replica only;
- no subscription identifiers: subscribed without them (the responder's scan for retained
  requests then cannot tell its copies from the group's);
- a maximum packet size under 1.5 MB: a warning; a provisioning reply that would not fit is
  answered ``internal_error`` naming the limit (sent anyway, it got the agent disconnected:
  reason 0x95), see ``publish_packet_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker_agent.logs import get_logger

log = get_logger(__name__)

LARGEST_PROVISIONING_REPLY = 1_500_000
"""Bytes of the largest provisioning reply packet: a 0x100000 partition is 1,398,104 bytes of
base64 plus the JSON around it and the topic; 1.5 MB leaves room for both."""


def _varint_bytes(value: int) -> int:
    """Bytes of an MQTT Variable Byte Integer (1..4)."""
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


def publish_packet_size(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    correlation_data: bytes | None = None,
    response_topic: str | None = None,
    expiry_s: int | None = None,
) -> int:
    """Bytes of the whole PUBLISH packet (MQTT v5 3.3), what a Maximum Packet Size limits.

    A broker that announces a limit disconnects a client that sends a larger packet (Mosquitto
    2.0.11 ``max_packet_size``: DISCONNECT 0x95, measured), so check before publishing. This
    counts every byte, as the spec does; Mosquitto 2.0.11 leaves the remaining-length bytes out
    (measured with a 20,000 limit: 20,003 bytes passed, 20,004 were dropped), so this errs on
    the safe side by at most 3 bytes.
    """
    properties = 0
    if expiry_s is not None:
        properties += 1 + 4
    if correlation_data is not None:
        properties += 1 + 2 + len(correlation_data)
    if response_topic is not None:
        properties += 1 + 2 + len(response_topic.encode())
    remaining = 2 + len(topic.encode()) + (2 if qos else 0)
    remaining += _varint_bytes(properties) + properties + len(payload)
    return 1 + _varint_bytes(remaining) + remaining


@dataclass(frozen=True)
class BrokerCapabilities:
    retain: bool = True
    wildcard_subscriptions: bool = True
    shared_subscriptions: bool = True
    subscription_identifiers: bool = True
    maximum_qos: int = 2
    maximum_packet_size: int | None = None  # None: no limit announced
    receive_maximum: int = 65_535

    @classmethod
    def from_connack(cls, properties: Any) -> BrokerCapabilities:
        """From paho's CONNACK ``Properties`` (or None: a 3.1.1 broker announces nothing)."""

        def flag(name: str) -> bool:
            return bool(getattr(properties, name, 1))

        maximum_packet = getattr(properties, "MaximumPacketSize", None)
        return cls(
            retain=flag("RetainAvailable"),
            wildcard_subscriptions=flag("WildcardSubscriptionAvailable"),
            shared_subscriptions=flag("SharedSubscriptionAvailable"),
            subscription_identifiers=flag("SubscriptionIdentifierAvailable"),
            maximum_qos=int(getattr(properties, "MaximumQoS", 2)),
            maximum_packet_size=int(maximum_packet) if maximum_packet is not None else None,
            receive_maximum=int(getattr(properties, "ReceiveMaximum", 65_535)),
        )

    def required_problem(self) -> str | None:
        """Why this project cannot use the broker at all, or None."""
        if not self.retain:
            return (
                "does not support retained messages (CONNACK Retain Available 0); device "
                "configs and presence are retained messages"
            )
        if not self.wildcard_subscriptions:
            return (
                "does not support wildcard subscriptions (CONNACK Wildcard Subscription "
                "Available 0); every service subscribes to + filters"
            )
        if self.maximum_qos < 1:
            return (
                "supports QoS 0 only (CONNACK Maximum QoS 0); configs, requests and answers "
                "are published at QoS 1"
            )
        return None

    def fits(self, packet_bytes: int) -> bool:
        return self.maximum_packet_size is None or packet_bytes <= self.maximum_packet_size

    def as_log(self) -> dict[str, Any]:
        return {
            "retain": self.retain,
            "wildcards": self.wildcard_subscriptions,
            "shared_subscriptions": self.shared_subscriptions,
            "subscription_ids": self.subscription_identifiers,
            "maximum_qos": self.maximum_qos,
            "maximum_packet_size": self.maximum_packet_size,
            "receive_maximum": self.receive_maximum,
        }


def shared_filter(capabilities: BrokerCapabilities, group: str | None, topic_filter: str) -> str:
    """The filter to subscribe to for work split between replicas in ``group``.

    ``$share/<group>/<filter>`` when the broker has shared subscriptions; otherwise the plain
    filter, with a warning: every replica would then get (and answer) every message.
    """
    if group is None:
        return topic_filter
    if capabilities.shared_subscriptions:
        return f"$share/{group}/{topic_filter}"
    log.warning(
        "shared_subscriptions_unavailable",
        topic_filter=topic_filter,
        consequence="plain subscription: only one replica may run against this broker",
    )
    return topic_filter
