"""aiomqtt's client, keeping what it drops: the CONNACK properties and the broker's DISCONNECT.

aiomqtt 2.5 receives both from paho and discards them; ``ReportingClient`` overrides its two
paho callbacks to keep the CONNACK properties (``Connection.capabilities`` is read from them),
to lower paho's in-flight limit to the broker's Receive Maximum, and to log every DISCONNECT
the broker sends with its reason code and name, then hands on to aiomqtt. Also here: the error
a refused SUBSCRIBE raises.
"""

from __future__ import annotations

from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker_agent.errors import SetupError
from broker_agent.logs import get_logger

log = get_logger(__name__)


class SubscriptionRefusedError(SetupError):
    """The broker refused a SUBSCRIBE (SUBACK reason code 0x80 or above)."""

    def __init__(self, topic_filter: str, code: int, reason: str) -> None:
        super().__init__(
            f"the broker refused the subscription to {topic_filter}: {reason} (0x{code:02X})"
        )
        self.topic_filter = topic_filter
        self.code = code
        self.reason = reason


def reason_of(code: Any) -> tuple[str, str]:
    """A reason code as (``0x95``, ``Packet too large``); paho hands ints for local errors."""
    if isinstance(code, ReasonCode):
        return f"0x{code.value:02X}", str(code)
    if isinstance(code, int):
        return f"{code}", paho.error_string(code)
    return str(code), str(code)


class ReportingClient(aiomqtt.Client):
    """aiomqtt's client, also keeping the CONNACK properties and logging the broker's DISCONNECT.

    aiomqtt drops both; these overrides of its paho callbacks record them and hand on.
    """

    connack_properties: Properties | None = None
    url_display: str = ""

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.connack_properties = properties
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if receive_maximum and client.max_inflight_messages > receive_maximum:
            # MQTT v5 3.3.4: never more QoS>0 publishes in flight than the broker's Receive
            # Maximum (other brokers disconnect with 0x93; Mosquitto tolerates it). paho 2.2
            # ignores it and refuses to change its limit on an open connection; at CONNACK
            # nothing is in flight yet, so its field is set directly.
            client._max_inflight_messages = receive_maximum
        super()._on_connect(client, userdata, flags, reason_code, properties)

    @property
    def inflight_limit(self) -> int:
        """QoS>0 publishes paho lets be in flight at once on this connection."""
        return self._client.max_inflight_messages

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            code, name = reason_of(reason_code)
            log.warning(
                "broker_sent_disconnect",
                url=self.url_display,
                code=code,
                reason=name,
                reason_string=getattr(properties, "ReasonString", None),
            )
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
