"""``broker-agent check-broker [URL [URL2]]``: can this broker carry broker-agent?

Connects as the agent would (same client, credentials, TLS settings), tries each feature the
project relies on, under a random test prefix (``{root}/check-broker/<nonce>``, cleared at the
end), and prints one line per feature: ``ok``, ``missing`` (the broker says it has none, or
refused it) or ``failed`` (it claims the feature but the test did not come out right), whether
the project requires it, and what breaks without it. Exit status: 0 when every required
feature holds, 1 when one does not (or the broker cannot be reached), 2 for setup errors.

What is tried, and why:

- retained read-back through a wildcard of 1,001 retained messages, at QoS 0 behind a marker:
  the agent learns the broker's configs this way after each reconnect; a broker queue limit
  (Mosquitto's default ``max_queued_messages 1000``) silently drops the rest;
- QoS 1 both ways; MQTT v5 properties (response topic, correlation data, user properties,
  message expiry): provisioning requests and answers depend on them;
- Retain As Published (refusing retained requests), No Local (the agent's own configs not
  echoed), shared subscriptions (replicas splitting requests);
- the will, fired by a second client whose socket is closed without a DISCONNECT;
- a maximum packet size that fits the largest provisioning reply (a 0x100000 partition);
- with URL2: a retained message published through URL is seen through URL2 (a cluster that
  does not replicate retained state gives each node its own config state).

The retained read-back, shared subscription, will and URL2 checks hold two connections of the
account at once. A broker that binds client ids to user names (Mosquitto's
``use_username_as_clientid``, the production profile) lets the second close the first, which
used to show as false failures; it is now noticed first and reported as its own line
(``two connections of one account``), those checks are ``skipped``, and the exit status is 1
("not verified") when a required one was skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.mqtt import (
    Connection,
    Message,
    OutgoingMessage,
    SubscriptionRefusedError,
    Will,
    make_connection,
    publish_many,
)
from broker_agent.mqtt.capabilities import LARGEST_PROVISIONING_REPLY
from broker_agent.settings import MqttSettings

Status = Literal["ok", "missing", "failed", "skipped"]
BULK_COUNT = 1_001
WAIT_S = 10.0
TAKEOVER_WAIT_S = 1.0
"""How long a first connection is watched after a second one of the account connected.
Mosquitto 2.0.11 closes the first as it accepts the second (measured: well under 0.1 s)."""
TWO_CONNECTIONS = "two connections of one account"


@dataclass(frozen=True)
class Verdict:
    name: str
    status: Status
    required: bool
    detail: str
    breaks: str

    def line(self) -> str:
        need = "required" if self.required else "optional"
        text = f"{self.status:<8} {self.name:<34} {need:<9} {self.detail}"
        return text if self.status in ("ok", "skipped") else f"{text}; without it: {self.breaks}"


class Inbox:
    """Messages routed from a connection, and a way to wait for one."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self._changed.set()

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(self, ready: Callable[[], bool], timeout: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return ready()
        return True


class BrokerCheck:
    def __init__(
        self, settings: MqttSettings, urls: list[str], prefix: str, *, wait_s: float = WAIT_S
    ) -> None:
        self.settings = settings
        self.wait_s = wait_s  # how long a cluster may take to show URL's retained via URL2
        self.urls = urls
        self.prefix = prefix
        self.nonce = secrets.token_hex(4)
        self._count = 0
        self.qos = 1  # 0 on a broker that has only QoS 0, so the other checks can still run
        self.summary = ""  # what the CONNACK announced, one line
        self.one_connection = False  # a second connection of the account closes the first

    def connect(
        self, inbox: Inbox, *, url: str | None = None, will: Will | None = None
    ) -> Connection:
        self._count += 1
        return make_connection(
            self.settings,
            url or self.urls[0],
            client_id=f"check-broker-{self.nonce}-{self._count}",
            will=will,
            route=inbox,
            timeout=WAIT_S,
            require_features=False,
        )

    async def run(self) -> list[Verdict]:
        inbox = Inbox()
        async with self.connect(inbox) as first:
            caps = first.capabilities
            packet = f"{caps.maximum_packet_size:,} B" if caps.maximum_packet_size else "no limit"
            self.summary = (
                f"broker   {first.url.display()}: maximum QoS {caps.maximum_qos}, receive "
                f"maximum {caps.receive_maximum}, maximum packet size {packet}"
            )
        self.qos = min(1, caps.maximum_qos)
        self.one_connection = await self._second_connection_takes_over()
        verdicts = [
            _flag(
                "wildcard subscriptions",
                caps.wildcard_subscriptions,
                True,
                "every service subscribes to + filters",
            ),
            _flag(
                "subscription identifiers",
                caps.subscription_identifiers,
                False,
                "the responder's scan for retained requests cannot tell its copies apart",
            ),
        ]
        if self.one_connection:
            verdicts.append(
                Verdict(
                    TWO_CONNECTIONS,
                    "missing",
                    False,
                    "the broker binds client ids to user names (Mosquitto's "
                    "use_username_as_clientid): a second connection of this account closed "
                    "the first",
                    "the checks that need two connections at once are skipped; run "
                    "check-broker on a listener without use_username_as_clientid to run them",
                )
            )
        checks: list[tuple[str, bool, str, Callable[[], Awaitable[tuple[Status, str]]]]] = [
            (
                "retained read-back, 1,001 via +",
                True,
                "after a reconnect the agent misses retained configs and republishes or "
                "prunes wrongly",
                self.retained_bulk,
            ),
            ("QoS 1", True, "configs, requests and answers may be lost", self.qos1),
            (
                "v5 properties",
                True,
                "provisioning answers cannot find their requester "
                "(response topic, correlation data) or expire",
                self.v5_properties,
            ),
            (
                "Retain As Published",
                True,
                "retained provisioning requests and flash commands are answered over and over",
                self.retain_as_published,
            ),
            (
                "No Local",
                False,
                "the agent gets an echo of every config it publishes",
                self.no_local,
            ),
            (
                "shared subscriptions",
                False,
                "only one agent replica may run",
                self.shared_subscriptions,
            ),
            (
                "will",
                True,
                "a crashed agent or station stays online until its status expires",
                self.will,
            ),
            (
                f"packet size >= {LARGEST_PROVISIONING_REPLY:,} B",
                True,
                "provisioning a large NVS partition (up to 0x100000) is refused (internal_error)",
                self.packet_size,
            ),
        ]
        two_connections: list[Callable[[], Awaitable[tuple[Status, str]]]] = [
            self.retained_bulk,
            self.shared_subscriptions,
            self.will,
            self.cross_url,
        ]
        if len(self.urls) > 1:
            checks.append(
                (
                    "retained seen through URL2",
                    True,
                    "each node keeps its own configs and presence",
                    self.cross_url,
                )
            )
        for name, required, breaks, check in checks:
            if self.one_connection and check in two_connections:
                status: Status = "skipped"
                detail = f"not run: needs two connections at once (see {TWO_CONNECTIONS!r})"
            else:
                status, detail = await _outcome(check)
            verdicts.append(Verdict(name, status, required, detail, breaks))
        return verdicts

    async def _second_connection_takes_over(self) -> bool:
        """Whether a second connection of the account closes the first.

        On a broker that takes the client id from the user name (the production profile's
        ``use_username_as_clientid``), the checks that hold two connections at once (a reader
        and a writer, two group members, a watcher and a dying client) replaced each other
        and reported false failures: ``publish failed: The client is not currently
        connected``, ``no will within 10 s`` (measured, Mosquitto 2.0.11).
        """
        first = self.connect(Inbox())
        async with first, self.connect(Inbox()):
            try:
                await asyncio.wait_for(first.wait_disconnected(), TAKEOVER_WAIT_S)
            except TimeoutError:
                return False
            except BrokerUnavailableError:
                return True
        return False

    async def retained_bulk(self) -> tuple[Status, str]:
        topics = [f"{self.prefix}/bulk/{index}" for index in range(BULK_COUNT)]
        async with self.connect(Inbox()) as writer:
            if not writer.capabilities.retain:
                return "missing", "CONNACK Retain Available 0"
            try:
                await publish_many(
                    writer,
                    (OutgoingMessage(t, b"r", qos=self.qos, retain=True) for t in topics),
                    concurrency=100,
                )
                got = await self._read_retained(f"{self.prefix}/bulk/+")
            finally:
                await publish_many(
                    writer, (OutgoingMessage(t, b"", qos=self.qos, retain=True) for t in topics)
                )
        status: Status = "ok" if got == BULK_COUNT else "failed"
        hint = f" (may this account read and write {self.prefix}/#?)" if got == 0 else ""
        return status, f"read back {got:,} of {BULK_COUNT:,} at QoS 0{hint}"

    async def _read_retained(self, topic_filter: str, url: str | None = None) -> int:
        inbox = Inbox()
        marker = f"{self.prefix}/marker/{secrets.token_hex(4)}"
        async with self.connect(inbox, url=url) as reader:
            await reader.subscribe(topic_filter, qos=0)
            await reader.subscribe(marker, qos=0)
            await reader.publish(marker, b"end", qos=0)
            await inbox.wait_for(lambda: bool(inbox.on(marker)))
        return len({m.topic for m in inbox.messages if m.retain and m.payload})

    async def qos1(self) -> tuple[Status, str]:
        inbox = Inbox()
        topic = f"{self.prefix}/qos1"
        async with self.connect(inbox) as client:
            if client.capabilities.maximum_qos < 1:
                return "missing", "CONNACK Maximum QoS 0"
            granted = await client.subscribe(topic, qos=1)
            if granted < 1:
                return "missing", f"subscription granted QoS {granted}"
            await client.publish(topic, b"q", qos=1)  # returns once the PUBACK came
            if not await inbox.wait_for(lambda: bool(inbox.on(topic))):
                return "failed", "the message did not come back"
            qos = inbox.on(topic)[0].qos
        return ("ok" if qos == 1 else "failed"), f"delivered at QoS {qos}"

    async def v5_properties(self) -> tuple[Status, str]:
        inbox = Inbox()
        topic = f"{self.prefix}/props"
        sent = (f"{self.prefix}/props/reply", b"\x00corr\xff", ("check", "broker-agent"))
        async with self.connect(inbox) as client:
            await client.subscribe(topic, qos=self.qos)
            await client.publish(
                topic,
                b"p",
                qos=self.qos,
                response_topic=sent[0],
                correlation_data=sent[1],
                user_properties=[sent[2]],
                expiry_s=60,
            )
            if not await inbox.wait_for(lambda: bool(inbox.on(topic))):
                return "failed", "the message did not come back"
        got = inbox.on(topic)[0]
        lost = [
            name
            for name, kept in (
                ("response topic", got.response_topic == sent[0]),
                ("correlation data", got.correlation_data == sent[1]),
                ("user properties", sent[2] in got.user_properties),
                ("message expiry", got.expiry_s is not None and 0 < got.expiry_s <= 60),
            )
            if not kept
        ]
        if lost:
            return "failed", "lost: " + ", ".join(lost)
        return "ok", "response topic, correlation data, user properties, expiry kept"

    async def retain_as_published(self) -> tuple[Status, str]:
        inbox = Inbox()
        topic = f"{self.prefix}/rap"
        async with self.connect(inbox) as client:
            if not client.capabilities.retain:
                return "missing", "no retained messages (CONNACK Retain Available 0)"
            await client.subscribe(topic, qos=self.qos, retain_as_published=True, retain_handling=2)
            await client.publish(topic, b"r", qos=self.qos, retain=True)
            try:
                if not await inbox.wait_for(lambda: bool(inbox.on(topic))):
                    return "failed", "the message did not come back"
            finally:
                await client.publish(topic, b"", qos=self.qos, retain=True)
        flag = inbox.on(topic)[0].retain
        return ("ok" if flag else "failed"), f"live retained message arrived with retain={flag}"

    async def no_local(self) -> tuple[Status, str]:
        inbox = Inbox()
        topic, sentinel = f"{self.prefix}/nolocal", f"{self.prefix}/nolocal-end"
        async with self.connect(inbox) as client:
            await client.subscribe(topic, qos=self.qos, no_local=True)
            await client.subscribe(sentinel, qos=self.qos)
            await client.publish(topic, b"own", qos=self.qos)
            await client.publish(sentinel, b"end", qos=self.qos)
            if not await inbox.wait_for(lambda: bool(inbox.on(sentinel))):
                return "failed", "the sentinel did not come back"
        echoed = bool(inbox.on(topic))
        return ("failed", "own message echoed") if echoed else ("ok", "own message not echoed")

    async def shared_subscriptions(self) -> tuple[Status, str]:
        topic = f"{self.prefix}/shared"
        shared = f"$share/check-{self.nonce}/{topic}"
        one, two = Inbox(), Inbox()
        async with self.connect(one) as first, self.connect(two) as second:
            if not first.capabilities.shared_subscriptions:
                return "missing", "CONNACK Shared Subscription Available 0"
            await first.subscribe(shared, qos=self.qos)
            await second.subscribe(shared, qos=self.qos)
            for index in range(20):
                await first.publish(topic, str(index).encode(), qos=self.qos)
            await one.wait_for(lambda: len(one.messages) + len(two.messages) >= 20)
            await asyncio.sleep(0.2)  # a broker that copies to both shows it here
        total = len(one.messages) + len(two.messages)
        split = f"{len(one.messages)} + {len(two.messages)} of 20"
        return ("ok" if total == 20 else "failed"), f"delivered {split}"

    async def will(self) -> tuple[Status, str]:
        inbox = Inbox()
        topic = f"{self.prefix}/will"
        async with self.connect(inbox) as watcher:
            await watcher.subscribe(topic, qos=self.qos)
            dying = self.connect(Inbox(), will=Will(topic, b"gone", retain=False, qos=self.qos))
            async with dying:
                dying.abort()
            if not await inbox.wait_for(lambda: bool(inbox.on(topic))):
                return "failed", f"no will within {WAIT_S:.0f} s of a dropped connection"
        return "ok", "sent when a client's socket closed without DISCONNECT"

    async def packet_size(self) -> tuple[Status, str]:
        inbox = Inbox()
        topic = f"{self.prefix}/big"
        size = LARGEST_PROVISIONING_REPLY - 1_000
        async with self.connect(inbox) as client:
            limit = client.capabilities.maximum_packet_size
            if not client.capabilities.fits(LARGEST_PROVISIONING_REPLY):
                return "missing", f"CONNACK Maximum Packet Size {limit:,}"
            await client.subscribe(topic, qos=self.qos)
            await client.publish(topic, b"x" * size, qos=self.qos)
            if not await inbox.wait_for(lambda: bool(inbox.on(topic))):
                return "failed", f"a {size:,}-byte message did not come back"
        announced = f"{limit:,}" if limit is not None else "no limit"
        return "ok", f"{size:,} bytes came back (announced: {announced})"

    async def cross_url(self) -> tuple[Status, str]:
        topic = f"{self.prefix}/cross"
        async with self.connect(Inbox()) as writer:
            if not writer.capabilities.retain:
                return "missing", "no retained messages (CONNACK Retain Available 0)"
            await writer.publish(topic, b"c", qos=self.qos, retain=True)
            try:
                deadline = time.monotonic() + self.wait_s
                while not (seen := await self._read_retained(topic, url=self.urls[1])):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
            finally:
                await writer.publish(topic, b"", qos=self.qos, retain=True)
        if seen:
            return "ok", "a retained message published through URL was read through URL2"
        return "failed", f"not seen through URL2 within {self.wait_s:.0f} s"


async def _outcome(check: Callable[[], Awaitable[tuple[Status, str]]]) -> tuple[Status, str]:
    """Run one check; a refused subscription is ``missing``, a dropped connection ``failed``."""
    try:
        return await check()
    except SubscriptionRefusedError as exc:
        return "missing", f"subscription refused: {exc.reason} (0x{exc.code:02X})"
    except BrokerUnavailableError as exc:
        return "failed", str(exc)
    except ExceptionGroup as group:  # from a pool of publishing tasks
        lost, rest = group.split(BrokerUnavailableError)
        if lost is None or rest is not None:
            raise
        return "failed", str(lost.exceptions[0])


def _flag(name: str, available: bool, required: bool, breaks: str) -> Verdict:
    if available:
        return Verdict(name, "ok", required, "available (CONNACK)", breaks)
    return Verdict(name, "missing", required, "not available (CONNACK)", breaks)


def check_broker_command(args: argparse.Namespace, settings: MqttSettings) -> int:
    urls = [url for url in (args.url, args.url2) if url] or (
        [settings.broker_url] if settings.broker_url else []
    )
    if not urls:
        raise SetupError("check-broker needs a broker: pass URL or set BROKER_AGENT_BROKER_URL")
    nonce = secrets.token_hex(6)
    prefix = f"{args.prefix or settings.topic_root + '/check-broker'}/{nonce}"
    check = BrokerCheck(settings, urls, prefix)
    try:
        verdicts = asyncio.run(check.run())
    except BrokerUnavailableError as exc:
        print(f"failed   connect: {exc}")
        return 1
    print(check.summary)
    for verdict in verdicts:
        print(verdict.line())
    short = [v.name for v in verdicts if v.required and v.status not in ("ok", "skipped")]
    if short:
        print(f"not usable for broker-agent: {', '.join(short)}", file=sys.stderr)
        return 1
    skipped = [v.name for v in verdicts if v.required and v.status == "skipped"]
    if skipped:
        print(
            f"not verified: {', '.join(skipped)} (they need two connections of this account "
            "at once, which this broker does not allow)",
            file=sys.stderr,
        )
        return 1
    print("usable for broker-agent: every required feature holds")
    return 0
