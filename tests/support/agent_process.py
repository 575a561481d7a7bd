"""The agent as a separate process (``python -m broker_agent.cli run``), for fault tests that
SIGKILL it, and a way to wait until it says it is online."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.mqtt import Observer

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    broker_url: str
    config_dir: Path
    secrets_dir: Path
    log_path: Path
    agent_id: str = "fault-agent"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def status_topic(self) -> str:
        return f"iot/agents/{self.agent_id}/status"

    def start(self) -> None:
        env = {
            **os.environ,
            "BROKER_AGENT_RECONNECT_MIN_S": "0.05",
            "BROKER_AGENT_RECONNECT_MAX_S": "0.5",
            "BROKER_AGENT_HTTP_LISTEN": "",  # several agents at once: no fixed ports
            "BROKER_AGENT_LOG_FORMAT": "json",
        }
        argv = [
            sys.executable,
            "-m",
            "broker_agent.cli",
            "run",
            "--broker-url",
            self.broker_url,
            "--config-dir",
            str(self.config_dir),
            "--secrets-dir",
            str(self.secrets_dir),
            "--agent-id",
            self.agent_id,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def crashes(self) -> list[dict[str, Any]]:
        """Log lines at error level or above (an escaped exception is logged as one)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    found.append({"line": line})
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                found.append(entry)
        return found


def went_online(observer: Observer, agent: AgentProcess, since: int) -> bool:
    """True once the agent published a live (not replayed) ``online`` status after message
    number ``since`` of ``observer`` (which must subscribe to the status topic)."""
    for message in observer.messages[since:]:
        if str(message.topic) != agent.status_topic or message.retain:
            continue
        payload = bytes(message.payload)
        if payload and json.loads(payload).get("state") == "online":
            return True
    return False
