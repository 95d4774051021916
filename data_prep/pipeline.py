"""tf.data input pipelines that read the sharded TFRecords back.

Fast because it interleaves over shards, batches serialized records *before* parsing
(`tf.io.parse_example` on a batch is several times faster than per-record parsing), decodes
raw image bytes with one `decode_raw` per batch, and prefetches.

On-the-fly rendering (`render="on_the_fly"`): a data set whose records keep their strokes (every
Quick, Draw! build; `--store strokes` keeps nothing else) is read as batches of parsed strokes and
drawn with the data set's raster settings (line width, padding, frame, normalize) at any image size,
with or without time channels, by one of two renderers of the same images (`renderer`, RENDERERS):
  "cpu" (default): `raster_cpu`'s compiled loop through `tf.numpy_function`, on the parsed ragged rows
  as they are (`rasterize_records`); it visits only the pixels within reach of each segment and
  releases the GIL, so tf.data's parallel calls draw on every core. The input pipeline runs on the
  host CPU whatever device trains, so this is the renderer for training (BENCHMARKS.md: 3-4x the
  other's rate, 0.54x the rate of stored images at 28 px).
  "graph": `raster_tf.rasterize_batch` in the tf.data graph under XLA (the SavedModel's renderer), on the
  batch padded (`raster_tf.pad_records`) and cut to its longest drawing (POINT_BUCKET times a power of
  two: few shapes to compile), in groups of GROUP drawings sorted by length.
A training stream may pass `stroke_augment` (training.augment.stroke_augmenter), applied to the padded
points before drawing (the cpu renderer then draws the padded batch, `raster_cpu.rasterize_batch`);
evaluation never does.
`render_plan` says which of the two a data set and a request need, or why neither serves.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Callable, Iterable

import tensorflow as tf

from data_prep import raster_cpu, raster_tf, tfrecords
from serving.preprocess import JPEG_MAGIC, model_input

AUTOTUNE = tf.data.AUTOTUNE
STROKE_FEATURES = ("strokes/points", "strokes/lengths", "strokes/dims")
POINT_BUCKET = 128  # drawn batches are cut to this many points, or a power of two times it
RENDERERS = ("cpu", "graph")  # on-the-fly drawing: raster_cpu's compiled loop, or raster_tf under XLA
GROUP = 32  # drawings drawn together, sorted by length: the loop runs to each group's longest drawing
StrokeAugment = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def has_strokes(info: dict[str, Any]) -> bool:
    """Whether the data set's records keep their strokes (and the raster settings to draw them)."""
    return set(STROKE_FEATURES) <= set(info.get("features", {})) and bool(info.get("raster"))


def has_images(info: dict[str, Any]) -> bool:
    """Whether the data set's records keep an image."""
    return "image" in info.get("features", {})


def render_plan(info: dict[str, Any], render: str = "auto", time_channels: bool = False,
                stroke_augment: bool = False, where: str = "the data set") -> str:
    """'stored' or 'on_the_fly' for `render` (auto / stored / on_the_fly) on this data set, or
    tfrecords.DatasetInfoError in one line when it cannot serve (no strokes, no images)."""
    needs = ("-time_channels" if time_channels else "-stroke_augment" if stroke_augment
             else "-render on_the_fly" if render == "on_the_fly" else "")
    stored_channels = (info.get("image") or {}).get("channels")
    images_serve = has_images(info) and not stroke_augment and (not time_channels or stored_channels == 3)
    if render == "stored" or (render == "auto" and images_serve):
        if not has_images(info):
            raise tfrecords.DatasetInfoError(f"-render stored: {where} stores strokes only (built with --store "
                                             "strokes); use -render on_the_fly or auto.")
        if not images_serve:
            raise tfrecords.DatasetInfoError(f"-render stored cannot serve {needs}: it draws the strokes; use "
                                             "-render on_the_fly or auto.")
        return "stored"
    if not has_strokes(info):
        raise tfrecords.DatasetInfoError(
            f"{needs or 'reading'} needs strokes, and {where} ({info.get('source_format', info.get('name', '?'))} "
            "format) stores none: build one from strokes (simplified, raw or sketchrnn files), or drop the flag.")
    return "on_the_fly"


def stroke_dims(info: dict[str, Any]) -> int:
    """Columns of the data set's `strokes/points`: 3 (x, y, t) for raw source files, else 2."""
    return 3 if info.get("source_format") == "raw" else 2


@functools.lru_cache(maxsize=None)
def compiled_rasterizer(image_size: int, line_width: float, padding: float, frame: int, time_channels: bool,
                        normalize: str) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """raster_tf.rasterize_batch for one raster setting under XLA (one compilation per batch shape), drawn
    in groups of GROUP drawings of similar length, so that a long drawing holds up its group only."""

    @tf.autograph.experimental.do_not_convert  # plain TensorFlow: autograph would only re-read the source
    def draw(group):
        return raster_tf.rasterize_batch(*group, image_size=image_size, line_width=line_width, padding=padding,
                                         frame=frame, time_channels=time_channels, normalize=normalize)

    @tf.autograph.experimental.do_not_convert
    def grouped(points, stroke_ids, num_points):
        batch = tf.shape(points)[0]
        order = tf.argsort(num_points)
        extra = (GROUP - batch % GROUP) % GROUP
        parts = [tf.gather(x, order) for x in (points, stroke_ids, num_points)]
        parts = [tf.pad(x, [[0, extra]] + [[0, 0]] * (x.shape.rank - 1)) for x in parts]
        parts = [tf.reshape(x, tf.concat([[-1, GROUP], tf.shape(x)[1:]], 0)) for x in parts]
        images = tf.map_fn(draw, tuple(parts), fn_output_signature=tf.uint8)
        images = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))[:batch]
        return tf.gather(images, tf.math.invert_permutation(order))

    return tf.function(grouped, jit_compile=True)


@functools.lru_cache(maxsize=None)
def rasterizer(renderer: str, image_size: int, line_width: float, padding: float, frame: int, time_channels: bool,
               normalize: str) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """(points, stroke_ids, num_points) of a padded batch -> uint8 images [B, S, S, 1 | 3] for one raster
    setting: "cpu" is raster_cpu.rasterize_batch through tf.numpy_function, "graph" raster_tf under XLA."""
    if renderer == "graph":
        return compiled_rasterizer(image_size, line_width, padding, frame, time_channels, normalize)
    return _numpy_renderer(raster_cpu.rasterize_batch, image_size, time_channels, line_width=line_width,
                           padding=padding, frame=frame, normalize=normalize)


@functools.lru_cache(maxsize=None)
def record_rasterizer(image_size: int, line_width: float, padding: float, frame: int, time_channels: bool,
                      normalize: str, dims: int) -> Callable[[tf.RaggedTensor, tf.RaggedTensor], tf.Tensor]:
    """(strokes/points, strokes/lengths) ragged as parsed -> uint8 images, by raster_cpu.rasterize_records:
    the "cpu" renderer without building a padded batch."""
    draw = _numpy_renderer(raster_cpu.rasterize_records, image_size, time_channels, dims=dims, line_width=line_width,
                           padding=padding, frame=frame, normalize=normalize)
    return lambda points, lengths: draw(points.flat_values, points.row_splits, lengths.flat_values, lengths.row_splits)


def _numpy_renderer(function: Callable, image_size: int, time_channels: bool, **options) -> Callable[..., tf.Tensor]:
    """`function(*arrays, image_size=, time_channels=, **options)` as a graph op (tf.numpy_function)."""
    draw = functools.partial(function, image_size=image_size, time_channels=time_channels, **options)
    shape = [None, image_size, image_size, 3 if time_channels else 1]

    @tf.autograph.experimental.do_not_convert
    def op(*tensors):
        return tf.ensure_shape(tf.numpy_function(draw, list(tensors), tf.uint8, stateful=False), shape)

    return op


def trim(batch: raster_tf.StrokeBatch) -> raster_tf.StrokeBatch:
    """The padded batch cut to its longest drawing, rounded up to POINT_BUCKET times a power of two: less
    per-point work, and few shapes for XLA to compile."""
    longest = tf.cast(tf.reduce_max(tf.concat([batch.num_points, [1]], 0)), tf.float32)
    doublings = tf.maximum(tf.math.ceil(tf.math.log(longest / POINT_BUCKET) / tf.math.log(2.0)), 0.0)
    width = POINT_BUCKET * tf.cast(2.0 ** doublings, tf.int32)
    return batch._replace(points=batch.points[:, :width], stroke_ids=batch.stroke_ids[:, :width])


def render_strokes(features: dict[str, tf.Tensor], info: dict[str, Any], image_size: int, time_channels: bool,
                   augment: StrokeAugment | None = None, seed: tf.Tensor | None = None,
                   renderer: str = "cpu") -> tf.Tensor:
    """A parsed batch's strokes as uint8 images [B, S, S, 1 | 3], drawn with the data set's raster settings
    by `renderer` (RENDERERS)."""
    if renderer not in RENDERERS:
        raise ValueError(f"Invalid value for argument `renderer`: {renderer!r}. Expected one of {RENDERERS}.")
    settings = info["raster"]
    options = (int(image_size), float(settings["line_width"]), float(settings["padding"]), int(settings["frame"]),
               bool(time_channels))
    points, lengths = features["strokes/points"], features["strokes/lengths"]
    if renderer == "cpu" and augment is None:
        return record_rasterizer(*options, settings["normalize"], stroke_dims(info))(points, lengths)
    batch = raster_tf.pad_records(points, lengths, stroke_dims(info), fixed=renderer == "graph")
    if renderer == "graph":
        batch = trim(batch)
    points, normalize = batch.points, settings["normalize"]
    if augment is not None:
        points, normalize = augment(points, batch.stroke_ids, batch.num_points, seed), "never"
    return rasterizer(renderer, *options, normalize)(points, batch.stroke_ids, batch.num_points)


def decode_images(raw: tf.Tensor, spec: tfrecords.FeatureSpec) -> tf.Tensor:
    """A batch of stored images -> uint8 [B, H, W, C] (raw bytes, PNG or JPEG)."""
    height, width, channels = spec.shape
    if spec.encoding == "raw":
        images = tf.io.decode_raw(raw, tf.uint8)
        return tf.reshape(images, [-1, height, width, channels])

    def decode(data):
        # JPEG with the accurate integer DCT, as PIL, OpenCV and the serving endpoints decode it (TF's
        # default fast DCT differs by up to 5 grey levels: train/serve skew on stored photos).
        is_jpeg = tf.equal(tf.strings.substr(data, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
        image = tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(data, channels=channels, dct_method="INTEGER_ACCURATE"),
                        lambda: tf.io.decode_image(data, channels=channels, expand_animations=False))
        return tf.ensure_shape(image, [height, width, channels])

    return tf.map_fn(decode, raw, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))


def parse_batch(serialized: tf.Tensor, specs: dict[str, tfrecords.FeatureSpec],
                names: Iterable[str]) -> dict[str, tf.Tensor]:
    """Parse a batch of serialized Examples into the named features; variable-length ones come as ragged
    rows (parsed straight into them: converting sparse results cost the strokes-only stream a fifth of its
    rate), images become uint8 tensors."""
    names = list(names)
    parse = {name: tf.io.RaggedFeature(feature.dtype, row_splits_dtype=tf.int64)
             if isinstance(feature, tf.io.VarLenFeature) else feature
             for name, feature in tfrecords.parse_spec(specs, names).items()}
    parsed = tf.io.parse_example(serialized, parse)
    out = {}
    for name in names:
        spec = specs[name]
        value = parsed[name]
        if spec.storage == "bytes" and spec.encoding in tfrecords.IMAGE_ENCODINGS:
            value = decode_images(value, spec)
        out[name] = value
    return out


def record_dataset(files: list[pathlib.Path], *, shuffle: bool, seed: int | None,
                   cycle_length: int, shuffle_buffer: int, repeat: bool) -> tf.data.Dataset:
    """Serialized records of `files`: interleaved, optionally shuffled and repeated."""
    ds = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(cycle_length, len(files))),
                       num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds


def load_split(data_dir: str | os.PathLike, split: str, batch_size: int, image_size: int | None = None,
               shuffle: bool = False, *, channels: int | None = None, repeat: bool = False,
               seed: int | None = None, drop_remainder: bool = False, with_key_ids: bool = False,
               cycle_length: int = 4, shuffle_buffer: int = 10000,
               record_filter: Callable[[tf.Tensor], tf.Tensor] | None = None, render: str = "auto",
               time_channels: bool = False, stroke_augment: StrokeAugment | None = None,
               renderer: str = "cpu") -> tf.data.Dataset:
    """Batches of (image float32 [B, H, W, C] in [0, 1], label int32 [B]) from one split.

    With `shuffle=False` the order is fixed (evaluation); with `with_key_ids=True` each
    element is (image, label, id), the id being the feature dataset_info.json names as its
    `id_feature` (Quick, Draw!: key_id; Sketchy: item_id). `record_filter` (a predicate on one
    serialized record) keeps a subset of the split, e.g. a cross-validation fold (training/folds.py).
    `render`, `time_channels` and `stroke_augment` choose stored images or on-the-fly rendering
    (`render_plan`); drawn images are `image_size` (default: the build's) with 3 channels given time.
    The augmentation's seed per batch comes from `seed` and the batch's index.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid value for argument `batch_size`: {batch_size}. Expected >= 1.")
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    files = tfrecords.shard_paths(data_dir, info, split)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise tfrecords.DatasetInfoError(f"Shards listed in dataset_info.json are missing: {missing[:3]}")
    id_feature = tfrecords.id_feature(info, specs)
    if with_key_ids and id_feature not in specs:
        raise tfrecords.DatasetInfoError(f"The data set at {str(data_dir)!r} stores no {id_feature or 'key_id'!r} "
                                         f"feature to identify its records; rebuild it with this version of data_prep.")
    plan = render_plan(info, render, time_channels, stroke_augment is not None, f"the data set at {str(data_dir)!r}")
    sources = ["image"] if plan == "stored" else list(STROKE_FEATURES[:2])
    names = sources + ["label"] + ([id_feature] if with_key_ids else [])

    @tf.autograph.experimental.do_not_convert
    def parse(index, serialized):
        features = parse_batch(serialized, specs, names)
        if plan == "stored":
            pixels = features["image"]
        else:
            pixels = render_strokes(features, info, image_size or info["raster"]["image_size"], time_channels,
                                    stroke_augment, tf.stack([tf.constant(seed or 0, tf.int64), index]), renderer)
        image = model_input(pixels, image_size, channels)
        label = tf.cast(features["label"], tf.int32)
        return (image, label, features[id_feature]) if with_key_ids else (image, label)

    ds = record_dataset(files, shuffle=shuffle, seed=seed, cycle_length=cycle_length,
                        shuffle_buffer=shuffle_buffer, repeat=repeat)
    if record_filter is not None:
        ds = ds.filter(record_filter)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    options = tf.data.Options()
    options.deterministic = not shuffle
    return ds.with_options(options).prefetch(AUTOTUNE)


def dataset_summary(info: dict[str, Any]) -> str:
    """One line per split: 'train: 7200 examples in 8 shards'."""
    return "\n".join(f"{split}: {s['num_examples']} examples in {len(s['shards'])} shards"
                     for split, s in info["splits"].items())
