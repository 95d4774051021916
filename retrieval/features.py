"""Feature files: load and validate the `.npz` files the evaluator reads (serving.features writes them).

A feature file is an `.npz` holding `features` (N x D float, or N x B uint8 packed bit codes for
Hamming), `labels` (N integers) and optionally `ids` (N strings or integers), `class_names`
(C strings) and `images` (N x H x W or N x H x W x C uint8 thumbnails for the plots). It is read
with `allow_pickle=False`, so object arrays are refused rather than executed.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import zipfile

import numpy as np

REQUIRED_KEYS = ("features", "labels")
OPTIONAL_KEYS = ("ids", "class_names", "images")


class FeatureFileError(ValueError):
    """A feature file or array that cannot be evaluated; the message names the problem."""


@dataclasses.dataclass
class FeatureSet:
    """Features with their labels, and what else the file held."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray | None = None
    class_names: list[str] | None = None
    images: np.ndarray | None = None
    path: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def validate_features(features, labels, ids=None, *, name: str = "features", binary: bool = False):
    """Check and normalise one set: returns (features, labels int64, ids or None).

    `binary=True` expects packed uint8 codes (Hamming); otherwise any real dtype, returned as
    float32 (the precision every distance is computed in). Raises FeatureFileError naming the
    argument, what it received and what is allowed.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise FeatureFileError(
            f"`{name}` must be a 2-D array (items x dimensions). Received shape {features.shape}.")
    if features.shape[0] == 0:
        raise FeatureFileError(f"`{name}` is empty (0 items); at least one item is needed.")
    if features.shape[1] == 0:
        raise FeatureFileError(f"`{name}` has 0 dimensions; at least one is needed.")
    if labels.ndim != 1:
        raise FeatureFileError(f"labels of `{name}` must be 1-D. Received shape {labels.shape}.")
    if len(labels) != len(features):
        raise FeatureFileError(
            f"`{name}` has {len(features)} items but its labels have {len(labels)}; they must match.")
    integral_floats = (np.issubdtype(labels.dtype, np.floating) and bool(np.all(np.isfinite(labels)))
                       and bool(np.all(labels == np.round(labels))))
    if not (np.issubdtype(labels.dtype, np.integer) or integral_floats):
        raise FeatureFileError(f"labels of `{name}` must be integers. Received dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    if binary:
        if features.dtype != np.uint8:
            raise FeatureFileError(
                f"`{name}` must hold packed uint8 bit codes for metric 'hamming' (see "
                f"retrieval.metrics.pack_codes). Received dtype {features.dtype}.")
    else:
        if features.dtype == np.bool_ or not (np.issubdtype(features.dtype, np.floating)
                                              or np.issubdtype(features.dtype, np.integer)):
            raise FeatureFileError(
                f"`{name}` must be real numbers. Received dtype {features.dtype}.")
        features = np.ascontiguousarray(features, dtype=np.float32)
        finite = np.isfinite(features)
        if not finite.all():
            bad = np.flatnonzero(~finite.all(axis=1))
            kinds = "NaN" if np.isnan(features).any() else "infinite"
            if np.isnan(features).any() and np.isinf(features).any():
                kinds = "NaN and infinite"
            raise FeatureFileError(
                f"`{name}` holds {kinds} values in {len(bad)} of {len(features)} rows "
                f"(first rows: {bad[:5].tolist()}); every feature must be finite.")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != len(labels):
            raise FeatureFileError(
                f"ids of `{name}` must be 1-D with one id per item ({len(labels)}). "
                f"Received shape {ids.shape}.")
        ids = ids.astype(str)
    return np.ascontiguousarray(features), labels, ids


def load_features(path: str | os.PathLike, *, binary: bool | None = False) -> FeatureSet:
    """Read and validate a feature file; FeatureFileError for anything that is not one.
    `binary` None takes uint8 features as packed codes and any other dtype as floats."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FeatureFileError(f"feature file {str(path)!r} does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise FeatureFileError(
            f"{str(path)!r} is not a feature file (an .npz of arrays `features` and `labels`): "
            f"{type(err).__name__}: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise FeatureFileError(
            f"{str(path)!r} holds a single array, not a feature file (an .npz with `features` and "
            f"`labels`).")
    with archive:
        missing = [k for k in REQUIRED_KEYS if k not in archive.files]
        if missing:
            raise FeatureFileError(
                f"{str(path)!r} is not a feature file: missing {', '.join(missing)} "
                f"(found: {', '.join(sorted(archive.files)) or 'nothing'}).")
        try:
            arrays = {k: archive[k] for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in archive.files}
        except ValueError as err:  # object arrays: refused without allow_pickle
            raise FeatureFileError(f"{str(path)!r}: {err} (object arrays are not read).") from None
    if binary is None:
        binary = arrays["features"].dtype == np.uint8
    features, labels, ids = validate_features(
        arrays["features"], arrays["labels"], arrays.get("ids"), name=str(path), binary=binary)
    class_names = arrays.get("class_names")
    if class_names is not None:
        class_names = [str(c) for c in np.asarray(class_names).reshape(-1)]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise FeatureFileError(
                f"{str(path)!r}: labels run from {labels.min()} to {labels.max()} but class_names "
                f"has {len(class_names)} entries.")
    images = arrays.get("images")
    if images is not None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise FeatureFileError(
                f"{str(path)!r}: `images` must be uint8 N x H x W (x C) with N={len(labels)}. "
                f"Received {images.dtype} {images.shape}.")
    return FeatureSet(features, labels, ids, class_names, images, str(path))


_SUFFIX = re.compile(r"^(.*)-\d+$")


def instance_targets(query_ids, gallery_ids) -> np.ndarray:
    """For each query, the gallery index its id names, or -1 when there is none.

    A query id matches a gallery id when equal, or, failing that, when it is the gallery id
    followed by `-<number>` (the Sketchy convention: sketch `n02691156_58-1` was drawn from
    photo `n02691156_58`). Duplicate gallery ids are an error: the target would be ambiguous.
    """
    gallery_ids = np.asarray(gallery_ids).astype(str)
    position: dict[str, int] = {}
    for j, gid in enumerate(gallery_ids.tolist()):
        if gid in position:
            raise FeatureFileError(
                f"gallery id {gid!r} appears more than once (items {position[gid]} and {j}); "
                f"instance-level accuracy needs unique gallery ids.")
        position[gid] = j
    targets = np.full(len(query_ids), -1, dtype=np.int64)
    for i, qid in enumerate(np.asarray(query_ids).astype(str).tolist()):
        j = position.get(qid)
        if j is None:
            match = _SUFFIX.match(qid)
            if match:
                j = position.get(match.group(1))
        if j is not None:
            targets[i] = j
    return targets
