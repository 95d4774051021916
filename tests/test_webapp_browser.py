"""The drawing page in a real browser: Debian's chromium driven by Playwright replays real
Quick, Draw! drawings as pointer events, and the page must show what the SavedModel answers for
the strokes it recorded. `make test` installs chromium (Makefile: browser)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from data_prep.raster import rasterize
from tests.webapp_fixtures import build_gallery, real_drawings

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: no background connections, no component updates (env: machines/python.md).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
CANVAS_FRAME = 256  # Quick, Draw! simplified coordinates span 0..255


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"no chromium at {CHROMIUM}: run `make browser` (Debian's chromium package) or set CHROMIUM")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(trained_bitmap_export, tmp_path_factory):
    from webapp.app import create_app
    from webapp.server import BackgroundServer
    from webapp.service import open_service

    gallery = build_gallery(trained_bitmap_export, tmp_path_factory.mktemp("browser_gallery") / "index")
    service = open_service(str(trained_bitmap_export.export_dir), str(gallery.index_dir))
    with BackgroundServer(create_app(service)) as server:
        yield server, trained_bitmap_export


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(site[0].url + "/")
    page.wait_for_function("window.sketchApp && window.sketchApp.ready")
    yield page
    context.close()
    assert not errors, errors


def saved_model_top(export_dir, drawing: list) -> str:
    """The top class the SavedModel itself (tf.saved_model.load, classify_images) gives for strokes."""
    import tensorflow as tf

    meta = json.loads((pathlib.Path(export_dir) / "model_meta.json").read_text())
    strokes = [np.asarray(s, np.float64)[:2].T for s in drawing]
    pixels = rasterize(strokes, meta["raster"]["image_size"], meta["raster"]["line_width"], meta["raster"]["padding"])
    loaded = saved_model_top.cache.get(str(export_dir)) or tf.saved_model.load(str(pathlib.Path(export_dir) / "saved_model"))
    saved_model_top.cache[str(export_dir)] = loaded
    out = loaded.classify_images(tf.constant(pixels[None, :, :, None]))
    return meta["class_names"][int(np.argmax(out["probabilities"].numpy()[0]))]


saved_model_top.cache = {}


def canvas_box(page) -> dict:
    return page.locator("#canvas").bounding_box()


def draw(page, strokes: list[np.ndarray]) -> float:
    """Replay strokes (0..255 frame) as mouse pointer events scaled onto the canvas; returns the scale."""
    box = canvas_box(page)
    scale = (box["width"] - 20) / CANVAS_FRAME
    for stroke in strokes:
        xs, ys = box["x"] + 10 + stroke[:, 0] * scale, box["y"] + 10 + stroke[:, 1] * scale
        page.mouse.move(xs[0], ys[0])
        page.mouse.down()
        for x, y in zip(xs[1:], ys[1:]):
            page.mouse.move(x, y)
        page.mouse.up()
    return scale


def wait_for_answer(page, updates_before: int) -> None:
    """Until the page has shown the answer to the drawing as it is now (its last, final update)."""
    page.wait_for_function(
        "n => { const a = window.sketchApp; const l = a.latencies[a.latencies.length - 1];"
        " return a.updates > n && l && l.final && l.points === a.drawing().reduce((k, s) => k + s[0].length, 0); }",
        arg=updates_before, timeout=30_000)
    page.wait_for_timeout(300)  # no later answer replaces it
    page.wait_for_function("() => window.sketchApp.latencies.slice(-1)[0].final")


def shown_classes(page) -> list[str]:
    return page.eval_on_selector_all("#guesses li", "items => items.map(li => li.dataset.class)")


def test_replayed_real_drawings_show_what_the_saved_model_answers(page, site):
    server, export = site
    drawings = real_drawings("simplified", per_class=2)[::2]  # one per class
    correct = 0
    for name, strokes, _ in drawings:
        page.click("#clear") if page.is_enabled("#clear") else None
        updates = page.evaluate("window.sketchApp.updates")
        scale = draw(page, strokes)
        wait_for_answer(page, updates)
        recorded = page.evaluate("window.sketchApp.drawing()")
        assert len(recorded) == len(strokes)
        box = canvas_box(page)
        for stroke, got in zip(strokes, recorded):  # the page records the pointer positions it was given
            xs, ys = np.asarray(got[0]), np.asarray(got[1])
            assert len(xs) == len(stroke) and np.all(np.diff(got[2]) >= 0)
            np.testing.assert_allclose((xs - 10) / scale, stroke[:, 0], atol=0.05 / scale + 0.01)
            np.testing.assert_allclose((ys - 10) / scale, stroke[:, 1], atol=0.05 / scale + 0.01)
        shown = shown_classes(page)
        assert len(shown) == 5
        assert shown[0] == saved_model_top(export.export_dir, recorded)
        correct += shown[0] == name
        assert box["width"] > 200
        tiles = page.eval_on_selector_all("#results figure", "fs => fs.map(f => f.dataset.class)")
        assert len(tiles) == 12
        assert page.eval_on_selector_all("#results img", "im => im.every(i => i.complete && i.naturalWidth > 0)")
    assert correct >= len(drawings) - 1  # a trained model on held-out drawings


def test_undo_clear_and_download(page, site, tmp_path):
    server, export = site
    name, strokes, _ = real_drawings("simplified", per_class=1)[1]
    assert len(strokes) >= 2
    updates = page.evaluate("window.sketchApp.updates")
    draw(page, strokes)
    wait_for_answer(page, updates)
    full = page.evaluate("window.sketchApp.drawing()")
    with page.expect_download() as download_info:
        page.click("#download")
    path = tmp_path / "drawing.ndjson"
    download_info.value.save_as(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["drawing"] == full and record["word"] == shown_classes(page)[0]
    assert set(record) == {"word", "countrycode", "timestamp", "recognized", "key_id", "drawing"}
    from data_prep.quickdraw import parse_line  # the project's own reader takes it as raw data

    parsed = parse_line(lines[0].encode(), record["word"])
    assert len(parsed.strokes) == len(strokes) and parsed.strokes[0].shape[1] == 3

    updates = page.evaluate("window.sketchApp.updates")
    page.click("#undo")
    wait_for_answer(page, updates)
    fewer = page.evaluate("window.sketchApp.drawing()")
    assert fewer == full[:-1]
    assert shown_classes(page)[0] == saved_model_top(export.export_dir, fewer)

    page.click("#clear")
    page.wait_for_function("() => document.querySelectorAll('#guesses li').length === 0")
    assert page.evaluate("window.sketchApp.drawing()") == []
    assert page.is_disabled("#undo") and page.is_disabled("#download")


def test_touch_drawing_on_a_phone_sized_screen(browser, site, tmp_path):
    server, export = site
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
                                  device_scale_factor=2)
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("window.sketchApp && window.sketchApp.ready")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    box = canvas_box(page)
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    cdp = context.new_cdp_session(page)
    name, strokes, _ = real_drawings("simplified", per_class=1)[4]
    scale = (box["width"] - 20) / CANVAS_FRAME
    updates = page.evaluate("window.sketchApp.updates")
    for stroke in strokes:
        points = [{"x": box["x"] + 10 + x * scale, "y": box["y"] + 10 + y * scale} for x, y in stroke[:, :2]]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [points[0]]})
        for p in points[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [p]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    wait_for_answer(page, updates)
    recorded = page.evaluate("window.sketchApp.drawing()")
    assert len(recorded) == len(strokes)
    assert shown_classes(page)[0] == saved_model_top(export.export_dir, recorded)
    page.screenshot(path=str(tmp_path / "phone.png"))
    context.close()


def test_screenshot_of_the_page(page, site, tmp_path):
    """The README's picture: written to $WEBAPP_SCREENSHOT when set (docs/webapp.png is one)."""
    drawings = real_drawings("simplified", per_class=1)
    name, strokes, _ = drawings[1]  # a clock
    updates = page.evaluate("window.sketchApp.updates")
    draw(page, strokes)
    wait_for_answer(page, updates)
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete)")
    target = pathlib.Path(os.environ.get("WEBAPP_SCREENSHOT") or tmp_path / "webapp.png")
    page.screenshot(path=str(target), full_page=True)
    from PIL import Image

    with Image.open(target) as shot:
        pixels = np.asarray(shot.convert("L"))
    assert shot.width >= 1000 and pixels.std() > 10  # a page with content, not a blank frame
