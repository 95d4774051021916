"""Sketchy TFRecords: build speed, raw against encoded storage, and the metric-learning pipelines.

On the real sample (../shared/data/sketchy, 6,250 images of 128 px), at 64 and 128 px, all in
one run so that the ratios compare like with like:
- build images/s: the work of one unit process (read, decode, resize, serialize, stage: what
  one worker does), and whole builds with 1 and 2 workers (spawning a worker imports
  TensorFlow, which on this small sample costs more than the work it shares);
- raw against encoded (JPEG photos, PNG sketches) storage: bytes per image and load_split images/s;
- images/s (best of 3 interleaved rounds) of plain shuffled reading (load_split, the baseline), of P x K batches (any domain and
  K split 2 sketches + 2 photos), of two alternatives (one filtered stream per class, and
  group_by_window per class without the distinct-class step, an upper bound on its speed), of
  cross-domain pairs and of query/gallery reading; the ratio of each to plain reading;
- the share of records a single pass of the P x K stream delivers.
Writes bench/results/sketchy.json. Run: `python -m bench.sketchy` (about 5 minutes on 2 cores).
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
from configuration_sketch import SketchyBuildConfig  # noqa: E402
from data_prep import metric_pipelines as mp  # noqa: E402
from data_prep import sketchy, tfrecords  # noqa: E402
from data_prep.pipeline import load_split, parse_batch, record_dataset  # noqa: E402
from serving.preprocess import model_input  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "sketchy"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
P, K = 16, 4
BATCH = P * K
ROUNDS = 3
ROUND_IMAGES = 10_000
FILTER_IMAGES = 2_000


def build(out: pathlib.Path, image_size: int, workers: int, encoding: str = "auto") -> tuple[dict, float]:
    config = SketchyBuildConfig(source=str(SOURCE), out=str(out), image_size=image_size, workers=workers,
                                shards=8, encoding=encoding)
    start = time.perf_counter()
    info = sketchy.build(config, progress=False)
    return info, time.perf_counter() - start


class Meter:
    """Images/s of one pipeline, timed in short rounds interleaved with the other pipelines, so
    that load from other processes hits all of them alike; the best round counts."""

    def __init__(self, ds: tf.data.Dataset, count=lambda e: int(tf.shape(e[0])[0])):
        self.it, self.count, self.rates = iter(ds), count, []
        next(self.it), next(self.it)  # warm-up

    def round(self, images: int) -> None:
        seen, start = 0, time.perf_counter()
        while seen < images:
            seen += self.count(next(self.it))
        self.rates.append(seen / (time.perf_counter() - start))

    @property
    def best(self) -> float:
        return max(self.rates)


def pk_by_filter(data_dir: pathlib.Path, split: str, seed: int = 0) -> tf.data.Dataset:
    """The obvious alternative: one filtered stream per class over every shard, P classes drawn
    per batch by choose_from_datasets. Each class stream reads (and parses) the whole split."""
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    files = mp.split_files(data_dir, info, split)
    classes = [i for i, c in enumerate(info["classes"]) if info["splits"][split]["per_class"][c] >= K]
    label_spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    streams = [record_dataset(files, shuffle=True, seed=seed + c, cycle_length=4, shuffle_buffer=64, repeat=True)
               .filter(lambda r, c=c: tf.equal(tf.io.parse_single_example(r, label_spec)["label"], c))
               for c in classes]
    picks = tf.data.Dataset.random(seed).map(
        lambda s: tf.repeat(tf.random.experimental.stateless_shuffle(tf.range(len(classes), dtype=tf.int64),
                                                                     seed=[s, 0])[:P], K)).unbatch()
    ds = tf.data.Dataset.choose_from_datasets(streams, picks).batch(BATCH)

    def parse(records):
        f = parse_batch(records, specs, ["image", "label"])
        return model_input(f["image"], None, None), tf.cast(f["label"], tf.int32)

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def pk_by_group_by_window(data_dir: pathlib.Path, split: str, seed: int = 0) -> tf.data.Dataset:
    """group_by_window keyed by class (K a window), P windows a batch: the first design, here
    without its distinct-class step, so an upper bound on the speed of that approach."""
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    files = mp.split_files(data_dir, info, split)
    label_spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    ds = record_dataset(files, shuffle=True, seed=seed, cycle_length=4, shuffle_buffer=2000, repeat=True)
    ds = ds.map(lambda r: (tf.io.parse_single_example(r, label_spec)["label"], r),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.group_by_window(key_func=lambda label, r: label, window_size=K,
                            reduce_func=lambda label, w: w.batch(K, drop_remainder=True))
    ds = ds.map(lambda labels, r: r).batch(P).map(lambda r: tf.reshape(r, [-1]))

    def parse(records):
        f = parse_batch(records, specs, ["image", "label"])
        return model_input(f["image"], None, None), tf.cast(f["label"], tf.int32)

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def unit_work_images_per_s(image_size: int, work_dir: pathlib.Path) -> float:
    """Images/s of the per-category unit work in this process: what one build worker does."""
    config = SketchyBuildConfig(source=str(SOURCE), image_size=image_size, encoding="raw")
    classes = sorted(p.name for p in (SOURCE / "photo").iterdir())
    start = time.perf_counter()
    for i, c in enumerate(classes):
        staging = {s: work_dir / f"{s}-{i}.tfrecord" for s in ("train", "test")}
        sketchy.build_unit({"source": str(SOURCE), "image_size": image_size, "encoding": "raw",
                            "jpeg_quality": config.jpeg_quality, "test_fraction": config.test_fraction,
                            "seed": 0, "strict": False, "category": c, "label": i, "unseen": False,
                            "photo_dir": str(SOURCE / "photo" / c), "sketch_dir": str(SOURCE / "sketch" / c)},
                           staging)
    return 6250 / (time.perf_counter() - start)


def single_pass_share(data_dir: pathlib.Path, split: str, total: int, **kwargs) -> float:
    delivered = sum(int(k.shape[0]) for k, _ in mp.pk_serialized(data_dir, split, P, K, seed=0, repeat=False,
                                                                  **kwargs))
    return delivered / total


def shard_bytes(info: dict) -> int:
    return sum(s["num_bytes"] for split in info["splits"].values() for s in split["shards"])


def main() -> None:
    results = {"machine": describe_machine(), "P": P, "K": K, "batch_size": BATCH, "rounds": ROUNDS,
               "images_per_round": ROUND_IMAGES, "source_images": 6250, "sizes": {}}
    print(results["machine"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for size in (64, 128):
            row = results["sizes"][str(size)] = {}
            (tmp / f"units{size}").mkdir()
            row["build_unit_work_images_per_s"] = round(unit_work_images_per_s(size, tmp / f"units{size}"))
            info, seconds = build(tmp / f"raw{size}", size, workers=1, encoding="raw")
            row["build_1_worker_images_per_s"] = round(6250 / seconds)
            _, seconds = build(tmp / f"raw{size}w2", size, workers=2, encoding="raw")
            row["build_2_workers_images_per_s"] = round(6250 / seconds)
            enc, _ = build(tmp / f"enc{size}", size, workers=1, encoding="encoded")
            row["raw_bytes_per_image"] = round(shard_bytes(info) / 6250)
            row["encoded_bytes_per_image"] = round(shard_bytes(enc) / 6250)
            data = tmp / f"raw{size}"
            query, gallery = mp.query_gallery(data, "test", BATCH)
            meters = {
                "plain_read": Meter(load_split(data, "train", BATCH, shuffle=True, repeat=True, seed=0)),
                "encoded_plain_read": Meter(load_split(tmp / f"enc{size}", "train", BATCH, shuffle=True,
                                                       repeat=True, seed=0)),
                "pk_any_domain": Meter(mp.pk_batches(data, "train", P, K, seed=0)),
                "pk_2_sketches_2_photos": Meter(mp.pk_batches(data, "train", P, K, sketches_per_class=2, seed=0)),
                "pairs_cross_domain": Meter(mp.pair_batches(data, "train", BATCH, seed=0),
                                            lambda e: 2 * int(tf.shape(e[1])[0])),
                "query_gallery": Meter(query.concatenate(gallery).repeat()),
                "pk_group_by_window_bound": Meter(pk_by_group_by_window(data, "train")),
            }
            for _ in range(ROUNDS):
                for meter in meters.values():
                    meter.round(ROUND_IMAGES)
            plain = meters["plain_read"].best
            for name, meter in meters.items():
                row[f"{name}_images_per_s"] = round(meter.best)
                row[f"{name}_over_plain"] = round(meter.best / plain, 2)
            filtered = Meter(pk_by_filter(data, "train"))
            filtered.round(FILTER_IMAGES)
            row["pk_per_class_filter_images_per_s"] = round(filtered.best)
            row["pk_per_class_filter_over_plain"] = round(filtered.best / plain, 4)
            total = info["splits"]["train"]["num_examples"]
            row["pk_single_pass_share"] = round(single_pass_share(data, "train", total), 3)
            row["pk_split_single_pass_share"] = round(single_pass_share(data, "train", total, sketches_per_class=2), 3)
            print(f"{size} px: " + json.dumps(row, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sketchy.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
