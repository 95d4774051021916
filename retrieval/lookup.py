"""Similarity lookup with an exported model: embed images or drawings, index a gallery, query it.

Every embedding comes from serving.model's one inference loop (`ExportedModel.run`), so decoding,
alpha, 16-bit, EXIF orientation, resizing and polarity are those of the SavedModel's endpoints.
Image files go to the `encoded` endpoints as they are when TensorFlow decodes them faithfully
(PNG, JPEG, GIF without transparency, 24-bit BMP); other images PIL reads (WebP, TIFF, ...) are
re-encoded as PNG first, upright and with their alpha and 16-bit depth kept. A `.ndjson` query
is its first line's drawing rasterized with the raster settings in the model's meta (RasterConfig
defaults at the model's image size when it has none) and sent to the `images` endpoint.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re

import numpy as np
from PIL import Image, ImageOps

from data_prep.image_folder import IMAGE_SUFFIXES
from retrieval.features import FeatureSet, load_features
from retrieval.index import GalleryIndex, build_index
from retrieval.ranking import pack_codes
from serving import image_files
from serving.strokes import stroke_pixels

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


class QueryError(ValueError):
    """A query or gallery that cannot be embedded; the message names the file and the problem."""


def encoded_image(path) -> bytes:
    """The bytes an `encoded` endpoint gets for the image file at `path` (serving.image_files);
    QueryError naming the file when it is no usable image."""
    path = pathlib.Path(path)
    try:
        data, problem = image_files.encodable(path.read_bytes())
    except OSError as err:
        raise QueryError(f"cannot read image {str(path)!r}: {err}") from None
    if problem:
        raise QueryError(f"cannot read image {str(path)!r}: {problem[0]} ({problem[1]})")
    return data


def photo_input(path, photo_edges: str = "none") -> bytes:
    """encoded_image of a gallery file, or with `photo_edges` ('canny', 'gradient') the PNG of its
    line drawing (data_prep.edges.edge_map at the file's own size), as the model's training photos were."""
    data = encoded_image(path)
    if photo_edges == "none":
        return data
    from data_prep import edges

    drawing = edges.edge_map(np.asarray(display_image(path)), edges.check_method(photo_edges))
    buffer = io.BytesIO()
    Image.fromarray(drawing).save(buffer, format="PNG")
    return buffer.getvalue()


def display_image(path) -> Image.Image:
    """An image file as RGB for people to look at: upright, transparent parts on white, 16-bit scaled
    to 8 (result grids and thumbnails only; the model's input comes from its own endpoints)."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in SIXTEEN_BIT:
        image = Image.fromarray((np.asarray(image, np.float64) / 257).clip(0, 255).astype(np.uint8))
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.getchannel("A"))
    return image.convert("RGB")


def thumbnail(path_or_array, size: int) -> np.ndarray:
    """(size, size, 3) uint8 thumbnail of an image file (display_image) or array, aspect kept, padded white."""
    if isinstance(path_or_array, np.ndarray):
        array = path_or_array.squeeze()
        image = Image.fromarray(array if array.ndim == 2 or array.shape[-1] == 3 else array[..., 0])
    else:
        image = display_image(path_or_array)
    image = image.convert("RGB")
    image.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return np.asarray(canvas)


def rasterize_query(path, meta: dict) -> np.ndarray:
    """The first drawing of an .ndjson file as uint8 (H, W, C) with the model's raster settings."""
    import orjson

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
    try:
        return stroke_pixels(strokes, meta)
    except ValueError as err:
        raise QueryError(f"{str(path)!r}: {err}") from None


@dataclasses.dataclass
class Query:
    """A query ready to embed: uint8 pixels (drawings) or encoded bytes (images), and a displayable image."""

    path: str
    display: np.ndarray
    pixels: np.ndarray | None = None
    encoded: bytes | None = None


def prepare_query(path, meta: dict) -> Query:
    """Read and check an image or .ndjson query (before the model is loaded)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise QueryError(f"query {str(path)!r} does not exist.")
    if path.suffix.lower() == ".ndjson":
        image = rasterize_query(path, meta)
        return Query(str(path), image, pixels=image)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise QueryError(f"query {str(path)!r}: expected an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or .ndjson.")
    data = encoded_image(path)
    return Query(str(path), np.asarray(display_image(path)), encoded=data)


def index_vectors(outputs: dict, metric: str) -> np.ndarray:
    """What an index of `metric` holds for a batch of embed outputs: for Hamming the hash model's
    packed `codes` (the sign bits of the embedding for other models), else the float embedding."""
    if metric != "hamming":
        return np.asarray(outputs["embedding"], np.float32)
    return outputs["codes"] if "codes" in outputs else pack_codes(outputs["embedding"])


_TF_NODE = re.compile(r"\{\{[^}]*\}\}\s*")


def tf_message(err) -> str:
    """The first line of a TensorFlow op error, without its function-node prefix."""
    return _TF_NODE.sub("", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)


def run_encoded(model, data: list[bytes], names: list, polarity: str) -> dict:
    """The model's embed outputs for encoded images; a file TF cannot decode is a QueryError naming it."""
    import tensorflow as tf

    try:
        return model.run("encoded", data, head="embed", polarity=polarity)
    except tf.errors.InvalidArgumentError as err:
        if len(data) > 1:  # find the file to name
            for one, name in zip(data, names):
                run_encoded(model, [one], [name], polarity)
        where = repr(str(names[0])) if len(data) == 1 else f"{str(names[0])!r} to {str(names[-1])!r}"
        raise QueryError(f"cannot decode image {where}: {tf_message(err)}") from None


def embed_query(model, query: Query, *, metric: str = "l2", polarity: str = "auto") -> np.ndarray:
    """(1, D) float32 embedding (or (1, B) packed codes for `metric` 'hamming') of a prepared query."""
    if query.pixels is not None:
        outputs = model.run("images", query.pixels[None], head="embed", polarity=polarity)
    else:
        outputs = run_encoded(model, [query.encoded], [query.path], polarity)
    return index_vectors(outputs, metric)


def list_image_folder(root) -> tuple[list[pathlib.Path], np.ndarray, list[str]]:
    """Images of a <root>/<class>/<image> tree: (paths, labels, class names), classes sorted."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise QueryError(f"image folder {str(root)!r} does not exist.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(label)
    if not paths:
        raise QueryError(f"image folder {str(root)!r} holds no images in class sub-folders "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return paths, np.asarray(labels, np.int64), classes


def embed_files(model, paths, *, metric: str = "l2", polarity: str = "auto", batch_size: int = 64,
                progress=None, photo_edges: str = "none") -> np.ndarray:
    """Embeddings (N, D) float32, or packed codes (N, B) for `metric` 'hamming', of image files
    through the model's `encoded` endpoint, in batches (as line drawings with `photo_edges`)."""
    out = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        data = [photo_input(p, photo_edges) for p in chunk]
        out.append(index_vectors(run_encoded(model, data, chunk, polarity), metric))
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    return np.concatenate(out)


def index_image_folder(model, root, *, metric: str, polarity: str = "auto", approximate: str = "none",
                       thumbnail_size: int = 64, model_dir: str = "", progress=None, photo_edges: str = "none",
                       **index_args) -> GalleryIndex:
    """Embed every image of a class-folder tree and index it, with paths and thumbnails (of the
    files as they are, also when `photo_edges` embeds their line drawings); `progress(done, total)`
    after each batch."""
    paths, labels, classes = list_image_folder(root)
    vectors = embed_files(model, paths, metric=metric, polarity=polarity, progress=progress, photo_edges=photo_edges)
    thumbs = np.stack([thumbnail(p, thumbnail_size) for p in paths]) if thumbnail_size > 0 else None
    return build_index(vectors, labels, ids=[p.stem for p in paths], metric=metric, approximate=approximate,
                       class_names=classes, image_paths=[os.fspath(p.resolve()) for p in paths],
                       thumbnails=thumbs, model_dir=model_dir, **index_args)


def drawing_thumbnail(pixels: np.ndarray, size: int, invert: bool) -> np.ndarray:
    """(s, s, 3) uint8 of a model-input image for display: shrunk to `size` when larger (never
    enlarged: the browser and plots scale), dark strokes on white when `invert`."""
    image = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    image = Image.fromarray(255 - image if invert else image).convert("RGB")
    if image.width > size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def dataset_thumbnails(data_path, wanted, size: int = 64) -> dict[str, np.ndarray]:
    """{id: (s, s, 3) uint8 thumbnail, dark on white} of the records of a data set folder whose id is in
    `wanted`, from their stored pixels (every split, stopping once all are found): the drawings of
    feature files that keep ids but no images. QueryError when the folder is no data set."""
    from data_prep import tfrecords
    from serving import batch_inputs
    from serving.export import training_polarity

    if not (pathlib.Path(data_path) / tfrecords.INFO_FILE).is_file():
        raise QueryError(f"{os.fspath(data_path)!r} is not a data set folder (no {tfrecords.INFO_FILE}).")
    info = tfrecords.read_dataset_info(data_path)
    image = info.get("image") or {}
    settings = batch_inputs.ReadSettings(int(image.get("height", 0)), int(image.get("channels", 1)), {})
    wanted, found = set(map(str, wanted)), {}
    for source in batch_inputs.discover(os.fspath(data_path), "all"):
        for item in batch_inputs.read_source(source, settings):
            if not isinstance(item, batch_inputs.Skip) and item.id in wanted:
                found[item.id] = item.data
        if len(found) == len(wanted):
            break
    if not found:
        return {}
    invert = training_polarity(np.stack(list(found.values()))) == "white_on_black"
    return {key: drawing_thumbnail(pixels, size, invert) for key, pixels in found.items()}


def index_dataset(model, data_path, split: str, *, metric: str, polarity: str = "auto", approximate: str = "none",
                  thumbnail_size: int = 64, batch_size: int = 256, model_dir: str = "", progress=None,
                  **index_args) -> GalleryIndex:
    """Embed every record of one split of a data set folder (its stored pixels, through the
    model's `images` endpoint) and index it with the records' ids and thumbnails; `progress(done,
    total)` after each batch. A record the reader cannot read is a QueryError naming the shard: an
    index never silently lacks items."""
    from data_prep import tfrecords
    from serving import batch_inputs

    if not (pathlib.Path(data_path) / tfrecords.INFO_FILE).is_file():
        raise QueryError(f"{os.fspath(data_path)!r} is not a data set folder (no {tfrecords.INFO_FILE}).")
    meta = model.meta
    sources = batch_inputs.discover(os.fspath(data_path), split)
    settings = batch_inputs.ReadSettings(meta["image_size"], meta["channels"], meta.get("raster") or {})
    info = tfrecords.read_dataset_info(data_path)
    class_names = info["classes"]  # a gallery may hold classes the model lacks
    total = sum(s["num_examples"] for name, s in info["splits"].items() if split in ("all", name))
    label_of = {name: i for i, name in enumerate(class_names)}
    invert = meta.get("polarity") == "white_on_black"
    vectors, labels, ids, thumbs, pending = [], [], [], [], []

    def flush():
        batch = np.stack([item.data for item in pending])
        vectors.append(index_vectors(model.run("images", batch, head="embed", polarity=polarity), metric))
        if thumbnail_size > 0:
            thumbs.extend(drawing_thumbnail(image, thumbnail_size, invert) for image in batch)
        pending.clear()
        if progress is not None:
            progress(len(labels), total)

    for source in sources:
        for item in batch_inputs.read_source(source, settings):
            if isinstance(item, batch_inputs.Skip):
                raise QueryError(f"{source.path}: {item.count} records unreadable ({item.reason}), e.g. "
                                 f"{item.example}; check the data set with python -m data_prep.verify {data_path}")
            if item.label not in label_of:
                raise QueryError(f"{source.path}: record {item.id} has class {item.label!r}, which is not in the "
                                 f"data set's classes; check it with python -m data_prep.verify {data_path}")
            pending.append(item)
            labels.append(label_of[item.label])
            ids.append(item.id)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    if not labels:
        raise QueryError(f"split {split!r} of {os.fspath(data_path)!r} holds no records.")
    return build_index(np.concatenate(vectors), np.asarray(labels, np.int64), ids=ids, metric=metric,
                       approximate=approximate, class_names=list(class_names),
                       thumbnails=np.stack(thumbs) if thumbs else None, model_dir=model_dir, **index_args)


def index_metric(meta: dict, metric: str, metric_given: bool) -> str:
    """The metric of an index for the model with `meta`: Hamming for a hash model unless the user
    chose a metric (`metric_given`), else `metric`; a hash model's endpoints give packed codes."""
    if meta.get("kind") == "hash" and not metric_given:
        return "hamming"
    return metric


def feature_file_vectors(path, meta: dict, metric: str, model_dir) -> tuple[np.ndarray, FeatureSet]:
    """The vectors an index of `metric` holds for the feature file at `path`, checked against the
    model's meta: (vectors, FeatureSet). For Hamming, packed uint8 codes are taken as they are
    (ceil(bits / 8) bytes) and floats are packed; a width the model does not give is a ValueError
    naming both, since the gallery and the queries must come from one model."""
    fs = load_features(path, binary=None if metric == "hamming" else False)
    width = fs.features.shape[1]
    if fs.features.dtype == "uint8" and metric == "hamming":
        bits = meta["bits"] or meta["embedding_dim"]
        if width != -(-bits // 8):
            raise ValueError(f"{os.fspath(path)!r} holds {width}-byte packed codes but the model at "
                             f"{os.fspath(model_dir)!r} gives {bits}-bit codes ({-(-bits // 8)} bytes); "
                             f"they must come from that model.")
        return fs.features, fs
    if width != meta["embedding_dim"]:
        raise ValueError(f"{os.fspath(path)!r} holds {width}-dimensional features but the model at "
                         f"{os.fspath(model_dir)!r} embeds to {meta['embedding_dim']}; they must come from that model.")
    return (pack_codes(fs.features) if metric == "hamming" else fs.features), fs


def index_feature_file(path, meta: dict, *, metric: str, thumbnail_size: int = 64, model_dir: str = "",
                       **index_args) -> GalleryIndex:
    """Index a feature file written by the model with `meta` (feature_file_vectors), with its ids,
    its class names (else the model's) and thumbnails of its stored images when it has them."""
    vectors, fs = feature_file_vectors(path, meta, metric, model_dir)
    thumbs = None
    if fs.images is not None and thumbnail_size > 0:
        thumbs = np.stack([thumbnail(image, thumbnail_size) for image in fs.images])
    return build_index(vectors, fs.labels, ids=fs.ids, class_names=fs.class_names or meta.get("class_names"),
                       thumbnails=thumbs, metric=metric, model_dir=model_dir, **index_args)


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
