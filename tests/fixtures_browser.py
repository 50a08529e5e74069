"""pytest plugin: headless Chromium (Debian's `chromium` and `chromium-driver` packages) driven
by Selenium, for the console's browser tests, and where their screenshots go.

Without the packages the browser tests are skipped with the reason — unless
`AP24SYNC_REQUIRE_BROWSER` is set (CI sets it after installing them), when they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = (
            "headless Chromium is not installed (apt-get install chromium chromium-driver; "
            ".ci/run installs them)"
        )
        if os.environ.get("AP24SYNC_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--lang=en",
    ):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium):
    """The session's browser with a clean slate: no cookies from an earlier test."""
    chromium.delete_all_cookies()
    yield chromium
    chromium.delete_all_cookies()
    chromium.get("about:blank")  # leave the live server before it stops


def screenshot(driver, name: str) -> Path:
    """Save what the browser shows now as `artifacts/screenshots/<name>.png` (a CI artefact)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
