"""The app in a real browser: headless Chromium driven by Playwright, at a desktop width
(1280×900) and a phone width (390×844).

Covers the photo area (one preview, ✓/✗ badges, per-photo remove, coloured status, Generate
off with its reason), Enter to generate and Shift+Enter for a new line, results in view and
whole, the seed controls, downloads and "Load settings from image", examples that fit a phone,
the error looks, the Stop button, the doodle and the likeness in the captions, and text
contrast (WCAG AA, 4.5:1, from computed colours).

Set ``PHOTOMAKER_SCREENSHOTS=docs`` to also write the README's screenshots there.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.test_app_api import _server, app_url


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
DESKTOP, PHONE = (1280, 900), (390, 844)
WIDTHS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
PROMPT = "a photo of a woman img as an astronaut, smiling"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="needs Chromium or Chrome on PATH (apt-get install chromium), or PHOTOMAKER_CHROMIUM",
    ),
]


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api
    sync_api.expect.set_options(timeout=60_000)  # generation runs on 2 CPU cores
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def viewport():
    return DESKTOP


@pytest.fixture
def page(browser, viewport):
    width, height = viewport
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_url())
    page.wait_for_selector("#generate")
    yield page
    context.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Photos the tests upload: the example photos, one as HEIC, and one without a face."""
    folder = tmp_path_factory.mktemp("browser-photos")
    blank = folder / "no-face.png"
    Image.new("RGB", (256, 256), (90, 120, 200)).save(blank)
    heic = None
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        heic = folder / "iphone.heic"
        Image.open(ASSETS / "astronaut_flip.jpg").save(heic)
    except Exception:  # pillow-heif missing or without an encoder
        heic = None
    photos = sorted(str(p) for p in ASSETS.glob("astronaut*.jpg"))
    if len(photos) < 2:
        pytest.skip("the example photos in assets/ are missing")
    return {"photos": photos, "blank": str(blank), "heic": str(heic) if heic else None}


def upload(page, paths) -> None:
    page.locator("#photo-view input[type=file]").first.set_input_files(list(paths))


def set_number(page, selector: str, value: str) -> None:
    """Type ``value`` into a slider's number box and leave it (Tab), until the box keeps it:
    on a busy machine a box typed into while the page is still settling (the accordion just
    opened, the photo previews arriving) can be put back to its old value."""
    from playwright.sync_api import expect

    field = page.locator(f"{selector} input[type=number]")
    for _ in range(5):
        field.fill(value)
        field.press("Tab")
        page.wait_for_timeout(300)
        if field.input_value() == value:
            break
    expect(field).to_have_value(value)


def generate_with_enter(page, prompt: str = PROMPT) -> None:
    box = page.locator("#prompt textarea")
    box.fill(prompt)
    box.press("Enter")


def _shoot(page, name: str, full_page: bool = True) -> None:
    folder = os.environ.get("PHOTOMAKER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / name
        page.wait_for_timeout(1500)  # let toasts finish sliding in
        page.screenshot(path=str(path), full_page=full_page)
        with Image.open(path) as shot:  # a palette PNG: a third of the size, same look
            small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)


def _shoot_region(page, name: str, *selectors: str) -> None:
    """A screenshot of the smallest box around ``selectors`` (for the README)."""
    folder = os.environ.get("PHOTOMAKER_SCREENSHOTS")
    if not folder:
        return
    page.wait_for_timeout(1500)
    boxes = [page.locator(s).bounding_box() for s in selectors]  # in the viewport
    scroll_x, scroll_y = page.evaluate("() => [window.scrollX, window.scrollY]")
    boxes = [{**b, "x": b["x"] + scroll_x, "y": b["y"] + scroll_y} for b in boxes]  # the page
    left, top = min(b["x"] for b in boxes) - 8, min(b["y"] for b in boxes) - 8
    right = max(b["x"] + b["width"] for b in boxes) + 8
    bottom = max(b["y"] + b["height"] for b in boxes) + 8
    path = Path(folder) / name
    Path(folder).mkdir(parents=True, exist_ok=True)
    page.screenshot(
        path=str(path),
        full_page=True,
        clip={"x": max(left, 0), "y": max(top, 0), "width": right - left, "height": bottom - top},
    )
    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def draw(page, selector: str, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw ``strokes`` (points as fractions of the drawing surface) on a Sketchpad."""
    page.locator(selector).scroll_into_view_if_needed()
    canvas = page.locator(f"{selector} canvas").first
    blank = canvas.screenshot()
    box = canvas.bounding_box()
    side = min(box["width"], box["height"])  # the square canvas, centred
    x0, y0 = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    for stroke in strokes:
        (x, y), *rest = stroke
        page.mouse.move(x0 + x * side, y0 + y * side)
        page.mouse.down()
        # One pointer event per point: the editor joins them with straight segments, and
        # each event costs it about 0.16 s here (software rendering on 2 cores).
        for x, y in rest:
            page.mouse.move(x0 + x * side, y0 + y * side)
        page.mouse.up()
    # Under load the editor paints the strokes late; Generate sends what it has painted, so
    # wait until the strokes are on the canvas (a person sees them before clicking, too).
    deadline = time.monotonic() + 30
    while canvas.screenshot() == blank:
        assert time.monotonic() < deadline, "the strokes never appeared on the Sketchpad"
        page.wait_for_timeout(200)
    page.wait_for_timeout(300)  # the last stroke's end, after its first pixels


def in_view(page, selector: str) -> bool:
    return page.evaluate(
        """(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                      return r.top >= -2 && r.top < window.innerHeight - 80; }""",
        selector,
    )


def fits_width(page, selector: str) -> bool:
    return page.evaluate(
        """(sel) => { const el = document.querySelector(sel);
                      const r = el.getBoundingClientRect();
                      return r.right <= window.innerWidth + 1 && el.scrollWidth <= el.clientWidth + 1; }""",
        selector,
    )


# --------------------------------------------------------------------------- tests


def test_tiny_banner_is_visible(page):
    banner = page.locator("#tiny-banner")
    assert banner.is_visible()
    assert "random" in banner.inner_text()


@WIDTHS
def test_photo_area_badges_remove_status_and_generate_state(page, files, viewport):
    from playwright.sync_api import expect

    submit, status = page.locator("#generate"), page.locator("#photo-status .status")
    expect(submit).to_be_disabled()
    expect(submit).to_have_text("Add photos to generate")  # the reason, on the button
    expect(status).to_have_class(re.compile("status-empty"))
    assert not page.locator("#photos").is_visible()  # one preview, not a file list as well

    upload(page, [files["photos"][0], files["blank"]])
    view = page.locator("#photo-view")
    expect(view.locator(".caption-label").filter(has_text="2 ✗ no face")).to_be_visible()
    expect(view.locator(".caption-label").filter(has_text="1 ✓ face")).to_be_visible()
    expect(status).to_have_class(re.compile("status-error"))
    expect(status).to_contain_text("No face found in photo 2")
    expect(submit).to_be_disabled()
    expect(submit).to_have_text("Fix the photos to generate")
    colour = status.evaluate("el => getComputedStyle(el).color")
    assert colour != page.locator("#prompt label span").first.evaluate(
        "el => getComputedStyle(el).color"
    )  # coloured, not the plain text colour

    view.locator(".gallery-item").nth(1).locator(".delete-button").click()  # remove photo 2
    expect(status).to_have_class(re.compile("status-ok"))
    expect(status).to_contain_text("Faces found in 1 of 1 photo")
    expect(submit).to_be_enabled()
    expect(submit).to_have_text("Generate")
    expect(view.locator(".gallery-item")).to_have_count(1)
    assert fits_width(page, "#photo-view")


def test_iphone_photos_are_accepted(page, files):
    from playwright.sync_api import expect

    if not files["heic"]:
        pytest.skip("pillow-heif cannot write HEIC here")
    upload(page, [files["photos"][0], files["heic"]])
    expect(page.locator("#photo-status .status")).to_contain_text("Faces found in 2 of 2 photos")
    expect(page.locator("#photo-view .caption-label").filter(has_text="2 ✓ face")).to_be_visible()


@WIDTHS
def test_enter_generates_results_in_view_whole_and_remembered(page, files, viewport, tmp_path):
    from playwright.sync_api import expect

    seed_used, reuse = page.locator("#seed-used input"), page.locator("#reuse-seed")
    expect(seed_used).to_have_value("")  # nothing shown before the first result
    expect(reuse).to_be_disabled()
    page.locator("#advanced").get_by_text("Advanced options").click()
    expect(page.locator("#seed input")).to_be_disabled()  # Randomize is on

    upload(page, files["photos"][:2])
    expect(page.locator("#generate")).to_be_enabled()
    box = page.locator("#prompt textarea")
    box.fill("a photo of a woman img")
    box.press("Shift+Enter")  # a new line, not a run
    box.press_sequentially("as an astronaut")
    assert box.input_value() == "a photo of a woman img\nas an astronaut"
    page.wait_for_timeout(500)
    assert page.locator("#gallery img").count() == 0
    box.press("Enter")
    images = page.locator("#gallery .gallery-item img")
    expect(images).to_have_count(2)  # the default number of images
    assert in_view(page, "#gallery"), "the results are not in view after submitting"
    if viewport == PHONE:  # the results below the form: Stop, just above them, stays in reach
        assert in_view(page, "#generate-row"), "Generate/Stop scrolled out of view"
    expect(seed_used).to_have_value(re.compile(r"^\d+$"))
    seed = seed_used.input_value()
    _shoot(page, "app-desktop.png" if viewport == DESKTOP else "app-phone.png", full_page=False)

    # Whole images (no crop) and whole captions (no ellipsis).
    for img in images.all():
        natural = img.evaluate("i => i.naturalWidth / i.naturalHeight")
        box_ratio = img.evaluate(
            "i => { const r = i.getBoundingClientRect(); return r.width / r.height; }"
        )
        fit = img.evaluate("i => getComputedStyle(i).objectFit")
        assert fit == "contain" or abs(natural - box_ratio) < 0.02
    for caption in page.locator("#gallery .caption-label").all():
        assert caption.evaluate("c => c.scrollWidth <= c.clientWidth + 1")
        assert caption.inner_text().startswith(f"seed {seed} · ")
    assert all(
        re.search(rf"photomaker-{seed}-[12]\.png$", src or "")
        for src in images.evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")
    )

    # Download all: a zip of the PNGs, which carry their settings.
    with page.expect_download() as download_info:
        page.locator("#download-all").click()
    download = download_info.value
    assert download.suggested_filename == f"photomaker-{seed}.zip"
    archive = tmp_path / "all.zip"
    download.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == [f"photomaker-{seed}-1.png", f"photomaker-{seed}-2.png"]
        z.extract(f"photomaker-{seed}-2.png", tmp_path)

    # Reuse this seed: visible confirmation; the seed box is enabled and holds it.
    expect(reuse).to_be_enabled()
    reuse.click()
    expect(page.locator(".toast-body").filter(has_text=f"Seed {seed} is set")).to_be_visible()
    expect(reuse).to_have_text("✓ Seed reused")
    expect(page.locator("#seed input")).to_be_enabled()
    expect(page.locator("#seed input")).to_have_value(seed)
    expect(page.locator("#randomize input")).not_to_be_checked()
    page.locator("#randomize input").check()  # the next run will not use it: said so
    expect(reuse).to_have_text("Reuse this seed")
    expect(page.locator("#seed input")).to_be_disabled()

    # Load settings from image: a fresh page gets the form back from the PNG.
    page.reload()
    page.wait_for_selector("#generate")
    page.locator("#load-settings input[type=file]").set_input_files(
        str(tmp_path / f"photomaker-{seed}-2.png")
    )
    expect(page.locator("#prompt textarea")).to_have_value(
        "a photo of a woman img\nas an astronaut"
    )
    expect(page.locator("#seed input")).to_have_value(seed)
    expect(page.locator("#randomize input")).not_to_be_checked()


@WIDTHS
def test_examples_are_thumbnails_that_fit_and_fill_the_form(page, viewport):
    from playwright.sync_api import expect

    thumbnails = page.locator("#examples .gallery-item img")
    expect(thumbnails).to_have_count(3)
    assert fits_width(page, "#examples")
    for thumb in thumbnails.all():
        box = thumb.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport[0]
    page.locator("#examples .gallery-item").filter(has_text="Watercolor").click()
    expect(page.locator("#prompt textarea")).to_have_value(re.compile("reading a book"))
    page.wait_for_timeout(1000)  # the smooth scroll
    assert in_view(page, "#photo-view"), "the page stayed at the examples"
    expect(page.locator("#photo-status")).to_contain_text("Faces found in 3 of 3 photos")
    expect(page.locator("#generate")).to_be_enabled()


def test_mistakes_look_like_mistakes_and_the_next_run_works(page, files):
    from playwright.sync_api import expect

    upload(page, files["photos"][:2])
    expect(page.locator("#generate")).to_be_enabled()
    generate_with_enter(page, "a photo of a woman as an astronaut")
    toast = page.locator(".toast-body").filter(has_text="no trigger word 'img'")
    expect(toast).to_be_visible()
    title = toast.locator(".toast-title")
    assert "Please check your input" in title.evaluate(
        "t => getComputedStyle(t, '::after').content"
    )  # not Gradio's bare "Error"
    expect(page.locator("#generate")).to_be_visible()
    expect(page.locator("#seed-used input")).to_have_value("")  # still no result, no seed
    expect(page.locator("#reuse-seed")).to_be_disabled()
    _shoot(page, "app-error.png", full_page=False)
    for close in page.locator(".toast-close").all():
        close.click()
    generate_with_enter(page)
    expect(page.locator("#gallery .gallery-item img")).to_have_count(2)
    expect(page.locator("#generate")).to_be_visible()


def test_stop_button_cancels_and_next_job_runs(page, files):
    from playwright.sync_api import expect

    upload(page, files["photos"][:2])
    expect(page.locator("#generate")).to_be_enabled()
    page.locator("#advanced").get_by_text("Advanced options").click()
    for selector, value in (("#steps", "100"), ("#num-outputs", "4")):
        set_number(page, selector, value)
    # the server has seen the 100 steps (the hint follows the slider) before the job is sent
    expect(page.locator("#merge-hint")).to_contain_text("of 100")
    log_before = _server["log"].read_text().count("a cancelled generation stopped")
    generate_with_enter(page)
    stop = page.locator("#stop")
    expect(stop).to_be_visible()
    expect(page.locator("#generate")).to_be_hidden()
    expect(page.locator("#gallery")).to_contain_text(re.compile(r"\d+/100"))  # denoising
    stop.click()
    expect(page.locator(".toast-body").filter(has_text="Stopped")).to_be_visible()
    expect(page.locator("#generate")).to_be_visible()
    expect(stop).to_be_hidden()
    deadline = time.monotonic() + 60  # the worker stopped at a step, not at the end
    while _server["log"].read_text().count("a cancelled generation stopped") == log_before:
        assert time.monotonic() < deadline, "the cancelled generation kept running"
        time.sleep(0.5)

    for selector, value in (("#steps", "3"), ("#num-outputs", "2")):
        set_number(page, selector, value)
    page.locator("#generate").click()
    expect(page.locator("#gallery .gallery-item img")).to_have_count(2)
    expect(page.locator("#seed-used input")).to_have_value(re.compile(r"^\d+$"))


FIGURE = [  # a head, shoulders and a body: a rough portrait layout
    [(0.5 + 0.16 * math.cos(t / 24 * 2 * math.pi), 0.3 + 0.19 * math.sin(t / 24 * 2 * math.pi))
     for t in range(25)],
    [(0.5, 0.49), (0.5, 0.95)],
    [(0.12, 0.75), (0.3, 0.6), (0.5, 0.56), (0.7, 0.6), (0.88, 0.75)],
]  # fmt: skip


def test_the_doodle_steers_the_picture_and_the_captions_give_the_likeness(page, files):
    """Enable doodle: the Sketchpad (brush picked) and its two sliders appear; what is drawn
    reaches the pictures (their PNGs say a doodle was used), and every caption ends in the
    likeness (in tiny mode the noise has no face: "no face found")."""
    from playwright.sync_api import expect

    from photomaker.metadata import read_metadata

    expect(page.locator("#doodle-area")).to_be_hidden()
    upload(page, files["photos"][:2])
    expect(page.locator("#generate")).to_be_enabled()
    page.locator("#enable-doodle input").check()
    expect(page.locator("#doodle-pad")).to_be_visible()
    expect(page.locator("#doodle-strength input[type=number]")).to_have_value("0.7")
    expect(page.locator("#doodle-factor input[type=number]")).to_have_value("0.8")
    expect(page.locator("#doodle-pad")).not_to_contain_text("Pick the brush")  # picked already
    draw(page, "#doodle-pad", FIGURE)
    page.locator("#prompt textarea").fill(PROMPT)
    _shoot_region(page, "app-doodle.png", "#enable-doodle", "#doodle-area")
    page.locator("#generate").click()
    images = page.locator("#gallery .gallery-item img")
    expect(images).to_have_count(2)
    captions = [c.inner_text() for c in page.locator("#gallery .caption-label").all()]
    assert all(re.search(r" · (likeness -?\d\.\d\d|no face found)$", c) for c in captions)
    _shoot_region(page, "app-likeness.png", "#gallery")
    src = images.first.get_attribute("src")
    with urllib.request.urlopen(src, timeout=30) as response:
        meta = read_metadata(Image.open(io.BytesIO(response.read())))
    assert meta["doodle"] is True and meta["adapter_conditioning_scale"] == 0.7
    assert meta["likeness_text"] == captions[0].rsplit(" · ", 1)[1]

    page.locator("#enable-doodle input").uncheck()  # off again: the drawing is not sent
    expect(page.locator("#doodle-area")).to_be_hidden()
    page.locator("#generate").click()
    expect(page.locator("#gallery .gallery-item img").first).not_to_have_attribute("src", src)
    src = page.locator("#gallery .gallery-item img").first.get_attribute("src")
    with urllib.request.urlopen(src, timeout=30) as response:
        assert read_metadata(Image.open(io.BytesIO(response.read())))["doodle"] is False


CONTRAST_JS = """
() => {
  const parse = (c) => {
    const m = c && c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1});
  const lum = ({r, g, b}) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    let bg = {r: 255, g: 255, b: 255, a: 1};
    for (const e of chain) {
      const style = getComputedStyle(e);
      let c = parse(style.backgroundColor);
      const image = style.backgroundImage;
      if ((!c || c.a === 0) && image && image.includes("gradient")) c = parse(image);
      if (c && c.a > 0) bg = over(c, bg);
    }
    return bg;
  };
  const opacity = (el) => {
    let o = 1;
    for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
    return o;
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none";
  };
  const exempt = (el) => el.closest("[disabled], [aria-disabled='true'], .toast-wrap, svg, img");
  const ratio = (el, colour) => {
    const bg = background(el);
    const c = parse(colour);
    const fg = over({...c, a: c.a * opacity(el)}, bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);
  };
  const failures = [];
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || seen.has(el) || !n.textContent.trim() || !visible(el) || exempt(el)) continue;
    seen.add(el);
    const value = ratio(el, getComputedStyle(el).color);
    if (value < 4.5) failures.push(`${value.toFixed(2)} ${n.textContent.trim().slice(0, 50)}`);
  }
  for (const el of document.querySelectorAll("input, textarea")) {
    if (!visible(el) || exempt(el) || ["file", "range", "checkbox", "radio"].includes(el.type)) continue;
    const colour = el.value ? getComputedStyle(el).color : getComputedStyle(el, "::placeholder").color;
    const text = el.value || el.placeholder;
    if (!text) continue;
    const value = ratio(el, colour);
    if (value < 4.5) failures.push(`${value.toFixed(2)} [${el.tagName}] ${text.slice(0, 50)}`);
  }
  return failures;
}
"""


@pytest.mark.parametrize(
    "viewport, dark",
    [(DESKTOP, False), (PHONE, False), (DESKTOP, True)],
    ids=["desktop", "phone", "desktop-dark"],
)
def test_all_text_has_enough_contrast(page, files, viewport, dark):
    """WCAG AA: 4.5:1 for every piece of visible text (disabled controls are exempt)."""
    from playwright.sync_api import expect

    if dark:
        page.goto(app_url() + "?__theme=dark")
        page.wait_for_selector("#generate")

    page.locator("#advanced").get_by_text("Advanced options").click()
    page.get_by_text("Tips").click()

    def check():
        page.wait_for_timeout(1000)  # let fades and transitions finish
        first = page.evaluate(CONTRAST_JS)
        if not first:
            return []
        page.wait_for_timeout(2000)  # a busy machine: only what lasts counts
        return sorted(set(first) & set(page.evaluate(CONTRAST_JS)))

    failures = check()
    upload(page, [files["photos"][0], files["blank"]])  # the error status too
    expect(page.locator("#photo-status .status-error")).to_be_visible()
    failures += check()
    page.locator("#photo-view .gallery-item").nth(1).locator(".delete-button").click()
    generate_with_enter(page)
    expect(page.locator("#gallery .gallery-item img")).to_have_count(2)
    expect(page.locator("#photo-status .status-ok")).to_be_visible()
    expect(page.locator("#reuse-seed")).to_be_enabled()
    failures += check()
    assert not failures, "text below 4.5:1:\n" + "\n".join(sorted(set(failures)))
    focus = page.locator("#generate")
    focus.focus()
    outline = focus.evaluate("b => getComputedStyle(b).outlineWidth")
    assert outline not in ("0px", ""), "no visible focus ring on Generate"
