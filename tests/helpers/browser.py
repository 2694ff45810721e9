"""Debian's Chromium driven by Playwright, for the browser tests (chat page, admin page,
origins): where it is, how it is started, where screenshots go."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.proc import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["ARTIFACTS", "CHROMIUM", "launch", "needs_chromium"]

CHROMIUM = Path(os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium"))
#: Screenshots kept as test artifacts (git-ignored).
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Skipped only when no Chromium is installed (scripts/test.sh installs it where it can).
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)


@contextlib.contextmanager
def launch() -> Iterator[Browser]:
    """A headless Chromium, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=_ARGS)
        try:
            yield browser
        finally:
            browser.close()
