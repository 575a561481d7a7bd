"""Fault tests: real Mosquitto, real files, the agent as a separate process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_agent.fleet.files import FleetSchema, load_config
from firmware_contracts.payloads import ConfigEnvelope, config_sha256
from tests.support.agent_process import AgentProcess
from tests.support.mqtt import retained_snapshot

FLEET = {"token_url": "https://auth.example.invalid/t", "base_url": "https://api.example.invalid/"}
KITCHEN = {"client_id": "cid-kitchen", "client_secret": "KITCHEN-SECRET-fault-1"}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    config_dir, secrets_dir = tmp_path / "configs", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (secrets_dir / "_fleet.json").write_text(json.dumps(FLEET))
    (secrets_dir / "kitchen-01.json").write_text(json.dumps(KITCHEN))
    return config_dir, secrets_dir


@pytest.fixture
def agent_process(tmp_path: Path, dirs: tuple[Path, Path]) -> Iterator[AgentProcess]:
    """Not started: the test gives it a broker URL and starts it; stopped at teardown."""
    config_dir, secrets_dir = dirs
    agent = AgentProcess("", config_dir, secrets_dir, tmp_path / "agent.log")
    yield agent
    agent.stop()


def directory_manifest(config_dir: Path) -> dict[str, str]:
    """device_id -> sha256 of every valid config in the directory, as the agent computes it."""
    manifest = {}
    for path in sorted(config_dir.glob("*.json")):
        config = load_config(path, FleetSchema(None), 1 << 20)
        manifest[config.device_id] = config.sha256
    return manifest


async def broker_manifest(url: str) -> dict[str, str]:
    """device_id -> sha256 of every retained config, each checked against its own content."""
    snapshot = await retained_snapshot(url, "iot/devices/+/config")
    manifest = {}
    for topic, payload in snapshot.items():
        if payload:
            envelope = ConfigEnvelope.model_validate_json(payload)
            assert config_sha256(envelope.config) == envelope.sha256, topic
            manifest[topic.split("/")[2]] = envelope.sha256
    return manifest
