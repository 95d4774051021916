"""Rasterizer throughput: skia (`rasterize_many`) against cairo, OpenCV and a Pillow baseline, in the same run.

All four draw the same real Quick, Draw! drawings (../shared/data/quickdraw/simplified, the
first DRAWINGS_PER_CATEGORY of each category) with Google's numpy_bitmap geometry at 28, 64
and 128 px. Speed is drawings per CPU-second of this one process (per core; OpenCV held to one
thread), the best of REPEATS passes, so other load on the machine costs less. Quality is the
mean absolute pixel difference (0..255) against the cairo reference, the recipe itself (for the
3-channel time rendering, of its channel 0). The Pillow baseline draws curve-joined lines and
round end caps (ellipses) so that it draws the recipe's shapes.
Writes bench/results/raster.json. Run: `python -m bench.raster`.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw

from bench.machine import describe_machine
from data_prep import raster

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SIZES = (28, 64, 128)
DRAWINGS_PER_CATEGORY = 3
REPEATS = 3
LINE_WIDTH = 16.0
PADDING = 16.0
FRAME = 256


def load_drawings(source: pathlib.Path = SOURCE, per_category: int = DRAWINGS_PER_CATEGORY) -> list[list[np.ndarray]]:
    """The first `per_category` drawings of every simplified file, as lists of (points, 2) float32 arrays."""
    drawings = []
    for path in sorted(source.glob("*.ndjson")):
        with open(path, encoding="utf-8") as f:
            for _, line in zip(range(per_category), f):
                strokes = json.loads(line)["drawing"]
                drawings.append([np.array(s[:2], dtype=np.float32).T for s in strokes])
    if not drawings:
        raise FileNotFoundError(f"no simplified .ndjson drawings under {source}")
    return drawings


def _frame_points(strokes: list[np.ndarray], side: int) -> tuple[list[np.ndarray], int]:
    """The recipe's placement on a `side`-pixel canvas: device-space strokes and the line width in pixels."""
    placed = raster.layout(strokes, FRAME, "auto")
    scale, tx, ty = raster.device_transform(placed.offset, side, LINE_WIDTH, PADDING, FRAME)
    return [s * scale + (tx, ty) for s in placed.strokes], max(1, round(LINE_WIDTH * scale))


def pillow_baseline(strokes: list[np.ndarray], size: int) -> np.ndarray:
    """Pillow: curve-joined lines and round end caps at 256 px, then a box-filter shrink."""
    image = Image.new("L", (FRAME, FRAME), 0)
    draw = ImageDraw.Draw(image)
    device, width = _frame_points(strokes, FRAME)
    r = width / 2
    for stroke in device:
        pts = [tuple(p) for p in stroke.tolist()]
        if len(pts) > 1:
            draw.line(pts, fill=255, width=width, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def opencv_baseline(strokes: list[np.ndarray], size: int) -> np.ndarray:
    """OpenCV: anti-aliased polylines (4 fractional bits) at 256 px, then INTER_AREA shrink."""
    image = np.zeros((FRAME, FRAME), np.uint8)
    device, width = _frame_points(strokes, FRAME)
    cv2.polylines(image, [np.rint(s * 16).astype(np.int32) for s in device], False, 255, width, cv2.LINE_AA, 4)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _one_by_one(fn: Callable) -> Callable:
    return lambda drawings, size: np.stack([fn(d, size) for d in drawings])


METHODS: dict[str, Callable[[list, int], np.ndarray]] = {
    "skia": lambda drawings, size: raster.rasterize_many(drawings, size, LINE_WIDTH, PADDING, FRAME),
    "skia_time_channels": lambda drawings, size: raster.rasterize_many(
        drawings, size, LINE_WIDTH, PADDING, FRAME, time_channels=True),
    "cairo": _one_by_one(lambda d, size: raster.rasterize_cairo(d, size, LINE_WIDTH, PADDING, FRAME)),
    "opencv": _one_by_one(opencv_baseline),
    "pillow": _one_by_one(pillow_baseline),
}
BASELINE = "pillow"


def measure(fn: Callable, drawings: list, size: int, repeats: int = REPEATS) -> tuple[float, np.ndarray]:
    """(drawings per CPU-second, best of `repeats`; the images of the last pass)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        images = fn(drawings, size)
        best = min(best, time.process_time() - start)
    return len(drawings) / best, images


def run(drawings: list, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> list[dict]:
    """One row per (size, method): drawings/s, ratio to the Pillow baseline, MAD against cairo."""
    rows = []
    for size in sizes:
        results = {name: measure(fn, drawings, size, repeats) for name, fn in METHODS.items()}
        reference = results["cairo"][1].astype(np.int16)
        for name, (speed, images) in results.items():
            if images.ndim == 4:  # time channels: channel 0 is the plain image
                images = images[..., 0]
            rows.append({
                "size": size,
                "method": name,
                "drawings_per_s": round(speed, 1),
                "ratio_vs_pillow": round(speed / results[BASELINE][0], 2),
                "mad_vs_cairo": round(float(np.abs(images.astype(np.int16) - reference).mean()), 3),
            })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| size | method | drawings/s per core | x Pillow | MAD vs cairo (0..255) |",
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['method']} | {r['drawings_per_s']:,.0f} | {r['ratio_vs_pillow']:.2f} "
                     f"| {r['mad_vs_cairo']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    cv2.setNumThreads(1)
    machine = describe_machine()
    drawings = load_drawings()
    points = sum(len(s) for d in drawings for s in d)
    print(f"machine: {machine}")
    print(f"{len(drawings)} real drawings ({points / len(drawings):.1f} points, "
          f"{sum(len(d) for d in drawings) / len(drawings):.1f} strokes on average), best of {REPEATS} passes")
    started = time.perf_counter()
    rows = run(drawings)
    print(table(rows))
    print(f"took {time.perf_counter() - started:.1f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "raster.json"
    out.write_text(json.dumps({"machine": machine, "drawings": len(drawings), "repeats": REPEATS,
                               "unit": "drawings per CPU-second of one process", "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
