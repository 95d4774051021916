"""What a user sees: every test sketch of a Sketchy run looked up among the real test photos.

Takes a run trained on a Sketchy build (e.g. one of bench/sketchy_retrieval.py's), exports it when it
has no export, indexes the build's test photos from the source tree (`index --images` of a class-folder
tree of links; photos drawn as edge maps when the model was trained on them, thumbnails the photos) and
looks up each test sketch through the export's endpoints, as `evaluate_similarity_lookup.py lookup`
does. Reports, over all test sketches: the share whose top K holds a photo of their class, precision@K,
and how many classes have that share above one half (chance beside each), and draws a grid of
`--queries` sketches chosen at random (seeded, one per class, not picked by result) with their top K.
Writes the grid (`--grid`, docs/sketchy_lookup.jpg by default) and bench/results/sketchy_lookup_grid.json.
Run: `python -m bench.sketchy_lookup_grid --run RUN_DIR` (a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import tempfile

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from data_prep import tfrecords  # noqa: E402
from data_prep.pipeline import parse_batch  # noqa: E402
from retrieval.lookup import embed_query, index_image_folder, prepare_query, result_image  # noqa: E402
from retrieval.metrics import expected_random_hit  # noqa: E402
from retrieval.plots import plot_result_grid  # noqa: E402
from serving import model as serving_model  # noqa: E402
from training import trainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_records(data: pathlib.Path) -> list[dict]:
    """(domain, class name, source path) of every test record of a Sketchy build."""
    info = tfrecords.read_dataset_info(data)
    files = [str(p) for p in tfrecords.shard_paths(data, info, "test")]
    rows = []
    for batch in tf.data.TFRecordDataset(files).batch(512):
        parsed = parse_batch(batch, tfrecords.feature_specs(info), ["label", "domain", "source"])
        for label, domain, source in zip(parsed["label"].numpy(), parsed["domain"].numpy(), parsed["source"].numpy()):
            rows.append({"label": int(label), "class": info["classes"][int(label)], "domain": domain.decode(),
                         "source": source.decode()})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder trained on a Sketchy build")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=str(ROOT / "docs" / "sketchy_lookup.jpg"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sketchy_lookup_grid.json"))
    args = parser.parse_args(argv)
    run = pathlib.Path(args.run)
    export = run / "export"
    if not (export / "model_meta.json").exists():
        trainer.run_mode(*trainer.resolve("", {"mode": "export", "model_dir": str(run)}))
    config = json.loads((run / "train_config.json").read_text())
    data = pathlib.Path(config["configs"]["TrainConfig"]["data_path"])
    source = pathlib.Path(tfrecords.read_dataset_info(data)["build"]["args"]["source"])
    model = serving_model.load(export)
    edges = model.meta.get("photo_edges", "none")
    records = test_records(data)
    sketches = [r for r in records if r["domain"] == "sketch"]
    with tempfile.TemporaryDirectory() as tmp:
        tree = pathlib.Path(tmp)
        for r in records:
            if r["domain"] == "photo":
                link = tree / r["class"] / pathlib.Path(r["source"]).name
                link.parent.mkdir(exist_ok=True)
                link.symlink_to(source / r["source"])
        index = index_image_folder(model, tree, metric="l2", photo_edges=edges, thumbnail_size=96)
        queries = np.concatenate([embed_query(model, prepare_query(source / r["source"], model.meta))
                                  for r in sketches])
        _, nearest = index.search(queries, args.k)
        names = index.class_names
        hits = np.array([[names[index.labels[j]] == r["class"] for j in row] for r, row in zip(sketches, nearest)])
        per_class: dict[str, list[bool]] = {}
        for r, row in zip(sketches, hits):
            per_class.setdefault(r["class"], []).append(bool(row.any()))
        counts = np.unique(index.labels, return_counts=True)[1]
        relevant = np.array([counts[names.index(r["class"])] for r in sketches])
        chance_hit = float(expected_random_hit(relevant, len(index), args.k).mean())
        report = {
            "run": str(run), "photo_edges": edges, "k": args.k, "sketches": len(sketches), "photos": len(index),
            f"hit@{args.k}": float(hits.any(axis=1).mean()), f"hit@{args.k}_chance": chance_hit,
            f"precision@{args.k}": float(hits.mean()), f"precision@{args.k}_chance": float(np.mean(relevant / len(index))),
            "classes": len(per_class),
            "classes_mostly_hit": int(sum(np.mean(v) > 0.5 for v in per_class.values())),
            "machine": describe_machine(),
        }
        rng = random.Random(args.seed)
        chosen = rng.sample(sorted({r["class"] for r in sketches}), args.queries)
        rows = []
        for name in chosen:
            i = rng.choice([n for n, r in enumerate(sketches) if r["class"] == name])
            tiles = [{"image": result_image(index, int(j), 96), "caption": names[index.labels[j]],
                      "correct": bool(hit)} for j, hit in zip(nearest[i], hits[i])]
            query = prepare_query(source / sketches[i]["source"], model.meta)
            rows.append({"query": {"image": query.display, "caption": f"query: {name}"}, "results": tiles})
        plot_result_grid(rows, args.grid, title=f"Sketchy sample: test sketches against the {len(index)} test photos "
                                                f"(random queries; green: the query's class)")
    report["grid"] = args.grid
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
