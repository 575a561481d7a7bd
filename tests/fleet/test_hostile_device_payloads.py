"""What a device publishes can never stop ``broker-agent status`` or break the console: acks and
statuses with rich markup, lone surrogates and very long error texts, published as a device
would (retained, on its own topics), read back through the real command and the real API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker_agent.cli import main
from broker_agent.fleet.state import ERROR_TEXT_MAX
from tests.fleet.test_status_command import OLD, envelope
from tests.http.console_harness import console_fleet, eventually
from tests.support.broker import Broker
from tests.support.mqtt import client_for

pytestmark = pytest.mark.timeout(60)

CONFIG = {"interval": 30}
MARKUP = "[/x] closing tag [bold]never opened"
LONG = "x" * 5000
LONE_SURROGATE_ACK = b'{"sha256": "%s", "ok": false, "error": {"code": "e", "message": "\\ud800"}}'


def failed_ack(sha256: str, message: str) -> bytes:
    return json.dumps(
        {"sha256": sha256, "ok": False, "error": {"code": "apply_failed", "message": message}}
    ).encode()


async def publish_hostile_fleet(url: str) -> None:
    from firmware_contracts.payloads import config_sha256

    sha = config_sha256(CONFIG)
    retained = {}
    for device, ack in (
        ("dev-markup", failed_ack(sha, MARKUP)),
        ("dev-long", failed_ack(sha, LONG)),
        ("dev-surrogate", LONE_SURROGATE_ACK % sha.encode()),
    ):
        retained[f"iot/devices/{device}/config"] = envelope(device, CONFIG, OLD)
        retained[f"iot/devices/{device}/config/applied"] = ack
    retained["iot/devices/dev-surrogate/status"] = b'{"state": "online", "fw": "\\udfff"}'
    async with client_for(url) as client:
        for topic, payload in retained.items():
            await client.publish(topic, payload, qos=1, retain=True)


@pytest.fixture
def hostile(broker: Broker) -> Broker:
    asyncio.run(publish_hostile_fleet(broker.url))
    return broker


def test_status_prints_markup_and_long_errors_as_plain_clipped_text(
    hostile: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--broker-url", hostile.url])
    out = capsys.readouterr().out

    assert 1 == code  # failed devices shown: the normal exit, not a crash (2 or a traceback)
    assert "[/x] closing tag [bold]never opened" in out.replace("\n", "")
    assert LONG[:500] not in out.replace(" ", "").replace("\n", "").replace("│", "")


def test_a_lone_surrogate_ack_counts_as_malformed(
    hostile: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["status", "--broker-url", hostile.url, "--json"])
    rows = {r["device_id"]: r for r in json.loads(capsys.readouterr().out)["devices"]}

    assert ("stale", None) == (rows["dev-surrogate"]["state"], rows["dev-surrogate"]["error"])
    assert "online" != rows["dev-surrogate"]["presence"]  # its status is not JSON either
    assert len(rows["dev-long"]["error"]) == ERROR_TEXT_MAX


async def test_the_console_api_answers_200_for_a_fleet_with_hostile_payloads(
    broker: Broker, tmp_path: Path
) -> None:
    async with console_fleet(broker.url, tmp_path) as fleet:
        await publish_hostile_fleet(broker.url)

        async def hostile_seen() -> bool:
            page = (await fleet.http.get("/api/devices?per_page=500")).json()
            return {"dev-markup", "dev-long", "dev-surrogate"} <= {
                row["device_id"] for row in page["items"]
            }

        await eventually(hostile_seen)
        page = await fleet.http.get("/api/devices?per_page=500")
        details = [await fleet.http.get(f"/api/devices/{d}") for d in ("dev-surrogate", "dev-long")]

    assert 200 == page.status_code
    assert [200, 200] == [d.status_code for d in details]
    assert details[0].json()["status"] is None  # the lone-surrogate status reads as none
    rows = {row["device_id"]: row for row in page.json()["items"]}
    assert len(rows["dev-long"]["ack_error"]) == ERROR_TEXT_MAX
