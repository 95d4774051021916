"""Stroke sequences for sequence models: records' strokes -> padded (dx, dy, pen) batches.

The representation of TensorFlow's Quick, Draw! RNN tutorial (tensorflow/models
`tutorials/rnn/quickdraw`): each drawing is scaled to [0, 1] on each axis by its bounding box, then
every point becomes its offset from the previous point, with pen = 1 on the last point of each stroke.
Two departures: the first point is kept as a (0, 0, pen) row instead of being dropped (a one-point
drawing keeps one row), and drawings longer than `max_points` are truncated to their first
`max_points` points (the bounding box and the pen lift are taken on the kept points; `count_over_cap`
counts them). Padding rows are (0, 0, PAD_PEN): a real row has pen 0 or 1, so `padding_mask` tells
them apart even where a drawing repeats a point (a zero offset).

`sequences_from_points` is the one conversion: the training pipeline (`load_sequences`) and the
exported strokes endpoints (serving.sequence_export, from serving.strokes.pack_strokes' rows) both
call it, so a drawing reaches the model the same way in training and in service.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from data_prep import tfrecords
from data_prep.pipeline import AUTOTUNE, parse_batch, record_dataset

PAD_PEN = -1.0  # the pen value of a padding row
PAD_STROKE = -1  # the stroke index of a padding point
STROKE_FEATURES = ("strokes/points", "strokes/lengths", "strokes/dims")


class NoStrokesError(ValueError):
    """A data set whose records keep no strokes, read by a model that needs them."""


def check_strokes(info: dict[str, Any], data_path: str | os.PathLike) -> None:
    """One-line NoStrokesError unless the data set's records keep their drawings' strokes."""
    missing = [name for name in STROKE_FEATURES if name not in info.get("features", {})]
    if missing or info.get("source_format") == "bitmap":
        why = (f"stores no {', '.join(missing)}" if missing else "was built from bitmaps (--format bitmap), whose "
               "records have no strokes")
        raise NoStrokesError(f"The data set at {str(data_path)!r} {why}: a stroke-sequence model needs strokes; build "
                             "one from Quick, Draw! simplified, raw or sketchrnn files (python -m data_prep.quickdraw "
                             "build --format simplified ...).")


def sequences_from_points(xy: tf.Tensor, stroke_ids: tf.Tensor, max_points: int) -> tf.Tensor:
    """Padded points float [B, P, 2] and their stroke index int [B, P] (PAD_STROKE on padding, after
    each drawing's points) -> (dx, dy, pen) float32 [B, min(P, max_points), 3], padding rows (0, 0, PAD_PEN)."""
    xy = tf.cast(xy[:, :max_points], tf.float32)
    stroke_ids = tf.cast(stroke_ids[:, :max_points], tf.int32)
    valid = stroke_ids >= 0
    valid_xy = tf.repeat(valid[..., None], 2, axis=-1)
    lower = tf.reduce_min(tf.where(valid_xy, xy, float("inf")), axis=1, keepdims=True)
    upper = tf.reduce_max(tf.where(valid_xy, xy, float("-inf")), axis=1, keepdims=True)
    scale = upper - lower
    scale = tf.where(tf.logical_and(tf.math.is_finite(scale), scale > 0), scale, tf.ones_like(scale))
    lower = tf.where(tf.math.is_finite(lower), lower, tf.zeros_like(lower))
    normal = tf.where(valid_xy, (xy - lower) / scale, tf.zeros_like(xy))
    previous = tf.concat([normal[:, :1], normal[:, :-1]], axis=1)
    deltas = tf.where(valid_xy, normal - previous, tf.zeros_like(xy))
    next_ids = tf.concat([stroke_ids[:, 1:], tf.fill([tf.shape(stroke_ids)[0], 1], PAD_STROKE)], axis=1)
    pen = tf.where(valid, tf.cast(tf.not_equal(next_ids, stroke_ids), tf.float32), PAD_PEN)
    return tf.concat([deltas, pen[..., None]], axis=-1)


def padding_mask(sequences: tf.Tensor) -> tf.Tensor:
    """bool [B, T]: True on a drawing's rows, False on padding rows (pen PAD_PEN)."""
    return sequences[..., 2] >= 0


def record_points(points: tf.Tensor, lengths: tf.Tensor, dims: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One record's flat `strokes/points`, `strokes/lengths`, `strokes/dims` -> x, y float32 [P, 2] and
    the stroke index int32 [P] of each point (t, when stored, is not used)."""
    rows = tf.reshape(points, [-1, tf.cast(dims, tf.int32)])[:, :2]
    stroke_ids = tf.repeat(tf.range(tf.size(lengths, out_type=tf.int32)), tf.cast(lengths, tf.int32))
    return rows, stroke_ids


def load_sequences(data_dir: str | os.PathLike, split: str, batch_size: int, max_points: int, *,
                   shuffle: bool = False, repeat: bool = False, seed: int | None = None,
                   with_key_ids: bool = False, cycle_length: int = 4, shuffle_buffer: int = 10000,
                   record_filter=None) -> tf.data.Dataset:
    """Batches of ((dx, dy, pen) float32 [B, T, 3], label int32 [B][, id]) from one split, T the longest
    drawing of the batch up to `max_points`; as data_prep.pipeline.load_split, for sequence models."""
    if batch_size < 1 or max_points < 1:
        raise ValueError(f"batch_size and max_points must be >= 1; received {batch_size} and {max_points}.")
    info = tfrecords.read_dataset_info(data_dir)
    check_strokes(info, data_dir)
    specs = tfrecords.feature_specs(info)
    id_feature = tfrecords.id_feature(info, specs)
    names = ["label", *STROKE_FEATURES] + ([id_feature] if with_key_ids else [])
    files = tfrecords.shard_paths(data_dir, info, split)

    def parse(serialized):
        features = parse_batch(serialized, specs, names)
        points, lengths = features["strokes/points"], features["strokes/lengths"]
        extra = (features[id_feature],) if with_key_ids else ()
        return (points, lengths, features["strokes/dims"], tf.cast(features["label"], tf.int32), *extra)

    def one(points, lengths, dims, label, *extra):
        xy, ids = record_points(points, lengths, dims)
        return (xy[:max_points], ids[:max_points], label, *extra)

    def convert(xy, ids, label, *extra):
        return (sequences_from_points(xy, ids, max_points), label, *extra)

    ds = record_dataset(files, shuffle=shuffle, seed=seed, cycle_length=cycle_length,
                        shuffle_buffer=shuffle_buffer, repeat=repeat)
    if record_filter is not None:
        ds = ds.filter(record_filter)
    ds = ds.batch(256).map(parse, num_parallel_calls=AUTOTUNE, deterministic=not shuffle).unbatch()
    ds = ds.map(one, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    padding = (tf.constant(0.0), tf.constant(PAD_STROKE), tf.constant(0)) + (
        (tf.constant(b""),) if with_key_ids else ())
    ds = ds.padded_batch(batch_size, padding_values=padding)
    ds = ds.map(convert, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    options = tf.data.Options()
    options.deterministic = not shuffle
    return ds.with_options(options).prefetch(AUTOTUNE)


def count_over_cap(data_dir: str | os.PathLike, split: str, max_points: int) -> dict[str, int]:
    """{'drawings': N, 'truncated': drawings of `split` with more than `max_points` points (truncated)}."""
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    files = tfrecords.shard_paths(data_dir, info, split)
    total = truncated = 0
    ds = record_dataset(files, shuffle=False, seed=None, cycle_length=4, shuffle_buffer=1, repeat=False).batch(1024)
    for batch in ds.map(lambda s: parse_batch(s, specs, ["strokes/lengths"])["strokes/lengths"]):
        counts = tf.reduce_sum(batch, axis=1).numpy()
        total += len(counts)
        truncated += int((counts > max_points).sum())
    return {"drawings": total, "truncated": truncated, "max_points": max_points}
