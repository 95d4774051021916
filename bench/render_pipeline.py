"""On-the-fly rendering in the input pipeline against reading stored images, in the same run.

Builds the real Quick, Draw! sample (../shared/data/quickdraw/simplified, 344 categories x 25
drawings) twice at 28 px: `--store both` (images and strokes) and `--store strokes`. Baseline:
`load_split` reading the stored raw images (28 px). Then `load_split` drawing the strokes-only
records in tf.data (raster_tf under XLA) at 28, 64 and 128 px, with and without time channels.
Images/s of a shuffled, repeating training stream, batches of 256, after 8 warm-up batches
(XLA compilation of the few batch shapes excluded). Also the on-disk bytes of both stores. Writes
bench/results/render_pipeline.json. Run: `python -m bench.render_pipeline`.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from bench import input_pipeline  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build, tfrecords  # noqa: E402
from data_prep.pipeline import load_split  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCH = 256
STORED_IMAGES = 100_000
DRAWN_IMAGES = {28: 25_600, 64: 10_240, 128: 2_560}
WARM_UP = 8


def images_per_second(ds, images: int, warm_up: int = WARM_UP) -> float:
    """Images/s over `images` images, after `warm_up` batches (XLA compiles a few batch shapes)."""
    return input_pipeline.images_per_second(ds, images, warm_up)


def build(out: pathlib.Path, store: str) -> pathlib.Path:
    config = QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories="all", train_per_class=25,
                                  test_per_class=0, out=str(out), shards=8, workers=2, store=store)
    quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return out


def stream(data_dir: pathlib.Path, **kwargs):
    return load_split(data_dir, "train", BATCH, shuffle=True, repeat=True, seed=0, drop_remainder=True, **kwargs)


def main() -> None:
    results = {"machine": describe_machine(), "batch_size": BATCH, "rows": []}
    print(results["machine"])
    with tempfile.TemporaryDirectory() as tmp:
        both, strokes = build(pathlib.Path(tmp) / "both", "both"), build(pathlib.Path(tmp) / "strokes", "strokes")
        results["storage"] = tfrecords.read_dataset_info(strokes)["storage"]
        results["shard_bytes"] = {name: sum(p.stat().st_size for p in d.glob("*.tfrecord"))
                                  for name, d in (("both", both), ("strokes", strokes))}
        baseline = images_per_second(stream(both), STORED_IMAGES)
        results["stored_28_images_per_s"] = round(baseline)
        print(f"stored 28 px images: {baseline:,.0f} img/s; shard bytes {results['shard_bytes']}")
        print(f"{'size':>5} {'time channels':>14} {'drawn img/s':>12} {'x stored':>9}")
        for size, count in DRAWN_IMAGES.items():
            for time_channels in (False, True):
                rate = images_per_second(stream(strokes, image_size=size, time_channels=time_channels), count)
                results["rows"].append({"image_size": size, "time_channels": time_channels,
                                        "images_per_s": round(rate), "ratio_to_stored": round(rate / baseline, 3)})
                print(f"{size:>5} {str(time_channels):>14} {rate:>12,.0f} {rate / baseline:>9.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "render_pipeline.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
