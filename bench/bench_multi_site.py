"""Benchmark: config edit -> device at a site (through a bridge), beside one broker, same run.

Run: python bench/bench_multi_site.py [--edits 200] [--devices 100]

Two topologies run side by side, each with its own in-process agent and config directory:
  single   the agent and the device on one Mosquitto (the baseline);
  site     the agent on a central Mosquitto, the device on a site Mosquitto bridged to it with
           the sections `broker-agent bridge-config` prints (broker/bridge.py).
Edits alternate between the two (single, site, single, ...), one at a time, so both see the
same machine load. Latency: file written -> the device's paho client (its own thread) received
the envelope with the new sha256. Then provisioning round trips (0x5000-byte images), one at a
time, from a paho requester on the device's broker: request published -> answer received (MQTT
v5 Response Topic below the device's response topic). Also checked: after the run the site
retains exactly what the central directory holds (sha256 per device).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker_agent.app import Agent, run_agent  # noqa: E402
from broker_agent.broker.bridge import CentralBroker, SiteBridge, render_bridge  # noqa: E402
from broker_agent.broker.process import MosquittoProcess, free_port  # noqa: E402
from broker_agent.logs import configure_logging  # noqa: E402
from broker_agent.settings import AgentSettings  # noqa: E402

BASE_CONF = (ROOT / "mosquitto.conf").read_text()


def sha_of(config: dict[str, object]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Device:
    """A paho client on its own thread: records when each config sha256 first arrives."""

    def __init__(self, port: int, device_id: str) -> None:
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"iot/devices/{device_id}/config", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        start = message.payload.find(b'"sha256":"')
        if start >= 0:
            with self.changed:
                self.arrived.setdefault(message.payload[start + 10 : start + 74].decode(), now)
                self.changed.notify_all()

    def wait(self, sha: str, timeout: float = 30.0) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: sha in self.arrived, timeout):
                raise TimeoutError(f"config {sha[:12]} did not arrive within {timeout} s")
            return self.arrived[sha]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Requester:
    """A paho MQTT v5 client asking for NVS images; records each answer's arrival time."""

    def __init__(self, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.answers: dict[str, float] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        # Without it, each request waited ~40 ms behind the PUBACK of the previous answer
        # (Nagle + delayed ACK), on one broker but not through the bridge: measured here.
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.subscribe(f"iot/provision/{device_id}/response/bench/+", qos=1)
        self.client.loop_start()
        time.sleep(0.2)  # the SUBACK

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.answers.setdefault(message.topic.rsplit("/", 1)[1], time.monotonic())
            self.changed.notify_all()

    def round_trip(self, n: int, timeout: float = 30.0) -> float:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"iot/provision/{self.device_id}/response/bench/r{n}"
        props.CorrelationData = f"r{n}".encode()
        body = json.dumps({"request_id": f"r{n}", "partition_size": 0x5000})
        start = time.monotonic()
        self.client.publish(
            f"iot/provision/{self.device_id}/request", body, qos=1, properties=props
        )
        with self.changed:
            if not self.changed.wait_for(lambda: f"r{n}" in self.answers, timeout):
                raise TimeoutError(f"no answer to r{n} within {timeout} s")
            return (self.answers[f"r{n}"] - start) * 1000

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def start_agent(settings: AgentSettings) -> tuple[Agent, asyncio.Task[None]]:
    holder: list[Agent] = []
    started = asyncio.Event()

    def on_start(agent: Agent) -> None:
        holder.append(agent)
        started.set()

    task = asyncio.create_task(run_agent(settings, on_start), name=settings.agent_id)
    await started.wait()
    await holder[0].online.wait()
    return holder[0], task


def retained_shas(port: int, timeout: float = 10.0) -> dict[str, str]:
    """What a fresh subscriber sees retained under iot/devices/+/config."""
    seen: dict[str, str] = {}
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == "bench/end":
            done.set()
        elif message.payload:
            seen[message.topic.split("/")[2]] = json.loads(message.payload)["sha256"]

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe([("iot/devices/+/config", 0), ("bench/end", 0)])
    client.loop_start()
    time.sleep(0.2)  # the SUBACK; the end marker below is queued after every retained message
    client.publish("bench/end", b"x")
    done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    return seen


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def report(title: str, latencies: dict[str, list[float]]) -> None:
    print(title)
    print(f"  {'topology':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in latencies.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"  {name:<10} {p50:>8.1f} {p99:>8.1f} {max(values):>8.1f}")
    ratio50 = percentile(latencies["site"], 50) / percentile(latencies["single"], 50)
    ratio99 = percentile(latencies["site"], 99) / percentile(latencies["single"], 99)
    print(f"  site/single: p50 x{ratio50:.2f}, p99 x{ratio99:.2f}")


async def edit_and_wait(directory: Path, device: Device, n: int) -> float:
    config = {"interval": n, "note": "bench"}
    start = time.monotonic()
    (directory / "bench-dev.json").write_text(json.dumps(config))
    arrived = await asyncio.to_thread(device.wait, sha_of(config))
    return (arrived - start) * 1000


async def main_async(args: argparse.Namespace) -> int:
    configure_logging("json", "warning")
    work = Path(tempfile.mkdtemp(prefix="bench-multi-site-"))
    single = MosquittoProcess(BASE_CONF, work / "single", port=free_port())
    central = MosquittoProcess(BASE_CONF, work / "central", port=free_port())
    brokers = [single, central]
    tasks: list[asyncio.Task[None]] = []
    devices: list[Device] = []
    requesters: list[Requester] = []
    try:
        single.start()
        central.start()
        assert central.port is not None
        bridge = render_bridge(
            SiteBridge("bench-site", CentralBroker("127.0.0.1", central.port), restart_timeout=(1,))
        )
        site = MosquittoProcess(BASE_CONF + "\n" + bridge, work / "site", port=free_port())
        brokers.append(site)
        site.start()
        secrets = work / "secrets"
        secrets.mkdir()
        fleet = {"token_url": "https://auth.invalid/t", "base_url": "https://api.invalid/"}
        (secrets / "_fleet.json").write_text(json.dumps(fleet))
        device_secrets = {"client_id": "iotdevice-bench-dev", "client_secret": "bench-only"}
        (secrets / "bench-dev.json").write_text(json.dumps(device_secrets))
        dirs = {"single": work / "single-configs", "site": work / "central-configs"}
        for directory in dirs.values():
            directory.mkdir()
            for i in range(args.devices):
                (directory / f"fleet-{i:05d}.json").write_text(json.dumps({"i": i}))
            (directory / "bench-dev.json").write_text(json.dumps({"interval": -1}))
        for name, broker in (("single", single), ("site", central)):
            settings = AgentSettings(
                broker_url=broker.url,
                config_dir=dirs[name],
                secrets_dir=secrets,
                agent_id=f"bench-{name}",
                http_listen="",
                watch_mode="inotify",
            )
            _, task = await start_agent(settings)
            tasks.append(task)
        assert single.port is not None and site.port is not None
        devices = [Device(single.port, "bench-dev"), Device(site.port, "bench-dev")]
        for device in devices:
            await asyncio.to_thread(device.wait, sha_of({"interval": -1}))
        latencies: dict[str, list[float]] = {"single": [], "site": []}
        for n in range(args.edits):
            for name, device in zip(("single", "site"), devices, strict=True):
                latencies[name].append(await edit_and_wait(dirs[name], device, n))
            await asyncio.sleep(0.06)  # beyond the watcher's 50 ms debounce
        report(
            f"config edit -> device, {args.edits} edits each, {args.devices + 1} devices", latencies
        )
        requesters += [Requester(single.port, "bench-dev"), Requester(site.port, "bench-dev")]
        trips: dict[str, list[float]] = {"single": [], "site": []}
        for n in range(args.requests):
            for name, requester in zip(("single", "site"), requesters, strict=True):
                trips[name].append(await asyncio.to_thread(requester.round_trip, n))
        report(f"provisioning round trip, {args.requests} requests each, one at a time", trips)
        expected = {p.stem: sha_of(json.loads(p.read_text())) for p in dirs["site"].glob("*.json")}
        at_site = await asyncio.to_thread(retained_shas, site.port)
        print(
            f"  site retains the central directory: {expected == at_site} "
            f"({len(at_site)} of {len(expected)} configs)"
        )
        return 0 if expected == at_site else 1
    finally:
        for device in devices:
            device.close()
        for requester in requesters:
            requester.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for broker in brokers:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
