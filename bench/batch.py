"""Batch job throughput: `serving.batch` on Beam's DirectRunner against a plain tf.data loop, and TFLite latency.

On the same TFRecord files, in one process and one run, items/s of:
- the baseline: a plain loop of tf.data (the shards read in order, batched, parsed to uint8 pixels
  by data_prep.pipeline.parse_batch) feeding serving.model.ExportedModel.run("images", batch), the
  endpoint the batch job calls; timed with the model's loading (the job's start-up includes it) and
  without (from the first scored batch on);
- the batch job (`serving.batch.main`, in this process) on DirectRunner with 1 worker (in memory)
  and with 2 worker processes (`--direct_num_workers 2`): whole job (wall, outputs written), the
  job's own report.json rate, and its scoring phase alone (from the first to the last batch scored,
  read from the job's progress files), with the start-up before it and the gather-and-write after it;
- items per CPU-second of each (this process and its finished children: Beam's workers), steadier
  than wall time on a shared machine;
at 28 px (2,400 real numpy_bitmap drawings, 400 of each of the 6 classes of ../shared/data/quickdraw_bitmap)
and 64 px (400 real simplified drawings, 16 seeded categories x 25 of ../shared/data/quickdraw, rendered at
64 px: bitmaps cannot be re-rendered, and upscaling 28 px bitmaps would score blurred images),
with skNet (models.registry, untrained weights: speed does not depend on them) exported by
serving.export. The three runs alternate in a rotated order over ROUNDS rounds (other processes
share the cores): best, median and the ratio to the baseline of the same run.
Goal (issue 10): 1 worker at least 0.8x the plain loop, 2 workers faster than 1.
Then the median latency of one image through model.tflite (serving.tflite) against the SavedModel's
classify_images (ExportedModel.run), calls alternating.

Writes bench/results/batch.json. Run: `python -m bench.batch` (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import io
import json
import os
import pathlib
import resource
import statistics
import tempfile
import threading
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import apache_beam  # noqa: E402,F401 - imported once here, as TensorFlow is: no run pays a library import
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build, tfrecords  # noqa: E402
from data_prep.pipeline import parse_batch  # noqa: E402
from serving import batch as batch_job  # noqa: E402
from serving import model as serving_model  # noqa: E402
from serving.export import export_model  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
BITMAPS = SHARED / "quickdraw_bitmap"
STROKES = SHARED / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
MODEL = "sknet"
SPLIT = "train"
BATCH = 64  # serving.batch's default --batch_size; the plain loop uses the same
RUNS = ("plain_loop", "beam_1_worker", "beam_2_workers")
# Data per size, sized so that 3 rounds of the three runs at both sizes fit in about 9 minutes on 2 shared
# cores; at these sizes start-up is a large share of a whole job, so the scoring phase is reported apart.
# 28 px: bitmap rows per class (6 classes); 64 px: seeded categories x 25 drawings (the model is ~6x slower).
BITMAP_PER_CLASS = 400
STROKE_CATEGORIES = 16
ROUNDS = 3
LATENCY_CALLS = 200
POLL_SECONDS = 0.05


# --------------------------------------------------------------------------- data and models


def build_data(out: pathlib.Path, size: int) -> pathlib.Path:
    """The TFRecord data set scored at `size`: real bitmaps at 28 px, real strokes rendered at 64 px."""
    if size == 28:
        config = QuickDrawBuildConfig(source=str(BITMAPS), format="bitmap", categories="all",
                                      train_per_class=BITMAP_PER_CLASS, test_per_class=0, out=str(out), shards=8,
                                      workers=2)
    else:
        config = QuickDrawBuildConfig(source=str(STROKES), format="simplified", categories=str(STROKE_CATEGORIES),
                                      train_per_class=25, test_per_class=0, out=str(out), shards=8, workers=2)
    quickdraw_build.build(config, RasterConfig(image_size=size), progress=False)
    return out


def export(out: pathlib.Path, size: int, class_names: list[str]) -> tuple[pathlib.Path, str | None]:
    """skNet (untrained, seeded) exported with model.tflite when serving.tflite can write it:
    (export folder, None) or (export folder, why there is no model.tflite)."""
    import keras

    keras.utils.set_random_seed(0)
    network = models.build_model(MODEL, input_size=size, channels=1, num_classes=len(class_names))
    arguments = dict(class_names=class_names, image_size=size, channels=1, polarity="white_on_black")
    try:
        export_model(network, out / "export", tflite="float32", **arguments)
        return out / "export", None
    except Exception as err:  # serving.tflite is optional here: the batch figures do not need it
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    export_model(network, out / "export_no_tflite", **arguments)
    return out / "export_no_tflite", reason


# --------------------------------------------------------------------------- the three runs


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (Beam's worker processes)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def plain_loop(export_dir: pathlib.Path, data_dir: pathlib.Path) -> dict:
    """The baseline: load the model, then tf.data batches of uint8 pixels through ExportedModel.run."""
    cpu, start = cpu_seconds(), time.perf_counter()
    model = serving_model.load(export_dir)
    loaded = time.perf_counter()
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    files = [str(p) for p in tfrecords.shard_paths(data_dir, info, SPLIT)]
    ds = (tf.data.TFRecordDataset(files).batch(BATCH)
          .map(lambda s: parse_batch(s, specs, ["image"])["image"], num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    top, count, first = [], 0, None
    for images in ds:
        out = model.run("images", images.numpy())
        top += [c.decode() for c in out["top_classes"][:, 0]]
        count += len(out["top_classes"])
        if first is None:
            first = (time.perf_counter(), count)
    end = time.perf_counter()
    return {"items": count, "wall_s": end - start, "cpu_s": cpu_seconds() - cpu, "startup_s": first[0] - start,
            "load_s": loaded - start, "tail_s": 0.0, "scoring_items_per_s": (count - first[1]) / (end - first[0]),
            "top1": collections.Counter(top)}


class ProgressPoller:
    """(time, items scored) samples of a running job, from the progress files its workers write."""

    def __init__(self, out: pathlib.Path):
        self.out, self.samples, self.stop = str(out), [], threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            self.samples.append((time.perf_counter(), batch_job.Progress.total(self.out)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def beam_run(export_dir: pathlib.Path, data_dir: pathlib.Path, out: pathlib.Path, workers: int) -> dict:
    """`python -m serving.batch` in this process; its phases from the progress samples."""
    argv = ["serving.batch", "--model", str(export_dir), "--input", str(data_dir), "--split", SPLIT,
            "--out", str(out), "--progress=false", "--batch_size", str(BATCH)]
    if workers > 1:
        argv += ["--direct_num_workers", str(workers)]
    with ProgressPoller(out) as poller, contextlib.redirect_stdout(io.StringIO()) as printed:
        cpu, start = cpu_seconds(), time.perf_counter()
        code = batch_job.main(argv)
        end = time.perf_counter()
        cpu = cpu_seconds() - cpu
    if code != 0:
        raise RuntimeError(f"serving.batch exited {code}: {printed.getvalue()[-500:]} (log: {out})")
    report = json.loads((out / "report.json").read_text())
    count = report["counts"]["predicted"]
    scored = [(t, n) for t, n in poller.samples if n > 0]
    first = scored[0]
    last = next((t, n) for t, n in scored if n >= count)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {"items": count, "wall_s": end - start, "cpu_s": cpu, "startup_s": first[0] - start, "tail_s": end - last[0],
            "scoring_items_per_s": (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else None,
            "report_seconds": report["seconds"], "report_items_per_s": report["items_per_second"],
            "top1": collections.Counter(r["top_classes"][0] for r in rows)}


def rotated(order: tuple[str, ...], k: int) -> tuple[str, ...]:
    """Round k's order: each run goes first, second and last in turn."""
    return order[k % len(order):] + order[:k % len(order)]


def summary(rounds: list[dict], key: str) -> dict:
    """Best and median of `key` over rounds (rounds without it left out)."""
    values = [r[key] for r in rounds if r.get(key) is not None]
    return {"best": max(values), "median": statistics.median(values)} if values else {"best": None, "median": None}


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def measure_size(size: int, export_dir: pathlib.Path, data_dir: pathlib.Path, work: pathlib.Path,
                 rounds: int) -> dict:
    """ROUNDS rounds of the three runs in rotated order; per run best and median, ratios to the baseline."""
    results: dict = {run: [] for run in RUNS}
    reference = None
    for k in range(rounds):
        for run in rotated(RUNS, k):
            if run == "plain_loop":
                row = plain_loop(export_dir, data_dir)
            else:
                row = beam_run(export_dir, data_dir, work / f"job_{size}_{run}_{k}", 1 if run == "beam_1_worker" else 2)
            top1 = row.pop("top1")
            if reference is None:
                reference = (row["items"], top1)
            if (row["items"], top1) != reference:  # every run scores the same items to the same classes
                raise RuntimeError(f"{run} at {size} px scored {row['items']} items, top-1 {dict(top1)}; "
                                   f"expected {reference[0]}, {dict(reference[1])}")
            row["items_per_s"] = row["items"] / row["wall_s"]
            row["items_per_cpu_s"] = row["items"] / row["cpu_s"]
            row["load"] = os.getloadavg()[0]
            results[run].append({name: round(v, 3) if isinstance(v, float) else v for name, v in row.items()})
            print(f"  {size} px round {k + 1} {run:15s} {row['items_per_s']:8.1f} items/s whole, "
                  f"{row['scoring_items_per_s'] or 0:8.1f} scoring; start-up {row['startup_s']:5.1f} s, "
                  f"tail {row['tail_s']:4.1f} s (load {row['load']:.1f})", flush=True)
    table = {}
    keys = ("items_per_s", "scoring_items_per_s", "items_per_cpu_s")
    base = {key: summary(results["plain_loop"], key) for key in keys}
    for run in RUNS:
        entry = {key: summary(results[run], key) for key in keys}
        for key in keys:
            entry[key]["ratio_best"] = ratio(entry[key]["best"], base[key]["best"])
            entry[key]["ratio_median"] = ratio(entry[key]["median"], base[key]["median"])
        entry["startup_s_median"] = statistics.median(r["startup_s"] for r in results[run])
        entry["tail_s_median"] = statistics.median(r["tail_s"] for r in results[run])
        entry["cpu_per_wall_median"] = statistics.median(r["cpu_s"] / r["wall_s"] for r in results[run])
        table[run] = {name: {k: v if v is None else round(v, 3) for k, v in value.items()}
                      if isinstance(value, dict) else round(value, 3) for name, value in entry.items()}
    return {"items": reference[0], "rounds": results, "summary": table}


# --------------------------------------------------------------------------- TFLite latency


def latency(export_dir: pathlib.Path, data_dir: pathlib.Path, calls: int) -> dict:
    """Median seconds per call for one real image: SavedModel (ExportedModel.run) and model.tflite,
    alternating call by call; and their largest probability difference on it."""
    from serving import tflite

    model = serving_model.load(export_dir)
    runner = tflite.signature_runner(export_dir / tflite.FILES["float32"])
    info = tfrecords.read_dataset_info(data_dir)
    files = [str(p) for p in tfrecords.shard_paths(data_dir, info, SPLIT)]
    serialized = next(iter(tf.data.TFRecordDataset(files).batch(1)))
    image = parse_batch(serialized, tfrecords.feature_specs(info), ["image"])["image"].numpy()
    saved, lite = model.run("images", image), tflite.run_tflite(runner, image)
    times: dict[str, list[float]] = {"saved_model": [], "tflite": []}
    for i in range(calls + 5):
        for name, call in (("saved_model", lambda: model.run("images", image)),
                           ("tflite", lambda: tflite.run_tflite(runner, image))):
            start = time.perf_counter()
            call()
            if i >= 5:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"calls": calls, "saved_model_ms": round(medians["saved_model"] * 1000, 3),
            "tflite_ms": round(medians["tflite"] * 1000, 3),
            "speedup": round(medians["saved_model"] / medians["tflite"], 2),
            "max_abs_probability_difference": float(np.max(np.abs(saved["probabilities"] - lite["probabilities"])))}


# --------------------------------------------------------------------------- main


def cell(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{digits}f}"


def print_table(results: dict) -> None:
    print(f"\n{'size':>4} {'run':15s} {'items':>5} | {'whole job items/s: best':>23} {'median':>7} {'x plain':>7} | "
          f"{'scoring phase: best':>19} {'median':>7} {'x plain':>7} | {'items/CPU-s':>11} {'x plain':>7} | "
          f"{'start-up':>8} {'tail':>5} {'CPU/wall':>8}")
    for size, entry in results["sizes"].items():
        for run, row in entry["summary"].items():
            whole, scoring, cpu = row["items_per_s"], row["scoring_items_per_s"], row["items_per_cpu_s"]
            print(f"{size:>4} {run:15s} {entry['items']:>5} | {cell(whole['best'], 23)} {cell(whole['median'], 7)} "
                  f"{cell(whole['ratio_median'], 7, 2)} | {cell(scoring['best'], 19)} {cell(scoring['median'], 7)} "
                  f"{cell(scoring['ratio_median'], 7, 2)} | {cell(cpu['median'], 11)} {cell(cpu['ratio_median'], 7, 2)} | "
                  f"{cell(row['startup_s_median'], 7)}s {cell(row['tail_s_median'], 4)}s "
                  f"{cell(row['cpu_per_wall_median'], 8, 2)}")
    for size, row in results["tflite"].items():
        if "skipped" in row:
            print(f"{size:>4} TFLite latency skipped: {row['skipped']}")
        else:
            print(f"{size:>4} one image: SavedModel {row['saved_model_ms']:.2f} ms, TFLite {row['tflite_ms']:.2f} ms "
                  f"({row['speedup']:.2f}x; max probability difference {row['max_abs_probability_difference']:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="28,64", help="Image sizes, comma-separated.")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="Rounds of the three runs per size.")
    parser.add_argument("--latency_calls", type=int, default=LATENCY_CALLS, help="Timed calls per engine.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"machine": describe_machine(), "date": datetime.date.today().isoformat(),
                     "tensorflow": tf.__version__, "model": MODEL, "batch_size": BATCH, "rounds": args.rounds,
                     "load_average_start": os.getloadavg(), "sizes": {}, "tflite": {}}
    print(results["machine"], flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = pathlib.Path(tmp)
        for size in sizes:
            data_dir = build_data(work / f"data{size}", size)
            export_dir, no_tflite = export(work / f"model{size}", size, tfrecords.read_dataset_info(data_dir)["classes"])
            results["sizes"][size] = measure_size(size, export_dir, data_dir, work, args.rounds)
            results["tflite"][size] = ({"skipped": no_tflite} if no_tflite
                                       else latency(export_dir, data_dir, args.latency_calls))
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'batch.json'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
