"""`make demo`: the main job end to end on the embedded synthetic data set.

Steps: generate procedural doodles as real Quick, Draw! ndjson, build sharded TFRecords,
verify them, then train, evaluate, test (retrieval mAP) and export a classifier (SavedModel and
TensorFlow Lite), score the test split with the export in a batch job on Apache Beam, and index
the training split for the drawing page (`make serve`).
Everything goes to ./demo_out; re-running resumes (the build and the training
pick up where they stopped).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from configuration_sketch import QuickDrawBuildConfig, RasterConfig  # noqa: E402
from data_prep import quickdraw_build, synthetic, verify  # noqa: E402

OUT = pathlib.Path(os.environ.get("DEMO_OUT", "demo_out"))
PER_CLASS = int(os.environ.get("DEMO_PER_CLASS", "700"))
IMAGE_SIZE = 28


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_tool(*args: str) -> None:
    """Run train_sketch_net.py as a user would; stop the demo if it fails."""
    command = [sys.executable, "train_sketch_net.py", *args]
    print("$ " + " ".join(command[1:]), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SystemExit(f"demo stopped: train_sketch_net.py {args[1]} exited with {result.returncode}")


def main() -> int:
    started = time.time()
    source = OUT / "source"
    data_dir = OUT / "quickdraw"
    model_dir = OUT / "model"

    step("1. generate the embedded data set (procedural doodles as Quick, Draw! ndjson)")
    summary = synthetic.generate(source, per_class=PER_CLASS, seed=0)
    print(f"{summary['num_drawings']} drawings of {len(summary['classes'])} classes in {source}")

    step("2. build sharded TFRecords")
    config = QuickDrawBuildConfig(source=str(source / "simplified"), format="simplified", categories="all",
                                  train_per_class=int(PER_CLASS * 0.8), test_per_class=PER_CLASS // 5,
                                  out=str(data_dir), shards=4, workers=2, seed=0)
    info = quickdraw_build.build(config, RasterConfig(image_size=IMAGE_SIZE))
    for split, s in info["splits"].items():
        print(f"{split}: {s['num_examples']} examples in {len(s['shards'])} shards")

    step("3. verify")
    print(verify.verify(data_dir))

    common = ["-data_path", str(data_dir), "-model_dir", str(model_dir)]
    step("4. train")
    run_tool("-mode", "train", "-preset", "demo", *common)
    step("5. evaluate")
    run_tool("-mode", "evaluate", *common)
    step("6. test (retrieval on penultimate features)")
    run_tool("-mode", "test", *common)
    step("7. export (SavedModel, and a float32 TensorFlow Lite model with -tflite)")
    run_tool("-mode", "export", "-tflite", *common)
    step("8. batch evaluation job on Apache Beam (DirectRunner): the test split through the exported model")
    job_dir = OUT / "batch_test"
    shutil.rmtree(job_dir, ignore_errors=True)  # the export was just rewritten: a new job
    command = [sys.executable, "-m", "serving.batch", "--model", str(model_dir / "export"), "--input", str(data_dir),
               "--split", "test", "--out", str(job_dir)]
    print("$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit("demo stopped: the batch job failed")
    step("9. a gallery index of the training split, for the drawing page (make serve)")
    index_dir = model_dir / "index"
    command = [sys.executable, "evaluate_similarity_lookup.py", "index", "--model", str(model_dir / "export"),
               "--data_path", str(data_dir), "--split", "train", "--out", str(index_dir)]
    print("$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit("demo stopped: indexing the training split failed")
    job = json.loads((job_dir / "report.json").read_text())
    meta = json.loads((model_dir / "export" / "model_meta.json").read_text())
    evaluation = json.loads((model_dir / "evaluate.json").read_text())
    similarity = json.loads((model_dir / "similarity.json").read_text())
    epochs = json.loads((model_dir / "train_history.json").read_text())["epochs"]
    step("summary")
    print(f"trained {len(epochs)} epochs ({epochs[-1]['step']} steps) in {sum(e['seconds'] for e in epochs):.0f} s, "
          f"{epochs[-1]['images_per_second']:.0f} images/s in the last epoch")
    print(f"test top-1 accuracy {evaluation['top1_accuracy']:.3f}, top-5 {evaluation['top5_accuracy']:.3f}, "
          f"leave-one-out L2 mAP {similarity['map']:.3f}; exported to {model_dir / 'export'} (trained on "
          f"{meta['polarity'].replace('_', ' ')} drawings; TFLite {meta['tflite']['file']}, largest difference from "
          f"TensorFlow {max(meta['tflite']['check']['max_abs_difference'].values()):.1e})")
    print(f"batch job on the exported SavedModel: top-1 {job['classification']['top1']:.3f} over "
          f"{job['counts']['predicted']} test drawings (evaluate: {evaluation['top1_accuracy']:.3f}); {job_dir}")
    print(f"\ndemo finished in {time.time() - started:.0f} s; outputs in {OUT}")
    serve = "make serve" if OUT == pathlib.Path("demo_out") else \
        f"python -m webapp --model {model_dir / 'export'} --index {index_dir}"
    print(f"draw in the browser with this model: {serve}  (then open http://127.0.0.1:8000/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
