"""Recipe study for metric learning on real drawings: which knobs move retrieval mAP, over seeds.

On the Quick, Draw! set of bench.retrieval_quality (50 seeded categories of the simplified sample at
28 px; 968 train, 205 test drawings), each named variant trains through training.trainer.run_mode for
`--epochs` x `--steps` optimizer steps of 64 images (P x K = 16 x 4 for triplet and deephash) from the
bench's common recipe (AdamW 1e-3, cosine decay, no augmentation), then is tested: leave-one-out mAP
of the test split (Hamming mAP of the packed codes for deephash, with the float mAP of u beside it;
the L2 and cosine mAP of `features` for the classifier). One line per (variant, seed) is appended to
`--out` (JSON lines), so runs can be split across processes and resumed; `--summary` prints the mean
and spread per variant.

Run: `python -m bench.metric_recipes --seeds 0 1 2 classifier classifier_warm dh128 dh128_warm_q001`
(about 3 minutes a run on 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import shutil
import statistics
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from bench import retrieval_quality as rq  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# Every variant names its warm-up and quantization weight, so the names keep their meaning whatever
# the defaults (the study chose today's: a warm-up over a tenth of the steps, lambda 0.01).
COLD = {"warmup_steps": 0}
WARM = {"warmup_steps": 30}  # a tenth of the default 3 x 100 steps
TRIPLET = {"model": "triplet", **rq.TRIPLET}
HASH = {"model": "deephash", "classes_per_batch": 16, "per_class": 4}
Q001 = {"quantization_weight": 0.01}
Q01 = {"quantization_weight": 0.1}  # the default before this study

VARIANTS: dict[str, dict] = {
    "classifier": {"model": "sknet", **COLD},
    "classifier_warm": {"model": "sknet", **WARM},
    "triplet": {**TRIPLET, **COLD},
    "triplet_warm": {**TRIPLET, **WARM},
    "triplet_batch_all": {**TRIPLET, **COLD, "miner": "batch_all"},
    **{f"dh{bits}": {**HASH, "bits": bits, **COLD, **Q01} for bits in (16, 32, 64, 128)},
    **{f"dh{bits}_q001": {**HASH, "bits": bits, **COLD, **Q001} for bits in (16, 64, 128)},
    **{f"dh{bits}_warm_q001": {**HASH, "bits": bits, **WARM, **Q001} for bits in (16, 32, 64, 128)},
    "dh128_warm": {**HASH, "bits": 128, **WARM, **Q01},
    "dh128_q0": {**HASH, "bits": 128, **COLD, "quantization_weight": 0.0},
    "dh128_lr3e-4": {**HASH, "bits": 128, **COLD, **Q01, "learning_rate": 3e-4},
    "dh128_ramp": {**HASH, "bits": 128, **COLD, **Q01, "margin_ramp_steps": 100},
}


def run_variant(data: pathlib.Path, work: pathlib.Path, name: str, seed: int, epochs: int, steps: int) -> dict:
    """Train and test one variant with one seed; returns its result line."""
    values = VARIANTS[name]
    budget = {"epochs": epochs, "steps_per_epoch": steps, "seed": seed}
    model_dir = work / f"{name}_s{seed}"
    shutil.rmtree(model_dir, ignore_errors=True)
    start = time.perf_counter()
    line = {"name": name, "seed": seed, "epochs": epochs, "steps_per_epoch": steps, "values": values}
    if values["model"] == "sknet":
        report = rq.train_and_test(data, model_dir, budget, values, test=False)
        features = rq.classifier_reports(model_dir)
        line.update(map=features["l2"]["map"], cosine_map=features["cosine"]["map"])
    else:
        report = rq.train_and_test(data, model_dir, budget, values)
        line.update(map=report["map"], float_map=report.get("float_map"))
    line.update(val_map_by_epoch=report["run"]["val_map_by_epoch"], final_loss=report["run"]["final_loss"],
                seconds=round(time.perf_counter() - start, 1))
    return line


def summary(lines: list[dict]) -> str:
    """Mean, spread and per-seed mAP of each variant, in the order first seen."""
    by_name: dict[str, list[dict]] = collections.defaultdict(list)
    for line in lines:
        by_name[line["name"]].append(line)
    rows = []
    for name, runs in by_name.items():
        maps = [r["map"] for r in runs]
        spread = f"{min(maps):.3f}-{max(maps):.3f}" if len(maps) > 1 else "-"
        seeds = " ".join(f"s{r['seed']}:{r['map']:.3f}" for r in sorted(runs, key=lambda r: r["seed"]))
        rows.append(f"{name:<20} n={len(maps)} mean {statistics.mean(maps):.3f} range {spread:<11} {seeds}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"names among: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per epoch")
    parser.add_argument("--data", default="", help="a built 50-class 28 px set to reuse (built when empty)")
    parser.add_argument("--out", default=str(RESULTS / "metric_recipes.jsonl"))
    parser.add_argument("--summary", action="store_true", help="print the summary of --out and stop")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.summary:
        print(summary([json.loads(x) for x in out.read_text().splitlines() if x.strip()]))
        return 0
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"name one or more variants among: {', '.join(VARIANTS)} (unknown: {unknown})")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    with tempfile.TemporaryDirectory(prefix="metric_recipes_") as tmp_name:
        work = pathlib.Path(tmp_name)
        data = pathlib.Path(args.data) if args.data else rq.quickdraw_set(work, 50, 28, 0)
        out.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for name in args.variants:
                line = run_variant(data, work, name, seed, args.epochs, args.steps)
                print(json.dumps({k: line[k] for k in ("name", "seed", "map")}), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
