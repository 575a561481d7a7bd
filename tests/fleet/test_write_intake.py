"""How config writes come in (mqtt/intake.py, shared with provisioning): brokers without shared
subscriptions, retained writes on invalid device ids, and a full queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from broker_agent.fleet import writer
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.config_writes import ask, requester, retained_config
from tests.support.mqtt import client_for, eventually, payload_of, retained_snapshot
from tests.support.mqtt_proxy import no_shared_broker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "configs"
    path.mkdir()
    return path


async def test_writes_are_answered_on_a_broker_without_shared_subscriptions(
    broker: Broker, config_dir: Path
) -> None:
    async with (
        no_shared_broker(broker.url) as plain_only,
        running_agent(agent_settings(plain_only.url, config_dir)),
        requester(broker.url) as client,
    ):
        answer = await ask(client, {"request_id": "w-1", "config": {"a": 1}})
        retained = await retained_config(broker)

    assert ("ok", "w-1") == (answer["status"], answer["request_id"])
    assert retained is not None
    assert [] == plain_only.refused  # no $share/ subscription was even tried


@pytest.mark.allow_contract_violations  # a retained write on a bad topic, on purpose
async def test_a_retained_write_on_an_invalid_device_id_topic_is_cleared(
    broker: Broker, config_dir: Path
) -> None:
    bad = "iot/devices/Not-Valid/config/set"
    async with client_for(broker.url) as client:
        await client.publish(bad, b'{"request_id": "x", "delete": true}', qos=1, retain=True)
    async with running_agent(agent_settings(broker.url, config_dir)):

        async def cleared() -> bool:
            return not (await retained_snapshot(broker.url, "iot/devices/+/config/set")).get(bad)

        await eventually(cleared)

    assert not (await retained_snapshot(broker.url, "iot/devices/+/config/set")).get(bad)


@pytest.mark.allow_contract_violations  # writes answered internal_error on purpose
async def test_writes_past_a_full_queue_are_answered_busy_with_one_warning(
    broker: Broker, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "QUEUE_CAPACITY", 1)
    monkeypatch.setattr(writer, "MAX_WORKERS", 1)
    count = 60
    with structlog.testing.capture_logs() as logs:
        async with (
            running_agent(agent_settings(broker.url, config_dir)),
            requester(broker.url) as requests,
        ):
            for index in range(count):  # QoS 0: one burst, as fast as the socket takes it
                body = {"request_id": f"w-{index}", "config": {"n": index}}
                await requests.client.publish(
                    "iot/devices/dev-1/config/set", json.dumps(body).encode(), qos=0
                )

            def by_request_id() -> dict[str, dict[str, Any]]:  # two overlapping filters
                found = (json.loads(payload_of(m)) for m in requests.messages)
                return {answer["request_id"]: answer for answer in found}

            await requests.wait_for(lambda: len(by_request_id()) == count, timeout=30)
            answers = by_request_id()

    busy = [a for a in answers.values() if a["status"] == "error"]
    assert busy, "a burst of 60 writes into a queue of 1 got no busy answer"
    assert {("internal_error", True)} == {
        (a["error"]["code"], "retry" in a["error"]["message"]) for a in busy
    }
    warnings = sum(e["event"] == "config_write_busy" for e in logs)
    assert 1 == warnings  # one burst (measured: 57 of 60 answered busy), one warning
