"""Retrieval metrics of feature files, a faiss gallery index, and similarity lookup.

    python evaluate_similarity_lookup.py --features F.npz [--gallery G.npz] [--metric l2|cosine|hamming]
        [--k 1,10,100] [--report out.json] [--plots DIR] [--memory_budget 3GiB]
    python evaluate_similarity_lookup.py index --model EXPORTED (--features G.npz | --images DIR)
        [--out INDEX] [--approximate none|ivf|hnsw] [--polarity auto|as_is|invert]
    python evaluate_similarity_lookup.py lookup --model EXPORTED [--index INDEX] --query sketch.png|drawing.ndjson
        [--k 10] [--grid out.png] [--polarity auto|as_is|invert]
    python evaluate_similarity_lookup.py lookup --index INDEX --text "sea turtle"   (a -model vse export's index)
    python evaluate_similarity_lookup.py features --model EXPORTED --images DIR --out F.npz [--polarity ...]

Images and drawings are embedded by the exported model's own endpoints (serving.model): image files
through `embed_encoded`, a .ndjson query rasterized with the model's raster settings through
`embed_images`; --polarity is the endpoints' polarity policy. A hash model's index holds its `codes`.

Flags are the fields of configuration_sketch.EvalConfig (defaults there, then the command line).
Metric definitions: retrieval/metrics.py and the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Sequence

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from absl import flags  # noqa: E402

import configuration_sketch as cs  # noqa: E402

COMMANDS = ("evaluate", "index", "lookup", "features")


def format_table(report: dict) -> str:
    """The report as a small text table, with the protocol line (every figure with its chance)."""
    from retrieval.metrics import format_protocol

    ex = report["excluded_queries"]
    lines = [
        f"{report['mode'].replace('_', '-')} | metric {report['metric']} | {report['num_queries']} queries, "
        f"{report['num_gallery']} gallery items, {report['dimensions']} dimensions | "
        f"{report['timing']['seconds']:.3f} s ({report['timing']['blocks']} blocks of "
        f"{report['timing']['block_rows']})",
        f"evaluated {report['num_evaluated']}; excluded {ex['count']} ({ex['reason']})"
        + (f": {ex['indices'][:10]}{' ...' if ex['count'] > 10 else ''}" if ex["count"] else ""),
    ]
    for note in report["skipped_k"]:
        lines.append(f"K={note['k']} skipped: {note['reason']}")
    if report.get("protocol"):
        lines.append(f"protocol: {format_protocol(report['protocol'])}")

    def fmt(v):
        return "   n/a" if v is None else f"{v:.4f}"

    chance = report.get("chance", {})

    def with_chance(key):
        return fmt(report[key]) + (f"  (chance {chance[key]:.4f})" if key in chance else "")

    lines.append(f"{'mAP (all relevant)':<22}{with_chance('map')}")
    lines.append(f"{'R-precision':<22}{with_chance('r_precision')}")
    lines.append(f"{'MAP@R':<22}{fmt(report['map@r'])}")
    ks = report["k"]
    if ks:
        lines.append(" " * 22 + "".join(f"{'@' + str(k):>9}" for k in ks))
        rows = [("mAP@K", "map"), ("precision@K", "precision"), ("recall@K", "recall"), ("hit@K", "hit"),
                ("kNN accuracy@K", "knn_accuracy")]
        if "instance_queries" in report:
            rows.append(("instance acc@K", "instance_accuracy"))
        for title, key in rows:
            lines.append(f"{title:<22}" + "".join(f"{fmt(report[f'{key}@{k}']):>9}" for k in ks))
            if any(f"{key}@{k}" in chance for k in ks):
                lines.append(f"{'  chance':<22}" + "".join(f"{fmt(chance.get(f'{key}@{k}')):>9}" for k in ks))
    lines += [f"note: {note}" for note in report.get("notes", [])]
    if "instance_queries" in report:
        lines.append(f"instance queries {report['instance_queries']} (without a gallery target: "
                     f"{report['instance_excluded']})")
    return "\n".join(lines)


@contextlib.contextmanager
def progress_bar(what: str):
    """A `progress(done, total)` callback drawing a tqdm bar on the terminal (none when stderr is not one)."""
    from tqdm import tqdm

    with tqdm(desc=what, unit=" items", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int | None = None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def run_evaluate(config: cs.EvalConfig, given: frozenset = frozenset()) -> int:
    from retrieval.features import load_features
    from retrieval.metrics import evaluate

    if not config.features:
        raise ValueError("--features is required: a feature file (.npz with features and labels).")
    binary = config.metric == "hamming"
    queries = load_features(config.features, binary=binary)
    gallery = load_features(config.gallery, binary=binary) if config.gallery else None
    report = evaluate(queries.features, queries.labels,
                      None if gallery is None else gallery.features, None if gallery is None else gallery.labels,
                      query_ids=queries.ids, gallery_ids=None if gallery is None else gallery.ids,
                      metric=config.metric, k=config.k, memory_budget=config.memory_budget,
                      backend=config.backend)
    print(format_table(report))
    if config.report:
        pathlib.Path(config.report).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(config.report).write_text(json.dumps(report, indent=2))
        print(f"report: {config.report}")
    if config.plots:
        from retrieval.lookup import dataset_thumbnails
        from retrieval.plots import missing_images_note, write_report_plots

        fetched = {}

        def fetch_images(ids):
            fetched.update(dataset_thumbnails(config.data_path, ids, config.thumbnail_size or 64))
            return fetched

        written = write_report_plots(report, queries, gallery, config.plots, metric=config.metric,
                                     max_points=config.tsne_points, examples=config.examples,
                                     seed=config.plot_seed, fetch_images=fetch_images if config.data_path else None)
        print("plots: " + ", ".join(written))
        note = missing_images_note(queries, gallery, fetched=bool(fetched))
        if note:
            print(f"examples.png: {note}")
    return 0


def _load_model(config: cs.EvalConfig):
    """The exported model (serving.model.ExportedModel) at --model."""
    from serving import model as serving_model

    if not config.model:
        raise ValueError("--model is required: an exported model folder (serving/export.py).")
    return serving_model.load(config.model)


def run_index(config: cs.EvalConfig, given: frozenset = frozenset()) -> int:
    """`index`: embed or read the gallery and save its index; `given` names the flags set on the
    command line (a hash model's index is Hamming unless --metric is among them)."""
    from retrieval.index import default_index_dir
    from retrieval.lookup import index_dataset, index_feature_file, index_image_folder, index_metric

    if sum(map(bool, (config.images, config.features, config.data_path))) != 1:
        raise ValueError("index needs one of --images DIR (a class-folder tree), --data_path DIR (a data set "
                         "folder; --split picks the split) or --features G.npz.")
    model = _load_model(config)
    meta = model.meta
    metric = index_metric(meta, config.metric, "metric" in given)
    out = config.out or default_index_dir(config.model)
    args = dict(metric=metric, approximate=config.approximate, nlist=config.ivf_nlist, nprobe=config.ivf_nprobe,
                hnsw_m=config.hnsw_m, ef_search=config.hnsw_ef_search, model_dir=os.path.abspath(config.model),
                thumbnail_size=config.thumbnail_size)
    if config.data_path or config.images:
        with progress_bar("embedding") as progress:
            if config.data_path:
                index = index_dataset(model, config.data_path, config.split, polarity=config.polarity,
                                      progress=progress, **args)
            else:
                edges = meta.get("photo_edges", "none") if config.photo_edges == "auto" else config.photo_edges
                if edges != "none":
                    print(f"embedding the images as {edges} edge maps (--photo_edges; the model was trained on "
                          f"{meta.get('photo_edges', 'none')} photos)")
                index = index_image_folder(model, config.images, polarity=config.polarity, progress=progress,
                                           photo_edges=edges, **args)
    else:
        index = index_feature_file(config.features, meta, **args)
    index.save(out)
    print(f"indexed {len(index)} items ({index.metric}, {index.approximate}, {index.dimensions} dimensions) "
          f"into {out}")
    if index.thumbnails is None and index.image_paths is None:
        print("no thumbnails and no image files in the index (a feature file without `images`, or --thumbnail_size "
              "0): lookup grids will show the class and distance of each result, not the drawing")
    return 0


def run_lookup(config: cs.EvalConfig, given: frozenset = frozenset()) -> int:
    """`lookup`: the nearest gallery items of one query, printed and drawn as a grid; `given` names
    the flags set on the command line (without --k, the 10 nearest)."""
    from retrieval.index import default_index_dir, load_index
    from retrieval.lookup import embed_query, prepare_query, result_image, result_rows
    from retrieval.plots import plot_result_grid
    from serving.export import read_meta

    if config.text:  # a text query for a visual-semantic (vse) model's index
        from retrieval.text_lookup import run_text_lookup

        return run_text_lookup(config, given)
    if not config.query:
        raise ValueError("--query is required: a sketch image or an .ndjson drawing (or --text for a vse model).")
    if not config.model:
        raise ValueError("--model is required: an exported model folder (serving/export.py).")
    query = prepare_query(config.query, read_meta(config.model))  # bad input fails before the model loads
    index = load_index(config.index or default_index_dir(config.model))
    k = max(int(x) for x in config.k.split(",")) if "k" in given else 10
    model = _load_model(config)
    distances, indices = index.search(embed_query(model, query, metric=index.metric, polarity=config.polarity), k)
    rows = result_rows(index, distances[0], indices[0])
    print(f"query {config.query}: {len(rows)} nearest of {len(index)} ({index.metric}, {index.approximate}, "
          f"polarity {config.polarity})")
    print(f"{'rank':>4} {'distance':>10}  {'class':<24} id")
    for r in rows:
        print(f"{r['rank']:>4} {r['distance']:>10.4f}  {r['class']:<24} {r['id']}")
    grid = config.grid or os.path.join(config.index or default_index_dir(config.model), "lookups",
                                       f"{pathlib.Path(config.query).stem}_lookup.png")
    pathlib.Path(grid).parent.mkdir(parents=True, exist_ok=True)
    tiles = [{"image": result_image(index, r["index"]), "caption": f"{r['rank']}. {r['class']}\nd={r['distance']:.3g}",
              "correct": None} for r in rows]
    blank = sum(t["image"] is None for t in tiles)
    note = (f"\n{blank} of {len(tiles)} results have no thumbnail or image file: class and distance only"
            if blank else "")
    plot_result_grid([{"query": {"image": query.display, "caption": "query"}, "results": tiles}], grid,
                     title=f"{pathlib.Path(config.query).name}: {len(rows)} nearest ({index.metric}){note}")
    if blank:
        print(f"{blank} of {len(tiles)} results have no thumbnail in the index and no image file: their tiles "
              f"show the class and distance only")
    print(f"grid: {grid}")
    return 0


def run_features(config: cs.EvalConfig, given: frozenset = frozenset()) -> int:
    from serving.features import save_features
    from retrieval.lookup import embed_files, list_image_folder, thumbnail

    if not config.images or not config.out:
        raise ValueError("features needs --images DIR (a class-folder tree) and --out F.npz.")
    paths, labels, classes = list_image_folder(config.images)
    model = _load_model(config)
    import numpy as np

    embeddings = embed_files(model, paths, polarity=config.polarity)
    thumbs = (np.stack([thumbnail(p, config.thumbnail_size) for p in paths])
              if config.thumbnail_size > 0 else None)
    save_features(config.out, embeddings, labels, ids=[p.stem for p in paths], class_names=classes, images=thumbs)
    print(f"wrote {len(paths)} embeddings ({embeddings.shape[1]} dimensions, {len(classes)} classes) to {config.out}")
    return 0


RUNNERS = {"evaluate": run_evaluate, "index": run_index, "lookup": run_lookup, "features": run_features}


def main(argv: Sequence[str]) -> int:
    """Dispatch on the optional positional command (default: evaluate)."""
    args = list(argv[1:])
    command = args.pop(0) if args else "evaluate"
    if command not in RUNNERS or args:
        print(f"evaluate_similarity_lookup: unknown command or extra arguments {list(argv[1:])}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    config = cs.from_flags(cs.EvalConfig, flags.FLAGS)
    given = frozenset(name for name in ("metric", "k") if flags.FLAGS[name].present)
    try:
        return RUNNERS[command](config, given)
    except (ValueError, OSError) as error:  # every input problem raises a ValueError subclass
        print(f"evaluate_similarity_lookup {command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    parsed = cs.parse_command(sys.argv, [cs.EvalConfig], "evaluate_similarity_lookup", __doc__, flags.FLAGS)
    sys.exit(parsed if isinstance(parsed, int) else main(parsed[0]))
