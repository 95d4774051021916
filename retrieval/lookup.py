"""Similarity lookup with an exported model: embed images or drawings, index a gallery, query it.

Images of any format PIL reads are re-encoded as PNG and embedded through the model's
`embed_png` endpoint, so queries and gallery go through the same decoding and resizing. A
`.ndjson` query is its first line's drawing rasterized with the raster settings in the model's
meta (RasterConfig defaults at the model's image size when it has none).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import pathlib

import numpy as np
from PIL import Image

from retrieval.index import GalleryIndex, build_index
from retrieval.ranking import pack_codes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class QueryError(ValueError):
    """A query or gallery that cannot be embedded; the message names the file and the problem."""


def read_png_bytes(path) -> bytes:
    """The image at `path` as PNG bytes (re-encoded unless it already is a PNG)."""
    path = pathlib.Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.format == "PNG":
                return path.read_bytes()
            buffer = io.BytesIO()
            image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(buffer, format="PNG")
            return buffer.getvalue()
    except (OSError, ValueError) as err:
        raise QueryError(f"cannot read image {str(path)!r}: {err}") from None


def thumbnail(path_or_array, size: int) -> np.ndarray:
    """(size, size, 3) uint8 thumbnail of an image file or array, aspect kept, padded white."""
    if isinstance(path_or_array, np.ndarray):
        array = path_or_array.squeeze()
        image = Image.fromarray(array if array.ndim == 2 or array.shape[-1] == 3 else array[..., 0])
    else:
        image = Image.open(path_or_array)
    image = image.convert("RGB")
    image.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return np.asarray(canvas)


def rasterize_query(path, meta: dict) -> np.ndarray:
    """The first drawing of an .ndjson file as uint8 (H, W, C) with the model's raster settings."""
    import orjson

    from configuration_sketch import RasterConfig
    from data_prep.raster import rasterize

    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            line = f.readline()
        record = orjson.loads(line)
        strokes = [np.asarray(s, dtype=np.float32)[:2].T if len(s) >= 2 else None for s in record["drawing"]]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise QueryError(f"{str(path)!r}: the first line is not a Quick, Draw! drawing "
                           f"(an object with 'drawing': [[xs], [ys]] per stroke): {err}") from None
    if not strokes or any(s is None for s in strokes):
        raise QueryError(f"{str(path)!r}: the first drawing has no strokes or a stroke without x and y.")
    settings = dict(meta.get("raster") or dataclasses.asdict(RasterConfig(image_size=meta["image_size"])))
    settings["image_size"] = meta["image_size"]
    accepted = inspect.signature(rasterize).parameters
    try:
        image = rasterize(strokes, **{k: v for k, v in settings.items() if k in accepted})
    except ValueError as err:
        raise QueryError(f"{str(path)!r}: {err}") from None
    if image.ndim == 2:
        image = image[:, :, None]
    channels = meta["channels"]
    if image.shape[2] != channels:
        image = np.repeat(image[:, :, :1], channels, axis=2) if channels == 3 else image[:, :, :1]
    return image


@dataclasses.dataclass
class Query:
    """A query ready to embed: uint8 pixels (drawings) or PNG bytes (images), and a displayable image."""

    path: str
    display: np.ndarray
    pixels: np.ndarray | None = None
    png: bytes | None = None


def prepare_query(path, meta: dict) -> Query:
    """Read and check a .png/.jpg or .ndjson query (no TensorFlow needed)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise QueryError(f"query {str(path)!r} does not exist.")
    if path.suffix.lower() == ".ndjson":
        image = rasterize_query(path, meta)
        return Query(str(path), image, pixels=image)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise QueryError(f"query {str(path)!r}: expected an image ({', '.join(IMAGE_SUFFIXES)}) or .ndjson.")
    data = read_png_bytes(path)
    return Query(str(path), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), png=data)


def embed_query(model, query: Query) -> np.ndarray:
    """(1, D) float32 embedding of a prepared query through the model's endpoints."""
    import tensorflow as tf

    if query.pixels is not None:
        return model.embed_images(tf.constant(query.pixels[None])).numpy()
    return model.embed_png(tf.constant([query.png])).numpy()


def list_image_folder(root) -> tuple[list[pathlib.Path], np.ndarray, list[str]]:
    """Images of a <root>/<class>/<image> tree: (paths, labels, class names), classes sorted."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise QueryError(f"image folder {str(root)!r} does not exist.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(label)
    if not paths:
        raise QueryError(f"image folder {str(root)!r} holds no images in class sub-folders "
                           f"({', '.join(IMAGE_SUFFIXES)}).")
    return paths, np.asarray(labels, np.int64), classes


def embed_files(model, paths, batch_size: int = 64, progress=None) -> np.ndarray:
    """(N, D) float32 embeddings of image files through `embed_png`, in batches."""
    import tensorflow as tf

    out = []
    for start in range(0, len(paths), batch_size):
        batch = [read_png_bytes(p) for p in paths[start:start + batch_size]]
        out.append(model.embed_png(tf.constant(batch)).numpy())
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    return np.concatenate(out).astype(np.float32)


def index_image_folder(model, meta: dict, root, *, metric: str, approximate: str = "none",
                       thumbnail_size: int = 64, model_dir: str = "", **index_args) -> GalleryIndex:
    """Embed every image of a class-folder tree and index it, with paths and thumbnails."""
    paths, labels, classes = list_image_folder(root)
    embeddings = embed_files(model, paths)
    if metric == "hamming":
        embeddings = pack_codes(embeddings)
    thumbs = np.stack([thumbnail(p, thumbnail_size) for p in paths]) if thumbnail_size > 0 else None
    return build_index(embeddings, labels, ids=[p.stem for p in paths], metric=metric, approximate=approximate,
                       class_names=classes, image_paths=[os.fspath(p.resolve()) for p in paths],
                       thumbnails=thumbs, model_dir=model_dir, **index_args)


def result_rows(index: GalleryIndex, distances: np.ndarray, indices: np.ndarray) -> list[dict]:
    """One dict per result: rank, distance, class, id, index and path (when the index has paths)."""
    rows = []
    for rank, (d, i) in enumerate(zip(distances.tolist(), indices.tolist()), 1):
        if i < 0:  # faiss pads with -1 when an approximate search finds fewer than k
            continue
        rows.append({"rank": rank, "distance": float(d), "class": index.class_name(i), "id": str(index.ids[i]),
                     "index": int(i), "path": None if index.image_paths is None else str(index.image_paths[i])})
    return rows


def result_image(index: GalleryIndex, i: int, size: int = 64) -> np.ndarray | None:
    """A displayable image of gallery item i: its stored thumbnail, else its file, else None."""
    if index.thumbnails is not None:
        return index.thumbnails[i]
    if index.image_paths is not None and os.path.isfile(index.image_paths[i]):
        return thumbnail(index.image_paths[i], size)
    return None
