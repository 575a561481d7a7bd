"""The config publisher against a real Mosquitto, observed by an independent subscriber."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_contracts.payloads import ConfigEnvelope, config_sha256
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import Observer, observe, retained_snapshot

pytestmark = pytest.mark.timeout(60)


def configs(broker: Broker) -> str:
    return f"{broker.root}/devices/+/config"


def write_config(config_dir: Path, device: str, config: dict[str, Any]) -> None:
    (config_dir / f"{device}.json").write_text(json.dumps(config))


async def retained_configs(broker: Broker) -> dict[str, dict[str, Any]]:
    snapshot = await retained_snapshot(broker.url, configs(broker))
    return {
        topic.split("/")[2]: ConfigEnvelope.model_validate_json(payload).config
        for topic, payload in snapshot.items()
        if payload
    }


async def converges_to(broker: Broker, expected: dict[str, dict[str, Any]]) -> None:
    """Wait until the broker retains exactly ``expected``; fail with the difference."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        seen = await retained_configs(broker)
        if expected == seen:
            return
        await asyncio.sleep(0.05)
    assert expected == seen


def events_named(observer: Observer, name: str) -> list[dict[str, Any]]:
    return [e for e in observer.events() if e["event"] == name]


def live_config_publishes(observer: Observer) -> list[str]:
    """Config messages published while the observer was subscribed (not retained replays)."""
    return [
        str(m.topic) for m in observer.messages if str(m.topic).endswith("/config") and not m.retain
    ]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "configs"
    path.mkdir()
    return path


async def test_publish_update_and_clear_round_trip(broker: Broker, config_dir: Path) -> None:
    write_config(config_dir, "kitchen-01", {"interval": 30})
    async with (
        observe(broker.url, configs(broker), f"{broker.root}/agents/#") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        topic = f"{broker.root}/devices/kitchen-01/config"
        await seen.wait_for(lambda: topic in seen.latest)
        first = ConfigEnvelope.model_validate_json(seen.latest[topic])
        assert {"interval": 30} == first.config
        assert config_sha256({"interval": 30}) == first.sha256

        write_config(config_dir, "kitchen-01", {"interval": 60})
        await seen.wait_for(lambda: json.loads(seen.latest[topic])["config"] == {"interval": 60})

        write_config(config_dir, "hall-02", {"interval": 5})
        await seen.wait_for(lambda: f"{broker.root}/devices/hall-02/config" in seen.latest)

        (config_dir / "kitchen-01.json").unlink()
        await seen.wait_for(lambda: seen.latest[topic] == b"")
        await seen.wait_for(lambda: bool(events_named(seen, "config_cleared")))
        published = {e["device_id"] for e in events_named(seen, "config_published")}
        assert {"kitchen-01", "hall-02"} == published
        status_topic = f"{broker.root}/agents/test-agent/status"
        await seen.wait_for(lambda: json.loads(seen.latest[status_topic])["devices"] == 1)
        assert "online" == json.loads(seen.latest[status_topic])["state"]
    assert {"hall-02": {"interval": 5}} == await retained_configs(broker)
    final = await retained_snapshot(broker.url, f"{broker.root}/agents/test-agent/status")
    assert "offline" == json.loads(final[f"{broker.root}/agents/test-agent/status"])["state"]


BAD_FILES = {  # written while the agent runs: file -> (content, the event's error code)
    "good.json": (b'{"interval": 30,', "invalid_json"),  # a bad edit of a published config
    "array.json": (b"[1]", "not_an_object"),
    "huge.json": (b'{"x": "' + b"y" * 4096 + b'"}', "too_large"),
    "Bad_Name.json": (b"{}", "invalid_device_id"),
    "low.json": (b'{"interval": 1}', "schema_violation"),
}


@dataclass
class Rejections:
    errors: dict[str, dict[str, Any]]  # file -> the error of its config_rejected event
    config_topics: set[str]  # every config topic seen while the agent ran
    retained: dict[str, dict[str, Any]]  # what the broker retains after the agent stopped


async def write_bad_files(broker: Broker, config_dir: Path) -> Rejections:
    """A published ``good`` config, a fleet schema, then BAD_FILES written under a running agent."""
    write_config(config_dir, "good", {"interval": 30})
    (config_dir / "_schema.json").write_text(
        json.dumps(
            {"type": "object", "properties": {"interval": {"type": "integer", "minimum": 5}}}
        )
    )
    settings = agent_settings(broker.url, config_dir, max_config_bytes=2048)
    async with (
        observe(broker.url, configs(broker), f"{broker.root}/agents/+/events") as seen,
        running_agent(settings),
    ):
        for name, (content, _) in BAD_FILES.items():
            (config_dir / name).write_bytes(content)
        (config_dir / "dir.json").mkdir()
        (config_dir / "dir.json" / "x").write_text("make the watcher see it")
        (config_dir / "dir.json").touch()

        def errors() -> dict[str, dict[str, Any]]:
            return {e["file"]: e["error"] for e in events_named(seen, "config_rejected")}

        await seen.wait_for(lambda: set(BAD_FILES) <= set(errors()))
        config_topics = {t for t in seen.latest if t.endswith("/config")}
    return Rejections(errors(), config_topics, await retained_configs(broker))


async def test_every_bad_file_is_rejected_with_its_error_code(
    broker: Broker, config_dir: Path
) -> None:
    rejections = await write_bad_files(broker, config_dir)

    assert {name: code for name, (_, code) in BAD_FILES.items()} == {
        name: rejections.errors[name]["code"] for name in BAD_FILES
    }


async def test_a_rejection_says_where_the_file_is_wrong(broker: Broker, config_dir: Path) -> None:
    rejections = await write_bad_files(broker, config_dir)

    assert "line 1 column 17" in rejections.errors["good.json"]["message"]
    assert "$.interval" in rejections.errors["low.json"]["message"]


async def test_a_rejected_file_is_never_published_and_the_last_good_config_survives(
    broker: Broker, config_dir: Path
) -> None:
    rejections = await write_bad_files(broker, config_dir)

    assert {f"{broker.root}/devices/good/config"} == rejections.config_topics
    assert {"good": {"interval": 30}} == rejections.retained


async def test_unreadable_file_is_rejected_at_reconcile(broker: Broker, config_dir: Path) -> None:
    (config_dir / "dir.json").mkdir()
    async with (
        observe(broker.url, f"{broker.root}/agents/+/events") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        await seen.wait_for(lambda: bool(events_named(seen, "config_rejected")))
        assert "unreadable" == events_named(seen, "config_rejected")[0]["error"]["code"]


async def test_reconcile_after_changes_made_while_the_agent_was_down(
    broker: Broker, config_dir: Path
) -> None:
    for device in ("a", "b", "c"):
        write_config(config_dir, device, {"n": 1})
    settings = agent_settings(broker.url, config_dir)
    async with running_agent(settings):
        pass
    write_config(config_dir, "b", {"n": 2})  # changed
    (config_dir / "c.json").unlink()  # deleted
    write_config(config_dir, "d", {"n": 1})  # added
    async with observe(broker.url, configs(broker)) as seen, running_agent(settings):
        await seen.wait_for(lambda: len(live_config_publishes(seen)) >= 3)
        assert sorted(live_config_publishes(seen)) == [
            f"{broker.root}/devices/b/config",
            f"{broker.root}/devices/c/config",
            f"{broker.root}/devices/d/config",
        ]
    assert {"a": {"n": 1}, "b": {"n": 2}, "d": {"n": 1}} == await retained_configs(broker)


async def test_nothing_is_republished_when_nothing_changed(
    broker: Broker, config_dir: Path
) -> None:
    for index in range(20):
        write_config(config_dir, f"dev-{index}", {"index": index})
    settings = agent_settings(broker.url, config_dir)
    async with running_agent(settings):
        pass
    for path in config_dir.iterdir():
        os.utime(path)  # touched, not changed: the hash decides
    async with observe(broker.url, configs(broker), f"{broker.root}/agents/#") as seen:
        async with running_agent(settings) as agent:
            assert 20 == len(agent.publisher.retained)
        # a second agent on the same directory does not fight the first either
        async with running_agent(settings.model_copy(update={"agent_id": "other"})):
            pass
        assert [] == live_config_publishes(seen)
        assert [] == events_named(seen, "config_published")


async def test_mass_prune_guard_blocks_a_burst_of_deletions(
    broker: Broker, config_dir: Path
) -> None:
    for index in range(10):
        write_config(config_dir, f"dev-{index}", {"index": index})
    settings = agent_settings(broker.url, config_dir)
    async with (
        observe(broker.url, configs(broker), f"{broker.root}/agents/+/events") as seen,
        running_agent(settings),
    ):
        for index in range(8):
            (config_dir / f"dev-{index}.json").unlink()
        await seen.wait_for(lambda: bool(events_named(seen, "prune_blocked")))
        blocked = events_named(seen, "prune_blocked")[0]
        assert (8, 10) == (blocked["would_clear"], blocked["fleet_size"])
        assert [] == events_named(seen, "config_cleared")
    assert 10 == len(await retained_configs(broker))
    # the start-up reconcile obeys the same guard
    async with (
        observe(broker.url, f"{broker.root}/agents/+/events") as seen,
        running_agent(settings),
    ):
        await seen.wait_for(lambda: bool(events_named(seen, "prune_blocked")))
    assert 10 == len(await retained_configs(broker))
    # a small prune goes through
    async with running_agent(settings.model_copy(update={"prune_max_share": 1.0})):
        pass
    assert {"dev-8", "dev-9"} == set(await retained_configs(broker))


async def test_missing_config_directory_clears_nothing(broker: Broker, config_dir: Path) -> None:
    write_config(config_dir, "a", {"n": 1})
    settings = agent_settings(broker.url, config_dir)
    async with running_agent(settings):
        pass
    shutil.rmtree(config_dir)
    async with (
        observe(broker.url, f"{broker.root}/agents/+/events") as seen,
        running_agent(settings),
    ):
        await seen.wait_for(lambda: bool(events_named(seen, "prune_blocked")))
        assert "unavailable" in events_named(seen, "prune_blocked")[0]["reason"]
    assert {"a": {"n": 1}} == await retained_configs(broker)


@pytest.mark.needs_own_broker
async def test_broker_restart_with_the_agent_running(broker: Broker, config_dir: Path) -> None:
    for index in range(5):
        write_config(config_dir, f"dev-{index}", {"index": index})
    async with running_agent(agent_settings(broker.url, config_dir)) as agent:
        broker.stop(kill=True)
        for stale in broker.process.data_dir.glob("*.db"):
            stale.unlink()  # the broker comes back empty
        write_config(config_dir, "dev-0", {"index": 100})  # edited while disconnected
        await asyncio.sleep(0.2)
        broker.start()
        await asyncio.wait_for(agent.online.wait(), 15)
        expected = {f"dev-{i}": {"index": 100 if i == 0 else i} for i in range(5)}
        await converges_to(broker, expected)


async def test_editor_style_atomic_saves(broker: Broker, config_dir: Path) -> None:
    write_config(config_dir, "a", {"v": 1})
    async with (
        observe(broker.url, configs(broker), f"{broker.root}/agents/+/events") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        topic = f"{broker.root}/devices/a/config"
        await seen.wait_for(lambda: topic in seen.latest)
        # vim: backup file, swap file, write a temp file and rename it over the original
        shutil.copy(config_dir / "a.json", config_dir / "a.json~")
        (config_dir / ".a.json.swp").write_bytes(b"\x00binary swap")
        (config_dir / "a.json.tmp").write_text('{"v": ')  # half-written temp file
        (config_dir / "a.json.tmp").write_text('{"v": 2}')
        (config_dir / "a.json.tmp").replace(config_dir / "a.json")
        (config_dir / ".a.json.swp").unlink()
        await seen.wait_for(lambda: json.loads(seen.latest[topic])["config"] == {"v": 2})
        await asyncio.sleep(0.3)
        assert [] == events_named(seen, "config_rejected")
        assert [f"{broker.root}/devices/a/config"] == sorted(
            {t for t in seen.latest if t.endswith("/config")}
        )


async def test_burst_of_1000_edits_ends_in_the_final_state(
    broker: Broker, config_dir: Path
) -> None:
    async with running_agent(agent_settings(broker.url, config_dir)):
        for round_ in range(10):
            for index in range(100):
                write_config(config_dir, f"dev-{index:03}", {"round": round_, "index": index})
        for index in range(0, 100, 10):
            (config_dir / f"dev-{index:03}.json").unlink()  # 10 deletions: under the guard
        expected = {f"dev-{i:03}": {"round": 9, "index": i} for i in range(100) if i % 10 != 0}
        await converges_to(broker, expected)


async def test_schema_edit_revalidates_every_config(broker: Broker, config_dir: Path) -> None:
    write_config(config_dir, "a", {"interval": 1})
    write_config(config_dir, "b", {"interval": 10})
    async with (
        observe(broker.url, configs(broker), f"{broker.root}/agents/+/events") as seen,
        running_agent(agent_settings(broker.url, config_dir)),
    ):
        await seen.wait_for(lambda: f"{broker.root}/devices/b/config" in seen.latest)
        (config_dir / "_schema.json").write_text('{"properties": {"interval": {"minimum": 5}}}')
        await seen.wait_for(lambda: bool(events_named(seen, "config_rejected")))
        assert "a.json" == events_named(seen, "config_rejected")[0]["file"]
        write_config(config_dir, "a", {"interval": 7})
        await seen.wait_for(
            lambda: (
                json.loads(seen.latest[f"{broker.root}/devices/a/config"])["config"]
                == {"interval": 7}
            )
        )


async def test_config_directory_deleted_and_recreated_while_running(
    broker: Broker, config_dir: Path
) -> None:
    for index in range(4):  # under the share/count guard: only the directory check protects it
        write_config(config_dir, f"dev-{index}", {"index": index})
    settings = agent_settings(broker.url, config_dir)
    async with (
        observe(broker.url, f"{broker.root}/agents/+/events") as seen,
        running_agent(settings),
    ):
        shutil.rmtree(config_dir)
        await seen.wait_for(lambda: bool(events_named(seen, "prune_blocked")))
        assert [] == events_named(seen, "config_cleared")
        assert 4 == len(await retained_configs(broker))
        config_dir.mkdir()
        for index in range(4):
            write_config(config_dir, f"dev-{index}", {"index": index})
        write_config(config_dir, "new-1", {"fresh": True})
        expected = {f"dev-{i}": {"index": i} for i in range(4)} | {"new-1": {"fresh": True}}
        await converges_to(broker, expected)
        write_config(config_dir, "new-1", {"fresh": False})  # and live edits flow again
        await converges_to(broker, expected | {"new-1": {"fresh": False}})
