"""Retrieval quality of the metric-learning models against skNet classifier features, at equal budget.

On the real samples, all in one run:
- Sketchy (sketch -> photo): a seeded choice of `--sketchy_classes` categories of ../shared/data/sketchy
  at 32 px (links to the sample, not copies). Category-level mAP and precision@100 of the test sketches
  against the test photos, and instance accuracy@1/@10 (the sketch's own photo), for siamese (shared
  weights, contrastive pairs), triplet (P x K with 2 sketches + 2 photos per class) and the skNet
  classifier's `features` (trained on the sketches and photos of the same classes; L2 and cosine).
- Quick, Draw! (sketch -> sketch): a seeded choice of `--quickdraw_classes` categories of the simplified
  sample at 28 px; leave-one-out mAP over the test split of triplet embeddings, of the proxy losses'
  embeddings (triplet model with -loss proxy_anchor and -loss normalized_softmax, same P x K batches)
  and of the classifier's `features`.
- Deep hashing on that Quick, Draw! set at 16, 32, 64 and 128 bits: Hamming mAP of the packed sign(u) codes
  against the L2 mAP of the float outputs u they come from, and the search time of both.
Chance: the expected AP and precision@K of a random ranking, from each query's relevant count.

Every model has the skNet trunk and the same recipe and budget: `--epochs` x `--steps` optimizer steps of
64 images (classifier batch 64, P x K = 16 x 4, 32 pairs), AdamW 1e-3 with cosine decay, no
augmentation, batch-norm statistics re-estimated over 10 batches before each validation. Each run goes
through training.trainer.run_mode, what train_sketch_net.py runs; the JSON records each run's flags.
Writes bench/results/retrieval_quality.json. Run: `python -m bench.retrieval_quality` (about 15
minutes on 2 cores); `--parts quickdraw` runs one part (sketchy, quickdraw, deephash).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig, SketchyBuildConfig  # noqa: E402
from data_prep import metric_pipelines, quickdraw_build, sketchy  # noqa: E402
from retrieval.metrics import chance  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
HEADLINE = ("map", "precision@10", "precision@100", "knn_accuracy@1", "instance_accuracy@1", "instance_accuracy@10")
COMMON = {"batch_size": 64, "augment": False, "bn_recalibration": 10, "verbose": 0, "learning_rate": 1e-3,
          "optimizer": "adamw", "lr_schedule": "cosine"}
TRIPLET = {"classes_per_batch": 16, "per_class": 4, "miner": "semi_hard"}
PROXY_LOSSES = ("proxy_anchor", "normalized_softmax")  # on the triplet model, P x K batches, no miner
PARTS = ("sketchy", "quickdraw", "deephash")
QUICKDRAW_MODELS = ("classifier", "triplet", *PROXY_LOSSES)
BITS = (16, 32, 64, 128)


# ---------------------------------------------------------------- chance


def chance_report(query_labels, gallery_labels=None, k=(10, 100)) -> dict:
    """Expected mAP and precision@K of a uniformly random ranking (retrieval.metrics.chance)."""
    expected = chance(query_labels, gallery_labels, k)
    return {key: value for key, value in expected.items() if key == "map" or key.startswith("precision@")}


# ---------------------------------------------------------------- data


def sketchy_subset(tmp: pathlib.Path, classes: int, image_size: int, seed: int) -> tuple[pathlib.Path, list[str]]:
    source = SHARED / "sketchy"
    names = sorted(p.name for p in (source / "photo").iterdir() if p.is_dir())
    chosen = sorted(random.Random(seed).sample(names, classes)) if classes < len(names) else names
    tree = tmp / "sketchy_source"
    for part in ("photo", "sketch"):
        (tree / part).mkdir(parents=True)
        for name in chosen:
            (tree / part / name).symlink_to(source / part / name, target_is_directory=True)
    out = tmp / f"sketchy_{image_size}px"
    sketchy.build(SketchyBuildConfig(source=str(tree), out=str(out), image_size=image_size, shards=4, workers=2),
                  progress=False)
    return out, chosen


def quickdraw_set(tmp: pathlib.Path, classes: int, image_size: int, seed: int) -> pathlib.Path:
    out = tmp / f"quickdraw_{image_size}px"
    config = QuickDrawBuildConfig(source=str(SHARED / "quickdraw" / "simplified"), format="simplified",
                                  categories=str(classes), train_per_class=20, test_per_class=5, out=str(out),
                                  shards=4, workers=2, seed=seed)
    quickdraw_build.build(config, RasterConfig(image_size=image_size), progress=False)
    return out


# ---------------------------------------------------------------- runs


def flags_of(values: dict) -> str:
    def one(k, v):
        return f"-{k}={str(v).lower()}" if isinstance(v, bool) else f"-{k} {v}"
    return " ".join(one(k, v) for k, v in values.items())


def train_and_test(data: pathlib.Path, model_dir: pathlib.Path, budget: dict, values: dict, test: bool = True) -> dict:
    """Train through the tool's run_mode, then -mode test (unless `test` is False); returns the test report
    (empty without a test) with the run's record under `run`."""
    from training import trainer

    train_values = {**COMMON, **budget, **values, "mode": "train", "data_path": str(data),
                    "model_dir": str(model_dir)}
    start = time.perf_counter()
    summary = trainer.run_mode(*trainer.resolve("", train_values))
    seconds = time.perf_counter() - start
    report = trainer.run_mode(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)})) if test else {}
    last = summary["history"][-1]
    report["run"] = {"command": f"python train_sketch_net.py {flags_of(train_values)}",
                     "train_seconds": round(seconds, 1),
                     "steps": summary["final_step"], "images_seen": summary["final_step"] * budget_images(values),
                     "final_loss": last.get("loss"), "val_map_by_epoch": [r.get("val_map") for r in summary["history"]]}
    return report


def budget_images(values: dict) -> int:
    """Images in one training step: a pair counts two, a P x K batch P * K."""
    if values.get("model") == "siamese":
        return 2 * values["batch_size"]
    if "classes_per_batch" in values:
        return values["classes_per_batch"] * values["per_class"]
    return values.get("batch_size", COMMON["batch_size"])


def cosine(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def features_reports(network, data: pathlib.Path, image_size: int, channels: int) -> dict:
    """Retrieval with `network` (image -> features), by L2 and by cosine, under the metric task's protocol:
    sketch queries against photos on Sketchy, leave-one-out over the test split on single-domain data."""
    from data_prep import tfrecords
    from training.tasks import metric

    kwargs = dict(image_size=image_size, channels=channels)
    if metric.is_cross_domain(tfrecords.read_dataset_info(data)):
        queries, gallery = metric_pipelines.query_gallery(data, "test", 256, **kwargs)
        embedded = metric.Embedded("test", *metric.embed(network, queries), *metric.embed(network, gallery))
    else:
        embedded = metric.Embedded("test", *metric.embed(network, metric_pipelines.domain_dataset(
            data, "test", None, 256, **kwargs)))
    reports = {"l2": headline(metric.retrieval_report(embedded))}
    embedded.queries = cosine(embedded.queries)
    if embedded.gallery is not None:
        embedded.gallery = cosine(embedded.gallery)
    reports["cosine"] = headline(metric.retrieval_report(embedded))  # L2 on unit vectors ranks as cosine
    return reports


def classifier_reports(model_dir: pathlib.Path) -> dict:
    """features_reports of the trained classifier's `features` layer (weights of its last checkpoint)."""
    import keras

    from training import trainer

    run, task = trainer.prepare_run(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)}))
    model, _ = trainer.load_weights_for(run, task)
    network = keras.Model(model.inputs, model.get_layer("features").output, name="classifier_features")
    return features_reports(network, pathlib.Path(run.data_path), run.model.image_size, run.model.channels)


def untrained_reports(data: pathlib.Path, seed: int) -> dict:
    """features_reports of a freshly initialised skNet (seeded): what the trunk gives before any training."""
    import keras

    import models
    from configuration_sketch import ModelConfig

    info = json.loads((data / "dataset_info.json").read_text())
    keras.utils.set_random_seed(seed)
    config = ModelConfig(model="sknet", image_size=info["image"]["height"], channels=info["image"]["channels"])
    model = models.build_from_config(config, len(info["classes"]))
    network = keras.Model(model.inputs, model.get_layer("features").output, name="untrained_features")
    return features_reports(network, data, config.image_size, config.channels)


def headline(report: dict) -> dict:
    return {key: report.get(key) for key in HEADLINE if report.get(key) is not None}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per epoch")
    parser.add_argument("--sketchy_classes", type=int, default=25)
    parser.add_argument("--quickdraw_classes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--quickdraw_models", default=",".join(QUICKDRAW_MODELS),
                        help="comma-separated, of: " + ", ".join(QUICKDRAW_MODELS))
    parser.add_argument("--proxy_lr_multiplier", type=float, default=None,
                        help="-proxy_lr_multiplier of the proxy-loss runs (default: the flag's default)")
    parser.add_argument("--embedding_dim", type=int, default=None,
                        help="-embedding_dim of the triplet and proxy-loss runs (default: the flag's default)")
    parser.add_argument("--bits", default=",".join(map(str, BITS)), help="deephash code lengths, comma-separated")
    parser.add_argument("--quantization_weight", type=float, default=None,
                        help="-quantization_weight of the deephash runs (default: the flag's default)")
    parser.add_argument("--out", default=str(RESULTS / "retrieval_quality.json"))
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}; received {args.parts!r}")
    if set(args.quickdraw_models.split(",")) - set(QUICKDRAW_MODELS):
        parser.error(f"--quickdraw_models takes {', '.join(QUICKDRAW_MODELS)}; received {args.quickdraw_models!r}")
    tf.get_logger().setLevel("ERROR")  # repeated in-process fits make Keras warn about retracing
    budget = {"epochs": args.epochs, "steps_per_epoch": args.steps, "seed": args.seed}
    results: dict = {"machine": describe_machine(), "budget": {
        **budget, "images_per_step": COMMON["batch_size"], "images_seen": args.epochs * args.steps * 64,
        "recipe": COMMON, "triplet": TRIPLET, "backbone": "sknet"}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retrieval_quality_") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        qd_data = quickdraw_set(tmp, args.quickdraw_classes, 28, args.seed)
        if "sketchy" in parts:
            sketchy_part(tmp, args, budget, results, started)
        if "quickdraw" in parts:
            quickdraw_part(tmp, qd_data, args, budget, results, started)
        if "deephash" in parts:
            deephash_part(tmp, qd_data, budget, results, started, [int(b) for b in args.bits.split(",")], args.out,
                          args.quantization_weight)
    print(format_tables(results))
    return 0


def sketchy_part(tmp: pathlib.Path, args, budget: dict, results: dict, started: float) -> None:
    """Sketch -> photo: siamese, triplet and classifier features on the Sketchy subset."""
    sk_data, chosen = sketchy_subset(tmp, args.sketchy_classes, 32, args.seed)
    sk: dict = {"data": {"classes": chosen, "image_size": 32, **split_counts(sk_data)}}
    cls = train_and_test(sk_data, tmp / "sk_sknet", budget, {"model": "sknet"}, test=False)
    sk["untrained_features"] = untrained_reports(sk_data, args.seed)
    sk["classifier_features"] = {**classifier_reports(tmp / "sk_sknet"), "run": cls["run"]}
    for name, values in (("siamese", {"model": "siamese", "batch_size": 32}),
                         ("triplet", {"model": "triplet", **TRIPLET, "sketches_per_class": 2})):
        report = train_and_test(sk_data, tmp / f"sk_{name}", budget, values)
        sk[name] = {**headline(report), "run": report["run"]}
        query_labels = np.load(tmp / f"sk_{name}" / "features_test.npz")["labels"]
        gallery_labels = np.load(tmp / f"sk_{name}" / "features_test_gallery.npz")["labels"]
    sk["chance"] = chance_report(query_labels, gallery_labels)
    results["sketchy"] = sk
    save(results, args.out, started)


def quickdraw_part(tmp: pathlib.Path, qd_data: pathlib.Path, args, budget: dict, results: dict, started: float) -> None:
    """Sketch -> sketch, leave-one-out: triplet, the proxy losses and classifier features."""
    qd: dict = {"data": {"classes": args.quickdraw_classes, "image_size": 28, **split_counts(qd_data)}}
    chosen = args.quickdraw_models.split(",")
    qd["untrained_features"] = untrained_reports(qd_data, args.seed)
    if "classifier" in chosen:
        cls = train_and_test(qd_data, tmp / "qd_sknet", budget, {"model": "sknet"}, test=False)
        qd["classifier_features"] = {**classifier_reports(tmp / "qd_sknet"), "run": cls["run"]}
    proxy = {} if args.proxy_lr_multiplier is None else {"proxy_lr_multiplier": args.proxy_lr_multiplier}
    width = {} if args.embedding_dim is None else {"embedding_dim": args.embedding_dim}
    runs = {"triplet": {**TRIPLET, **width}, **{loss: {"classes_per_batch": TRIPLET["classes_per_batch"],
                                          "per_class": TRIPLET["per_class"], "loss": loss, **proxy, **width}
                                   for loss in PROXY_LOSSES}}
    for name in (n for n in runs if n in chosen):
        report = train_and_test(qd_data, tmp / f"qd_{name}", budget, {"model": "triplet", **runs[name]})
        qd[name] = {**headline(report), "run": report["run"]}
        qd["chance"] = chance_report(np.load(tmp / f"qd_{name}" / "features_test.npz")["labels"])
    results["quickdraw"] = qd
    save(results, args.out, started)


def deephash_part(tmp: pathlib.Path, qd_data: pathlib.Path, budget: dict, results: dict, started: float,
                  bits_list=BITS, out: str = str(RESULTS / "retrieval_quality.json"),
                  quantization_weight: float | None = None) -> None:
    """Deep hashing at each code length on the Quick, Draw! set: Hamming against float mAP (with the
    flag's default quantization weight unless one is given)."""
    hashing: dict = {}
    extra = {} if quantization_weight is None else {"quantization_weight": quantization_weight}
    for bits in bits_list:
        report = train_and_test(qd_data, tmp / f"qd_deephash{bits}", budget,
                                {"model": "deephash", "bits": bits, "classes_per_batch": 16, "per_class": 4, **extra})
        hashing[str(bits)] = {"hamming_map": report["map"], "float_map": report["float_map"],
                              "search": report["search"], "run": report["run"]}
    results["deephash_quickdraw"] = hashing
    save(results, out, started)


def split_counts(data: pathlib.Path) -> dict:
    info = json.loads((data / "dataset_info.json").read_text())
    counts = {split: s["num_examples"] for split, s in info["splits"].items()}
    return {"examples": counts, **({"per_domain": info["per_domain"]} if "per_domain" in info else {})}


def save(results: dict, out: str, started: float) -> None:
    results["seconds"] = round(time.perf_counter() - started, 1)
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(json.dumps(results, indent=2) + "\n")


def format_tables(results: dict) -> str:
    def cell(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"budget: {results['budget']['epochs']} x {results['budget']['steps_per_epoch']} steps of 64 images"]
    for data in ("sketchy", "quickdraw"):
        part = results.get(data)
        if not part:
            continue
        lines.append(f"\n{data}: " + "  ".join(HEADLINE))
        rows = [("chance", part.get("chance", {}))] + [
            (f"{who} skNet features ({m})", part[f"{who}_features"][m])
            for who in ("untrained", "classifier") if f"{who}_features" in part for m in ("l2", "cosine")]
        rows += [(name, part[name]) for name in ("siamese", "triplet", *PROXY_LOSSES) if name in part]
        for name, row in rows:
            lines.append(f"  {name:<34}" + "  ".join(cell(row.get(key)) for key in HEADLINE))
    for bits, row in results.get("deephash_quickdraw", {}).items():
        search = row["search"]["ranking"]
        lines.append(f"deephash {bits:>3} bits: Hamming mAP {row['hamming_map']:.3f}, "
                     f"float u mAP {row['float_map']:.3f}; "
                     f"exact ranking L2/Hamming time {search['l2_over_hamming']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
