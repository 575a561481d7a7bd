"""`broker-agent run` as a user runs it: a real process, its private Mosquitto, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker_agent.broker.process import free_port
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(60)

PROJECT = Path(__file__).resolve().parents[2]


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_AGENT_")}
    env["PYTHONPATH"] = str(PROJECT)
    env["BROKER_AGENT_LOG_FORMAT"] = "json"
    env["BROKER_AGENT_HTTP_LISTEN"] = ""  # no fixed port 8080 (tests run side by side)
    env.update(extra)
    return env


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``broker-agent ARGS`` to completion, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "broker_agent.cli", *args],
        env=agent_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def read_retained(port: int, topic: str, count: int) -> list[str]:
    out = subprocess.run(
        ["mosquitto_sub", "-p", str(port), "-t", topic, "-v", "-C", str(count), "-W", "5"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.splitlines()


def wait_for_state(port: int, agent_id: str, state: str, timeout: float = 20) -> None:
    topic = f"iot/agents/{agent_id}/status"
    seen = "?"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_retained(port, topic, 1)
        seen = json.loads(lines[0].split(" ", 1)[1])["state"] if lines else "?"
        if seen == state:
            return
        time.sleep(0.05)
    assert state == seen


def test_run_starts_a_private_mosquitto_publishes_and_stops_cleanly(tmp_path: Path) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto-clients is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker_agent.cli",
            "run",
            "--config-dir",
            str(PROJECT / "examples/configs"),
            "--secrets-dir",
            str(PROJECT / "examples/secrets"),
            "--broker-port",
            str(port),
            "--broker-data-dir",
            str(tmp_path / "broker"),
            "--agent-id",
            "cli-agent",
        ],
        env=agent_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_state(port, "cli-agent", "online")
        configs = read_retained(port, "iot/devices/+/config", 3)
        assert {"garage-door", "greenhouse-02", "kitchen-01"} == {
            line.split("/")[2] for line in configs
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert 0 == proc.returncode, stderr[-2000:]
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "private_broker_started" in events
    assert "agent_online" in events
    assert "private_broker_stopped" in events
    # the private broker is gone with the agent
    probe = subprocess.run(
        ["mosquitto_sub", "-p", str(port), "-t", "x", "-W", "1"], capture_output=True, check=False
    )
    assert 0 != probe.returncode


def test_run_without_mosquitto_says_how_to_install_it(tmp_path: Path) -> None:
    proc = run_cli(
        "run",
        "--config-dir",
        str(tmp_path),
        BROKER_AGENT_MOSQUITTO_BIN="mosquitto-not-installed-here",
    )
    assert 2 == proc.returncode
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("broker-agent: error: mosquitto is not installed")
    assert "apt-get install mosquitto" in last


def test_invalid_settings_are_one_line_errors(tmp_path: Path) -> None:
    proc = run_cli("run", "--agent-id", "Not Valid")
    assert 2 == proc.returncode
    assert "agent_id" in proc.stderr and "Not Valid" in proc.stderr


def test_docker_compose_file_is_valid() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (v1) is not installed; .ci/run installs it")
    result = subprocess.run(
        ["docker-compose", "-f", str(PROJECT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == result.returncode, result.stderr


def test_a_killed_agent_is_reported_offline_by_its_will(broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker_agent.cli",
            "run",
            "--broker-url",
            broker.url,
            "--config-dir",
            str(tmp_path / "configs"),
            "--agent-id",
            "doomed",
        ],
        env=agent_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_state(broker.port, "doomed", "online")
    finally:
        proc.kill()
        proc.wait(10)
    wait_for_state(broker.port, "doomed", "offline", timeout=10)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--broker-url", "http://localhost"], "scheme must be mqtt://"),
        (
            ["--broker-url", "mqtt://127.0.0.1:1", "--mqtt-password-file", "/nonexistent/pw"],
            "cannot read the MQTT password file",
        ),
    ],
)
def test_setup_problems_found_while_connecting_are_one_line_errors(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    proc = run_cli("run", "--config-dir", str(tmp_path), *flags)
    assert 2 == proc.returncode
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("broker-agent: error:") and message in last
    assert "Traceback" not in proc.stderr
