"""Benchmark: fleet state and config writes at fleet scale (issue 11's targets).

Run: python bench/bench_fleet_state.py [--devices 100000] [--baseline 10000]
The agent runs as its own process (``broker-agent run``) against a private Mosquitto; a paho
load generator in this process plays the devices. Printed, each with its target:
  1. cold sync of --baseline configs, then of --devices configs (ratio <= 11x);
  2. the agent's state keeping up with --devices acks + statuses published retained;
  3. agent restart: process start to a summary with every device in_sync (<= 10 s); peak RSS
     (<= 300 MB);
  4. ``broker-agent status``'s read of the whole fleet (<= 5 s), beside a bare paho client
     reading the same retained messages to a marker;
  5. a burst of 10,000 acks to the summary showing them (<= 2 s after the last PUBACK);
  6. config writes: one at a time (p99 <= 50 ms) and with 50 outstanding (>= 500/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker_agent.broker.process import MosquittoProcess, free_port  # noqa: E402
from broker_agent.commands.status import read_fleet  # noqa: E402
from broker_agent.fleet.files import FleetSchema, load_config  # noqa: E402
from broker_agent.settings import MqttSettings  # noqa: E402

AGENT = "bench"
FLEET = f"iot/agents/{AGENT}/fleet"
STATUS = f"iot/agents/{AGENT}/status"


def make_configs(directory: Path, count: int) -> dict[str, str]:
    """``count`` config files; returns device_id -> sha256 as the agent will publish it."""
    directory.mkdir(parents=True, exist_ok=True)
    shas = {}
    schema = FleetSchema(None)
    for index in range(count):
        device = f"dev-{index:06}"
        config = {"interval": 30 + index % 60, "led": {"level": index % 100}, "site": "plant-3"}
        path = directory / f"{device}.json"
        path.write_text(json.dumps(config))
        shas[device] = load_config(path, schema, 1 << 16).sha256
    return shas


class Paho:
    """A paho v5 client on its own thread; ``on_message`` is called on that thread."""

    def __init__(self, port: int, on_message: Callable[[mqtt.MQTTMessage], None] | None = None):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        if on_message is not None:
            self.client.on_message = lambda c, u, m: on_message(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10)
        # paho leaves Nagle on: each request would wait ~40 ms for the previous PUBACK's ACK
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def publish_all(self, messages: list[tuple[str, bytes]], retain: bool = True) -> None:
        # in slices: message ids are 16 bits, and a mid still in flight cannot be reused
        for start in range(0, len(messages), 20_000):
            infos = [
                self.client.publish(t, p, qos=1, retain=retain)
                for t, p in messages[start : start + 20_000]
            ]
            for info in infos:
                info.wait_for_publish(120)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FleetWatch:
    """Live (not retained) fleet summaries and agent statuses, as they arrive."""

    def __init__(self, port: int) -> None:
        self.cond = threading.Condition()
        self.summaries: list[tuple[float, dict[str, Any]]] = []
        self.online_at: float | None = None
        self.paho = Paho(port, self._on)
        self.paho.client.subscribe([(FLEET, 0), (STATUS, 0)])

    def _on(self, message: mqtt.MQTTMessage) -> None:
        if message.retain or not message.payload:
            return
        document = json.loads(message.payload)
        with self.cond:
            if message.topic == FLEET:
                self.summaries.append((time.monotonic(), document))
            elif document.get("state") == "online":
                self.online_at = time.monotonic()
            self.cond.notify_all()

    def wait(self, test: Callable[[], Any], timeout: float = 300) -> Any:
        with self.cond:
            assert self.cond.wait_for(test, timeout), "timed out"
            return test()

    def summary_when(self, check: Callable[[dict[str, Any]], bool], after: float = 0) -> float:
        def found() -> float | None:
            return next((t for t, s in self.summaries if t >= after and check(s)), None)

        return float(self.wait(found))

    def reset(self) -> None:
        with self.cond:
            self.summaries.clear()
            self.online_at = None


class AgentProcess:
    def __init__(self, port: int, config_dir: Path, work: Path) -> None:
        env = dict(os.environ)
        env.update(
            BROKER_AGENT_LOG_LEVEL="warning",
            BROKER_AGENT_LOG_FORMAT="json",
            BROKER_AGENT_HTTP_LISTEN="",
        )
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker_agent.cli",
                "run",
                "--broker-url",
                f"mqtt://127.0.0.1:{port}",
                "--config-dir",
                str(config_dir),
                "--secrets-dir",
                str(work / "secrets"),
                "--agent-id",
                AGENT,
            ],
            env=env,
            cwd=ROOT,
            stderr=(work / "agent.log").open("ab"),
        )

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def start_broker(work: Path) -> MosquittoProcess:
    text = (ROOT / "mosquitto.conf").read_text().replace("persistence true", "persistence false")
    broker = MosquittoProcess(text, work / f"broker-{secrets.token_hex(3)}", port=free_port())
    broker.start()
    return broker


def cold_sync(
    work: Path, config_dir: Path
) -> tuple[float, MosquittoProcess, AgentProcess, FleetWatch]:
    broker = start_broker(work)
    port = broker.port
    assert port is not None
    watch = FleetWatch(port)
    agent = AgentProcess(port, config_dir, work)
    watch.wait(lambda: watch.online_at)
    assert watch.online_at is not None
    return watch.online_at - agent.started, broker, agent, watch


def row(name: str, value: float, unit: str, target: str, ok: bool) -> None:
    print(f"{name:<52} {value:>9.2f} {unit:<6} target {target:<12} {'ok' if ok else 'MISSED'}")


def bare_read(port: int, expected: int) -> float:
    """A paho client reading every retained device message to a marker (the floor)."""
    done = threading.Event()
    count = [0]
    marker = f"iot/bench-marker/{secrets.token_hex(4)}"

    def on(message: mqtt.MQTTMessage) -> None:
        if message.topic == marker:
            done.set()
        else:
            count[0] += 1

    started = time.monotonic()
    client = Paho(port, on)
    client.client.subscribe(
        [
            ("iot/devices/+/config", 0),
            ("iot/devices/+/config/applied", 0),
            ("iot/devices/+/status", 0),
        ]
    )
    client.client.subscribe(marker, 0)
    client.client.publish(marker, b"x", qos=0)
    assert done.wait(120)
    elapsed = time.monotonic() - started
    client.close()
    assert count[0] >= expected, count[0]
    return elapsed


class Writer:
    """MQTT v5 config writes, answers matched by correlation data."""

    def __init__(self, port: int) -> None:
        self.waiting: dict[bytes, threading.Event] = {}
        self.answers: dict[bytes, dict[str, Any]] = {}
        self.window: threading.Semaphore | None = None
        self.paho = Paho(port, self._on)
        self.paho.client.subscribe("iot/devices/+/config/set/response/bench/#", 1)
        time.sleep(0.2)

    def _on(self, message: mqtt.MQTTMessage) -> None:
        correlation = bytes(message.properties.CorrelationData)  # type: ignore[union-attr]
        self.answers[correlation] = json.loads(message.payload)
        self.waiting.pop(correlation).set()
        if self.window is not None:
            self.window.release()

    def send(self, device: str, config: dict[str, Any]) -> threading.Event:
        correlation = secrets.token_bytes(8)
        event = self.waiting[correlation] = threading.Event()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"iot/devices/{device}/config/set/response/bench/x"
        props.CorrelationData = correlation
        self.paho.client.publish(
            f"iot/devices/{device}/config/set",
            json.dumps({"config": config}),
            qos=1,
            properties=props,
        )
        return event

    def one(self, device: str, config: dict[str, Any]) -> float:
        started = time.perf_counter()
        assert self.send(device, config).wait(10)
        return time.perf_counter() - started


def writes(port: int, devices: list[str]) -> tuple[float, float, float]:
    writer = Writer(port)
    latencies = sorted(writer.one(devices[i], {"w": i}) for i in range(300))
    p50, p99 = latencies[150], latencies[int(300 * 0.99)]
    total = 2000
    writer.window = threading.Semaphore(50)  # released by each answer
    started = time.perf_counter()
    events = []
    for i in range(total):
        assert writer.window.acquire(timeout=30)
        events.append(writer.send(devices[1000 + i], {"w2": i}))
    for event in events:
        assert event.wait(30)
    rate = total / (time.perf_counter() - started)
    bad = [a for a in writer.answers.values() if a["status"] != "ok"]
    assert not bad, bad[:3]
    writer.paho.close()
    return p50 * 1000, p99 * 1000, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    args = parser.parse_args()
    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        print(f"devices {n:,}, baseline {args.baseline:,}, {os.cpu_count()} CPUs")
        make_configs(work / "small", args.baseline)
        shas = make_configs(work / "full", n)
        devices = sorted(shas)

        small, broker, agent, watch = cold_sync(work, work / "small")
        agent.stop(), watch.paho.close(), broker.stop()
        full, broker, agent, watch = cold_sync(work, work / "full")
        row(f"cold sync {args.baseline:,} configs", small, "s", "-", True)
        row(
            f"cold sync {n:,} configs (ratio {full / small:.1f}x)",
            full,
            "s",
            "<= 11x",
            full <= 11 * small,
        )
        port = broker.port
        assert port is not None

        load = Paho(port)
        started = time.monotonic()
        ok_ack = {
            d: json.dumps({"sha256": s, "ok": True, "error": None}).encode()
            for d, s in shas.items()
        }
        online = b'{"state":"online","fw_version":"1.4.2"}'
        load.publish_all([(f"iot/devices/{d}/config/applied", ok_ack[d]) for d in devices])
        load.publish_all([(f"iot/devices/{d}/status", online) for d in devices])
        published = time.monotonic()
        synced = watch.summary_when(lambda s: s["in_sync"] == n and s["online"] == n)
        row(f"{2 * n:,} acks+statuses published retained", published - started, "s", "-", True)
        row("  agent summary caught up, after the last PUBACK", synced - published, "s", "-", True)

        agent.stop()
        watch.reset()
        agent = AgentProcess(port, work / "full", work)
        complete = watch.summary_when(lambda s: s["in_sync"] == n and s["online"] == n)
        restart = complete - agent.started
        # the floor under it: a bare paho v5 client reading the same retained messages
        floor = bare_read(port, 3 * n)
        row(
            f"agent restart to full state (bare paho read {floor:.2f} s, {restart / floor:.2f}x)",
            restart,
            "s",
            "<= 10 s",
            restart <= 10,
        )

        settings = MqttSettings(broker_url=f"mqtt://127.0.0.1:{port}")
        begin = time.monotonic()
        view = asyncio.run(read_fleet(settings, settings.broker_url or "", timeout=120))
        status_s = time.monotonic() - begin
        assert len(view) == n and view.counts()["in_sync"] == n
        row(
            f"status reads {n:,} devices (bare paho {floor:.2f} s, {status_s / floor:.1f}x)",
            status_s,
            "s",
            "<= 5 s",
            status_s <= 5,
        )

        burst = devices[:10_000]
        failed = {
            d: json.dumps(
                {"sha256": shas[d], "ok": False, "error": {"code": "x", "message": "y"}}
            ).encode()
            for d in burst
        }
        watch.reset()
        begin = time.monotonic()
        load.publish_all([(f"iot/devices/{d}/config/applied", failed[d]) for d in burst])
        last_puback = time.monotonic()
        shown = watch.summary_when(lambda s: s["failed"] == len(burst))
        row(
            f"burst of {len(burst):,} acks: last PUBACK to summary",
            shown - last_puback,
            "s",
            "<= 2 s",
            shown - last_puback <= 2,
        )
        row("  (first ack to summary)", shown - begin, "s", "-", True)

        p50, p99, rate = writes(port, devices)
        row("config write one at a time, p50", p50, "ms", "-", True)
        row("config write one at a time, p99", p99, "ms", "<= 50 ms", p99 <= 50)
        row("config writes with 50 outstanding", rate, "/s", ">= 500/s", rate >= 500)
        rss = agent.peak_rss_mb()
        row(f"agent peak RSS, {n:,} devices", rss, "MB", "<= 300 MB", rss <= 300)
        agent.stop(), load.close(), watch.paho.close(), broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
