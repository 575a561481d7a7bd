"""``broker-agent status`` over a broker holding one device in every fleet state."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
import time
from typing import Any

import pytest

from broker_agent.broker.process import free_port
from broker_agent.cli import main
from firmware_contracts.payloads import canonical_config, config_sha256, utc_timestamp
from tests.support.broker import Broker
from tests.support.mqtt import client_for

pytestmark = pytest.mark.timeout(60)

OLD = time.time() - 3600
EXPECTED = {
    "dev-sync": "in_sync",
    "dev-failed": "failed",
    "dev-pending": "pending",
    "dev-stale": "stale",
    "dev-never": "never_applied",
    "stray": "unmanaged",
}


def envelope(device_id: str, config: dict[str, Any], updated_at: float) -> bytes:
    sha = config_sha256(config)
    stamp = utc_timestamp(updated_at)
    head = f'{{"v":1,"device_id":"{device_id}","sha256":"{sha}","updated_at":"{stamp}"'
    return head.encode() + b',"config":' + canonical_config(config) + b"}"


def ack(config: dict[str, Any], ok: bool = True) -> bytes:
    error = None if ok else {"code": "apply_failed", "message": "interval too low"}
    return json.dumps({"sha256": config_sha256(config), "ok": ok, "error": error}).encode()


async def seed(url: str) -> None:
    """One device per state, as device and agent would have left them retained."""
    c1, c2 = {"interval": 30}, {"interval": 1}
    retained = {
        "iot/devices/dev-sync/config": envelope("dev-sync", c1, OLD),
        "iot/devices/dev-sync/config/applied": ack(c1),
        "iot/devices/dev-sync/status": b'{"state":"online","fw_version":"1.4.2"}',
        "iot/devices/dev-failed/config": envelope("dev-failed", c2, OLD),
        "iot/devices/dev-failed/config/applied": ack(c2, ok=False),
        "iot/devices/dev-failed/status": b'{"state":"offline"}',
        "iot/devices/dev-pending/config": envelope("dev-pending", c1, time.time()),
        "iot/devices/dev-stale/config": envelope("dev-stale", c2, OLD),
        "iot/devices/dev-stale/config/applied": ack(c1),
        "iot/devices/dev-never/config": envelope("dev-never", c1, OLD),
        "iot/devices/stray/status": b'{"state":"online"}',
    }
    async with client_for(url) as client:
        for topic, payload in retained.items():
            await client.publish(topic, payload, qos=1, retain=True)


@pytest.fixture
def seeded(broker: Broker) -> Broker:
    asyncio.run(seed(broker.url))
    return broker


def status(broker: Broker, *options: str) -> list[str]:
    return ["status", "--broker-url", broker.url, *options]


def shown_json(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    document = json.loads(capsys.readouterr().out)
    return {row["device_id"]: row["state"] for row in document["devices"]}


def test_json_lists_every_device_in_its_state(
    seeded: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    main(status(seeded, "--json"))
    assert EXPECTED == shown_json(capsys)


def test_any_failed_device_exits_1(seeded: Broker) -> None:
    assert 1 == main(status(seeded, "--json"))


def test_table_shows_state_presence_shas_and_error(
    seeded: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    main(status(seeded, "--device", "dev-failed"))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "dev-failed" in ln)
    sha = config_sha256({"interval": 1})[:12]
    for text in ("failed", "offline", sha, "apply_failed: interval too low"):
        assert text in line
    # OLD is set when the module is imported: in a full run the test starts minutes later
    minutes = int((time.time() - OLD) // 60)
    assert any(f" {m}m " in line for m in (minutes - 1, minutes, minutes + 1))


def test_state_filter_keeps_only_those_states_and_exits_0(
    seeded: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(status(seeded, "--json", "--state", "stale,never_applied"))
    assert (0, {"dev-stale": "stale", "dev-never": "never_applied"}) == (code, shown_json(capsys))


def test_offline_filter(seeded: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    main(status(seeded, "--json", "--offline"))
    assert {"dev-failed": "failed"} == shown_json(capsys)


def test_device_glob(seeded: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    main(status(seeded, "--json", "--device", "dev-s*"))
    assert {"dev-sync": "in_sync", "dev-stale": "stale"} == shown_json(capsys)


def test_grace_setting_moves_pending(seeded: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    main(status(seeded, "--json", "--device", "dev-pending", "--pending-grace-s", "0.001"))
    assert {"dev-pending": "never_applied"} == shown_json(capsys)


def test_unknown_state_is_a_setup_error(seeded: Broker) -> None:
    assert 2 == main(status(seeded, "--state", "broken"))


def test_unreachable_broker_is_a_setup_error() -> None:
    assert 2 == main(["status", "--broker-url", f"mqtt://127.0.0.1:{free_port()}"])


async def test_watch_redraws_on_a_change_and_exits_0_on_interrupt(seeded: Broker) -> None:
    """On a terminal (a pty), the table is redrawn live; Ctrl-C ends it cleanly."""
    controller, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker_agent.cli",
        "status",
        "--watch",
        "--broker-url",
        seeded.url,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(terminal)
    shown = bytearray()

    async def until_shown(text: bytes) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(20):
            while text not in shown:
                shown.extend(await loop.run_in_executor(None, os.read, controller, 65536))

    try:
        await until_shown(b"dev-sync")
        async with client_for(seeded.url) as client:
            await client.publish("iot/devices/late-1/status", b'{"state":"online"}', retain=True)
        await until_shown(b"late-1")
        process.send_signal(signal.SIGINT)
        assert 0 == await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(controller)
