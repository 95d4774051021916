"""A faiss index over a gallery of embeddings, saved with its class names, labels and item ids.

Exact search by default (IndexFlatL2; IndexFlatIP on unit vectors for cosine; IndexBinaryFlat
for Hamming codes); approximate on request: 'ivf' (inverted lists, `nprobe` of `nlist` probed)
or 'hnsw' (graph, `M` links, `efSearch` breadth). A saved index is a folder:

    index.faiss      the faiss index (faiss.write_index / write_index_binary)
    index_meta.json  metric, approximate, dimensions, count, parameters, class names, model dir
    items.npz        labels, ids, and optionally image paths and uint8 thumbnails for result grids

Returned distances are Euclidean for L2 (faiss gives squared), 1 - cos for cosine, bits for
Hamming. Faiss orders equal distances by its own rule, not necessarily by gallery index.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import numpy as np

# faiss's loader logs at INFO on every start, naming the AVX2 build it could not load (a ModuleNotFoundError
# that is not an error); under absl's handler those lines reached every `index` and `lookup` user.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

APPROXIMATE = ("none", "ivf", "hnsw")
INDEX_FILE = "index.faiss"
META_FILE = "index_meta.json"
ITEMS_FILE = "items.npz"


class GalleryIndexError(ValueError):
    """A gallery index that cannot be built, loaded or searched; the message names the problem."""


@dataclasses.dataclass
class GalleryIndex:
    """A faiss index with what is needed to name its results."""

    index: object
    metric: str
    labels: np.ndarray
    ids: np.ndarray
    class_names: list[str] | None = None
    image_paths: np.ndarray | None = None
    thumbnails: np.ndarray | None = None
    approximate: str = "none"
    params: dict = dataclasses.field(default_factory=dict)
    model_dir: str = ""

    @property
    def dimensions(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (Q, k): the k nearest gallery items of each query."""
        queries = _check_queries(queries, self)
        k = int(k)
        if k < 1:
            raise GalleryIndexError(f"Invalid value for argument `k`. Received: {k}. Expected k >= 1.")
        k = min(k, len(self))
        if self.metric == "cosine":
            queries = _unit(queries, "queries")
        distances, indices = self.index.search(queries, k)
        distances = distances.astype(np.float64)
        if self.metric == "l2":
            distances = np.sqrt(np.maximum(distances, 0.0))
        elif self.metric == "cosine":
            distances = 1.0 - distances
        return distances, indices.astype(np.int64)

    def class_name(self, i: int) -> str:
        label = int(self.labels[i])
        if self.class_names and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def save(self, directory) -> pathlib.Path:
        """Write the index folder (created if needed); returns it."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.metric == "hamming":
            faiss.write_index_binary(self.index, str(directory / INDEX_FILE))
        else:
            faiss.write_index(self.index, str(directory / INDEX_FILE))
        items = {"labels": self.labels.astype(np.int64), "ids": self.ids.astype(str)}
        if self.image_paths is not None:
            items["image_paths"] = self.image_paths.astype(str)
        if self.thumbnails is not None:
            items["thumbnails"] = self.thumbnails.astype(np.uint8)
        np.savez_compressed(directory / ITEMS_FILE, **items)
        meta = {"metric": self.metric, "approximate": self.approximate, "dimensions": self.dimensions,
                "count": len(self), "params": self.params, "class_names": self.class_names,
                "model_dir": self.model_dir, "faiss_version": faiss.__version__}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return directory


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise GalleryIndexError(f"cosine distance is undefined for zero vectors among the {name} "
                          f"(rows {np.flatnonzero(norms[:, 0] == 0)[:5].tolist()}).")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _check_queries(queries, index: GalleryIndex) -> np.ndarray:
    queries = np.asarray(queries)
    if queries.ndim == 1:
        queries = queries[None, :]
    if index.metric == "hamming":
        if queries.dtype != np.uint8:
            raise GalleryIndexError(f"a Hamming index takes packed uint8 codes. Received dtype {queries.dtype}.")
        width = queries.shape[1] * 8
    else:
        if not np.all(np.isfinite(queries)):
            raise GalleryIndexError("queries hold NaN or infinite values.")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        width = queries.shape[1]
    if width != index.dimensions:
        raise GalleryIndexError(f"queries have {width} dimensions but the index has {index.dimensions}.")
    return queries


def build_index(embeddings, labels, *, ids=None, metric: str = "l2", approximate: str = "none",
                class_names=None, image_paths=None, thumbnails=None, nlist: int = 0, nprobe: int = 8,
                hnsw_m: int = 32, ef_search: int = 64, model_dir: str = "", seed: int = 0) -> GalleryIndex:
    """Index `embeddings` (N x D float; N x B packed uint8 for metric 'hamming').

    `nlist` 0 picks about 4 sqrt(N) inverted lists (at most N / 39, faiss's training minimum).
    """
    from retrieval.features import validate_features

    if metric not in ("l2", "cosine", "hamming"):
        raise GalleryIndexError(f"Invalid value for argument `metric`. Received: {metric!r}. "
                          "Expected one of l2, cosine, hamming.")
    if approximate not in APPROXIMATE:
        raise GalleryIndexError(f"Invalid value for argument `approximate`. Received: {approximate!r}. "
                          f"Expected one of {', '.join(APPROXIMATE)}.")
    x, labels, ids = validate_features(embeddings, labels, ids, name="embeddings", binary=metric == "hamming")
    n = len(x)
    ids = np.arange(n).astype(str) if ids is None else ids
    params: dict = {}
    if metric == "hamming":
        bits = x.shape[1] * 8
        if approximate == "none":
            index = faiss.IndexBinaryFlat(bits)
        elif approximate == "hnsw":
            index = faiss.IndexBinaryHNSW(bits, hnsw_m)
            index.hnsw.efSearch = ef_search
            params = {"M": hnsw_m, "efSearch": ef_search}
        else:
            nlist = nlist or _auto_nlist(n)
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
            index.train(x)
            index.nprobe = nprobe
            params = {"nlist": nlist, "nprobe": nprobe}
    else:
        d = x.shape[1]
        if metric == "cosine":
            x = _unit(x, "embeddings")
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        if approximate == "none":
            index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
        elif approximate == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss_metric)
            index.hnsw.efSearch = ef_search
            params = {"M": hnsw_m, "efSearch": ef_search}
        else:
            nlist = nlist or _auto_nlist(n)
            quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
            index.cp.seed = seed
            index.train(x)
            index.nprobe = nprobe
            params = {"nlist": nlist, "nprobe": nprobe}
    index.add(x)
    if image_paths is not None and len(image_paths) != n:
        raise GalleryIndexError(f"{len(image_paths)} image paths for {n} embeddings; they must match.")
    if thumbnails is not None and len(thumbnails) != n:
        raise GalleryIndexError(f"{len(thumbnails)} thumbnails for {n} embeddings; they must match.")
    return GalleryIndex(index, metric, labels, np.asarray(ids).astype(str),
                        None if class_names is None else [str(c) for c in class_names],
                        None if image_paths is None else np.asarray(image_paths).astype(str),
                        None if thumbnails is None else np.asarray(thumbnails, np.uint8),
                        approximate, params, str(model_dir))


def _auto_nlist(n: int) -> int:
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def load_index(directory) -> GalleryIndex:
    """Read an index folder written by GalleryIndex.save."""
    directory = pathlib.Path(directory)
    missing = [f for f in (INDEX_FILE, META_FILE, ITEMS_FILE) if not (directory / f).is_file()]
    if missing:
        raise GalleryIndexError(f"{str(directory)!r} is not an index folder: missing {', '.join(missing)}.")
    meta = json.loads((directory / META_FILE).read_text())
    metric = meta.get("metric")
    if metric == "hamming":
        index = faiss.read_index_binary(str(directory / INDEX_FILE))
    else:
        index = faiss.read_index(str(directory / INDEX_FILE))
    if meta.get("approximate") in ("ivf",) and "nprobe" in meta.get("params", {}):
        index.nprobe = meta["params"]["nprobe"]
    if meta.get("approximate") == "hnsw" and "efSearch" in meta.get("params", {}):
        index.hnsw.efSearch = meta["params"]["efSearch"]
    with np.load(directory / ITEMS_FILE, allow_pickle=False) as items:
        labels = items["labels"]
        ids = items["ids"]
        image_paths = items["image_paths"] if "image_paths" in items.files else None
        thumbnails = items["thumbnails"] if "thumbnails" in items.files else None
    if len(labels) != index.ntotal:
        raise GalleryIndexError(f"{str(directory)!r}: the index holds {index.ntotal} items but items.npz "
                          f"{len(labels)}; the folder is inconsistent.")
    return GalleryIndex(index, metric, labels, ids, meta.get("class_names"), image_paths, thumbnails,
                        meta.get("approximate", "none"), meta.get("params", {}), meta.get("model_dir", ""))


def default_index_dir(model_dir) -> str:
    """Where an index goes unless told: beside the export, never inside it (an export folder stays
    what the training tool wrote). `<run>/export` -> `<run>/index`; another folder F -> `F_index`."""
    export = pathlib.Path(model_dir).resolve()
    return os.fspath(export.parent / ("index" if export.name == "export" else f"{export.name}_index"))
