"""Fault (c): the whole bad-file corpus dropped into a live directory, at once, next to the
configs of an agent running as its own process: it stays up and keeps publishing good edits."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from firmware_contracts.payloads import ConfigEnvelope
from tests.support.agent_process import AgentProcess, went_online
from tests.support.bad_files import BAD_FILES
from tests.support.broker import Broker
from tests.support.mqtt import Observer, observe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def rejected_codes(seen: Observer) -> dict[str, str]:
    return {
        event["file"]: event["error"]["code"]
        for event in seen.events()
        if event["event"] == "config_rejected"
    }


def retains(seen: Observer, topic: str, config: dict[str, Any]) -> bool:
    """Whether the last message ``seen`` on a config topic carries ``config``."""
    return (
        topic in seen.latest
        and ConfigEnvelope.model_validate_json(seen.latest[topic]).config == config
    )


async def test_the_bad_file_corpus_does_not_stop_the_agent(
    broker: Broker, tmp_path: Path, dirs: tuple[Path, Path], agent_process: AgentProcess
) -> None:
    config_dir, _ = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    for kind in BAD_FILES:  # each bad file first holds a good config (its last good one)
        (config_dir / f"bad-{kind}.json").write_text(json.dumps({"kind": kind}))
    agent_process.broker_url = broker.url

    async with observe(broker.url, "iot/devices/+/config", "iot/agents/#") as seen:
        agent_process.start()
        await seen.wait_for(lambda: went_online(seen, agent_process, 0), timeout=30)
        for kind, (make, _, _) in BAD_FILES.items():
            make(config_dir / f"bad-{kind}.json", outside)
        expected = {f"bad-{kind}.json" for kind in BAD_FILES}
        await seen.wait_for(lambda: expected <= set(rejected_codes(seen)), timeout=20)
        for round_ in range(3):  # good edits after the storm, each one published
            (config_dir / "good-1.json").write_text(json.dumps({"round": round_}))
            topic = "iot/devices/good-1/config"
            await seen.wait_for(partial(retains, seen, topic, {"round": round_}))
        codes, latest = rejected_codes(seen), dict(seen.latest)

    assert agent_process.alive, agent_process.log_tail()
    assert {f"bad-{kind}.json": code for kind, (_, code, _) in BAD_FILES.items()} == {
        file: code for file, code in codes.items() if file.startswith("bad-")
    }
    for kind in BAD_FILES:  # every last good config is still retained
        payload = latest[f"iot/devices/bad-{kind}/config"]
        assert {"kind": kind} == ConfigEnvelope.model_validate_json(payload).config
    assert [] == agent_process.crashes()
