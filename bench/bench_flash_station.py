"""Benchmark: the flash station, MQTT command to ``ok``, against simulated ESP32 boards.

Run: python bench/bench_flash_station.py [--rounds 5]

Processes: a Mosquitto from the project's mosquitto.conf; the real agent (`broker-agent run`,
a subprocess); the station in this process (``Station``, as `broker-agent station` runs it);
an operator client in this process that publishes flash commands and waits for the final event;
each simulated board in a process of its own (`python -m broker_agent.simulator`: to the
station they are hardware, so they share neither its GIL nor each other's, as real boards
would not; a board costs ~5 ms of CPU a job); the byte-counting relay in front of the throttled
board in a process of its own (this script with ``--relay``).

Every figure is measured twice in the same run: with the station as it runs (each job's
esptool work in a worker process, ``worker.ProcessFlasher``) and, as the baseline, with the
jobs on threads of the station's process (``flasher.run_flash_job``, the station before
issue 14). Figures:

  1. one job on an unthrottled simulated board, command published -> ``ok`` received (median
     of --rounds), beside a bare esptool session (detect_chip, run_stub, change_baud, read 0xC00
     at 0x8000, write the image, MD5), no MQTT. Target: <= 0.6 s.
  2. four boards at once: wall time until all four ``ok``, against one job. Target <= 1.3x.
  3. eight boards at once, the same. Target <= 2x.
  4. one job on a board throttled like a real UART (115200 baud for sync and the stub upload,
     then the job's 460800): time to ``ok`` against the lower bound set by the bytes that must
     cross the wire. The bytes are counted by a relay between esptool and the board, split at
     esptool's CHANGE_BAUDRATE command; bound = sum(bytes * 10 bits / baud). Target <= 1.3x.

Boards are reached over ``socket://`` through the flasher's own port class
(broker_agent/station/socket_port.py), which reports real byte counts and closes without
pyserial's fixed 0.3 s sleep; the baseline uses the same class. Exits 1 when a target of the
station as it runs is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402
from esptool import cmds  # noqa: E402

from broker_agent.broker.process import MosquittoProcess, free_port  # noqa: E402
from broker_agent.logs import configure_logging  # noqa: E402
from broker_agent.provisioning.nvs_image import build_nvs_image  # noqa: E402
from broker_agent.settings import StationSettings  # noqa: E402
from broker_agent.simulator.protocol import SlipDecoder  # noqa: E402
from broker_agent.station import socket_port  # noqa: E402
from broker_agent.station.esptool_log import install  # noqa: E402
from broker_agent.station.flasher import run_flash_job  # noqa: E402
from broker_agent.station.job import Flasher  # noqa: E402
from broker_agent.station.station import Station  # noqa: E402
from broker_agent.station.worker import ProcessFlasher  # noqa: E402

PROCESSES, THREADS = "bench-processes", "bench-threads"  # the two stations' ids
AGENT_ID = "bench-agent"
JOB_BAUD = 460800
ROM_BAUD = 115200
TARGET_SINGLE_S = 0.6
TARGET_FOUR_RATIO = 1.3
TARGET_EIGHT_RATIO = 2.0
TARGET_WIRE_RATIO = 1.3
BOARDS_PER_SIMULATOR = 1
OP_CHANGE_BAUDRATE = 0x0F
NVS_OFFSET, NVS_SIZE = 0x9000, 0x5000
FLEET = {"token_url": "https://auth.example.com/token", "base_url": "https://api.example.com/"}
DEVICES = [f"bench-{index}" for index in range(8)]


# -- a byte-counting relay ----------------------------------------------------------------------


class CountingRelay:
    """TCP relay in front of a board: counts bytes each way, at the baud then in force.

    Runs in its own process (``--relay``), so its threads do not compete with the station's
    for this process's GIL; after each connection it writes that connection's counts to
    ``counts_file`` as JSON: ``{"to_board": {"115200": n, ...}, "to_host": {...}}``.
    """

    def __init__(self, target_port: int, counts_file: Path) -> None:
        self.target_port = target_port
        self.counts_file = counts_file
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def serve(self) -> None:
        while True:
            host, _ = self.listener.accept()
            board = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (host, board):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._relay, args=(host, board), daemon=True).start()

    def _relay(self, host: socket.socket, board: socket.socket) -> None:
        counts: dict[str, dict[int, int]] = {"to_board": {}, "to_host": {}}
        baud = [ROM_BAUD]
        pumps = [
            threading.Thread(target=self._pump, args=(host, board, counts["to_board"], baud)),
            threading.Thread(target=self._pump, args=(board, host, counts["to_host"], baud)),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        self.counts_file.write_text(json.dumps(counts))

    @staticmethod
    def _pump(
        source: socket.socket, sink: socket.socket, counts: dict[int, int], baud: list[int]
    ) -> None:
        decoder = SlipDecoder()
        try:
            while chunk := source.recv(65536):
                counts[baud[0]] = counts.get(baud[0], 0) + len(chunk)
                for frame in decoder.feed(chunk):
                    if len(frame) >= 12 and frame[0] == 0 and frame[1] == OP_CHANGE_BAUDRATE:
                        baud[0] = int.from_bytes(frame[8:12], "little")
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def wire_seconds(counts: dict[str, dict[str, int]]) -> float:
    """Serial time of the counted bytes: 10 bits per byte (start, 8 data, stop) at each baud."""
    return sum(n * 10 / int(baud) for per_baud in counts.values() for baud, n in per_baud.items())


# -- the baseline: esptool alone ----------------------------------------------------------------


def bare_esptool_session(url: str, image: bytes) -> float:
    """esptool alone on the same kind of port object the flasher opens (SocketPort)."""
    started = time.perf_counter()
    port = socket_port.open_url(url, baudrate=ROM_BAUD)
    port.open()
    try:
        with cmds.detect_chip(port, ROM_BAUD, "default-reset", False, 3) as rom:
            esp = cmds.run_stub(rom)
            esp.change_baud(JOB_BAUD)
            cmds.attach_flash(esp)
            cmds.read_flash(esp, 0x8000, 0xC00)
            cmds.write_flash(esp, [(NVS_OFFSET, image)])
            esp.flash_md5sum(NVS_OFFSET, NVS_SIZE)
    finally:
        port.close()
    return time.perf_counter() - started


# -- the agent and the operator ---------------------------------------------------------------


def make_fleet(base: Path) -> tuple[Path, Path]:
    config_dir, secrets_dir = base / "configs", base / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (secrets_dir / "_fleet.json").write_text(json.dumps(FLEET))
    for device in DEVICES:
        secret = {"client_id": f"iotdevice-{device}", "client_secret": f"s3cr3t-{device}"}
        (secrets_dir / f"{device}.json").write_text(json.dumps(secret))
    return config_dir, secrets_dir


def start_agent(url: str, config_dir: Path, secrets_dir: Path, log: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_AGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "broker_agent.cli", "run", "--broker-url", url,
                "--config-dir", str(config_dir), "--secrets-dir", str(secrets_dir),
                "--agent-id", AGENT_ID, "--log-format", "json", "--log-level", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=env,
        )  # fmt: skip
    return process


async def wait_retained(url: str, topic: str, needle: bytes, timeout: float = 30) -> None:
    port = int(url.rsplit(":", 1)[1])
    async with aiomqtt.Client("127.0.0.1", port) as client, asyncio.timeout(timeout):
        await client.subscribe(topic)
        async for message in client.messages:
            if needle in bytes(message.payload):
                return


class Operator:
    """Publishes flash commands and times each until its final event."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.finals: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def pump(self) -> None:
        async for message in self.client.messages:
            event = json.loads(bytes(message.payload))
            waiter = self.finals.get(event["request_id"])
            if waiter is not None and event["status"] in ("ok", "error") and not waiter.done():
                waiter.set_result(event)

    async def flash(self, station_id: str, request_id: str, device_id: str, port: str) -> float:
        """Seconds from publishing the command to receiving its ``ok``."""
        waiter = asyncio.get_running_loop().create_future()
        self.finals[request_id] = waiter
        started = time.perf_counter()
        command = {"request_id": request_id, "device_id": device_id, "port": port}
        await self.client.publish(
            f"iot/stations/{station_id}/flash/request", json.dumps(command), qos=1
        )
        event = await asyncio.wait_for(waiter, 30)
        elapsed = time.perf_counter() - started
        if event["status"] != "ok":
            raise SystemExit(f"job {request_id} failed: {event['error']}")
        return elapsed


# -- the run ------------------------------------------------------------------------------------


def spawn(args: list[str], lines: int, log: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a helper process; return it and the first ``lines`` lines it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=sink, text=True, env=env
        )
    assert process.stdout is not None
    return process, [process.stdout.readline().strip() for _ in range(lines)]


def row(name: str, value: str, other: str, target: str = "", ok: bool | None = None) -> bool:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    print(f"  {name:<44} {value:>10} {other:>10}   {target:<10} {verdict}")
    return ok is not False


async def measure(rounds: int, base: Path) -> bool:
    configure_logging("console", "warning")
    install()  # esptool's output goes to the (silent) log, as in the station
    config_dir, secrets_dir = make_fleet(base)
    broker = MosquittoProcess(
        (ROOT / "mosquitto.conf").read_text(), base / "broker", port=free_port()
    )
    broker.start()
    helpers: list[subprocess.Popen[Any]] = []
    try:
        helpers.append(start_agent(broker.url, config_dir, secrets_dir, base / "agent.log"))
        await wait_retained(broker.url, f"iot/agents/{AGENT_ID}/status", b'"online"')
        # the boards are hardware to the station: serve them from other processes
        urls: list[str] = []
        for first in range(0, len(DEVICES), BOARDS_PER_SIMULATOR):
            fast, lines = spawn(
                ["-m", "broker_agent.simulator", "--boards", str(BOARDS_PER_SIMULATOR)],
                BOARDS_PER_SIMULATOR,
                base / f"sim-{first}.log",
            )
            helpers.append(fast)
            urls += [line.split()[0] for line in lines]
        slow, lines = spawn(
            ["-m", "broker_agent.simulator", "--baud-throttle", str(ROM_BAUD)], 1, base / "s.log"
        )
        helpers.append(slow)
        counts_file = base / "relay-counts.json"
        slow_port = lines[0].split()[0].rsplit(":", 1)[1]
        relay, lines = spawn(
            [__file__, "--relay", slow_port, "--counts", str(counts_file)], 1, base / "r.log"
        )
        helpers.append(relay)
        figures = Figures(urls, lines[0], counts_file)
        image = build_nvs_image(
            {"device_key": "x", "client_id": "c", "client_secret": "s", **FLEET}, NVS_SIZE
        )
        baselines = [
            await asyncio.to_thread(bare_esptool_session, urls[0], image) for _ in range(rounds)
        ]
        runs = await run_figures(broker.url, base, figures, rounds)
        bare_throttled = await asyncio.to_thread(bare_esptool_session, figures.relay_url, image)
        bare = statistics.median(baselines)
        return report(rounds, bare, bare_throttled, runs[THREADS], runs[PROCESSES])
    finally:
        for helper in helpers:
            helper.terminate()
            helper.wait(10)
        broker.stop()


class Figures:
    def __init__(self, urls: list[str], relay_url: str, counts_file: Path) -> None:
        self.urls = urls
        self.relay_url = relay_url
        self.counts_file = counts_file


@dataclass
class Run:
    """One station's figures (medians, seconds) and the throttled board's byte counts."""

    single: float
    four: float
    eight: float
    throttled: float
    counts: dict[str, dict[str, int]]
    cpu_per_job: float  # CPU seconds of every process of the bench, per single job

    @property
    def wire(self) -> float:
        return wire_seconds(self.counts)


async def run_figures(url: str, base: Path, figures: Figures, rounds: int) -> dict[str, Run]:
    """Both stations on the broker at once; their rounds interleave, so load that comes and
    goes on the machine weighs on both alike."""
    flashers: dict[str, Flasher] = {PROCESSES: ProcessFlasher(), THREADS: run_flash_job}
    stations = [
        Station(
            StationSettings(
                broker_url=url,
                station_id=station_id,
                manufacturing_log=base / "manufacturing.jsonl",
                http_listen="",  # no fixed port: other benchmarks may run beside this one
            ),
            flasher=flasher,
        )
        for station_id, flasher in flashers.items()
    ]
    tasks = [asyncio.create_task(station.run(), name="station") for station in stations]
    try:
        for station in stations:
            await asyncio.wait_for(station.online.wait(), 15)
        port = int(url.rsplit(":", 1)[1])
        client = aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5)
        async with client:
            for station_id in flashers:
                await client.subscribe(f"iot/stations/{station_id}/flash/response", qos=1)
            operator = Operator(client)
            pump = asyncio.create_task(operator.pump(), name="operator")
            try:
                return await measure_stations(operator, figures, rounds, list(flashers))
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def measure_stations(
    operator: Operator, figures: Figures, rounds: int, station_ids: list[str]
) -> dict[str, Run]:
    urls = figures.urls
    counter = iter(range(1_000_000))
    median = statistics.median

    async def one(station_id: str, port: str, device: str) -> float:
        return await operator.flash(station_id, f"b-{next(counter)}", device, port)

    async def together(station_id: str, count: int) -> float:
        started = time.perf_counter()
        pairs = list(zip(urls, DEVICES, strict=True))[:count]
        await asyncio.gather(*(one(station_id, port, device) for port, device in pairs))
        return time.perf_counter() - started

    async def single(station_id: str) -> tuple[float, float]:
        cpu_before = tree_cpu_seconds()
        elapsed = await one(station_id, urls[0], DEVICES[0])
        return elapsed, tree_cpu_seconds() - cpu_before

    # warm-up: first connections and images, and as many workers as boards (a station starts
    # one per candidate port; these boards are socket:// URLs it does not list)
    for station_id in station_ids:
        await together(station_id, len(DEVICES))
    figures_of: dict[str, dict[str, list[float]]] = {sid: {} for sid in station_ids}
    for name, measure in (
        ("single", single),
        ("four", lambda sid: together(sid, 4)),
        ("eight", lambda sid: together(sid, 8)),
    ):
        for _ in range(rounds):
            for station_id in station_ids:
                value = await measure(station_id)
                elapsed, cpu = value if isinstance(value, tuple) else (value, 0.0)
                figures_of[station_id].setdefault(name, []).append(elapsed)
                figures_of[station_id].setdefault("cpu", []).append(cpu)
    runs = {}
    for station_id in station_ids:
        throttled = await one(station_id, figures.relay_url, DEVICES[0])
        counts = await asyncio.to_thread(read_counts, figures.counts_file)
        values = figures_of[station_id]
        cpu_per_job = sum(values["cpu"]) / rounds
        runs[station_id] = Run(
            median(values["single"]), median(values["four"]), median(values["eight"]),
            throttled, counts, cpu_per_job,
        )  # fmt: skip
    return runs


def report(rounds: int, bare: float, bare_throttled: float, threads: Run, run: Run) -> bool:
    print(f"\nflash station, median of {rounds} rounds; simulated ESP32, 0x5000-byte NVS image")
    print(f"  {'':<44} {'processes':>10} {'threads':>10}   {'target':<10}")
    ok = row("1. one job, command -> ok", ms(run.single), ms(threads.single), "<= 600 ms",
             run.single <= TARGET_SINGLE_S)  # fmt: skip
    row("   bare esptool session (no MQTT)", ms(bare), ms(bare))
    row("   station / bare esptool", ratio(run.single / bare), ratio(threads.single / bare))
    row("   CPU per job, all processes", ms(run.cpu_per_job), ms(threads.cpu_per_job))
    cores = os.cpu_count() or 1
    for count in (4, 8):
        row(
            f"   {count} at once: CPU floor / one ({cores} cores)",
            ratio(cpu_floor(run, count, cores)),
            ratio(cpu_floor(threads, count, cores)),
        )
    row("2. four boards at once, until all ok", ms(run.four), ms(threads.four))
    ok &= row("   four / one", ratio(run.four / run.single), ratio(threads.four / threads.single),
              "<= 1.3x", run.four / run.single <= TARGET_FOUR_RATIO)  # fmt: skip
    row("3. eight boards at once, until all ok", ms(run.eight), ms(threads.eight))
    ok &= row("   eight / one", ratio(run.eight / run.single),
              ratio(threads.eight / threads.single), "<= 2x",
              run.eight / run.single <= TARGET_EIGHT_RATIO)  # fmt: skip
    print("  4. throttled board (115200 baud, then the job's 460800):")
    for direction, per_baud in run.counts.items():
        for baud, count in sorted(per_baud.items()):
            row(f"     bytes {direction.replace('_', ' ')} at {baud}", str(count), "")
    row("   wire-time lower bound", ms(run.wire), ms(threads.wire))
    row("   job, command -> ok", ms(run.throttled), ms(threads.throttled))
    row("   bare esptool session, same board", ms(bare_throttled), ms(bare_throttled))
    wire_ratio = run.throttled / run.wire
    ok &= row("   job / lower bound", ratio(wire_ratio), ratio(threads.throttled / threads.wire),
              "<= 1.3x", wire_ratio <= TARGET_WIRE_RATIO)  # fmt: skip
    return ok


def tree_cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its descendants now alive: the
    station, its forkserver and workers, the agent, the simulators, the relay, Mosquitto."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(cpu.get(pid, 0.0) for pid in tree)


def cpu_floor(run: Run, jobs: int, cores: int) -> float:
    """The least ``jobs`` parallel jobs can take over one job, if all their CPU is spread
    perfectly over the cores (the ratio a target may ask for is at least this)."""
    return max(run.single, jobs * run.cpu_per_job / cores) / run.single


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def read_counts(path: Path, timeout: float = 5.0) -> dict[str, dict[str, int]]:
    """The relay writes the counts once the job's connection has closed."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the relay reported no byte counts")
        time.sleep(0.02)
    counts: dict[str, dict[str, int]] = json.loads(path.read_text())
    path.unlink()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--relay", type=int, help=argparse.SUPPRESS)  # the relay process
    parser.add_argument("--counts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay is not None:
        relay = CountingRelay(args.relay, args.counts)
        print(f"socket://127.0.0.1:{relay.port}", flush=True)
        relay.serve()
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-flash-") as tmp:
        ok = asyncio.run(measure(args.rounds, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
