"""tf.data input pipelines that read the sharded TFRecords back.

Fast because it interleaves over shards, batches serialized records *before* parsing
(`tf.io.parse_example` on a batch is several times faster than per-record parsing), decodes
raw image bytes with one `decode_raw` per batch, and prefetches.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Iterable

import tensorflow as tf

from data_prep import tfrecords
from serving.preprocess import JPEG_MAGIC, model_input

AUTOTUNE = tf.data.AUTOTUNE


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
    """Parse a batch of serialized Examples into the named features; images become uint8 tensors."""
    names = list(names)
    parsed = tf.io.parse_example(serialized, tfrecords.parse_spec(specs, names))
    out = {}
    for name in names:
        spec = specs[name]
        value = parsed[name]
        if isinstance(value, tf.SparseTensor):
            value = tf.RaggedTensor.from_sparse(value)
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
               record_filter: Callable[[tf.Tensor], tf.Tensor] | None = None) -> tf.data.Dataset:
    """Batches of (image float32 [B, H, W, C] in [0, 1], label int32 [B]) from one split.

    With `shuffle=False` the order is fixed (evaluation); with `with_key_ids=True` each
    element is (image, label, id), the id being the feature dataset_info.json names as its
    `id_feature` (Quick, Draw!: key_id; Sketchy: item_id). `record_filter` (a predicate on one
    serialized record) keeps a subset of the split, e.g. a cross-validation fold (training/folds.py).
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
    names = ["image", "label"] + ([id_feature] if with_key_ids else [])

    def parse(serialized):
        features = parse_batch(serialized, specs, names)
        image = model_input(features["image"], image_size, channels)
        label = tf.cast(features["label"], tf.int32)
        return (image, label, features[id_feature]) if with_key_ids else (image, label)

    ds = record_dataset(files, shuffle=shuffle, seed=seed, cycle_length=cycle_length,
                        shuffle_buffer=shuffle_buffer, repeat=repeat)
    if record_filter is not None:
        ds = ds.filter(record_filter)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    options = tf.data.Options()
    options.deterministic = not shuffle
    return ds.with_options(options).prefetch(AUTOTUNE)


def dataset_summary(info: dict[str, Any]) -> str:
    """One line per split: 'train: 7200 examples in 8 shards'."""
    return "\n".join(f"{split}: {s['num_examples']} examples in {len(s['shards'])} shards"
                     for split, s in info["splits"].items())
