"""Benchmark: the provisioning responder under load (contract section 3, 0x5000-byte images).

Run: python bench/bench_provisioning.py [--total 10000] [--serial 1000] [--devices 100]
                                        [--log-level info]

Processes: a Mosquitto from the project's mosquitto.conf; the real agent (`broker-agent run`,
a subprocess, JSON log lines to a file, at info unless --log-level says otherwise); a load
generator (a subprocess of this script, paho MQTT v5, one Response Topic + Correlation Data
per request). Phases:

  1. 100 outstanding requests, 10,000 in all: replies/s, p50/p99 latency, lost, duplicated;
  2. one request at a time, 1,000 in all: p50/p99 latency.

Baseline, measured in the same run with the same load generator: a bare paho responder (its
own process, shared subscription, `loop_forever`) that answers each request with a prebuilt
reply of the same size, on the same topics and properties, without building any image. The
ratio agent/baseline says what the agent's own work (parsing, credentials, NVS image, base64,
md5, the `provisioned` event and its log line) costs on top of the MQTT round trip. The
responder's CPU time per request is read from /proc (Linux). Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker_agent.broker.process import MosquittoProcess, free_port  # noqa: E402

SIZE = 0x5000
TARGET_RATE = 2500.0
TARGET_P99_LOADED_MS = 60.0
TARGET_P99_SERIAL_MS = 5.0
AGENT_ID = "bench-agent"


# -- the load generator (a subprocess) ------------------------------------------------------


def _client(name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def _connect(client: mqtt.Client, port: int) -> None:
    client.connect("127.0.0.1", port)
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def load_generator(
    port: int, total: int, outstanding: int, devices: int, warmup: int
) -> dict[str, object]:
    """Send ``warmup + total`` requests, ``outstanding`` in flight; measure the last ``total``.

    The window stays full throughout, so the measured part starts in steady state: its clock
    starts when request ``warmup`` is sent and stops at the last answer.
    """
    client = _client(f"bench-load-{os.getpid()}")
    grand_total = warmup + total
    sent_at: dict[int, float] = {}
    answered: set[int] = set()
    latencies: list[float] = []
    state = {"next": 0, "duplicated": 0, "errors": 0, "subscribed": False}
    clock = {"start": 0.0, "end": 0.0}

    def send_next() -> None:
        index = state["next"]
        if index >= grand_total:
            return
        state["next"] = index + 1
        device = f"dev-{index % devices:04}"
        props = Properties(PacketTypes.PUBLISH)  # a fresh one per publish, never reused
        props.ResponseTopic = f"iot/provision/{device}/response/bench"
        props.CorrelationData = index.to_bytes(4, "big")
        payload = b'{"request_id":"b-%d","partition_size":%d}' % (index, SIZE)
        sent_at[index] = now = time.perf_counter()
        if index == warmup:
            clock["start"] = now
        client.publish(f"iot/provision/{device}/request", payload, qos=1, properties=props)

    def on_subscribe(*_: object) -> None:
        state["subscribed"] = True

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        index = int.from_bytes(message.properties.CorrelationData, "big")
        started = sent_at.pop(index, None)
        if started is None:
            state["duplicated"] += index in answered
            return
        answered.add(index)
        if b'"status":"ok"' not in message.payload[:300]:
            state["errors"] += 1
        if index >= warmup:
            latencies.append(now - started)
            clock["end"] = now
        send_next()

    client.on_subscribe = on_subscribe
    client.on_message = on_message
    _connect(client, port)
    client.subscribe("iot/provision/+/response/bench", options=SubscribeOptions(qos=1))
    while not state["subscribed"]:
        client.loop(0.05)
    for _ in range(outstanding):
        send_next()
    last_progress, last_count = time.monotonic(), 0
    while len(answered) < grand_total:
        client.loop(0.02)
        if len(answered) != last_count:
            last_progress, last_count = time.monotonic(), len(answered)
        elif time.monotonic() - last_progress > 10:
            break  # nothing for 10 s: what is still outstanding is lost
    for _ in range(10):  # a short look for late duplicates
        client.loop(0.02)
    client.disconnect()
    elapsed = clock["end"] - clock["start"]
    return {
        "answered": len(latencies),
        "lost": total - len(latencies),
        "duplicated": state["duplicated"],
        "errors": state["errors"],
        "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- the baseline responder (a subprocess) ----------------------------------------------------


def echo_responder(port: int) -> None:
    """Answer every request with a prebuilt reply of the agent's size; no image is built."""
    blob = json.dumps({"status": "ok", "data": "A" * ((SIZE + 2) // 3 * 4)}).encode()
    client = _client(f"bench-echo-{os.getpid()}")

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = message.properties.CorrelationData
        props.MessageExpiryInterval = 60
        client.publish(message.properties.ResponseTopic, blob, qos=1, properties=props)

    def on_connect(*_: object) -> None:
        client.subscribe(
            "$share/bench-echo/iot/provision/+/request",
            options=SubscribeOptions(qos=1, retainHandling=2, retainAsPublished=True),
        )

    client.on_message = on_message
    client.on_connect = on_connect
    _connect(client, port)
    client.loop_forever()


# -- orchestration ----------------------------------------------------------------------------


@dataclass
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    lost: int
    duplicated: int
    errors: int
    answered: int
    cpu_us: float  # the responder's CPU time per measured request (warm-up included)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    port: int, total: int, outstanding: int, devices: int, warmup: int, responder_pid: int
) -> Result:
    command = [sys.executable, __file__, "--load-generator", "--port", str(port)]
    command += ["--total", str(total), "--outstanding", str(outstanding)]
    command += ["--devices", str(devices), "--warmup", str(warmup)]
    before = cpu_seconds(responder_pid)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    used = cpu_seconds(responder_pid) - before
    data = json.loads(output.strip().splitlines()[-1])
    return Result(
        data["rate"],
        data["p50_ms"],
        data["p99_ms"],
        data["lost"],
        data["duplicated"],
        data["errors"],
        data["answered"],
        used / (total + warmup) * 1e6,
    )


def make_fleet(base: Path, devices: int) -> tuple[Path, Path]:
    config_dir, secrets_dir = base / "configs", base / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    fleet = {
        "token_url": "https://auth.example.invalid/realms/fleet/protocol/openid-connect/token",
        "base_url": "https://api.example.invalid/v1/",
        "mqtt_url": "mqtts://broker.example.invalid:8883",
        "wifi_ssid": "bench-wifi",
        "wifi_password": "bench-placeholder-password",
    }
    (secrets_dir / "_fleet.json").write_text(json.dumps(fleet))
    for index in range(devices):
        device = f"dev-{index:04}"
        (config_dir / f"{device}.json").write_text('{"telemetry_interval_s": 30}')
        secret = {
            "client_id": f"iotdevice-{device}",
            "client_secret": f"bench-placeholder-{index:08}",
        }
        (secrets_dir / f"{device}.json").write_text(json.dumps(secret))
    return config_dir, secrets_dir


def wait_online(port: int, agent_id: str, timeout: float = 30) -> None:
    client = _client("bench-wait")
    seen = {"online": False}

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        seen["online"] = b'"online"' in message.payload

    client.on_message = on_message
    _connect(client, port)
    client.subscribe(f"iot/agents/{agent_id}/status", qos=0)
    deadline = time.monotonic() + timeout
    while not seen["online"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{agent_id} did not come online within {timeout} s")
        client.loop(0.05)
    client.disconnect()


def start_agent(
    port: int, config_dir: Path, secrets_dir: Path, log_file: Path, log_level: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
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
                str(secrets_dir),
                "--agent-id",
                AGENT_ID,
                "--log-format",
                "json",
                "--log-level",
                log_level,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    wait_online(port, AGENT_ID)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def row(name: str, agent: float, baseline: float, target: str = "", ok: bool | None = None) -> None:
    """One figure: the agent's, the baseline's, their ratio, and the target with a verdict."""
    judged = f"   target {target:>7}  {verdict(ok)}" if ok is not None else ""
    print(
        f"    {name:<11} agent {agent:8.2f}   baseline {baseline:8.2f}   "
        f"agent/baseline {agent / baseline:5.2f}{judged}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--serial", type=int, default=1_000)
    parser.add_argument("--outstanding", type=int, default=100)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--log-level", default="info", help="the agent's (info: one line per reply, as deployed)"
    )
    parser.add_argument("--port", type=int)
    parser.add_argument("--load-generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--echo-responder", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_generator:
        result = load_generator(args.port, args.total, args.outstanding, args.devices, args.warmup)
        print(json.dumps(result))
        return 0
    if args.echo_responder:
        echo_responder(args.port)
        return 0

    base = Path(tempfile.mkdtemp(prefix="bench-provisioning-"))
    broker = MosquittoProcess(
        (ROOT / "mosquitto.conf").read_text(), base / "broker", port=free_port()
    )
    broker.start()
    port = broker.port
    assert port is not None
    results: dict[str, Result] = {}
    try:
        config_dir, secrets_dir = make_fleet(base, args.devices)
        agent = start_agent(port, config_dir, secrets_dir, base / "agent.log", args.log_level)
        try:
            results["agent_loaded"] = run_load(
                port, args.total, args.outstanding, args.devices, args.warmup, agent.pid
            )
            results["agent_serial"] = run_load(port, args.serial, 1, args.devices, 50, agent.pid)
        finally:
            stop(agent)
        echo = subprocess.Popen(
            [sys.executable, __file__, "--echo-responder", "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # its SUBACK is not observable from here; the warm-up absorbs the rest
            results["echo_loaded"] = run_load(
                port, args.total, args.outstanding, args.devices, args.warmup, echo.pid
            )
            results["echo_serial"] = run_load(port, args.serial, 1, args.devices, 50, echo.pid)
        finally:
            stop(echo)
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)

    loaded, serial = results["agent_loaded"], results["agent_serial"]
    echo_loaded, echo_serial = results["echo_loaded"], results["echo_serial"]
    print(
        f"provisioning responder: 0x{SIZE:x}-byte images, {args.devices} devices, "
        f"{os.cpu_count()} CPUs (broker, agent and load generator on this machine)"
    )
    print(f"agent log level {args.log_level}; baseline: bare paho responder, prebuilt reply")
    print(f"(1) {args.outstanding} outstanding, {args.total} requests")
    row(
        "replies/s",
        loaded.rate,
        echo_loaded.rate,
        f">= {TARGET_RATE:.0f}",
        loaded.rate >= TARGET_RATE,
    )
    row("p50 ms", loaded.p50_ms, echo_loaded.p50_ms)
    row(
        "p99 ms",
        loaded.p99_ms,
        echo_loaded.p99_ms,
        f"<= {TARGET_P99_LOADED_MS:.0f}",
        loaded.p99_ms <= TARGET_P99_LOADED_MS,
    )
    row("CPU us/req", loaded.cpu_us, echo_loaded.cpu_us)
    clean = loaded.lost == loaded.duplicated == loaded.errors == 0
    print(
        f"    answered {loaded.answered}, lost {loaded.lost}, duplicated {loaded.duplicated}, "
        f"error replies {loaded.errors} (baseline: lost {echo_loaded.lost}, duplicated "
        f"{echo_loaded.duplicated})  target: none lost or duplicated  {verdict(clean)}"
    )
    print(f"(2) one at a time, {args.serial} requests")
    row("p50 ms", serial.p50_ms, echo_serial.p50_ms)
    row(
        "p99 ms",
        serial.p99_ms,
        echo_serial.p99_ms,
        f"<= {TARGET_P99_SERIAL_MS:.0f}",
        serial.p99_ms <= TARGET_P99_SERIAL_MS,
    )
    row("CPU us/req", serial.cpu_us, echo_serial.cpu_us)
    passed = (
        loaded.rate >= TARGET_RATE
        and loaded.p99_ms <= TARGET_P99_LOADED_MS
        and serial.p99_ms <= TARGET_P99_SERIAL_MS
        and loaded.lost == loaded.duplicated == loaded.errors == 0
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
