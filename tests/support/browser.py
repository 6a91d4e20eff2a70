"""Debian's Chromium driven by Playwright, as an operator's browser: headless, no
downloaded browser, no traffic but to the controller on loopback. Screenshots go to a
folder git ignores (``EDGEFLEET_SCREENSHOTS``, default ``.artifacts/screenshots``)."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",  # root in CI; the sandbox needs user namespaces we do not have there
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SCREENSHOTS = Path(
    os.environ.get("EDGEFLEET_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"
)


def chromium_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `pip install playwright` (make test installs it)"
    return None


def launch() -> Iterator[Any]:
    """One headless Chromium; skips (fails in CI) with how to get it when missing."""
    problem = chromium_missing()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def person(browser: Any, viewport: dict[str, int] = DESKTOP) -> Any:
    """A fresh browser profile: its own cookies. The controller's certificate is signed by
    its own root, which this profile does not know; the test trusts it on purpose."""
    context = browser.new_context(ignore_https_errors=True, viewport=viewport)
    context.set_default_timeout(20_000)
    return context.new_page()


def log_in(page: Any, url: str, username: str, password: str) -> None:
    page.goto(url + "/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/console/login" not in u)


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def decode_qr_image(page: Any, selector: str) -> str:
    """What zbar reads from an image on the page (its bytes as the server sent them)."""
    from PIL import Image
    from pyzbar.pyzbar import decode

    src = page.get_attribute(selector, "src")
    assert src and src.startswith("data:image/png;base64,"), src
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    found = decode(image)
    assert found, "zbar found no QR code in the image"
    return found[0].data.decode()
