"""The ``broker`` fixture's other mode: a broker the suite did not start.

With ``BROKER_AGENT_TEST_BROKER_URL`` set (credentials in the URL, or in
``BROKER_AGENT_MQTT_USERNAME``/``..._PASSWORD``), every test gets that broker with a topic root
of its own, ``<BROKER_AGENT_TEST_TOPIC_BASE>-<nonce>`` (base default ``broker-agent-test``),
so tests cannot see each other's retained state even when they run at the same time. One
segment, like ``iot``: tests that pick a device id out of a topic by position keep working. The root
is also put in ``BROKER_AGENT_TOPIC_ROOT`` for the test's duration, so every settings object
(``agent_settings``, ``StationSettings()``, a CLI run in a subprocess) uses it without being
told. What the test left retained under its root is cleared at teardown.

Tests that stop, restart or reconfigure the broker carry ``@pytest.mark.needs_own_broker`` and
are skipped in this mode. docs/development.md says how to run it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, field

from broker_agent.mqtt import BrokerUrls, Message, make_connection
from broker_agent.settings import MqttSettings

URL_VARIABLE = "BROKER_AGENT_TEST_BROKER_URL"
BASE_VARIABLE = "BROKER_AGENT_TEST_TOPIC_BASE"
OWN_BROKER_REASON = (
    f"stops, restarts or reconfigures the broker: needs the suite's own Mosquitto "
    f"({URL_VARIABLE} is set)"
)


def external_url() -> str | None:
    return os.environ.get(URL_VARIABLE) or None


@dataclass
class ExternalBroker:
    """Quacks like ``tests.support.broker.Broker`` for tests that only connect to it."""

    url: str = field(repr=False)  # may carry the test account's password
    root: str

    @classmethod
    def for_one_test(cls, url: str) -> ExternalBroker:
        base = os.environ.get(BASE_VARIABLE) or "broker-agent-test"
        return cls(url, f"{base}-{secrets.token_hex(6)}")

    @property
    def host(self) -> str:
        return BrokerUrls.parse(self.url).current.host

    @property
    def port(self) -> int:
        return BrokerUrls.parse(self.url).current.port

    async def clear_root(self) -> int:
        """Clear every retained message under the test's root; returns how many there were."""
        found: list[str] = []
        marker = f"{self.root}/_teardown-marker"
        done = asyncio.Event()

        def route(message: Message) -> None:
            if message.topic == marker:
                done.set()
            elif message.retain and message.payload:
                found.append(message.topic)

        client_id = f"test-teardown-{secrets.token_hex(4)}"
        async with make_connection(
            MqttSettings(), self.url, client_id=client_id, route=route
        ) as connection:
            await connection.subscribe(f"{self.root}/#", qos=0)
            await connection.publish(marker, b"end", qos=0)
            await asyncio.wait_for(done.wait(), 10)
            for topic in found:
                await connection.publish(topic, b"", qos=1, retain=True)
        return len(found)
