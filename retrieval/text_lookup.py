"""Text queries against an image index: `evaluate_similarity_lookup.py lookup --text "sea turtle"`.

A visual-semantic model (-model vse, serving/vse_export.py) embeds images and texts in one space; its
export's `embed_text` turns the text into a unit vector in the graph, and the index built from the same
export (`evaluate_similarity_lookup.py index --model EXPORT ...`) is searched with it (L2 between unit
vectors ranks as cosine). A text with none of the vocabulary's words is one line, not a search.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np


class TextQueryError(ValueError):
    """A text query that cannot be searched (no known word, no embed_text endpoint, a hash index)."""


def embed_text(model, text: str) -> np.ndarray:
    """(1, D) float32 unit vector of `text` from an exported vse model (serving.model.ExportedModel)."""
    import tensorflow as tf

    endpoint = getattr(model.loaded, "embed_text", None)
    if endpoint is None:
        raise TextQueryError(f"the model at {str(model.export_dir)!r} has no embed_text endpoint: text queries need "
                             "an export of -model vse (train_sketch_net.py -model vse -word_vectors PATH).")
    out = endpoint(tf.constant([text]))
    if not bool(out["known"].numpy()[0]):
        vocabulary = (model.meta.get("text") or {}).get("vocabulary")
        raise TextQueryError(f"no word of {text!r} is in the model's vocabulary"
                             + (f" ({vocabulary} words)" if vocabulary else "") + ": nothing to search for.")
    return out["embedding"].numpy().astype(np.float32)


def run_text_lookup(config, given: frozenset = frozenset()) -> int:
    """`lookup --text`: the nearest gallery items of a text, printed and drawn as a grid."""
    from retrieval.index import default_index_dir, load_index
    from retrieval.lookup import result_image, result_rows
    from retrieval.plots import plot_result_grid
    from serving import model as serving_model

    if not config.index and not config.model:
        raise TextQueryError("lookup --text needs --index DIR (an index of a vse export) or --model EXPORTED.")
    index_dir = config.index or default_index_dir(config.model)
    index = load_index(index_dir)
    model_dir = config.model or index.model_dir
    if not model_dir:
        raise TextQueryError(f"the index at {index_dir!r} does not name its model; pass --model EXPORTED.")
    if index.metric == "hamming":
        raise TextQueryError(f"the index at {index_dir!r} holds Hamming codes; a text query needs a float index "
                             "(index --metric l2 or cosine).")
    model = serving_model.load(model_dir)
    k = max(int(x) for x in config.k.split(",")) if "k" in given else 10
    distances, indices = index.search(embed_text(model, config.text), k)
    rows = result_rows(index, distances[0], indices[0])
    print(f"text {config.text!r}: {len(rows)} nearest of {len(index)} ({index.metric}, {index.approximate})")
    print(f"{'rank':>4} {'distance':>10}  {'class':<24} id")
    for r in rows:
        print(f"{r['rank']:>4} {r['distance']:>10.4f}  {r['class']:<24} {r['id']}")
    stem = "_".join(config.text.split())[:40] or "text"
    grid = config.grid or os.path.join(index_dir, "lookups", f"text_{stem}_lookup.png")
    pathlib.Path(grid).parent.mkdir(parents=True, exist_ok=True)
    tiles = [{"image": result_image(index, r["index"]), "caption": f"{r['rank']}. {r['class']}\nd={r['distance']:.3g}",
              "correct": None} for r in rows]
    plot_result_grid([{"query": {"image": None, "caption": f"text: {config.text}"}, "results": tiles}], grid,
                     title=f"{config.text!r}: {len(rows)} nearest ({index.metric})")
    print(f"grid: {grid}")
    return 0
