"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

``scripts/setup-dev.sh`` installs both. Selenium is given both paths, so it never tries to download a
browser or a driver. Each browser gets a fresh profile in a tmp dir and is quit in ``finally``.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from worker_procs import wait_for as wait_until  # noqa: F401  (the tests import it from here)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2400",
]


@contextmanager
def chromium(profile: Path) -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} missing: run scripts/setup-dev.sh "
            "(apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """The page's console messages of level SEVERE (JavaScript errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def plots_drawn(driver) -> int:
    """How many plotly figures have drawn their SVG."""
    return driver.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length")


def pixel_stddev(png: bytes) -> float:
    """Standard deviation of the screenshot's grey levels: ~0 for a blank page."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    return ImageStat.Stat(image).stddev[0]


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").resize((320, 600))
    return len(image.getcolors(maxcolors=320 * 600) or ())
