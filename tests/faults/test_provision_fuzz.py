"""Fault (e): generated provisioning requests against the agent running as its own process.

Random bytes, random JSON and near-valid requests, each with an MQTT v5 Response Topic that is
either the requester's own (its default topic or below it) or hostile (another device's, the
agent's, a sibling, a prefix). Every request is answered exactly once, with a contract status
and code, on the requester's own subtree (``iot/provision/<device_id>/response[/...]``: the
Response Topic when it is allowed, else the default topic), and the agent never crashes.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.payloads import ProvisionError, ProvisionOk
from tests.faults.conftest import KITCHEN
from tests.support.agent_process import AgentProcess, went_online
from tests.support.broker import Broker
from tests.support.mqtt import observe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.allow_contract_violations,  # malformed requests on purpose; replies checked here
]

DEVICES = ("kitchen-01", "nobody-1")  # one with credentials, one unknown


@dataclass
class Seen:
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass
class Requester:
    """One paho v5 client subscribed to everything, kept for all examples (connects once)."""

    port: int
    replies: queue.Queue[Seen] = field(default_factory=queue.Queue)
    everything: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        # No Local: our own requests (which carry our correlation data) are not echoed to us
        self.client.subscribe("#", options=SubscribeOptions(qos=1, noLocal=True))
        assert subscribed.wait(10)

    def _on_message(self, _: paho.Client, __: object, message: paho.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        seen = Seen(message.topic, bytes(message.payload), correlation)
        with self.lock:
            self.everything.append(seen)
        if correlation is not None and correlation.startswith(b"fuzz-"):
            self.replies.put(seen)

    def ask(self, device: str, payload: bytes, response_topic: str, correlation: bytes) -> Seen:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        self.client.publish(
            f"iot/provision/{device}/request", payload, qos=1, properties=props
        ).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            if seen.correlation == correlation:
                return seen
        raise AssertionError(f"no reply to {correlation!r}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=70)
_objects = st.dictionaries(
    st.sampled_from(["request_id", "partition_size", "device_id", "x"]),
    _scalars | st.sampled_from([0x3000, 0x5000, 0x4001, 0x100000, 0x101000]),
    max_size=3,
)
_json = st.recursive(
    _scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
PAYLOADS = st.one_of(
    _objects.map(lambda d: json.dumps(d).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80),
    st.sampled_from([b'{"request_id": "r", "partition_size": NaN}', b'{"request_id": "\\ud800"}']),
)
_suffix = st.text("abcxyz019-_./", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("/") and "//" not in s
)


@st.composite
def response_topics(draw: st.DrawFn, device: str) -> tuple[str, bool]:
    """A Response Topic and whether the contract lets the agent answer on it."""
    own = f"iot/provision/{device}/response"
    allowed = st.one_of(st.just(own), _suffix.map(lambda s: f"{own}/{s}"))
    hostile = st.sampled_from(
        [
            f"iot/provision/{'nobody-1' if device == 'kitchen-01' else 'kitchen-01'}/response",
            f"iot/provision/{device}/responses",
            f"iot/provision/{device}/request",
            f"iot/provision/{device}",
            f"iot/devices/{device}/config",
            "iot/agents/fault-agent/status",
            f"{own}/",
            f"other/provision/{device}/response",
        ]
    )
    if draw(st.booleans()):
        return draw(allowed), True
    return draw(hostile), False


@pytest.fixture
def running(broker: Broker, agent_process: AgentProcess) -> Iterator[Requester]:
    agent_process.broker_url = broker.url

    async def start() -> None:
        async with observe(broker.url, agent_process.status_topic) as seen:
            agent_process.start()
            await seen.wait_for(lambda: went_online(seen, agent_process, 0), timeout=30)

    asyncio.run(start())
    requester = Requester(broker.port)
    yield requester
    requester.close()


CODES = {code.value for code in ProvisionErrorCode}


def test_generated_requests_are_each_answered_once_on_the_requesters_subtree(
    running: Requester, agent_process: AgentProcess
) -> None:
    counter = iter(range(1_000_000))
    asked: dict[bytes, str] = {}

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data(), payload=PAYLOADS, device=st.sampled_from(DEVICES))
    def one_request(data: st.DataObject, payload: bytes, device: str) -> None:
        topic, allowed = data.draw(response_topics(device))
        correlation = f"fuzz-{next(counter)}".encode()
        asked[correlation] = device
        reply = running.ask(device, payload, topic, correlation)
        assert reply.topic == (topic if allowed else f"iot/provision/{device}/response")
        document = json.loads(reply.payload)
        if document["status"] == "ok":
            assert device == ProvisionOk.model_validate(document).device_id
        else:
            error = ProvisionError.model_validate(document)
            assert error.error.code in CODES
            assert error.error.code != ProvisionErrorCode.INTERNAL_ERROR
            if not allowed:
                assert ProvisionErrorCode.INVALID_RESPONSE_TOPIC == error.error.code
        assert KITCHEN["client_secret"] not in reply.payload.decode("utf-8", "replace")

    one_request()
    time.sleep(0.5)  # a late duplicate would arrive within this
    with running.lock:
        ours = [seen for seen in running.everything if seen.correlation in asked]
    counts: dict[bytes, int] = {}
    for seen in ours:
        counts[seen.correlation or b""] = counts.get(seen.correlation or b"", 0) + 1
        device = asked[seen.correlation or b""]
        own = f"iot/provision/{device}/response"
        assert seen.topic == own or seen.topic.startswith(own + "/"), seen.topic
    assert {correlation: 1 for correlation in asked} == counts
    assert agent_process.alive, agent_process.log_tail()
    assert [] == agent_process.crashes()
