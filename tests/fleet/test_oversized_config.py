"""A config bigger than the broker takes is that file's rejection, not the agent's downfall.

Mosquitto's ``max_packet_size`` is announced in the CONNACK (MQTT v5 Maximum Packet Size);
before this rule, the client library refused the publish and the session ended, on every
reconnect, so the agent never came online and no other config was published.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.agent import agent_settings, running_agent
from tests.support.broker import PROJECT, Broker
from tests.support.mqtt import observe, retained_snapshot

LIMIT = 2000


async def test_oversized_config_is_rejected_too_large_and_the_rest_published(
    tmp_path: Path,
) -> None:
    text = (PROJECT / "mosquitto.conf").read_text() + f"\nmax_packet_size {LIMIT}\n"
    broker = Broker(tmp_path / "limited", text)
    broker.start()
    try:
        config_dir = tmp_path / "configs"
        config_dir.mkdir()
        (config_dir / "small.json").write_text('{"a": 1}')
        (config_dir / "big.json").write_text(json.dumps({"blob": "x" * (LIMIT * 2)}))
        settings = agent_settings(broker.url, config_dir)
        async with observe(broker.url, "iot/agents/+/events") as seen, running_agent(settings):
            await seen.wait_for(lambda: any(e.get("file") == "big.json" for e in seen.events()))
            retained = await retained_snapshot(broker.url, "iot/devices/+/config")
        rejected = [e for e in seen.events() if e.get("file") == "big.json"]
        assert "too_large" == rejected[0]["error"]["code"]
        assert f"at most {LIMIT}" in rejected[0]["error"]["message"]
        assert {"iot/devices/small/config"} == set(retained)
    finally:
        broker.stop()
