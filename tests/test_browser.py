"""The app in a real browser: Debian's headless Chromium driven by Playwright.

Upload two photos, see their face status, write a prompt, Generate, see the images; then a
prompt without the trigger word shows the error, and the next valid click works.

Set ``PHOTOMAKER_SCREENSHOTS=docs`` to also write the README's screenshots there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.test_app_api import app_url


def find_chromium() -> str | None:
    """``PHOTOMAKER_CHROMIUM``, else a Chromium or Chrome on PATH, else Debian's path."""
    candidates = [os.environ.get("PHOTOMAKER_CHROMIUM")]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")]
    candidates.append("/usr/bin/chromium")
    return next((c for c in candidates if c and os.path.exists(c)), None)


CHROMIUM = find_chromium()
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ASSETS = Path(__file__).resolve().parent.parent / "assets"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="needs Chromium or Chrome on PATH (apt-get install chromium), or PHOTOMAKER_CHROMIUM",
    ),
]


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    sync_api.expect.set_options(timeout=60_000)  # generation runs on 2 CPU cores
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_url())
        page.wait_for_selector("#generate")
        yield page
        browser.close()


def _photos() -> list[str]:
    photos = sorted(str(p) for p in ASSETS.glob("astronaut*.jpg"))
    if len(photos) < 2:
        pytest.skip("the example photos in assets/ are missing")
    return photos[:2]


def _shoot(page, name: str) -> None:
    folder = os.environ.get("PHOTOMAKER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / name
        page.wait_for_timeout(1500)  # let toasts finish sliding in
        page.screenshot(path=str(path), full_page=True)
        from PIL import Image

        with Image.open(path) as shot:  # a palette PNG: a third of the size, same look
            small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)


def test_tiny_banner_is_visible(page):
    banner = page.locator("#tiny-banner")
    assert banner.is_visible()
    assert "random" in banner.inner_text()


def test_upload_generate_error_and_recover(page):
    from playwright.sync_api import expect

    page.locator("#photos input[type=file]").set_input_files(_photos())
    status = page.locator("#photo-status")
    expect(status).to_contain_text("Faces found in 2 of 2 photos")
    expect(page.locator("#preview")).to_contain_text("photo 2: face found")

    page.locator("#prompt textarea").fill("a photo of a woman img as an astronaut, smiling")
    page.locator("#generate").click()
    images = page.locator("#gallery img")
    expect(images).to_have_count(2)  # the default number of images
    seed = page.locator("#seed-used input")
    expect(seed).to_have_value(re.compile(r"^\d+$"))
    first_seed = seed.input_value()
    _shoot(page, "app-tiny-result.png")

    page.locator("#prompt textarea").fill("a photo of a woman as an astronaut")
    page.locator("#generate").click()
    toast = page.locator(".toast-body").filter(has_text="no trigger word 'img'")
    expect(toast).to_be_visible()
    _shoot(page, "app-tiny-error.png")
    for close in page.locator(".toast-close").all():
        close.click()

    page.locator("#prompt textarea").fill("a photo of a woman img as an astronaut")
    page.locator("#generate").click()
    expect(images).to_have_count(2)
    expect(seed).not_to_have_value(first_seed)  # a new random seed, shown
    assert page.locator(".toast-body").filter(has_text="trigger").count() == 0


def test_clear_photos(page):
    from playwright.sync_api import expect

    page.locator("#clear").click()
    expect(page.locator("#preview")).to_be_hidden()
    expect(page.locator("#photo-status")).to_have_text("")


def test_example_photos_fill_the_form(page):
    from playwright.sync_api import expect

    page.locator("table tr").filter(has_text="Watercolor").first.click()
    expect(page.locator("#prompt textarea")).to_have_value(re.compile("reading a book"))
    expect(page.locator("#photo-status")).to_contain_text("Faces found in 3 of 3 photos")
