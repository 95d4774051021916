"""Sketch -> photo retrieval on the real Sketchy sample under the one protocol (issue 11), over seeds.

Data: ../shared/data/sketchy (125 categories x 25 photos and 25 sketches, 128 px), built at 32 px with
data_prep.sketchy (the photo-level split: no photo and its sketches in two splits) for each photo look
(`--photo_edges`: colour photos, or canny / gradient edge maps) and each class split: `seen` (all 125
categories, 20% of each category's photos held out with their sketches) and the zero-shot splits of
the literature (data_prep/splits: Yelamarthi et al. 21 unseen, Shen et al. 25 unseen; reported on
test_unseen, never trained on).

Methods, at equal budget (`--epochs` passes of the seen training images, batches of 128 images):
- `classifier`: skNet trained on sketches and photos (the image classifiers' default recipe); its
  `features` layer (L2) embeds both domains;
- `softmax_triplet`, `proxy_anchor`: the triplet model (skNet trunk, 128-d) with those losses on P x K
  batches of 32 classes x (2 sketches + 2 photos);
- `*_augment`: the same with -augment (flips, 5% shift / zoom / shear, 5 degrees; white fill, as sketches
  and edge maps are drawn on white);
- `warm`: the classifier started from a skNet classifier trained first on Quick, Draw! (the simplified
  sample, 32 px, grey: -init_from adapts its first convolution to colour); the Quick, Draw! run is not
  counted in the budget. On the seen split it knows all 345 categories; on a zero-shot split the
  categories named as the split's unseen classes are left out of it (18 of Shen et al.'s 25), so the
  unseen classes stay unseen;
- `*_flip`: the same with random horizontal flips only (-augment with no shift, zoom, rotation or
  shear; the Quick, Draw! source of `warm_flip` is trained with them too).
Every run goes through train_sketch_net.py's run_mode (-mode train, then -mode test); the report keeps
the protocol (retrieval.metrics.PROTOCOL: mAP@all, mAP@200, P@100, P@200, acc@1, acc@10, each with its
chance) of test sketches against test photos, and on test_unseen for the zero-shot splits.
Writes bench/results/sketchy_retrieval.json (updated after every run). Run:
`python -m bench.sketchy_retrieval --part edges` (choose the photo look), `--part seen`, `--part zeroshot`
(about 4 minutes a run on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig, SketchyBuildConfig  # noqa: E402
from data_prep import categories, quickdraw, quickdraw_build, sketchy, word_vectors  # noqa: E402
from training import trainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
SIZE = 32
SPLITS = {"seen": "", "unseen21": f"@{ROOT / 'data_prep/splits/sketchy_unseen_21_yelamarthi2018.txt'}",
          "unseen25": f"@{ROOT / 'data_prep/splits/sketchy_unseen_25_shen2018.txt'}"}
FLIPS_ONLY = {"augment": True, "aug_translate": 0.0, "aug_zoom": 0.0, "aug_rotation": 0.0, "aug_shear": 0.0}
PK = {"model": "triplet", "classes_per_batch": 32, "per_class": 4, "sketches_per_class": 2, "embedding_dim": 128}
METHODS = {
    "classifier": {"model": "sknet"},
    "softmax_triplet": {**PK, "loss": "softmax_triplet"},
    "proxy_anchor": {**PK, "loss": "proxy_anchor"},
    "proxy_anchor_512": {**PK, "loss": "proxy_anchor", "embedding_dim": 512},
    "triplet": {**PK, "loss": "triplet"},
    "warm": {"model": "sknet"},
    "classifier_augment": {"model": "sknet", "augment": True, "aug_fill_value": 1.0},
    "classifier_flip": {"model": "sknet", **FLIPS_ONLY, "aug_fill_value": 1.0},
    "warm_flip": {"model": "sknet", **FLIPS_ONLY, "aug_fill_value": 1.0},
    "softmax_triplet_augment": {**PK, "loss": "softmax_triplet", "augment": True, "aug_fill_value": 1.0},
}
PARTS = {
    "edges": {"splits": ["seen"], "methods": ["classifier"], "photo_edges": ["none", "canny", "gradient"]},
    "seen": {"splits": ["seen"], "methods": ["classifier", "softmax_triplet", "proxy_anchor", "warm"]},
    "zeroshot": {"splits": ["unseen21", "unseen25"], "methods": ["classifier", "classifier_flip", "warm", "warm_flip"]},
}


def build(cache: pathlib.Path, split: str, photo_edges: str) -> pathlib.Path:
    out = cache / f"sketchy_{split}_{photo_edges}_{SIZE}px"
    if not (out / "dataset_info.json").exists():
        sketchy.build(SketchyBuildConfig(source=str(SHARED / "sketchy"), out=str(out), image_size=SIZE, shards=4,
                                         workers=2, photo_edges=photo_edges, unseen_classes=SPLITS[split]),
                      progress=False)
    return out


def unseen_names(split: str) -> list[str]:
    """The unseen class names of a split (none for `seen`)."""
    return categories.parse_list(SPLITS[split], "--splits") if SPLITS[split] else []


def quickdraw_classifier(cache: pathlib.Path, epochs: int, exclude: list[str], flips: bool = False) -> pathlib.Path:
    """A skNet classifier of the Quick, Draw! categories at SIZE px (the warm start's source), without the
    categories whose normalised names are in `exclude`; with random flips when `flips`."""
    source = SHARED / "quickdraw" / "simplified"
    dropped = {word_vectors.normalise_name(name) for name in exclude}
    names = sorted(quickdraw.source_files(source, "simplified"))
    kept = [name for name in names if word_vectors.normalise_name(name) not in dropped]
    tag = "all" if len(kept) == len(names) else f"without{len(names) - len(kept)}"
    data = cache / f"quickdraw_{tag}_{SIZE}px"
    run = cache / f"quickdraw{'' if tag == 'all' else '_' + tag}_sknet_{SIZE}px_{epochs}ep{'_flip' if flips else ''}"
    if not (data / "dataset_info.json").exists():
        wanted = "all"
        if tag != "all":
            wanted = f"@{cache / f'quickdraw_{tag}.txt'}"
            (cache / f"quickdraw_{tag}.txt").write_text("\n".join(kept) + "\n")
        quickdraw_build.build(QuickDrawBuildConfig(source=str(source), format="simplified", categories=wanted,
                                                   train_per_class=20, test_per_class=5, out=str(data), shards=4,
                                                   workers=2, seed=0),
                              RasterConfig(image_size=SIZE), progress=False)
    if not (run / "best.keras").exists():
        trainer.run_mode(*trainer.resolve("", {"mode": "train", "model": "sknet", "data_path": str(data),
                                               "model_dir": str(run), "epochs": epochs, "seed": 0, "verbose": 0,
                                               **(FLIPS_ONLY if flips else {})}))
    return run


def protocol_of(report: dict) -> dict:
    """{split: protocol} of a -mode test report, classifier or embedding model alike."""
    seen = report.get("sketch_to_photo", report)
    out = {"test": seen["protocol"]}
    unseen = report.get("test_unseen")
    if unseen:
        out["test_unseen"] = unseen.get("sketch_to_photo", unseen)["protocol"]
    return out


def run_one(data: pathlib.Path, model_dir: pathlib.Path, method: str, seed: int, epochs: int,
            init_from: pathlib.Path | None) -> dict:
    values = {**METHODS[method], "mode": "train", "data_path": str(data), "model_dir": str(model_dir),
              "epochs": epochs, "seed": seed, "verbose": 0}
    if init_from is not None:
        values["init_from"] = str(init_from)
    started = time.perf_counter()
    summary = trainer.run_mode(*trainer.resolve("", values))
    seconds = time.perf_counter() - started
    report = trainer.run_mode(*trainer.resolve("", {"mode": "test", "model_dir": str(model_dir)}))
    flags = " ".join(f"-{k} {v}" for k, v in values.items() if k not in ("mode", "data_path", "model_dir"))
    return {"protocol": protocol_of(report), "train_seconds": round(seconds, 1), "steps": summary["final_step"],
            "flags": flags}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarise(runs: dict) -> dict:
    """Mean, sd, min and max over seeds of each figure and its multiple of chance."""
    out: dict = {}
    for key, seeds in runs.items():
        first = next(iter(seeds.values()))["protocol"]
        out[key] = {split: {name: {"value": spread([s["protocol"][split][name]["value"] for s in seeds.values()]),
                                   "x_chance": spread([s["protocol"][split][name]["x_chance"] for s in seeds.values()]),
                                   "chance": figure["chance"]}
                            for name, figure in figures.items()}
                    for split, figures in first.items()}
    return out


def markdown_table(results: dict) -> str:
    """One row per split / look / method: each protocol figure as mean (min-max) over seeds, x chance."""
    names = ["mAP@all", "mAP@200", "P@100", "P@200", "acc@1", "acc@10"]
    lines = ["| split / photos / method | seeds | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for key, seeds in results["runs"].items():
        split = "test" if key.startswith("seen/") else "test_unseen"
        summary = results["summary"][key][split]
        cells = []
        for name in names:
            if name not in summary:
                cells.append("")
                continue
            v, x = summary[name]["value"], summary[name]["x_chance"]
            spread = f" ({v['min']:.3f}-{v['max']:.3f})" if len(seeds) > 1 else ""
            cells.append(f"{v['mean']:.3f}{spread}, {x['mean']:.1f}x")
        lines.append(f"| {key} | {','.join(sorted(seeds))} | " + " | ".join(cells) + " |")
    for prefix in dict.fromkeys(key.split("/")[0] for key in results["runs"]):
        key = next(k for k in results["summary"] if k.startswith(prefix + "/"))
        summary = results["summary"][key]["test" if prefix == "seen" else "test_unseen"]
        lines.append(f"| chance, {prefix} | | " + " | ".join(
            f"{summary[n]['chance']:.4f}" if n in summary else "" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--photo_edges", default="",
                        help="photo look(s), comma-separated (default: all three for edges, canny otherwise)")
    parser.add_argument("--methods", default="", help="comma-separated subset of the part's methods")
    parser.add_argument("--splits", default="", help="comma-separated subset of the part's splits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quickdraw_epochs", type=int, default=15)
    parser.add_argument("--cache", default="/tmp/sketchy_retrieval_cache")
    parser.add_argument("--out", default="")
    parser.add_argument("--table", action="store_true", help="print the saved results as a Markdown table; run nothing")
    args = parser.parse_args(argv)
    part = PARTS[args.part]
    methods = args.methods.split(",") if args.methods else part["methods"]
    looks = args.photo_edges.split(",") if args.photo_edges else part.get("photo_edges", ["canny"])
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = pathlib.Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(args.out or RESULTS / f"sketchy_retrieval_{args.part}.json")
    if args.table:
        print(markdown_table(json.loads(out.read_text())))
        return 0
    results: dict = {"machine": describe_machine(), "part": args.part, "image_size": SIZE, "epochs": args.epochs,
                     "seeds": seeds, "runs": {}}
    if out.exists():  # resume: keep the runs already measured with the same budget
        saved = json.loads(out.read_text())
        if saved.get("epochs") == args.epochs:
            results["runs"] = saved.get("runs", {})
    started = time.perf_counter()
    for split in args.splits.split(",") if args.splits else part["splits"]:
        for look in looks:
            data = build(cache, split, look)
            for method in methods:
                key = f"{split}/{look}/{method}"
                todo = [seed for seed in seeds if str(seed) not in results["runs"].get(key, {})]
                init_from = None
                if todo and method.startswith("warm"):
                    init_from = quickdraw_classifier(cache, args.quickdraw_epochs, unseen_names(split),
                                                     flips=method == "warm_flip")
                for seed in todo:
                    model_dir = cache / "runs" / f"{split}_{look}_{method}_{args.epochs}ep_seed{seed}"
                    run = run_one(data, model_dir, method, seed, args.epochs, init_from)
                    results["runs"].setdefault(key, {})[str(seed)] = run
                    results["summary"] = summarise(results["runs"])
                    results["seconds"] = round(time.perf_counter() - started, 1)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=2) + "\n")
                    test = run["protocol"]["test_unseen" if split != "seen" else "test"]
                    print(f"{key} seed {seed}: " + ", ".join(
                        f"{name} {f['value']:.4f} ({f['x_chance']:.1f}x)" for name, f in test.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
