"""A real browser for the page tests: headless Chromium from the system's packages (Debian: chromium,
chromium-driver), driven by Selenium through /usr/bin/chromedriver, so nothing is downloaded.

Where no browser can be had the tests skip and say why; under CI=true (CI sets it) they fail instead, since
.ci/run installs the browser. Screenshots go to test-artefacts/ (CFA_TEST_ARTEFACTS moves it): look at them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMEDRIVER = Path(os.environ.get("CFA_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTEFACTS = Path(os.environ.get("CFA_TEST_ARTEFACTS", Path(__file__).resolve().parents[1] / "test-artefacts"))


def chromium_binary() -> Path | None:
    """The system Chromium (chromium or chromium-browser on PATH), or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def why_no_browser() -> str | None:
    """None when a browser can be driven here, else the reason."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (extra [test])"
    if chromium_binary() is None:
        return "no Chromium on PATH (apt-get install chromium chromium-driver)"
    if not CHROMEDRIVER.is_file():
        return f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium-driver)"
    return None


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator:
    """A headless Chromium WebDriver that records the page's console messages (console_errors)."""
    reason = why_no_browser()
    if reason:
        _missing(reason)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium_binary())
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The page's console errors (and uncaught exceptions) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, name: str) -> Path:
    """Save the window as test-artefacts/<name>.png and return the path."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
