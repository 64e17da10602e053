"""Headless Debian Chromium driven by Playwright (never a downloaded browser build)."""

import os

import pytest
from playwright import sync_api as playwright_sync

CHROMIUM = "/usr/bin/chromium"
# No background networking: this machine only reaches loopback, and Chromium would keep
# trying to reach its update and sync services otherwise.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("TB_RSYNC_NO_BROWSER") == "1":
        pytest.skip("TB_RSYNC_NO_BROWSER=1: browser tests skipped on request")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"No Chromium at {CHROMIUM}; run scripts/install-system-deps.sh "
                    "(or set TB_RSYNC_NO_BROWSER=1 to skip the browser tests).")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
