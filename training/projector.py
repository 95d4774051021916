"""TensorBoard's embedding projector for the features of `-mode test`, in <model_dir>/logs/projector.

`-mode test` writes features_<split>.npz; the projector shows them with a label per point (metadata.tsv:
class and id) and, when the data set's records of that split can be matched to the rows by their ids,
the drawing of each point (sprite.png). It is bounded: at most PROJECTOR_POINTS rows, a seeded uniform
sample when the file has more (the browser projector slows down beyond a few thousand points), and the
sprite at most SPRITE_MAX_SIDE pixels a side (the projector's limit), tiles shrunk to fit.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

PROJECTOR_DIR = "projector"
PROJECTOR_POINTS = 2000
SPRITE_MAX_SIDE = 8192
TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # the variable's name in a tf.train.Checkpoint


def _sample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most `max_points` of n rows, in order: all of them, or a seeded uniform sample."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def sprite(images: np.ndarray, max_side: int = SPRITE_MAX_SIDE) -> np.ndarray:
    """The images (N x H x W (x C) uint8) tiled row by row into a square grid of ceil(sqrt(N)) columns,
    black where the grid is not full; tiles are resized (Pillow, bilinear) when the grid would exceed
    `max_side` pixels. Grey images give an H x W sprite, colour ones H x W x 3."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0] if images.shape[-1] != 3 else images
    cols = max(1, math.ceil(math.sqrt(len(images))))
    h, w = images.shape[1:3]
    scale = min(1.0, max_side / (cols * max(h, w)))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    if (th, tw) != (h, w):
        images = np.stack([np.asarray(Image.fromarray(im).resize((tw, th), Image.BILINEAR)) for im in images])
    grid = np.zeros((cols * th, cols * tw) + images.shape[3:], np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = im
    return grid


def write_projector(log_dir: str | os.PathLike, features: np.ndarray, labels: np.ndarray, *, class_names=None,
                    ids=None, images: np.ndarray | None = None, max_points: int = PROJECTOR_POINTS,
                    seed: int = 0) -> dict:
    """Write the projector files into `log_dir`: a checkpoint of the (sampled) features, metadata.tsv
    (`class` and `id` columns, a header line), sprite.png when `images` (uint8, one per row) are given,
    and projector_config.pbtxt tying them together. Returns what was written: points, rows kept, sprite."""
    import tensorflow as tf
    from PIL import Image
    from tensorboard.plugins import projector

    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    keep = _sample(len(labels), max_points, seed)
    vectors = np.asarray(features)[keep]
    if vectors.dtype == np.uint8:  # packed bit codes: +-1 per bit, so distances are Hamming's
        vectors = np.unpackbits(vectors, axis=1).astype(np.float32) * 2 - 1
    tf.train.Checkpoint(embedding=tf.Variable(vectors.astype(np.float32))).write(str(log_dir / "embedding.ckpt"))
    lines = ["class\tid"]
    for i in keep:
        c = int(labels[i])
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        lines.append(f"{name}\t{'' if ids is None else ids[i]}")
    (log_dir / "metadata.tsv").write_text("\n".join(lines) + "\n")
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.metadata_path = "metadata.tsv"
    written = {"dir": str(log_dir), "points": int(len(keep)), "of": int(len(labels)), "sprite": None}
    if images is not None:
        grid = sprite(np.asarray(images)[keep])
        Image.fromarray(grid).save(log_dir / "sprite.png")
        cols = max(1, math.ceil(math.sqrt(len(keep))))
        embedding.sprite.image_path = "sprite.png"
        embedding.sprite.single_image_dim.extend([grid.shape[1] // cols, grid.shape[0] // cols])
        written["sprite"] = "sprite.png"
    projector.visualize_embeddings(str(log_dir), config)
    return written


def split_images_by_id(data_path: str | os.PathLike, split: str, wanted: set[str]) -> dict[str, np.ndarray] | None:
    """{id: uint8 image} of the `wanted` ids among a split of a data set of this project (its
    `id_feature`); only those images are kept, so a split of large photos stays out of memory. None when
    the records have no ids or an id is not unique (the rows of a feature file could not be matched)."""
    from data_prep.pipeline import load_split

    out: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    try:
        batches = load_split(data_path, split, 256, with_key_ids=True)
    except Exception:  # noqa: BLE001 - no ids in these records: no sprite, said by the caller
        return None
    for images, _, ids in batches:
        for n, key in enumerate(ids.numpy()):
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key in seen:
                return None
            seen.add(key)
            if key in wanted:
                out[key] = np.round(np.clip(images[n].numpy(), 0.0, 1.0) * 255).astype(np.uint8)
    return out


def write_test_projector(log_dir: str | os.PathLike, features_file: str | os.PathLike, data_path: str,
                         split: str, *, max_points: int = PROJECTOR_POINTS, seed: int = 0) -> dict:
    """The projector of the feature file `-mode test` wrote, in `log_dir` (<model_dir>/logs/projector):
    at most `max_points` rows (write_projector's sample), with the sprite of the split's images matched
    to them by id (none when some row has no match)."""
    with np.load(features_file, allow_pickle=False) as f:
        features, labels = f["features"], f["labels"]
        ids = f["ids"] if "ids" in f.files else None
        class_names = list(f["class_names"]) if "class_names" in f.files else None
    total = len(labels)
    keep = _sample(total, max_points, seed)
    features, labels, ids = features[keep], labels[keep], None if ids is None else ids[keep]
    images = None
    if ids is not None:
        by_id = split_images_by_id(data_path, split, {str(i) for i in ids})
        if by_id is not None and all(str(i) in by_id for i in ids):
            images = np.stack([by_id[str(i)] for i in ids])
    written = write_projector(log_dir, features, labels, class_names=class_names, ids=ids, images=images,
                              max_points=max_points)
    written["of"] = total
    return written
