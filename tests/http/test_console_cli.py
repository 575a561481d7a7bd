"""``broker-agent console`` and the console inside ``broker-agent run``, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from broker_agent.broker.process import free_port
from broker_agent.http.console.auth import verify_password
from tests.http.console_harness import write_fleet
from tests.support.broker import PROJECT, Broker

pytestmark = pytest.mark.timeout(60)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_AGENT_")}
    env.update(PYTHONPATH=str(PROJECT), BROKER_AGENT_LOG_FORMAT="json", **extra)
    return env


def cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker_agent.cli", *args],
        input=stdin,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hash_password_reads_stdin_and_prints_a_hash_that_verifies() -> None:
    done = cli("console", "--hash-password", stdin="s3cret operator\n")
    assert 0 == done.returncode, done.stderr
    assert verify_password("s3cret operator", done.stdout.strip())
    assert "s3cret" not in done.stdout


def test_off_loopback_without_a_login_the_console_exits_2(broker: Broker) -> None:
    done = cli("console", "--broker-url", broker.url, "--http-listen", "0.0.0.0:0")
    assert 2 == done.returncode
    assert "needs an operator login" in done.stderr


def test_run_serves_the_console_on_its_listener(broker: Broker, tmp_path: Path) -> None:
    configs, secrets = write_fleet(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "broker_agent.cli", "run", "--broker-url", broker.url),
            *("--config-dir", str(configs), "--secrets-dir", str(secrets)),
            *("--http-listen", f"127.0.0.1:{port}"),
        ],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        devices = None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while time.monotonic() < deadline:
                try:
                    devices = http.get("/api/devices").json()
                except httpx.TransportError:
                    devices = None
                if devices is not None and devices["total"] == 3:
                    break
                time.sleep(0.05)
            root = http.get("/", follow_redirects=True)
            docs = http.get("/api/docs")
            bundle = http.get("/api/docs/assets/swagger-ui-bundle.js")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert devices is not None and 3 == devices["total"], stderr[-2000:]
    assert (200, "/console/") == (root.status_code, root.url.path)
    assert "/api/docs/assets/swagger-ui-bundle.js" in docs.text  # served here, not from a CDN
    assert 200 == bundle.status_code
    assert 0 == process.returncode
