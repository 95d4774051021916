"""Quality of the training recipes on real drawings, side by side, at the same budget (epochs).

Data: NUM_CLASSES categories of the real Quick, Draw! sample (../shared/data/quickdraw/simplified,
25 drawings per category: about 20 train and 5 test each, split by key_id hash), rendered at 128 px for
the original recipe and at 128 and 28 px for ours. Recipes (train_sketch_net.py presets):

- original: Adam 1e-4 constant, batch 10, no augmentation, 128 px (training/presets.py);
- ours: the defaults (AdamW 1e-3 with weight decay 0.05 and cosine decay, no augmentation, batch-norm
  recalibration) with batch 32 instead of 256, because the sample has only about 20 training drawings
  per class (256 would leave 2 steps per epoch); at 128 px (same input as the original) and at 28 px;
- at 28 px also: the original recipe, and ours with -augment at the default rates and at the stronger
  rates the default had before (an ablation that explains why augmentation is off by default).
`QUALITY_EPOCHS` sets the budget (default 8 epochs); recipe names on the command line run only those.

Each run trains skNet for EPOCHS epochs from the same seed, then reports test top-1/top-5 (evaluate)
and the leave-one-out L2 mAP of the `features` layer on the test split (test), and its wall time.
Writes bench/results/train_quality.json. Run: `python -m bench.train_quality` (long on 2 cores:
128 px skNet trains at about 3 images/s here; see bench/results/train.json).
"""

from __future__ import annotations

import json
import os
import pathlib
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
NUM_CLASSES = int(os.environ.get("QUALITY_CLASSES", "20"))
EPOCHS = int(os.environ.get("QUALITY_EPOCHS", "8"))
OLD_AUGMENTATION = {"aug_translate": 0.1, "aug_zoom": 0.1, "aug_rotation": 10.0, "aug_shear": 0.1,
                    "aug_salt_pepper": 0.01}
RECIPES = [
    ("original", "original", 128, {}),
    ("ours_128px", "default", 128, {"batch_size": 32}),
    ("ours_28px", "default", 28, {"batch_size": 32}),
    # At 28 px (cheap): the original recipe, and an augmentation ablation: -augment with the default
    # (mild) rates, and with the stronger rates the default had before.
    ("original_28px", "original", 28, {"image_size": 28}),
    ("ours_28px_augmented", "default", 28, {"batch_size": 32, "augment": True}),
    ("ours_28px_old_augmentation", "default", 28, {"batch_size": 32, "augment": True, **OLD_AUGMENTATION}),
]


def build(out: pathlib.Path, size: int) -> pathlib.Path:
    config = QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories=str(NUM_CLASSES),
                                  train_per_class=20, test_per_class=5, out=str(out / f"q{size}"), shards=4,
                                  workers=2, seed=0)
    info = quickdraw_build.build(config, RasterConfig(image_size=size), progress=False)
    print(f"{size} px: {info['splits']['train']['num_examples']} train / {info['splits']['test']['num_examples']} "
          f"test drawings of {len(info['classes'])} classes", flush=True)
    return out / f"q{size}"


def run_recipe(name: str, preset: str, data_dir: pathlib.Path, model_dir: pathlib.Path, overrides: dict) -> dict:
    started = time.perf_counter()
    train = trainer.run_mode(*trainer.resolve(preset, {"mode": "train", "data_path": str(data_dir),
                                                       "model_dir": str(model_dir), "epochs": EPOCHS,
                                                       "verbose": 2, **overrides}))
    seconds = time.perf_counter() - started
    evaluated = trainer.run_mode(*trainer.resolve("", {"mode": "evaluate", "model_dir": str(model_dir)}))
    similarity = trainer.run_mode(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)}))
    config = json.loads((model_dir / "train_config.json").read_text())["configs"]
    return {
        "recipe": name, "preset": preset, "overrides": overrides, "image_size": config["ModelConfig"]["image_size"],
        "batch_size": config["PipelineConfig"]["batch_size"], "optimizer": config["TrainConfig"]["optimizer"],
        "learning_rate": config["TrainConfig"]["learning_rate"], "augment": config["TrainConfig"]["augment"],
        "epochs": EPOCHS, "steps": train["final_step"], "train_seconds": round(seconds, 1),
        "final_train_accuracy": train["history"][-1]["accuracy"],
        "test_top1": evaluated["top1_accuracy"], "test_top5": evaluated["top5_accuracy"],
        "test_loss": evaluated["loss"], "test_images": evaluated["num_examples"], "map": similarity["map"],
    }


def main(argv: list[str]) -> int:
    """`python -m bench.train_quality [NAME ...]`: every recipe, or the named ones (written to
    train_quality_<names>.json so the full run's file stays whole)."""
    chosen = [r for r in RECIPES if not argv or r[0] in argv]
    unknown = sorted(set(argv) - {r[0] for r in RECIPES})
    if unknown:
        print(f"unknown recipe(s) {unknown}; valid: {', '.join(r[0] for r in RECIPES)}", file=sys.stderr)
        return 2
    results = {"machine": describe_machine(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "classes": NUM_CLASSES, "epochs": EPOCHS, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = {size: build(tmp, size) for size in sorted({size for _, _, size, _ in chosen})}
        for name, preset, size, overrides in chosen:
            row = run_recipe(name, preset, data[size], tmp / name, overrides)
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("train_quality.json" if not argv else f"train_quality_{'_'.join(argv)}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
