"""The feature file format, written: `.npz` with `features` (N x D float, or N x B packed uint8
codes), `labels` (N int64), and optionally `ids`, `class_names` and uint8 `images` thumbnails.

What models produce (the batch job's embeddings.npz, `-mode test`, `evaluate_similarity_lookup.py
features`) is written here; retrieval.features reads and validates it.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np


def save_features(path: str | os.PathLike | BinaryIO, features, labels, *, ids=None, class_names=None,
                  images=None, **extra) -> None:
    """Write a feature file (compressed .npz) to a path or a binary file object; `extra` arrays
    (e.g. key_ids, or a hash model's float outputs) are stored beside the format's keys."""
    arrays = {"features": np.asarray(features), "labels": np.asarray(labels, dtype=np.int64)}
    if ids is not None:
        arrays["ids"] = np.asarray(ids).astype(str)
    if class_names is not None:
        arrays["class_names"] = np.asarray(list(class_names), dtype=str)
    if images is not None:
        arrays["images"] = np.asarray(images, dtype=np.uint8)
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    np.savez_compressed(path, **arrays)
