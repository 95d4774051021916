"""The classifier's default recipe against a larger-step recipe with label smoothing, over seeds, on the
real bitmaps in quantity and on the small simplified sample.

Data: (1) the 8,000 real numpy_bitmap drawings of ../shared/data/quickdraw_bitmap (6 classes): 800 train
and 200 test drawings a class, 28 px, trained for BITMAP_EPOCHS epochs (9 x 4,800 = 43,200 images, as 3
epochs of the 15,000 held-out training drawings the recipe was questioned on); (2) 20 categories of the
simplified sample (20 train, 5 test drawings each), 28 px, SMALL_EPOCHS epochs. Recipes (RECIPES): the
previous defaults (batch 256, peak rate 1e-3); batch 128 at peak rate 2e-3 with label smoothing 0.1 (the
image classifiers' defaults since this study); the previous defaults with label smoothing 0.1.
Every run goes through train_sketch_net.py's run_mode (-mode train, evaluate, test): test top-1 and the
leave-one-out L2 mAP of `features`. Seeds: RECIPE_SEEDS (default 0,1,2); data sets: RECIPE_SETS
(default bitmaps,small). Writes bench/results/classifier_recipe.json (RECIPE_OUT: another path). Run: `python -m bench.classifier_recipe` (about 20 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build  # noqa: E402
from training import trainer  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SEEDS = [int(s) for s in os.environ.get("RECIPE_SEEDS", "0,1,2").split(",")]
SETS = os.environ.get("RECIPE_SETS", "bitmaps,small").split(",")
BITMAP_EPOCHS, SMALL_EPOCHS = 9, 24
# Every value explicit, so the study means the same after the defaults change: "default" is the image
# classifiers' recipe before this study (the dataclass defaults), the second the one it chose.
RECIPES = {
    "default": {"batch_size": 256, "learning_rate": 1e-3, "label_smoothing": 0.0},
    "batch128_lr2e-3_ls0.1": {"batch_size": 128, "learning_rate": 2e-3, "label_smoothing": 0.1},
    "default_ls0.1": {"batch_size": 256, "learning_rate": 1e-3, "label_smoothing": 0.1},
}


def build_sets(tmp: pathlib.Path) -> dict[str, tuple[pathlib.Path, int]]:
    """The two data sets and their epochs."""
    bitmaps = QuickDrawBuildConfig(source=str(SHARED / "quickdraw_bitmap"), format="bitmap", categories="all",
                                   train_per_class=800, test_per_class=200, out=str(tmp / "bitmaps"), shards=4,
                                   workers=2, seed=0)
    small = QuickDrawBuildConfig(source=str(SHARED / "quickdraw" / "simplified"), format="simplified",
                                 categories="20", train_per_class=20, test_per_class=5, out=str(tmp / "small"),
                                 shards=4, workers=2, seed=0)
    for config in (bitmaps, small):
        quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return {"bitmaps": (tmp / "bitmaps", BITMAP_EPOCHS), "small": (tmp / "small", SMALL_EPOCHS)}


def run_recipe(data: pathlib.Path, epochs: int, recipe: str, seed: int, model_dir: pathlib.Path) -> dict:
    started = time.perf_counter()
    train = trainer.run_mode(*trainer.resolve("", {
        "mode": "train", "data_path": str(data), "model_dir": str(model_dir), "model": "sknet", "epochs": epochs,
        "seed": seed, "verbose": 0, **RECIPES[recipe]}))
    evaluated = trainer.run_mode(*trainer.resolve("", {"mode": "evaluate", "model_dir": str(model_dir)}))
    tested = trainer.run_mode(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)}))
    return {"recipe": recipe, "seed": seed, "steps": train["final_step"],
            "seconds": round(time.perf_counter() - started, 1), "test_top1": evaluated["top1_accuracy"],
            "map": tested["map"]}


def main() -> int:
    results: dict = {"machine": describe_machine(), "seeds": SEEDS, "recipes": RECIPES, "runs": {}, "summary": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sets = build_sets(pathlib.Path(tmp))
        for name, (data, epochs) in ((n, sets[n]) for n in SETS):
            rows = []
            for seed in SEEDS:
                for recipe in RECIPES:
                    row = run_recipe(data, epochs, recipe, seed, pathlib.Path(tmp) / f"{name}_{recipe}_{seed}")
                    rows.append(row)
                    print(name, json.dumps(row), flush=True)
            results["runs"][name] = rows
            results["summary"][name] = {
                recipe: {key: {"mean": round(statistics.mean(r[key] for r in rows if r["recipe"] == recipe), 4),
                               "per_seed": [round(r[key], 4) for r in rows if r["recipe"] == recipe]}
                         for key in ("test_top1", "map")} for recipe in RECIPES}
    out = pathlib.Path(os.environ.get("RECIPE_OUT", RESULTS / "classifier_recipe.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
