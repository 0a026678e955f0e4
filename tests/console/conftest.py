"""The browser tests' fixtures: a screenshots folder, Debian's Chromium with a fresh profile,
and a coordinator with the console's keys to drive it against."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext

from tests.console.test_browser import Console, chromium, secured_console
from tests.participant_server import FakeParticipant


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $TCC_CONSOLE_SCREENSHOTS (kept as CI artefacts), else tmp."""
    folder = Path(os.environ.get("TCC_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile") as context:
        yield context


@pytest.fixture
async def console(
    database_url: str, participant: FakeParticipant, shots: Path, browser: BrowserContext
) -> AsyncIterator[Console]:
    async with secured_console(database_url, participant, browser, shots) as opened:
        yield opened
