"""Headless Chromium for the report's browser test and benchmark (selenium, imported lazily).

driver = headless_chromium(tmp_path / "profile")
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

INSTALL_HINT = "apt-get install chromium chromium-driver"


def chromium_paths() -> tuple[str, str] | None:
    """The Chromium binary and its driver, or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def headless_chromium(profile: Path) -> Any:
    """A headless Chromium WebDriver with a fresh profile, no network side traffic, and the
    page's console kept (`driver.get_log("browser")`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(f"headless Chromium not installed: {INSTALL_HINT}")
    chromium, driver = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)
