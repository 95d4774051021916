"""Visual-semantic embedding (-model vse) on the real Sketchy sample: zero-shot labelling and text search.

The sample (../shared/data/sketchy: 125 classes x 25 sketches + 25 photos) is built at 32 px with the 25
unseen classes of Shen et al. 2018 (data_prep/splits/sketchy_unseen_25_shen2018.txt) in `test_unseen`;
word vectors are the GloVe Twitter 25-d subset (../shared/data/wordvectors), which covers 85 of the 125
names, so the run passes -allow_missing_vectors (the other classes and their records are left out).
For each method and seed the tool trains -model vse for --steps steps, then -mode test: `cosine` and
`hinge` (skNet + linear projection, -vse_loss), `conse` (skNet + a seen-class classifier, -vse_head conse:
ConSE, Norouzi et al. 2014; cross-entropy); the table
gives, mean ± sample std over the seeds, with chance beside each figure: zero-shot top-1 among the
unseen classes, seen-class top-1, generalised zero-shot harmonic mean, and text->image mAP on the seen
test images and on the unseen ones. For conse runs it also gives ConSE's ceiling with these vectors
(`--held_out_classes`): the seen classes split at random into as many pseudo-unseen classes as the real
split has and the rest, the held-out test images of the former labelled from the latter's logits (the
trunk has trained on them, so zero-shot on truly new classes can only do worse). Writes bench/results/vse.json.

    python -m bench.vse                          # 3 seeds, cosine (the default loss), 300 steps: about 10 minutes
    python -m bench.vse --methods hinge,cosine,conse    # the comparison (three times as long)
    python -m bench.vse --steps 5 --seeds 0      # a smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SOURCE = SHARED / "sketchy"
GLOVE = SHARED / "wordvectors" / "glove.twitter.25d.subset.txt"
UNSEEN = ROOT / "data_prep" / "splits" / "sketchy_unseen_25_shen2018.txt"
RESULTS = ROOT / "bench" / "results"
FIGURES = (  # (label, path in similarity.json's `semantic`, key)
    ("zero-shot top-1", ("zero_shot",), "top1_accuracy"),
    ("zero-shot top-5", ("zero_shot",), "top5_accuracy"),
    ("seen top-1", ("seen",), "top1_accuracy"),
    ("GZSL harmonic mean", ("generalized",), "harmonic_mean"),
    ("text->image mAP seen", ("text_to_image", "seen"), "map"),
    ("text->image mAP unseen", ("text_to_image", "unseen"), "map"),
)


def build(out: pathlib.Path, image_size: int, photo_edges: str = "none") -> pathlib.Path:
    """The sample at `image_size` px with the 25 unseen classes (photos as `photo_edges`), built once into `out`."""
    if (out / "dataset_info.json").is_file():
        return out
    from configuration_sketch import SketchyBuildConfig
    from data_prep import sketchy

    sketchy.build(SketchyBuildConfig(source=str(SOURCE), out=str(out), image_size=image_size, shards=4, workers=1,
                                     unseen_classes=f"@{UNSEEN}", photo_edges=photo_edges), progress=False)
    return out


def tool(*args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "train_sketch_net.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        raise SystemExit(f"train_sketch_net.py {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def figure(semantic: dict, path: tuple[str, ...], key: str) -> tuple[float | None, float | None]:
    node = semantic
    for part in path:
        node = (node or {}).get(part)
    if not node or node.get(key) is None:
        return None, None
    return node[key], node["chance"][key]


def method_flags(method: str) -> list[str]:
    """train_sketch_net.py flags of a bench method: a projection loss (cosine, hinge) or the conse head."""
    return ["-vse_head", "conse"] if method == "conse" else ["-vse_head", "projection", "-vse_loss", method]


def one_run(data: pathlib.Path, work: pathlib.Path, loss: str, seed: int, steps: int, batch: int,
            init_from: str = "") -> dict:
    model_dir = work / f"{loss}_seed{seed}"
    start = time.perf_counter()
    tool("-mode", "train", "-model", "vse", "-data_path", str(data), "-model_dir", str(model_dir), "-word_vectors",
         str(GLOVE), "-allow_missing_vectors", *method_flags(loss), "-seed", str(seed), "-epochs", "1",
         "-steps_per_epoch", str(steps), "-batch_size", str(batch), "-verbose", "0", "-keep_checkpoints", "1",
         *(["-init_from", init_from] if init_from else []))
    trained = time.perf_counter() - start
    tool("-mode", "test", "-model_dir", str(model_dir))
    semantic = json.loads((model_dir / "similarity.json").read_text())["semantic"]
    return {"loss": loss, "seed": seed, "model_dir": str(model_dir), "train_seconds": round(trained, 1),
            "semantic": semantic}


def held_out_classes(model_dir: pathlib.Path, unseen: int, partitions: int = 40, seed: int = 0) -> dict:
    """ConSE's ceiling with these word vectors: the trained classes split at random (`partitions` times)
    into `unseen` pseudo-unseen classes and the rest; each held-out test image of a pseudo-unseen class is
    labelled among them by ConSE over the other classes' logits alone. The trunk was trained on those
    classes, so this bounds from above what ConSE reaches on classes it never saw."""
    import keras
    import numpy as np

    from models.vse import ConvexSemantic
    from training import trainer

    run, task = trainer.prepare_run(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)}))
    model = keras.models.load_model(model_dir / "best.keras", compile=False)
    top = model.get_layer("conse").top
    space = task.space(run)
    held = task.embed_split(run, model, "test")
    rows = space.train_label_map()[held["labels"]]
    vectors = space.train_vectors
    if len(vectors) <= unseen:
        return {}  # too few trained classes to hold that many out
    rng = np.random.default_rng(seed)
    accuracies, images = [], []
    for _ in range(partitions):
        order = rng.permutation(len(vectors))
        pseudo_unseen, pseudo_seen = order[:unseen], order[unseen:]
        keep = np.isin(rows, pseudo_unseen)
        logits = held["logits"][keep][:, pseudo_seen]
        mixed = keras.ops.convert_to_numpy(ConvexSemantic(vectors[pseudo_seen], top)(logits))
        predicted = pseudo_unseen[np.argmax(mixed @ vectors[pseudo_unseen].T, axis=1)]
        accuracies.append(float(np.mean(predicted == rows[keep])))
        images.append(int(keep.sum()))
    return {"top1_accuracy": statistics.mean(accuracies), "sd": statistics.stdev(accuracies) if partitions > 1 else 0.0,
            "classes": unseen, "partitions": partitions, "mean_images": statistics.mean(images),
            "chance": {"top1_accuracy": 1 / unseen}}


def table(runs: list[dict]) -> list[str]:
    lines = []
    for loss in sorted({r["loss"] for r in runs}):
        mine = [r for r in runs if r["loss"] == loss]
        lines.append(f"{loss} ({len(mine)} seeds):")
        for label, path, key in FIGURES:
            pairs = [figure(r["semantic"], path, key) for r in mine]
            values = [v for v, _ in pairs if v is not None]
            if not values:
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"  {label:<24} {statistics.mean(values):.4f} ± {spread:.4f} (chance {pairs[0][1]:.4f})")
        ceilings = [r["held_out_classes"] for r in mine if r.get("held_out_classes")]
        if ceilings:
            values = [c["top1_accuracy"] for c in ceilings]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"  {'held-out seen classes':<24} {statistics.mean(values):.4f} ± {spread:.4f} "
                         f"(chance {ceilings[0]['chance']['top1_accuracy']:.4f}; ConSE's ceiling)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", "--losses", dest="losses", default="cosine",
                        help="comma-separated: cosine, hinge (projection losses), conse (the ConSE head)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--photo_edges", default="none", choices=("none", "canny", "gradient"),
                        help="photo look of the build (data_prep.edges)")
    parser.add_argument("--held_out_classes", type=int, default=40, metavar="N",
                        help="conse runs: also label held-out test images of N random partitions of the seen "
                             "classes into pseudo-unseen and the rest (ConSE's ceiling with these vectors); 0: skip")
    parser.add_argument("--init_from", default="",
                        help="start every run's trunk from this run folder or .keras file (-init_from), e.g. a Quick, "
                             "Draw! classifier trained without the unseen classes (bench.sketchy_retrieval's warm source)")
    parser.add_argument("--work", default="/tmp/bench_vse", help="data set and run folders")
    parser.add_argument("--out", default=str(RESULTS / "vse.json"))
    args = parser.parse_args(argv)
    for needed in (SOURCE, GLOVE, UNSEEN):
        if not needed.exists():
            raise SystemExit(f"bench.vse needs {needed}")
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.photo_edges == "none" else f"_{args.photo_edges}"
    data = build(work / f"sketchy_{args.image_size}px_unseen25{suffix}", args.image_size, args.photo_edges)
    runs = []
    warm = "_warm" if args.init_from else ""
    for loss in args.losses.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(one_run(data, work / f"runs_{args.steps}steps{suffix}{warm}", loss, seed, args.steps,
                                args.batch_size, args.init_from))
            if loss == "conse" and args.held_out_classes:
                runs[-1]["held_out_classes"] = held_out_classes(
                    pathlib.Path(runs[-1]["model_dir"]), runs[-1]["semantic"]["classes"]["unseen"],
                    args.held_out_classes)
            print(f"{loss} seed {seed}: trained in {runs[-1]['train_seconds']} s", flush=True)
    lines = table(runs)
    print("\n".join(lines))
    classes = runs[0]["semantic"]["classes"]
    from bench.machine import describe_machine

    result = {"machine": describe_machine(), "photo_edges": args.photo_edges, "init_from": args.init_from,
              "steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
              "word_vectors": GLOVE.name, "unseen_split": UNSEEN.name, "classes": classes, "runs": runs,
              "table": lines}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
