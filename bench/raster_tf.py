"""TensorFlow rasterizer (`data_prep.raster_tf`) throughput against skia (`raster.rasterize_many`), in the same run.

Both draw the same real Quick, Draw! drawings (the first DRAWINGS_PER_CATEGORY of each simplified
category, BATCH at a time for TensorFlow, every batch padded to one width so XLA compiles once per
setting) at 28, 64 and 128 px, with and without the three time channels. Speed is drawings per
CPU-second of this process (all its threads), the best of REPEATS passes after one warm-up pass
(compilation excluded); the TensorFlow rows run under `tf.function(jit_compile=True)` (the plain
image with the default renderer there, culling, and with the dense one), and once without XLA for
the plain image (dense). The `cpu` rows draw the same batches with `data_prep.raster_cpu` (the input
pipeline's compiled renderer of the same images). Difference is the mean absolute pixel difference (0..255) from
skia, per channel. Writes bench/results/raster_tf.json. Run: `python -m bench.raster_tf`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from bench.machine import describe_machine
from bench.raster import RESULTS, load_drawings
from data_prep import raster, raster_cpu, raster_tf

SIZES = (28, 64, 128)
DRAWINGS_PER_CATEGORY = 3
BATCH = 64
REPEATS = 3
BASELINE = "skia"


def batches(drawings: list) -> list[raster_tf.StrokeBatch]:
    """The drawings in StrokeBatches of BATCH (a whole number of them), all padded to one width."""
    drawings = drawings[:len(drawings) // BATCH * BATCH]
    width = raster_tf.pad_drawings(drawings).points.shape[1]
    out = []
    for start in range(0, len(drawings), BATCH):
        b = raster_tf.pad_drawings(drawings[start:start + BATCH])
        grow = width - b.points.shape[1]
        out.append(raster_tf.StrokeBatch(np.pad(b.points, [(0, 0), (0, grow), (0, 0)]),
                                         np.pad(b.stroke_ids, [(0, 0), (0, grow)], constant_values=-1),
                                         b.num_points, b.truncated))
    return out


def tf_method(size: int, time_channels: bool, jit: bool, method: str = "auto") -> Callable[[list], np.ndarray]:
    """All batches through one compiled rasterize_batch, as one (N, H, W, C) uint8 array."""
    fn = tf.function(functools.partial(raster_tf.rasterize_batch, image_size=size, time_channels=time_channels,
                                       method=method), jit_compile=jit)
    return lambda bs: np.concatenate([fn(b.points, b.stroke_ids, b.num_points).numpy() for b in bs])


def cpu_method(size: int, time_channels: bool) -> Callable[[list], np.ndarray]:
    """All batches through raster_cpu.rasterize_batch, as one (N, H, W, C) uint8 array."""
    return lambda bs: np.concatenate([raster_cpu.rasterize_batch(b.points, b.stroke_ids, b.num_points,
                                                                 image_size=size, time_channels=time_channels)
                                      for b in bs])


def measure(fn: Callable, data, repeats: int = REPEATS) -> tuple[float, np.ndarray]:
    """(drawings per CPU-second, best of `repeats` after a warm-up pass; the images of the last pass)."""
    images = fn(data)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        images = fn(data)
        best = min(best, time.process_time() - start)
    return len(images) / best, images


def run(drawings: list, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> list[dict]:
    """One row per (size, method): drawings/s, ratio to skia of the same channels, difference from skia."""
    drawings = drawings[:len(drawings) // BATCH * BATCH]
    tf_batches = batches(drawings)
    rows = []
    for size in sizes:
        skia = {tc: measure(lambda ds, tc=tc, size=size: raster.rasterize_many(ds, size, time_channels=tc), drawings,
                              repeats)
                for tc in (False, True)}
        methods = {"skia": (False, skia[False]), "skia_time_channels": (True, skia[True]),
                   "tf_xla": (False, measure(tf_method(size, False, True), tf_batches, repeats)),
                   "tf_xla_dense": (False, measure(tf_method(size, False, True, "dense"), tf_batches, repeats)),
                   "tf_xla_time_channels": (True, measure(tf_method(size, True, True), tf_batches, repeats)),
                   "tf_graph_no_xla": (False, measure(tf_method(size, False, False), tf_batches, repeats)),
                   "cpu": (False, measure(cpu_method(size, False), tf_batches, repeats)),
                   "cpu_time_channels": (True, measure(cpu_method(size, True), tf_batches, repeats))}
        for name, (tc, (speed, images)) in methods.items():
            reference = skia[tc][1].reshape(images.shape).astype(np.int16)
            mad = np.abs(images.astype(np.int16) - reference).mean(axis=(0, 1, 2))
            rows.append({"size": size, "method": name, "drawings_per_s": round(speed, 1),
                         "ratio_vs_skia": round(speed / skia[tc][0], 3),
                         "mad_vs_skia": [round(float(m), 3) for m in np.atleast_1d(mad)]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| size | method | drawings/s per CPU-second | x skia (same channels) | difference from skia |",
             "|---:|---|---:|---:|---|"]
    for r in rows:
        mad = " / ".join(f"{m:.2f}" for m in r["mad_vs_skia"])
        lines.append(f"| {r['size']} | {r['method']} | {r['drawings_per_s']:,.0f} | {r['ratio_vs_skia']:.3f} | {mad} |")
    return "\n".join(lines)


def main() -> None:
    machine = describe_machine()
    drawings = load_drawings(per_category=DRAWINGS_PER_CATEGORY)
    drawings = drawings[:len(drawings) // BATCH * BATCH]
    points = sum(len(s) for d in drawings for s in d)
    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f"machine: {machine}; TensorFlow {tf.__version__}, devices {devices}")
    print(f"{len(drawings)} real drawings ({points / len(drawings):.1f} points on average), batches of {BATCH}, "
          f"best of {REPEATS} passes")
    started = time.perf_counter()
    rows = run(drawings)
    print(table(rows))
    print(f"took {time.perf_counter() - started:.1f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "raster_tf.json"
    out.write_text(json.dumps({"machine": machine, "tensorflow": tf.__version__, "drawings": len(drawings),
                               "batch": BATCH, "repeats": REPEATS, "unit": "drawings per CPU-second of one process",
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
