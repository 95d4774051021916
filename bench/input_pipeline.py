"""Input pipeline throughput: `load_split` against per-record parsing, in the same run.

Builds TFRecords of the real Quick, Draw! sample (../shared/data/quickdraw/simplified) at 28
and 64 px, then measures images/s of (a) the baseline that parses one record at a time and
batches afterwards and (b) `load_split` (batch, then parse_example and decode_raw per batch).
Writes bench/results/input_pipeline.json. Run: `python -m bench.input_pipeline`.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import tensorflow as tf  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build, tfrecords  # noqa: E402
from data_prep.pipeline import load_split  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCH = 256
IMAGES = 200_000


def per_record_baseline(data_dir: pathlib.Path) -> tf.data.Dataset:
    """The common tutorial pipeline: parse each record, then batch."""
    info = tfrecords.read_dataset_info(data_dir)
    h, w, c = info["image"]["height"], info["image"]["width"], info["image"]["channels"]
    files = [str(p) for p in tfrecords.shard_paths(data_dir, info, "train")]
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        f = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(f["image"], tf.uint8), [h, w, c])
        return tf.cast(image, tf.float32) / 255.0, tf.cast(f["label"], tf.int32)

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.repeat().map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE)


def images_per_second(ds: tf.data.Dataset, images: int = IMAGES, warm_up: int = 1) -> float:
    """Images/s over `images` images (batches of BATCH), after `warm_up` batches."""
    it = iter(ds)
    for _ in range(warm_up):
        next(it)
    steps = max(1, images // BATCH)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
    batch[0].numpy()
    return steps * BATCH / (time.perf_counter() - start)


def build(out: pathlib.Path, image_size: int) -> pathlib.Path:
    config = QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories="all",
                                  train_per_class=25, test_per_class=0, out=str(out), shards=8, workers=2)
    quickdraw_build.build(config, RasterConfig(image_size=image_size), progress=False)
    return out


def main() -> None:
    results = {"machine": describe_machine(), "batch_size": BATCH, "images_timed": IMAGES, "sizes": {}}
    print(results["machine"])
    print(f"{'size':>5} {'per-record (baseline)':>22} {'load_split':>12} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (28, 64):
            data_dir = build(pathlib.Path(tmp) / f"qd{size}", size)
            baseline = images_per_second(per_record_baseline(data_dir))
            ours = images_per_second(load_split(data_dir, "train", BATCH, shuffle=True, repeat=True, seed=0))
            results["sizes"][size] = {"per_record_images_per_s": round(baseline),
                                      "load_split_images_per_s": round(ours), "ratio": round(ours / baseline, 2)}
            print(f"{size:>5} {baseline:>22,.0f} {ours:>12,.0f} {ours / baseline:>6.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "input_pipeline.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
