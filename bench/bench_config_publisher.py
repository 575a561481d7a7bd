"""Benchmark: the config publisher with 10,000 device files (issue 2's targets).

Run: python bench/bench_config_publisher.py [--devices 10000]
Every figure is printed beside a baseline measured in this same run:
  1. cold start to all configs retained (seen by a separate subscriber process) vs a plain paho
     loop_start publish loop of the same messages, and vs one `mosquitto_pub -r` per file
     (500 timed, extrapolated);
  2. restart with nothing changed: publishes (must be 0) and reconcile time;
  3. file edit -> subscriber latency over 200 edits (p50, p99);
  4. peak RSS of an agent process doing the cold start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker_agent.app import Agent, run_agent  # noqa: E402
from broker_agent.broker.process import MosquittoProcess, free_port  # noqa: E402
from broker_agent.fleet.files import FleetSchema, load_config  # noqa: E402
from broker_agent.logs import configure_logging  # noqa: E402
from broker_agent.settings import AgentSettings  # noqa: E402


def make_configs(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        config = {
            "telemetry_interval_s": 30 + index % 60,
            "led": {"brightness": index % 100, "color": "#ffaa00"},
            "sensors": {"temperature": True, "humidity": index % 2 == 0},
            "ota": {"channel": "stable", "url": f"https://ota.example.com/fw/{index}.bin"},
            "location": {"site": "plant-3", "rack": index // 100, "slot": index % 100},
        }
        (directory / f"dev-{index:05}.json").write_text(json.dumps(config))


def manifest_for(directory: Path, root: str) -> dict[str, str]:
    schema = FleetSchema(None)
    return {
        f"{root}/devices/{path.stem}/config": load_config(path, schema, 1 << 20).sha256
        for path in sorted(directory.glob("*.json"))
    }


class Watcher:
    """The separate subscriber process."""

    def __init__(self, port: int, manifest: Path, topic_filter: str) -> None:
        self.manifest = manifest
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench/_watch_retained.py"),
                str(port),
                str(manifest),
                topic_filter,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def wait_complete(self, manifest: dict[str, str], timeout: float = 60.0) -> dict[str, float]:
        self.manifest.write_text(json.dumps(manifest))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"go {timeout}\n")
        self.proc.stdin.flush()
        result: dict[str, float] = json.loads(self.proc.stdout.readline())
        if not result["complete"]:
            raise RuntimeError("subscriber did not see every config")
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(10)


def paho_baseline(port: int, directory: Path, root: str) -> float:
    """A plain paho loop_start publish loop (in-flight limit lifted), files read first."""
    payloads = [
        (f"{root}/devices/{p.stem}/config", load_config(p, FleetSchema(None), 1 << 20).envelope)
        for p in sorted(directory.glob("*.json"))
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(30)
    elapsed = time.monotonic() - start
    client.loop_stop()
    client.disconnect()
    return elapsed


def mosquitto_pub_per_file(port: int, directory: Path, sample: int) -> float:
    files = sorted(directory.glob("*.json"))[:sample]
    start = time.monotonic()
    for path in files:
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(port),
                "-q",
                "1",
                "-r",
                "-t",
                f"bench-pub/{path.stem}",
                "-f",
                str(path),
            ],
            check=True,
        )
    return (time.monotonic() - start) / sample


async def agent_run(settings: AgentSettings) -> tuple[float, Agent]:
    """Start the agent in-process; return (seconds until online, agent) and keep it running."""
    holder: list[Agent] = []
    started = asyncio.Event()

    def on_start(agent: Agent) -> None:
        holder.append(agent)
        started.set()

    start = time.monotonic()
    task = asyncio.create_task(run_agent(settings, on_start))
    await started.wait()
    await holder[0].online.wait()
    elapsed = time.monotonic() - start
    holder[0].bench_task = task  # type: ignore[attr-defined]
    return elapsed, holder[0]


async def stop(agent: Agent) -> None:
    task: asyncio.Task[None] = agent.bench_task  # type: ignore[attr-defined]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def line(name: str, value: str, target: str, ok: bool) -> None:
    print(f"  {name:<58} {value:>22}   target {target:<18} {'PASS' if ok else 'MISS'}")


def peak_rss_of_agent_process(
    port: int, config_dir: Path, root: str, watcher: Watcher, manifest: dict[str, str]
) -> float:
    env = dict(os.environ, BROKER_AGENT_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker_agent.cli",
            "run",
            "--broker-url",
            f"mqtt://127.0.0.1:{port}",
            "--config-dir",
            str(config_dir),
            "--topic-root",
            root,
            "--agent-id",
            "rss-agent",
        ],
        env=env,
    )
    watcher.wait_complete(manifest)
    time.sleep(0.5)
    proc.terminate()
    proc.wait(10)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


async def main_async(args: argparse.Namespace) -> int:
    configure_logging("json", "warning")
    work = Path(tempfile.mkdtemp(prefix="bench-config-"))
    config_dir = work / "configs"
    make_configs(config_dir, args.devices)
    broker = MosquittoProcess(
        (ROOT / "mosquitto.conf").read_text(), work / "broker", port=free_port()
    )
    broker.start()
    misses = 0
    try:
        manifest = manifest_for(config_dir, "iot")
        base_manifest = {t.replace("iot/", "base/", 1): s for t, s in manifest.items()}
        watcher = Watcher(broker.port or 0, work / "manifest.json", "#")
        print(f"config publisher benchmark: {args.devices} devices, {os.cpu_count()} cores")

        baseline = paho_baseline(broker.port or 0, config_dir, "base")
        watcher.wait_complete(base_manifest)
        print(f"  baseline: paho loop_start publish loop (acks)          {baseline:8.3f} s")
        per_pub = mosquitto_pub_per_file(broker.port or 0, config_dir, args.pub_sample)
        pub_total = per_pub * args.devices
        print(
            f"  baseline: mosquitto_pub -r per file ({args.pub_sample} timed)   "
            f"{per_pub * 1000:8.2f} ms each, {pub_total:.1f} s extrapolated"
        )

        settings = AgentSettings(
            broker_url=broker.url,
            config_dir=config_dir,
            agent_id="bench-agent",
            log_level="warning",
        )
        t0 = time.monotonic()
        _, agent = await agent_run(settings)
        seen = watcher.wait_complete(manifest)
        cold = seen["at"] - t0
        ratio = cold / baseline
        print("1. cold start (files read + published, seen by subscriber)")
        line("agent cold start", f"{cold:.3f} s", "<= 1.0 s", cold <= 1.0)
        line("ratio to paho publish loop", f"{ratio:.2f}x", "<= 1.3x", ratio <= 1.3)
        line(
            "speed-up over mosquitto_pub per file",
            f"{pub_total / cold:.0f}x",
            ">= 20x",
            pub_total / cold >= 20,
        )
        misses += (cold > 1.0) + (ratio > 1.3) + (pub_total / cold < 20)
        await stop(agent)

        print("2. restart with nothing changed")
        restart_s, agent = await agent_run(settings)
        after = watcher.wait_complete(manifest)
        line("publishes on restart", f"{int(after['live'])}", "0", after["live"] == 0)
        line("start to online (reconcile done)", f"{restart_s:.3f} s", "< 1 s", restart_s < 1.0)
        line("ratio to cold start", f"{restart_s / cold:.2f}x", "(info)", True)
        misses += (after["live"] != 0) + (restart_s >= 1.0)

        print("3. file edit -> subscriber, 200 edits")
        latencies: list[float] = []
        target_file = config_dir / "dev-00042.json"
        topic = "iot/devices/dev-00042/config"
        for edit in range(200):
            document = json.loads(target_file.read_text())
            document["edit"] = edit
            start = time.monotonic()
            target_file.write_text(json.dumps(document))
            expected = load_config(target_file, FleetSchema(None), 1 << 20).sha256
            result = await asyncio.to_thread(watcher.wait_complete, {topic: expected}, 10.0)
            latencies.append(result["at"] - start)
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        line("edit -> subscriber p50", f"{p50:.1f} ms", "<= 30 ms", p50 <= 30)
        line("edit -> subscriber p99", f"{p99:.1f} ms", "<= 60 ms", p99 <= 60)
        line("p50 ratio to the watcher debounce (50 ms)", f"{p50 / 50:.2f}x", "(info)", True)
        misses += (p50 > 30) + (p99 > 60)
        await stop(agent)

        print("4. memory")
        # fresh broker state under another root so the agent process does a full cold start
        rss_root = "rss"
        rss_manifest = {
            t.replace("iot/", "rss/", 1): s for t, s in manifest_for(config_dir, "iot").items()
        }
        rss = peak_rss_of_agent_process(
            broker.port or 0, config_dir, rss_root, watcher, rss_manifest
        )
        line("agent process peak RSS (cold start)", f"{rss:.1f} MB", "<= 100 MB", rss <= 100)
        misses += rss > 100
        watcher.close()
        print(f"summary: {'all targets met' if misses == 0 else f'{misses} target(s) missed'}")
        return 0 if misses == 0 else 1
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--pub-sample", type=int, default=500)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
