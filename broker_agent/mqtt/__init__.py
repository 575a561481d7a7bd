"""MQTT: the only package that imports aiomqtt or paho.

Everything else uses ``Connection`` (publish/subscribe), ``Message`` (incoming), ``Router``,
``Presence``, the reconnect loop and the publishing pool from here; failures arrive as
``broker_agent.errors.BrokerUnavailableError`` (a refused subscription as
``SubscriptionRefusedError``, a ``SetupError``). ``Connection.capabilities`` says what the
broker supports; ``shared_filter`` picks a shared or plain subscription from it.
"""

from broker_agent.mqtt.capabilities import BrokerCapabilities, publish_packet_size, shared_filter
from broker_agent.mqtt.client import (
    BrokerUrl,
    BrokerUrls,
    Connection,
    Message,
    SubscriptionRefusedError,
    Will,
    make_connection,
)
from broker_agent.mqtt.presence import Presence
from broker_agent.mqtt.publish import OutgoingMessage, publish_many, publish_stream
from broker_agent.mqtt.request_reply import PendingAnswers
from broker_agent.mqtt.router import Router
from broker_agent.mqtt.session import Backoff, raise_if_cancelled, run_forever_connected

__all__ = [
    "Backoff",
    "BrokerCapabilities",
    "BrokerUrl",
    "BrokerUrls",
    "Connection",
    "Message",
    "OutgoingMessage",
    "PendingAnswers",
    "Presence",
    "Router",
    "SubscriptionRefusedError",
    "Will",
    "make_connection",
    "publish_many",
    "publish_packet_size",
    "publish_stream",
    "raise_if_cancelled",
    "run_forever_connected",
    "shared_filter",
]
