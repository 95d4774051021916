"""Latency of the drawing page: from the last pointer event to the updated guesses.

One run, one process: a 28 px skNet (models.registry, untrained and seeded: latency does not
depend on the weights) exported by serving.export, and a gallery index of 10,000 real drawings
(the 8,000 numpy_bitmap rows of ../shared/data/quickdraw_bitmap and 2,000 simplified drawings of
../shared/data/quickdraw rendered at 28 px), served by webapp on uvicorn in a thread. Queries are
real drawings of ../shared/data/quickdraw (simplified and raw, the bitmap classes), timed:
- baseline: what the server must do at least, in process: render the strokes (serving.strokes),
  one call of the model's classify endpoint (ExportedModel.run: classes and the embedding), the
  faiss search;
- server: the HTTP request the page sends per update (/api/recognize, JSON strokes) from a client
  on 127.0.0.1: round trip, and the handler's own time;
- browser: Debian's chromium (Playwright) replays each drawing as mouse events on the page, and
  the page's own clock measures from the last pointer event (pointerup) to the shown guesses.
p50 and p95 of each, and each p95 as a ratio to the baseline's of the same run.
Goal (issue 15): p95 under 150 ms in the browser. Writes bench/results/webapp.json.
Run: `python -m bench.webapp` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import numpy as np  # noqa: E402
import orjson  # noqa: E402

import models  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from data_prep.raster import rasterize  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CLASSES = ["boomerang", "clock", "cloud", "smiley face", "train", "tree"]
GALLERY = 10_000
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def query_drawings(per_class: int) -> list[list]:
    """Real drawings (`drawing` arrays), simplified and raw, of the bitmap classes."""
    out = []
    for fmt in ("simplified", "raw"):
        for name in CLASSES:
            with open(SHARED / "quickdraw" / fmt / f"{name}.ndjson", "rb") as f:
                out += [orjson.loads(line)["drawing"] for line in list(f)[:per_class]]
    return out


def gallery_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """10,000 real drawings as uint8 [N, 28, 28, 1], labels and class names."""
    images, labels, names = [], [], list(CLASSES)
    for i, name in enumerate(CLASSES):
        rows = np.load(SHARED / "quickdraw_bitmap" / f"{name}.npy", allow_pickle=False)
        images.append(rows.reshape(-1, 28, 28, 1))
        labels += [i] * len(rows)
    need = GALLERY - sum(len(x) for x in images)
    for path in sorted((SHARED / "quickdraw" / "simplified").glob("*.ndjson")):
        if need <= 0:
            break
        if path.stem in CLASSES:
            continue
        names.append(path.stem)
        with open(path, "rb") as f:
            for line in list(f)[:need]:
                strokes = [np.asarray(s, np.float64)[:2].T for s in orjson.loads(line)["drawing"]]
                images.append(rasterize(strokes, 28)[None, :, :, None])
                labels.append(len(names) - 1)
                need -= 1
    return np.concatenate(images)[:GALLERY], np.asarray(labels[:GALLERY]), names


def build(work: pathlib.Path):
    import keras

    from retrieval.index import build_index
    from retrieval.lookup import drawing_thumbnail
    from serving import model as serving_model
    from serving.export import export_model

    keras.utils.set_random_seed(0)
    network = models.build_model("sknet", input_size=28, channels=1, num_classes=len(CLASSES))
    export_model(network, work / "export", class_names=CLASSES, image_size=28, channels=1, polarity="white_on_black",
                 raster={"image_size": 28, "line_width": 16.0, "padding": 16.0})
    images, labels, names = gallery_images()
    model = serving_model.load(work / "export")
    vectors = np.concatenate([model.embed("images", images[i:i + 500]) for i in range(0, len(images), 500)])
    thumbs = np.stack([drawing_thumbnail(im, 28, invert=True) for im in images])
    build_index(vectors, labels, ids=[str(i) for i in range(len(labels))], class_names=names,
                thumbnails=thumbs).save(work / "index")
    return work / "export", work / "index"


def stats(values: list[float]) -> dict:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2),
            "mean": round(float(np.mean(values)), 2), "n": len(values)}


def baseline(service, drawings: list, repeats: int) -> list[float]:
    from retrieval.lookup import index_vectors
    from serving.strokes import stroke_pixels

    times = []
    for _ in range(repeats):
        for drawing in drawings:
            started = time.perf_counter()
            strokes = [np.asarray(s, np.float32)[:3].T for s in drawing]
            outputs = service.model.run("images", stroke_pixels(strokes, service.meta)[None], head="classify")
            service.index.search(index_vectors(outputs, service.index.metric), service.k)
            times.append(1000 * (time.perf_counter() - started))
    return times


def http_round_trips(url: str, drawings: list, repeats: int) -> tuple[list[float], list[float]]:
    import httpx

    round_trips, handlers = [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(repeats):
            for drawing in drawings:
                body = orjson.dumps({"drawing": drawing})
                started = time.perf_counter()
                answer = client.post("/api/recognize", content=body, headers={"Content-Type": "application/json"})
                round_trips.append(1000 * (time.perf_counter() - started))
                assert answer.status_code == 200, answer.text
                handlers.append(answer.json()["milliseconds"])
    return round_trips, handlers


def mouse_draw(page, strokes) -> None:
    """Draw each stroke (page coordinates, [n, 2]) with the mouse: press, move through its points, release."""
    for stroke in strokes:
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(x, y)
        page.mouse.up()


def browser_latencies(url: str, drawings: list) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/")
        page.wait_for_function("window.sketchApp && window.sketchApp.ready")
        box = page.locator("#canvas").bounding_box()
        latencies = []
        for drawing in drawings:
            if page.is_enabled("#clear"):
                page.click("#clear")
            strokes = [np.asarray(s, np.float64)[:2].T for s in drawing]
            points = np.concatenate(strokes)
            low, span = points.min(axis=0), max(float(np.ptp(points, axis=0).max()), 1.0)
            scale = (box["width"] - 20) / span
            before = page.evaluate("window.sketchApp.latencies.length")
            mouse_draw(page, [(stroke - low) * scale + (box["x"] + 10, box["y"] + 10) for stroke in strokes])
            page.wait_for_function(
                "n => { const a = window.sketchApp; const l = a.latencies.slice(-1)[0];"
                " return a.latencies.length > n && l.final && l.points === a.drawing().reduce((k, s) => k + s[0].length, 0); }",
                arg=before, timeout=30_000)
            latencies.append(page.evaluate("window.sketchApp.latencies.slice(-1)[0].ms"))
        browser.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per_class", type=int, default=5, help="Query drawings per class and format.")
    parser.add_argument("--repeats", type=int, default=3, help="Passes over the queries (baseline and HTTP).")
    args = parser.parse_args()
    from webapp.app import create_app
    from webapp.server import BackgroundServer
    from webapp.service import open_service

    results = {"machine": describe_machine(), "date": datetime.date.today().isoformat(), "model": "sknet 28 px",
               "gallery": GALLERY, "load_average_start": os.getloadavg()}
    print(results["machine"], flush=True)
    drawings = query_drawings(args.per_class)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-webapp-") as tmp:
        export_dir, index_dir = build(pathlib.Path(tmp))
        service = open_service(str(export_dir), str(index_dir))
        results["baseline_ms"] = stats(baseline(service, drawings, args.repeats))
        with BackgroundServer(create_app(service)) as server:
            round_trips, handlers = http_round_trips(server.url, drawings, args.repeats)
            results["http_round_trip_ms"] = stats(round_trips)
            results["handler_ms"] = stats(handlers)
            results["browser_ms"] = stats(browser_latencies(server.url, drawings))
    base = results["baseline_ms"]["p95"]
    for key in ("http_round_trip_ms", "handler_ms", "browser_ms"):
        results[key]["p95_over_baseline_p95"] = round(results[key]["p95"] / base, 2)
    results["goal_p95_ms"] = 150
    results["goal_met"] = results["browser_ms"]["p95"] < 150
    results["queries"] = len(drawings)
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{'':<30}{'p50 ms':>9}{'p95 ms':>9}{'p95/baseline':>14}")
    for key, label in (("baseline_ms", "baseline (in process)"), ("handler_ms", "server handlers"),
                       ("http_round_trip_ms", "HTTP round trip"), ("browser_ms", "browser: pointerup->shown")):
        r = results[key]
        print(f"{label:<30}{r['p50']:>9.1f}{r['p95']:>9.1f}{r.get('p95_over_baseline_p95', 1.0):>14.2f}")
    print(f"goal: browser p95 < 150 ms: {'met' if results['goal_met'] else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "webapp.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'webapp.json'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
