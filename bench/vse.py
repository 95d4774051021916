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
test images and on the unseen ones. Writes bench/results/vse.json.

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


def one_run(data: pathlib.Path, work: pathlib.Path, loss: str, seed: int, steps: int, batch: int) -> dict:
    model_dir = work / f"{loss}_seed{seed}"
    start = time.perf_counter()
    tool("-mode", "train", "-model", "vse", "-data_path", str(data), "-model_dir", str(model_dir), "-word_vectors",
         str(GLOVE), "-allow_missing_vectors", *method_flags(loss), "-seed", str(seed), "-epochs", "1",
         "-steps_per_epoch", str(steps), "-batch_size", str(batch), "-verbose", "0", "-keep_checkpoints", "1")
    trained = time.perf_counter() - start
    tool("-mode", "test", "-model_dir", str(model_dir))
    semantic = json.loads((model_dir / "similarity.json").read_text())["semantic"]
    return {"loss": loss, "seed": seed, "train_seconds": round(trained, 1), "semantic": semantic}


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
    for loss in args.losses.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(one_run(data, work / f"runs_{args.steps}steps{suffix}", loss, seed, args.steps, args.batch_size))
            print(f"{loss} seed {seed}: trained in {runs[-1]['train_seconds']} s", flush=True)
    lines = table(runs)
    print("\n".join(lines))
    classes = runs[0]["semantic"]["classes"]
    from bench.machine import describe_machine

    result = {"machine": describe_machine(), "photo_edges": args.photo_edges,
              "steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
              "word_vectors": GLOVE.name, "unseen_split": UNSEEN.name, "classes": classes, "runs": runs,
              "table": lines}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
