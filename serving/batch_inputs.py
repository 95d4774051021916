"""What a batch job reads: input discovery (main process) and one reader per kind (workers).

`discover(spec, split)` turns `--input` (paths and globs, comma-separated) into Sources, each
one file of one kind, found by its path and checked by its content:

| kind      | what                                                        | label          |
|-----------|-------------------------------------------------------------|----------------|
| `shard`   | a TFRecord shard of a data set folder of this project       | its class      |
| `ndjson`  | Quick, Draw! raw or simplified `.ndjson` / `.ndjson.gz`     | record `word`, else the file's category |
| `bitmap`  | numpy_bitmap `.npy` (N x 784 uint8)                         | the file's category |
| `sketchrnn`| sketch-rnn `.npz` (restricted unpickler)                   | the file's category |
| `image`   | any image PIL reads (serving.image_files: re-encoded as PNG when TF would misread it) | its class sub-folder, if any |
| `orphan`  | a `.tfrecord` without the data set's `dataset_info.json`    | (a counted skip)  |
| `unknown` | anything else found in a folder                              | (a counted skip)  |

`read_source(source, settings)` yields Items (one model input each) and Skips (a reason, a
count and an example naming file and line), so every record read is predicted or reported.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from data_prep import quickdraw, tfrecords
from data_prep.skips import BadRecord, SkipCounter
from serving import image_files
from serving import strokes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz")
SHARD_BATCH = 256


class BatchInputError(ValueError):
    """An input that cannot be read at all (nothing matches, a split the data set lacks)."""


class StrictStop(RuntimeError):
    """--strict: the first bad record, named by file and line."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One file to read: its kind, path, and for shards the data set folder and split."""

    kind: str
    path: str
    name: str  # shown in predictions: relative to the input it came from
    dataset: str = ""
    split: str = ""
    label: str | None = None  # class sub-folder of an image


@dataclasses.dataclass
class Item:
    """One model input: pixels (uint8 or float [H, W, C]) or encoded image bytes."""

    source: str
    ordinal: int  # position within its source: the sort key after `source`
    id: str
    label: str | None
    kind: str  # 'images' or 'encoded'
    data: object


@dataclasses.dataclass
class Skip:
    """`count` records of one source skipped for `reason`; `example` names file and line."""

    source: str
    reason: str
    count: int
    example: str


@dataclasses.dataclass(frozen=True)
class ReadSettings:
    """What readers need of the model: its size, channels and raster settings; strict mode."""

    image_size: int
    channels: int
    raster: dict
    strict: bool = False


# --------------------------------------------------------------------------- discovery


def _sniff(path: pathlib.Path) -> str:
    """The kind of a file from its name, then its first bytes for names that say nothing."""
    name = path.name.lower()
    if name.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if name.endswith(".npy"):
        return "bitmap"
    if name.endswith(".npz"):
        return "sketchrnn"
    if name.endswith(tfrecords.SHARD_SUFFIX):
        return "orphan"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "unknown"
    if head.startswith(b"\x93NUMPY"):
        return "bitmap"
    if head.startswith(b"PK"):
        return "sketchrnn"
    if head.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM")):
        return "image"
    if head.lstrip().startswith(b"{") or head.startswith(b"\x1f\x8b"):
        return "ndjson"
    return "unknown"


def _dataset_sources(root: pathlib.Path, split: str) -> list[Source]:
    info = tfrecords.read_dataset_info(root)
    splits = list(info["splits"]) if split == "all" else [split]
    missing = [s for s in splits if s not in info["splits"]]
    if missing:
        raise BatchInputError(f"the data set at {str(root)!r} has no split {missing[0]!r}; it has "
                              f"{', '.join(info['splits'])} (or --split all).")
    out = []
    for s in splits:
        for shard in tfrecords.shard_paths(root, info, s):
            out.append(Source("shard", str(shard), f"{root.name}/{shard.name}", dataset=str(root), split=s))
    return out


def _folder_sources(root: pathlib.Path) -> list[Source]:
    """Every file under a folder: images flat (no label) or in class sub-folders (the label), and
    any other kind of file by what it is."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        out.append(Source(_sniff(path), str(path), f"{root.name}/{relative.as_posix()}", label=label))
    return out


def discover(spec: str, split: str = "all") -> list[Source]:
    """The Sources of `--input`: comma-separated paths or globs of files and folders."""
    sources: list[Source] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        matches = sorted(glob.glob(os.path.expanduser(part))) if glob.has_magic(part) else [part]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise BatchInputError(f"--input {part!r} matches no file or folder.")
        for match in matches:
            path = pathlib.Path(match)
            if path.is_dir() and (path / tfrecords.INFO_FILE).is_file():
                sources += _dataset_sources(path, split)
            elif path.is_dir() and any(path.glob(f"*{tfrecords.SHARD_SUFFIX}")):
                sources += [Source("orphan", str(p), f"{path.name}/{p.name}")
                            for p in sorted(path.glob(f"*{tfrecords.SHARD_SUFFIX}"))]
            elif path.is_dir():
                sources += _folder_sources(path)
            else:
                sources.append(Source(_sniff(path), str(path), path.name))
    if not sources:
        raise BatchInputError(f"--input {spec!r} holds no file to read.")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise BatchInputError(f"--input names {duplicate!r} twice; give each file once.")
    return sources


def expected_count(source: Source) -> int | None:
    """Records in a source when cheap to know (for the progress bar), else None."""
    try:
        if source.kind in ("image", "orphan", "unknown"):
            return 1
        if source.kind == "shard":
            info = tfrecords.read_dataset_info(source.dataset)
            return next(s["num_examples"] for s in info["splits"][source.split]["shards"]
                        if pathlib.Path(s["file"]).name == pathlib.Path(source.path).name)
        if source.kind == "bitmap":
            array = np.load(source.path, mmap_mode="r", allow_pickle=False)
            return int(array.shape[0]) if array.ndim == 2 else 1
        if source.kind == "ndjson" and not source.path.endswith(".gz"):
            with open(source.path, "rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except (OSError, ValueError, StopIteration, KeyError):
        return None
    return None


# --------------------------------------------------------------------------- readers


def _counter(settings: ReadSettings) -> SkipCounter:
    return SkipCounter(strict=settings.strict)


def _skips(source: Source, counter: SkipCounter) -> Iterator[Skip]:
    for reason, count in sorted(counter.counts.items()):
        yield Skip(source.name, reason, count, counter.examples[reason])


def _skip_one(source: Source, settings: ReadSettings, reason: str, detail: str) -> Iterator[Skip]:
    counter = _counter(settings)
    counter.skip(reason, source.path, detail)
    yield from _skips(source, counter)


def _stroke_pixels(drawing_strokes, settings: ReadSettings) -> np.ndarray:
    """Strokes -> uint8 [S, S, C] with the model's raster settings (serving.strokes)."""
    meta = {"raster": settings.raster, "image_size": settings.image_size, "channels": settings.channels}
    return strokes.stroke_pixels(drawing_strokes, meta)


def _as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    try:
        return strokes.as_channels(image, channels)
    except ValueError as err:
        raise BadRecord("channels", str(err)) from None


def _read_drawings(source: Source, drawings, counter: SkipCounter, settings: ReadSettings) -> Iterator[Item]:
    for ordinal, drawing in enumerate(drawings):
        label = drawing.source_word or drawing.word
        try:
            if drawing.image is not None:
                pixels = _as_channels(np.array(drawing.image), settings.channels)
            else:
                pixels = _stroke_pixels(drawing.strokes, settings)
        except (BadRecord, ValueError) as err:
            counter.skip(getattr(err, "reason", "bad_drawing"), f"{source.path}:{drawing.key_id}", str(err))
            continue
        yield Item(source.name, ordinal, drawing.key_id, label, "images", pixels)


def read_ndjson(source: Source, settings: ReadSettings) -> Iterator[Item | Skip]:
    counter = _counter(settings)
    try:
        drawings = quickdraw.read_ndjson(source.path, counter)
    except BadRecord:  # a file name that is no category: label by the records' `word` alone
        drawings = quickdraw._read_ndjson(pathlib.Path(source.path), "", counter, False, np.dtype(np.float32))
    yield from _read_drawings(source, drawings, counter, settings)
    yield from _skips(source, counter)


def read_bitmap(source: Source, settings: ReadSettings) -> Iterator[Item | Skip]:
    counter = _counter(settings)
    try:
        drawings = quickdraw.read_bitmaps(source.path, counter)
    except BadRecord:
        drawings = quickdraw._read_bitmaps(pathlib.Path(source.path), "", counter)
    yield from _read_drawings(source, drawings, counter, settings)
    yield from _skips(source, counter)


def read_sketchrnn(source: Source, settings: ReadSettings) -> Iterator[Item | Skip]:
    counter = _counter(settings)
    try:
        drawings = list(quickdraw.read_sketchrnn(source.path, counter))
    except quickdraw.UnsafePickleError as err:
        yield from _skip_one(source, settings, "unsafe_pickle", str(err))
        return
    except BadRecord:
        drawings = list(quickdraw._read_sketchrnn(pathlib.Path(source.path), "", counter))
    yield from _read_drawings(source, drawings, counter, settings)
    yield from _skips(source, counter)


def read_image(source: Source, settings: ReadSettings) -> Iterator[Item | Skip]:
    try:
        data = pathlib.Path(source.path).read_bytes()
    except OSError as err:
        yield from _skip_one(source, settings, "unreadable_file", f"{type(err).__name__}: {err.strerror or err}")
        return
    encoded, problem = image_files.encodable(data)
    if problem:
        yield from _skip_one(source, settings, *problem)
        return
    yield Item(source.name, 0, source.name, source.label, "encoded", encoded)


def read_shard(source: Source, settings: ReadSettings) -> Iterator[Item | Skip]:
    """The records of one shard: stored pixels as the model input (channels as in training)."""
    import tensorflow as tf

    from data_prep.pipeline import parse_batch
    from serving.preprocess import model_input

    info = tfrecords.read_dataset_info(source.dataset)
    specs = tfrecords.feature_specs(info)
    id_name = tfrecords.id_feature(info, specs)
    names = ["image", "label"] + ([id_name] if id_name in specs else [])
    classes = info["classes"]
    stored_channels = specs["image"].shape[-1]
    ordinal = 0
    counter = _counter(settings)

    def parse(serialized):
        features = parse_batch(serialized, specs, names)
        if stored_channels != settings.channels:  # the training pipeline's conversion, in floats
            features["image"] = model_input(features["image"], None, settings.channels)
        return features

    # Parsed in tf.data's threads one batch ahead, so reading overlaps the model's work.
    records = tf.data.TFRecordDataset(source.path).batch(SHARD_BATCH).map(parse).prefetch(1)
    try:
        for features in records:
            images = features["image"]
            ids = features[id_name].numpy() if id_name in features else None
            for i, (image, label) in enumerate(zip(images.numpy(), features["label"].numpy())):
                record_id = ids[i].decode() if ids is not None else f"{source.split}/{ordinal}"
                name = classes[label] if 0 <= label < len(classes) else None
                yield Item(source.name, ordinal, record_id, name, "images", image)
                ordinal += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        counter.skip("corrupt_shard", f"{source.path}: after record {ordinal}",
                     f"{str(err).splitlines()[0]}; check it with python -m data_prep.verify {source.dataset}")
    yield from _skips(source, counter)


def read_orphan(source: Source, settings: ReadSettings) -> Iterator[Skip]:
    yield from _skip_one(source, settings, "missing_dataset_info",
                         f"a TFRecord shard without the data set's {tfrecords.INFO_FILE} beside it")


def read_unknown(source: Source, settings: ReadSettings) -> Iterator[Skip]:
    yield from _skip_one(source, settings, "unknown_format",
                         "not an image, ndjson, .npy, .npz or data set shard")


READERS = {"shard": read_shard, "ndjson": read_ndjson, "bitmap": read_bitmap, "sketchrnn": read_sketchrnn,
           "image": read_image, "orphan": read_orphan, "unknown": read_unknown}


def read_source(source: Source, settings: ReadSettings) -> Iterator[Item | Skip]:
    """Items and Skips of one source; in strict mode StrictStop at the first bad record."""
    from data_prep.skips import StrictModeError

    try:
        yield from READERS[source.kind](source, settings)
    except StrictModeError as err:
        raise StrictStop(str(err)) from None
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        yield from _skip_one(source, settings, "unreadable_file", f"{type(err).__name__}: {err}")
