"""On-the-fly rendering in the input pipeline against reading stored images, in the same run.

Builds the real Quick, Draw! sample (../shared/data/quickdraw/simplified, 344 categories x 25
drawings) twice at 28 px: `--store both` (images and strokes) and `--store strokes`. Baseline:
`load_split` reading the stored raw images (28 px). Then `load_split` drawing the strokes-only
records in tf.data at 28, 64 and 128 px, with and without time channels: with the default renderer
(`cpu`: data_prep.raster_cpu) and with `graph` (raster_tf under XLA; the plain image both with its
culling renderer and with the dense one). The goal's ratio (28 px, default renderer, against the
stored images) is also measured over GOAL_ROUNDS rounds alternating the two streams.
Images/s of a shuffled, repeating training stream, batches of 256, after 8 warm-up batches; drawn
streams best of 2 passes over the same batches (XLA compilation of the few batch shapes excluded:
a shape first met after the warm-up compiles in the first pass, 1-3 s, longer than a pass at 28 px).
Also the on-disk bytes of both stores, and the floor under any renderer: the strokes-only stream at
28 px with drawing replaced by blank images (parsing, padding and batching only), in the same run.

Then whether drawing is the bottleneck of a training step (bench/train.py's step-time comparison):
skNet's step time fed by the training stream of train_sketch_net.py drawing on the fly (with and
without -stroke_augment; at 64 px with time channels) against the same images decoded once and held
in memory, alternating, best of ROUNDS rounds; and each stream alone, whose CPU time per batch
bounds what it can take from a step on the same cores.

Writes bench/results/render_pipeline.json. Run: `python -m bench.render_pipeline [--part rate|steps]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import tempfile

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import numpy as np  # noqa: E402

from bench import input_pipeline, train  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import pipeline, quickdraw_build, raster_tf, tfrecords  # noqa: E402
from data_prep.pipeline import load_split  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCH = 256
STORED_IMAGES = 100_000
DRAWN_IMAGES = {28: 25_600, 64: 10_240, 128: 2_560}
WARM_UP = 8
GOAL_ROUNDS = 5  # alternating stored / drawn rounds for the 28 px goal's ratio
DRAWN_PASSES = 2  # drawn streams: best of 2 passes, the first also compiles batch shapes the warm-up missed
# Step-time comparison: (size, time channels, batch, timed steps) as in bench/train.py, and its rounds.
STEP_CASES = ((28, False, 64, 12), (64, True, 32, 8))
ROUNDS = 6
# Drawn streams: (load_split renderer, time channels, raster_tf.DEFAULT_METHOD for the graph renderer).
RENDERER_CASES = (("cpu", False, "auto"), ("cpu", True, "auto"), ("graph", False, "auto"), ("graph", False, "dense"),
                  ("graph", True, "auto"))


def clear_renderers() -> None:
    """Forget the traced renderers, so the next stream traces raster_tf with the current DEFAULT_METHOD."""
    pipeline.rasterizer.cache_clear()
    pipeline.record_rasterizer.cache_clear()
    pipeline.compiled_rasterizer.cache_clear()


def images_per_second(ds, images: int, warm_up: int = WARM_UP) -> float:
    """Images/s over `images` images, after `warm_up` batches (XLA compiles a few batch shapes)."""
    return input_pipeline.images_per_second(ds, images, warm_up)


@contextlib.contextmanager
def drawing_skipped():
    """load_split's on-the-fly streams with blank images instead of drawn ones: what the stream costs
    without a renderer (a measurement device; never used outside this benchmark)."""
    import tensorflow as tf

    def blank_rasterizer(renderer, image_size, *args, **kwargs):
        def blank(points, stroke_ids, num_points):
            return tf.zeros(tf.stack([tf.shape(points)[0], image_size, image_size, 1]), tf.uint8)
        return blank

    def blank_record_rasterizer(image_size, *args, **kwargs):
        return lambda points, lengths: blank_rasterizer("cpu", image_size)(points.row_splits[1:], None, None)

    real = pipeline.rasterizer, pipeline.record_rasterizer
    pipeline.rasterizer, pipeline.record_rasterizer = blank_rasterizer, blank_record_rasterizer
    try:
        yield
    finally:
        pipeline.rasterizer, pipeline.record_rasterizer = real


def build(out: pathlib.Path, store: str) -> pathlib.Path:
    config = QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories="all", train_per_class=25,
                                  test_per_class=0, out=str(out), shards=8, workers=2, store=store)
    quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return out


def stream(data_dir: pathlib.Path, **kwargs):
    return load_split(data_dir, "train", BATCH, shuffle=True, repeat=True, seed=0, drop_remainder=True, **kwargs)


def training_stream(data_dir: pathlib.Path, size: int, batch: int, time_channels: bool, render: str,
                    stroke_augment: bool = False):
    """The stream train_sketch_net.py fits on for these rendering flags (bench.train.pipeline_stream)."""
    return train.pipeline_stream(data_dir, size, batch, render=render, time_channels=time_channels,
                                 channels=3 if time_channels else 1, stroke_augment=stroke_augment)


def drawing_rates(tmp: pathlib.Path, results: dict) -> None:
    """Images/s drawn on the fly at 28, 64 and 128 px against reading the stored 28 px images."""
    both, strokes = build(tmp / "both", "both"), build(tmp / "strokes", "strokes")
    results["storage"] = tfrecords.read_dataset_info(strokes)["storage"]
    results["shard_bytes"] = {name: sum(p.stat().st_size for p in d.glob("*.tfrecord"))
                              for name, d in (("both", both), ("strokes", strokes))}
    baseline = images_per_second(stream(both), STORED_IMAGES)
    results["stored_28_images_per_s"] = round(baseline)
    print(f"stored 28 px images: {baseline:,.0f} img/s; shard bytes {results['shard_bytes']}")
    with drawing_skipped():
        floor = images_per_second(stream(strokes, image_size=28), STORED_IMAGES // 2)
    results["undrawn_28_images_per_s"] = round(floor)
    results["undrawn_ratio_to_stored"] = round(floor / baseline, 3)
    print(f"strokes parsed and padded, not drawn (28 px): {floor:,.0f} img/s, {floor / baseline:.3f} x stored")
    goal_rounds(both, strokes, results)
    print(f"{'size':>5} {'time channels':>14} {'renderer':>9} {'drawn img/s':>12} {'x stored':>9}")
    for size, count in DRAWN_IMAGES.items():
        for renderer, time_channels, method in RENDERER_CASES:
            raster_tf.DEFAULT_METHOD = method
            clear_renderers()  # traced anew with this method
            try:
                rate = max(images_per_second(stream(strokes, image_size=size, time_channels=time_channels,
                                                    renderer=renderer), count) for _ in range(DRAWN_PASSES))
            finally:
                raster_tf.DEFAULT_METHOD = "auto"
                clear_renderers()
            name = "cpu" if renderer == "cpu" else "dense" if time_channels or method == "dense" else "culled"
            results["rows"].append({"image_size": size, "time_channels": time_channels, "renderer": name,
                                    "images_per_s": round(rate), "ratio_to_stored": round(rate / baseline, 3)})
            print(f"{size:>5} {str(time_channels):>14} {name:>9} {rate:>12,.0f} {rate / baseline:>9.3f}")


def goal_rounds(both: pathlib.Path, strokes: pathlib.Path, results: dict) -> None:
    """The goal's ratio (28 px drawn by the default renderer against stored images) over GOAL_ROUNDS rounds that
    alternate the two streams: one baseline measured once moves by a third between runs on this machine."""
    ratios = []
    for _ in range(GOAL_ROUNDS):
        stored = images_per_second(stream(both), STORED_IMAGES // 2)
        drawn = max(images_per_second(stream(strokes, image_size=28), DRAWN_IMAGES[28]) for _ in range(DRAWN_PASSES))
        ratios.append(drawn / stored)
    results["goal_28_ratios"] = [round(r, 3) for r in ratios]
    results["goal_28_median_ratio"] = round(float(np.median(ratios)), 3)
    print(f"28 px drawn (default renderer) / stored, {GOAL_ROUNDS} alternating rounds: median "
          f"{np.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


def step_costs(tmp: pathlib.Path, results: dict) -> None:
    """skNet's step time fed by on-the-fly drawing against the same images held in memory."""
    data = train.build_data(tmp, 28)  # 40 categories x 25 drawings, images and strokes
    for size, time_channels, batch, steps in STEP_CASES:
        model = train.compiled("sknet", size, channels=3 if time_channels else 1)
        drawn = training_stream(data, size, batch, time_channels, "on_the_fly")
        streams = {"in_memory": train.in_memory(drawn, train.epoch_batches(data, batch)), "on_the_fly": drawn,
                   "on_the_fly_stroke_augment": training_stream(data, size, batch, time_channels, "on_the_fly",
                                                                stroke_augment=True)}
        if not time_channels:
            streams["stored"] = training_stream(data, size, batch, False, "stored")
        rounds: dict = {key: [] for key in streams}
        for _ in range(ROUNDS):  # alternate, keep the best round of each: other processes' load is noise
            for key, dataset in streams.items():
                rounds[key].append(train.seconds_per_step(model, dataset, steps))
        best = {key: min(times) for key, times in rounds.items()}
        alone = {key: train.pipeline_images_per_second(dataset, batches=20)
                 for key, dataset in streams.items() if key != "in_memory"}
        row = {"model": "sknet", "image_size": size, "time_channels": time_channels, "batch": batch, "steps": steps,
               "rounds": ROUNDS, "seconds_per_step": {k: round(v, 4) for k, v in best.items()},
               "median_seconds_per_step": {k: round(float(np.median(v)), 4) for k, v in rounds.items()},
               "cost": {k: round(best[k] / best["in_memory"] - 1, 4) for k in alone},
               "alone_images_per_second": {k: round(v, 1) for k, v in alone.items()},
               "cpu_share_bound": {k: round(batch / v / best["in_memory"], 4) for k, v in alone.items()}}
        results["steps"].append(row)
        print(f"sknet {size} px{' (time channels)' if time_channels else ''}: in memory "
              f"{best['in_memory'] * 1000:.0f} ms/step; " + "; ".join(
                  f"{k} {best[k] * 1000:.0f} ms ({row['cost'][k]:+.1%}, alone {alone[k]:,.0f} img/s, "
                  f"CPU bound {row['cpu_share_bound'][k]:.1%})" for k in alone), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "rate", "steps"), default="all",
                        help="rate: images/s against stored images; steps: cost in a training step")
    part = parser.parse_args().part
    results_file = RESULTS / "render_pipeline.json"
    results = json.loads(results_file.read_text()) if results_file.exists() and part != "all" else {}
    results.update({"machine": describe_machine(), "batch_size": BATCH})
    print(results["machine"])
    with tempfile.TemporaryDirectory() as tmp:
        if part in ("all", "rate"):
            results["rows"] = []
            drawing_rates(pathlib.Path(tmp), results)
        if part in ("all", "steps"):
            results["steps"] = []
            step_costs(pathlib.Path(tmp), results)
    RESULTS.mkdir(exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
