"""Random flash commands against a running station: one answer each, never a crash.

One Mosquitto and one station serve every example (they run on a loop in a thread of their
own; hypothesis drives the examples from the test's thread). Each command carries unique
Correlation Data, so its answer is found wherever the station sent it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_agent.simulator import BoardConfig, port_of
from tests.station.harness import (
    REQUEST_TOPIC,
    RESPONSE_TOPIC,
    STATUS_TOPIC,
    Bench,
    boards,
)
from tests.support.mqtt import client_for, v5_properties
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(180)

TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Co"), exclude_characters="\x00"), max_size=80
)


def _mqtt_string_char(char: str) -> bool:
    """Mosquitto drops a client whose strings hold a control character or a Unicode
    noncharacter (MQTT 1.5.4): such a response topic never reaches the station."""
    code = ord(char)
    return not (0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE)


TOPIC_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc")).filter(_mqtt_string_char), max_size=80
)
NOT_A_URL = TEXT.filter(lambda text: "://" not in text)  # a random URL could reach the network


def commands(board_url: str) -> st.SearchStrategy[bytes]:
    ports = st.one_of(
        st.sampled_from(
            [
                board_url,
                f"socket://localhost:{port_of(board_url)}/",
                "socket://127.0.0.1:1",
                "/dev/ttyUSB97",
                "",
            ]
        ),
        NOT_A_URL,
        st.integers(),
    )
    anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
    fields = st.fixed_dictionaries(
        {},
        optional={
            "request_id": st.one_of(st.sampled_from(["fz-1", "x" * 64, "x" * 65]), TEXT, anything),
            "device_id": st.one_of(st.sampled_from(["kitchen-01", "Kitchen", "a/b"]), anything),
            "port": ports,
            "baud": st.one_of(st.sampled_from([9600, 115200, 460800, 5_000_001]), anything),
            "after": st.one_of(st.sampled_from(["no_reset", "hard_reset", "reboot"]), anything),
            "expected_mac": st.one_of(st.sampled_from(["24:0a:c4:00:00:01"]), anything),
            "force": anything,
        },
    )
    objects = st.tuples(fields, st.dictionaries(TEXT, anything, max_size=2)).map(
        lambda both: json.dumps({**both[1], **both[0]}).encode()
    )
    return st.one_of(objects, st.binary(max_size=200), TEXT.map(str.encode))


RESPONSE_TOPICS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "#",
            "+",
            f"{RESPONSE_TOPIC}/",
            f"{RESPONSE_TOPIC}x",
            f"{RESPONSE_TOPIC}/#",
            "iot/devices/kitchen-01/config",
            STATUS_TOPIC,
            "$SYS/broker",
            "/",
            RESPONSE_TOPIC,
        ]
    ),
    TOPIC_TEXT,
    TOPIC_TEXT.map(lambda tail: f"{RESPONSE_TOPIC}/{tail}"),
)


@dataclass
class Seen:
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass
class StationDriver:
    """The station and an observer on ``#`` in a loop of their own thread."""

    bench: Bench
    seen: list[Seen] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    loop: asyncio.AbstractEventLoop | None = None
    client: aiomqtt.Client | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stop: asyncio.Event | None = None

    async def main(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        settings_ = self.bench.station_settings(provision_timeout_s=0.3)
        async with running_station(settings_), client_for(self.bench.broker.url) as client:
            self.client = client
            await client.subscribe("#", qos=1)
            pump = asyncio.create_task(self.pump(client), name="fuzz-observer")
            self.ready.set()
            await self.stop.wait()
            pump.cancel()

    async def pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            correlation = getattr(message.properties, "CorrelationData", None)
            with self.changed:
                self.seen.append(Seen(str(message.topic), bytes(message.payload), correlation))
                self.changed.notify_all()

    def send(self, payload: bytes, response_topic: str | None, correlation: bytes) -> None:
        assert self.loop is not None and self.client is not None
        props = v5_properties(response_topic, correlation)
        publish = self.client.publish(REQUEST_TOPIC, payload, qos=1, properties=props)
        asyncio.run_coroutine_threadsafe(publish, self.loop).result(10)

    def finals(self, correlation: bytes) -> list[dict[str, Any]]:
        answers = [
            s for s in self.seen if s.correlation == correlation and s.topic != REQUEST_TOPIC
        ]
        events = [json.loads(answer.payload) for answer in answers]
        return [event for event in events if event["status"] in ("ok", "error")]

    def wait_final(self, correlation: bytes) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.finals(correlation), 15), correlation


@contextmanager
def station_in_thread(bench: Bench) -> Iterator[StationDriver]:
    driver = StationDriver(bench)
    failure: list[BaseException] = []

    def body() -> None:
        try:
            asyncio.run(driver.main())
        except BaseException as exc:
            failure.append(exc)
            driver.ready.set()

    thread = threading.Thread(target=body, name="fuzz-station")
    thread.start()
    try:
        assert driver.ready.wait(30) and not failure, failure
        yield driver
    finally:
        if driver.loop is not None and driver.stop is not None:
            driver.loop.call_soon_threadsafe(driver.stop.set)
        thread.join(30)
    assert not failure, failure  # the station never crashed


def test_random_commands_get_one_final_answer_each_inside_the_response_subtree(
    bench: Bench,
) -> None:
    sent: list[bytes] = []
    with boards(BoardConfig()) as [server], station_in_thread(bench) as driver:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(payload=commands(server.url), response_topic=RESPONSE_TOPICS)
        def one_command(payload: bytes, response_topic: str | None) -> None:
            correlation = f"fuzz-{len(sent)}".encode()
            sent.append(correlation)
            driver.send(payload, response_topic, correlation)
            driver.wait_final(correlation)

        one_command()
        driver.send(b"{}", None, b"fuzz-last")  # every answer before this one has arrived
        driver.wait_final(b"fuzz-last")
        with driver.changed:
            seen = list(driver.seen)
            answers = {correlation: driver.finals(correlation) for correlation in sent}

    assert {1} == {len(finals) for finals in answers.values()}
    published = {s.topic for s in seen if s.topic != REQUEST_TOPIC}
    outside = {
        topic
        for topic in published
        if topic not in (STATUS_TOPIC, RESPONSE_TOPIC)
        and not topic.startswith(f"{RESPONSE_TOPIC}/")
        and not (topic.startswith("iot/provision/") and topic.endswith("/request"))
    }
    assert set() == outside
