"""The console in a real browser (Debian's Chromium, headless, driven by Playwright), against a
real Mosquitto, the real agent serving the console and a station with simulated boards.

Each test walks one operator task and saves a screenshot of every page it sees.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from broker_agent.commands.console import run_console
from broker_agent.http.console.auth import hash_password
from broker_agent.http.server import HttpServer
from broker_agent.settings import ConsoleSettings, StationSettings
from tests.browser.conftest import Shots
from tests.http.console_harness import console_fleet, publish_ack
from tests.support.broker import Broker
from tests.support.service import running
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(60)

PASSWORD = "bench operator 42"
VIEWPORT = {"width": 1280, "height": 860}
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


async def new_page(browser: Browser) -> Page:
    page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    page.set_default_timeout(10_000)
    return page


async def test_log_in_edit_a_config_and_watch_it_sync(
    browser: Browser, broker: Broker, tmp_path: Path, shots: Shots, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_PASSWORD_HASH", hash_password(PASSWORD))
    async with console_fleet(
        broker.url, tmp_path, listen="0.0.0.0:0", login=("operator", PASSWORD)
    ) as fleet:
        page = await new_page(browser)
        await page.goto(f"{fleet.url}/console/")
        await expect(page).to_have_url(re.compile(r"/console/login\?next="))
        await shots.take(page, "login")
        await page.fill("input[name=username]", "operator")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await expect(page.locator("#devices tbody tr")).to_have_count(3)
        await expect(page.locator("#row-kitchen-01 .state")).to_have_text("pending")

        # the device page: a schema violation shown inline with its path
        await page.click("#row-kitchen-01 a")
        await expect(page.locator("#editor")).to_have_value(re.compile("telemetry_interval_s"))
        await page.fill("#editor", '{"telemetry_interval_s": 1, "led": {"brightness": "max"}}')
        await page.click("#save")
        violations = page.locator("#violations li")
        await expect(violations).to_have_count(2)
        await expect(violations.first).to_contain_text("$.led.brightness")
        await expect(violations.nth(1)).to_contain_text("$.telemetry_interval_s")
        await shots.take(page, "device-schema-error")

        # a good edit: pending until the device acknowledges it, then in_sync, live
        await page.fill("#editor", '{"telemetry_interval_s": 45, "led": {"brightness": 20}}')
        await page.click("#save")
        await expect(page.locator("#write-result")).to_contain_text("Saved")
        await expect(page.locator('[data-fact="state"]')).to_have_text("pending")
        sha = (await fleet.device("kitchen-01"))["sha256"]
        await publish_ack(broker.url, "kitchen-01", sha)
        await expect(page.locator('[data-fact="state"]')).to_have_text("in_sync")
        await shots.take(page, "device")

        # someone else saves while the operator edits: refused, and the conflict explained
        await page.fill("#editor", '{"telemetry_interval_s": 46}')
        changed = await fleet.http.patch(
            "/api/devices/kitchen-01/config",
            json={"telemetry_interval_s": 50},
            headers=fleet.headers(),
        )
        current = changed.json()["sha256"]
        await expect(page.locator('[data-fact="sha256"]')).to_have_text(current)
        await page.click("#save")
        await expect(page.locator("#write-result")).to_contain_text("someone changed this config")
        await expect(page.locator("#write-result")).to_contain_text(current)
        await shots.take(page, "device-conflict")

        # the NVS image, downloaded for a chosen partition size
        async with page.expect_download() as download_info:
            await page.click("#provision button")
        download = await download_info.value
        image = await download.path()

        # the fleet page follows acks live: a row changes within a second of its ack
        await page.goto(f"{fleet.url}/console/")
        garage = page.locator("#row-garage-door .state")
        await expect(garage).to_have_text("pending")
        await expect(page.locator("body[data-live=on]")).to_have_count(1)
        garage_sha = (await fleet.device("garage-door"))["sha256"]
        acked = time.monotonic()
        await publish_ack(broker.url, "garage-door", garage_sha)
        await expect(garage).to_have_text("in_sync", timeout=1_000)
        seen_after = time.monotonic() - acked
        await page.select_option("select[name=state]", "in_sync")
        await expect(page.locator("#devices tbody tr")).to_have_count(1)
        await page.select_option("select[name=state]", "")
        await expect(page.locator("#devices tbody tr")).to_have_count(3)
        shot = await shots.take(page, "fleet")
        if DOCS_SCREENSHOT.parent.is_dir() and _update_docs():
            DOCS_SCREENSHOT.write_bytes(shot.read_bytes())

        # delete, after the confirmation dialog
        await page.goto(f"{fleet.url}/console/devices/greenhouse-02")
        await expect(page.locator('[data-fact="state"]')).to_have_text("pending")
        dialogs: list[str] = []

        async def accept(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)
        await page.click("#delete")
        await expect(page.locator("#missing")).to_be_visible()
    assert "download" != download.suggested_filename
    assert "kitchen-01-nvs.bin" == download.suggested_filename
    assert 0x5000 == Path(str(image)).stat().st_size
    assert seen_after < 1.0
    assert ["Delete the config of greenhouse-02?"] == [d.split(" The agent")[0] for d in dialogs]
    assert not (fleet.configs / "greenhouse-02.json").exists()


async def test_flash_a_board_to_100_and_see_a_failure_with_its_hint(
    browser: Browser, broker: Broker, tmp_path: Path, shots: Shots
) -> None:
    async with console_fleet(broker.url, tmp_path, simulate=2) as fleet:
        page = await new_page(browser)
        await page.goto(f"{fleet.url}/console/stations")
        forms = page.locator("#station-bench-1 form.flash")
        await expect(forms).to_have_count(2)
        await shots.take(page, "stations")
        await page.evaluate(
            """() => { window.progressSeen = [];
            new MutationObserver(() => document.querySelectorAll("li.job progress")
              .forEach((bar) => window.progressSeen.push(Number(bar.value))))
              .observe(document.body, {subtree: true, childList: true, attributes: true}); }"""
        )
        await forms.first.locator("input[name=device_id]").fill("kitchen-01")
        await forms.first.locator("button").click()
        done = page.locator("li.job[data-status=ok]")
        await expect(done).to_have_count(1, timeout=15_000)
        await expect(done.locator(".percent")).to_have_text("100 %")
        await expect(done.locator(".phase")).to_have_text("done")
        progress = await page.evaluate("window.progressSeen")

        await (
            page.locator("#station-bench-1 form.flash")
            .first.locator("input[name=device_id]")
            .fill("nobody")
        )
        await page.locator("#station-bench-1 form.flash").first.locator("button").click()
        failed = page.locator("li.job[data-status=error]")
        await expect(failed.locator(".code")).to_have_text("provisioning_failed")
        await expect(failed.locator(".hint")).to_contain_text("act on the cause")
        await shots.take(page, "stations-jobs")

        await page.goto(f"{fleet.url}/console/events")
        await expect(page.locator("#events tbody tr").first).to_be_visible()
        await page.select_option("select[name=event]", "provisioned")
        await expect(page.locator("#events tbody tr")).to_have_count(1)
        await expect(page.locator("#events tbody tr")).to_contain_text("kitchen-01")
        await shots.take(page, "events")
    assert 100 == progress[-1]
    assert sorted(progress) == progress  # the bar only moves forward


async def test_cancel_a_running_job(
    browser: Browser, broker: Broker, tmp_path: Path, shots: Shots
) -> None:
    """The standalone console with no agent on the broker: the job waits for its image."""
    servers: list[HttpServer] = []
    settings = ConsoleSettings(broker_url=broker.url, http_listen="127.0.0.1:0")
    station = StationSettings(
        broker_url=broker.url,
        station_id="bench-1",
        simulate=1,
        http_listen="",
        manufacturing_log=tmp_path / "log.jsonl",
    )

    async def listening() -> None:
        while not servers:  # noqa: ASYNC110 - run_console reports its server by a callback
            await asyncio.sleep(0.01)

    async with (
        running_station(station),
        running(run_console(settings, servers.append), listening(), name="console"),
    ):
        page = await new_page(browser)
        await page.goto(f"{servers[0].url}/console/stations")
        form = page.locator("#station-bench-1 form.flash")
        await form.locator("input[name=device_id]").fill("kitchen-01")
        await form.locator("button").click()
        job = page.locator("li.job")
        await expect(job.locator(".phase")).to_have_text("fetching_nvs")
        await job.locator("button.cancel").click()
        await expect(job.locator(".code")).to_have_text("aborted")
        await expect(job.locator(".hint")).to_contain_text("retry when ready")
        await shots.take(page, "stations-cancelled")


def _update_docs() -> bool:
    import os

    return os.environ.get("BROKER_AGENT_UPDATE_DOCS_SCREENSHOT") == "1"
