"""Debian's Chromium driven by Playwright (the Python package's driver, never its browser
download: that does not work here), headless, with a fresh profile per test.

Screenshots go to ``tmp_path`` (kept by pytest as the test's artefacts) and, when
``BROKER_AGENT_SCREENSHOTS`` names a directory, there too (CI can upload it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = os.environ.get("BROKER_AGENT_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these, Chromium dials Google's hosts at start; the machine's closed network
    # refuses them (many at a time), which slowed starts (notes: machines/python.md)
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/bootstrap.sh)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


class Shots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.extra = os.environ.get("BROKER_AGENT_SCREENSHOTS")
        self.taken: list[Path] = []

    async def take(self, page: Page, name: str) -> Path:
        path = self.directory / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        if self.extra:
            Path(self.extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(self.extra) / path.name)
        self.taken.append(path)
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    directory = tmp_path / "screenshots"
    directory.mkdir()
    return Shots(directory)
