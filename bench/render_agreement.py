"""Does a trained skNet answer the same on strokes drawn in TensorFlow as on skia's images of them?

Trains skNet on all categories of the real simplified Quick, Draw! sample (344 x 25 drawings, 20 train
and 5 test each) at 28 px through train_sketch_net.py's run_mode, exports it, then asks the export
about every drawing of the sample twice: `classify_images` on skia's rendering (serving.strokes,
the CPU path) and `classify_strokes` on the strokes (data_prep.raster_tf inside the SavedModel).
Reports the top-1 agreement (goal: at least 99%), the agreement on drawings whose top two image scores
differ by more than 0.05, and each path's accuracy. Beside it, what the same model does with other
faithful renderings, for scale: cairo's (Google's recipe itself, `raster.rasterize_cairo`) and skia's own
image of each drawing moved by a fraction of a pixel (REFERENCE_SHIFTS). Writes
bench/results/render_agreement.json. Run: `python -m bench.render_agreement [--epochs 4]`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build, raster  # noqa: E402
from serving.export import read_meta  # noqa: E402
from serving.strokes import pack_strokes, stroke_pixels  # noqa: E402
from training import trainer  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
PER_CLASS = 25
BATCH = 256
CLEAR_MARGIN = 0.05
REFERENCE_SHIFTS = (1 / 50, 1 / 20)  # pixels, along x and y


def reference_renderings(drawings: list) -> dict[str, np.ndarray]:
    """Other faithful images of the drawings, uint8 [N, 28, 28, 1]: cairo's and skia's moved by REFERENCE_SHIFTS."""
    images = {"cairo": np.stack([raster.rasterize_cairo(d) for d in drawings])}
    for shift in REFERENCE_SHIFTS:
        images[f"skia_moved_1/{round(1 / shift)}_px"] = np.stack([raster.rasterize_moved(d, shift) for d in drawings])
    return {name: image[..., None] for name, image in images.items()}


def sample_drawings(class_names: list[str]) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """The first PER_CLASS drawings of each class, as (x, y) stroke arrays, with their labels."""
    drawings, labels = [], []
    for label, name in enumerate(class_names):
        for line in (SOURCE / f"{name}.ndjson").read_bytes().splitlines()[:PER_CLASS]:
            drawings.append([np.asarray(s[:2], np.float64).T for s in orjson.loads(line)["drawing"]])
            labels.append(label)
    return drawings, np.asarray(labels)


def both_answers(export_dir: pathlib.Path, drawings: list) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Probabilities from classify_images on skia pixels, from classify_strokes on the strokes, and from
    classify_images on each of the reference renderings."""
    meta = read_meta(export_dir)
    loaded = tf.saved_model.load(str(export_dir / "saved_model"))
    images, strokes = [], []
    for start in range(0, len(drawings), BATCH):
        part = drawings[start:start + BATCH]
        pixels = np.stack([stroke_pixels(d, meta) for d in part])
        images.append(loaded.classify_images(pixels)["probabilities"].numpy())
        strokes.append(loaded.classify_strokes(pack_strokes(part))["probabilities"].numpy())
    references = {name: np.concatenate([loaded.classify_images(pixels[i:i + BATCH])["probabilities"].numpy()
                                        for i in range(0, len(pixels), BATCH)])
                  for name, pixels in reference_renderings(drawings).items()}
    return np.concatenate(images), np.concatenate(strokes), references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results: dict = {"machine": describe_machine(), "tensorflow": tf.__version__, "epochs": args.epochs,
                     "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        data, run_dir = pathlib.Path(tmp) / "q28", pathlib.Path(tmp) / "run"
        quickdraw_build.build(QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories="all",
                                                   train_per_class=20, test_per_class=5, out=str(data), shards=8,
                                                   workers=2, seed=0), RasterConfig(image_size=28), progress=False)
        started = time.perf_counter()
        train = trainer.run_mode(*trainer.resolve("default", {
            "mode": "train", "data_path": str(data), "model_dir": str(run_dir), "epochs": args.epochs,
            "batch_size": 64, "seed": args.seed, "verbose": 0}))
        evaluated = trainer.run_mode(*trainer.resolve("", {"mode": "evaluate", "model_dir": str(run_dir)}))
        trainer.run_mode(*trainer.resolve("", {"mode": "export", "model_dir": str(run_dir)}))
        results["train"] = {"steps": train["final_step"], "seconds": round(time.perf_counter() - started, 1),
                            "test_top1": evaluated["top1_accuracy"]}
        class_names = json.loads((data / "dataset_info.json").read_text())["classes"]
        drawings, labels = sample_drawings(class_names)
        images, strokes, references = both_answers(run_dir / "export", drawings)
    agree = images.argmax(1) == strokes.argmax(1)
    top2 = np.sort(images, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > CLEAR_MARGIN
    results.update({
        "classes": len(class_names), "drawings": len(drawings), "agreement": round(float(agree.mean()), 4),
        "clear_drawings": int(clear.sum()), "agreement_where_clear": round(float(agree[clear].mean()), 4),
        "accuracy_images": round(float(np.mean(images.argmax(1) == labels)), 4),
        "accuracy_strokes": round(float(np.mean(strokes.argmax(1) == labels)), 4),
        "mean_abs_probability_difference": round(float(np.abs(images - strokes).mean()), 6),
        "reference_agreement": {name: round(float(np.mean(images.argmax(1) == p.argmax(1))), 4)
                                for name, p in references.items()}})
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "render_agreement.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
