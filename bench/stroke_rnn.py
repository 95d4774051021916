"""stroke_rnn against skNet on stored images, side by side on the same real drawings and budget.

Data: STROKE_BENCH_CLASSES categories of the real Quick, Draw! sample (../shared/data/quickdraw/simplified,
25 drawings per category: 20 train and 5 test each), built once at 28 px with strokes (one data set:
skNet reads its stored images, stroke_rnn its strokes). Each model trains with the default recipe
(AdamW, warm-up, cosine) at batch 32 for STROKE_BENCH_EPOCHS epochs from each seed of STROKE_BENCH_SEEDS,
then reports test top-1/top-5 (evaluate), the leave-one-out L2 mAP of its `features` layer (test), and
training examples per second (train_history.json's images_per_second, the mean over epochs after the first).
STROKE_BENCH_RNN sets stroke_rnn's size: 'tutorial' (3 x 128 BiLSTMs) or 'small' (1 x 64, for 2 cores).
MODELS also holds skNet drawn on the fly with time channels (28 and 64 px) and skNet with raster-space
against stroke-space augmentation, for the same side by side.
Writes bench/results/stroke_rnn.json. Run: `python -m bench.stroke_rnn [MODEL ...]` (no names: sknet and
stroke_rnn; named models: bench/results/stroke_rnn_<models>_<epochs>ep.json, so the full run's file stays whole).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build  # noqa: E402
from training import trainer  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
NUM_CLASSES = int(os.environ.get("STROKE_BENCH_CLASSES", "20"))
EPOCHS = int(os.environ.get("STROKE_BENCH_EPOCHS", "8"))
SEEDS = [int(s) for s in os.environ.get("STROKE_BENCH_SEEDS", "0,1").split(",")]
RNN_SIZE = os.environ.get("STROKE_BENCH_RNN", "small")
RNN_SIZES = {"tutorial": {}, "small": {"rnn_layers": 1, "rnn_units": 64}}
# Every entry reads the same data set. sknet_time*: drawn on the fly with stroke order and time in 3
# channels (the Kaggle winners' input), at the stored 28 px and at 64 px; sknet_augment and
# sknet_stroke_augment: raster-space -augment against stroke-space -stroke_augment, both at 28 px.
MODELS = {"sknet": {"model": "sknet"}, "stroke_rnn": {"model": "stroke_rnn", **RNN_SIZES[RNN_SIZE]},
          "sknet_time": {"model": "sknet", "render": "on_the_fly", "time_channels": True, "channels": 3},
          "sknet_time_64": {"model": "sknet", "render": "on_the_fly", "time_channels": True, "channels": 3,
                            "image_size": 64},
          "sknet_augment": {"model": "sknet", "augment": True},
          "sknet_stroke_augment": {"model": "sknet", "stroke_augment": True}}


def build(out: pathlib.Path) -> pathlib.Path:
    """The 28 px data set with strokes that both models read."""
    config = QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories=str(NUM_CLASSES),
                                  train_per_class=20, test_per_class=5, out=str(out / "q28"), shards=4,
                                  workers=2, seed=0)
    quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return out / "q28"


def run_model(name: str, seed: int, data_dir: pathlib.Path, model_dir: pathlib.Path) -> dict:
    """Train, evaluate and test one model from one seed; its row of the results."""
    started = time.perf_counter()
    train = trainer.run_mode(*trainer.resolve("default", {
        "mode": "train", "data_path": str(data_dir), "model_dir": str(model_dir), "epochs": EPOCHS,
        "batch_size": 32, "seed": seed, "verbose": 2, **MODELS[name]}))
    seconds = time.perf_counter() - started
    evaluated = trainer.run_mode(*trainer.resolve("", {"mode": "evaluate", "model_dir": str(model_dir)}))
    similarity = trainer.run_mode(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)}))
    rates = [row["images_per_second"] for row in train["history"][1:]] or [train["history"][0]["images_per_second"]]
    return {"model": name, "seed": seed, "settings": MODELS[name], "steps": train["final_step"],
            "train_seconds": round(seconds, 1), "examples_per_second": round(statistics.mean(rates), 1),
            "test_top1": evaluated["top1_accuracy"], "test_top5": evaluated["top5_accuracy"],
            "test_examples": evaluated["num_examples"], "map": similarity["map"]}


def summary(rows: list[dict], names: list[str]) -> dict:
    """Mean and spread over seeds of each model's figures."""
    out = {}
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        out[name] = {key: {"mean": round(statistics.mean(r[key] for r in mine), 4),
                           "stdev": round(statistics.stdev(r[key] for r in mine), 4) if len(mine) > 1 else 0.0}
                     for key in ("test_top1", "test_top5", "map", "examples_per_second")}
    return out


def main(argv: list[str]) -> int:
    names = argv or ["sknet", "stroke_rnn"]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        print(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    results = {"machine": describe_machine(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "classes": NUM_CLASSES, "epochs": EPOCHS, "batch_size": 32, "seeds": SEEDS, "rnn_size": RNN_SIZE,
               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = build(tmp)
        for seed in SEEDS:
            for name in names:
                row = run_model(name, seed, data, tmp / f"{name}_{seed}")
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    results["summary"] = summary(results["runs"], names)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("stroke_rnn.json" if not argv else f"stroke_rnn_{'_'.join(names)}_{EPOCHS}ep.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
