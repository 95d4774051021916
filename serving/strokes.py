"""Strokes -> the model's input pixels, with the raster settings the model was trained with.

The one rendering of drawings given as strokes for the batch job, the retrieval tools and the
web app (data_prep.raster's skia recipe), so each answers a drawing as the others do. The
exported model's `*_strokes` endpoints draw the same geometry in the graph (data_prep.raster_tf)
from the packed form of `pack_strokes`: float32 [N, P, 4] rows (x, y, t, stroke index), padding
rows (stroke index -1) at the end of each drawing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from configuration_sketch import RasterConfig
from data_prep.raster import RASTER_OPTIONS, rasterize


PAD_STROKE = -1.0  # the stroke index of a padding row


def pack_strokes(drawings: Sequence[Sequence], max_points: int | None = None) -> np.ndarray:
    """Drawings (each a list of (points, 2 or 3) stroke arrays) as the strokes endpoints' input:
    float32 [N, P, 4] rows (x, y, t, stroke index), P the most points of any drawing (at least 1), t 0
    where strokes carry none, padding rows (0, 0, 0, PAD_STROKE) after a drawing's points. ValueError
    naming the drawing when one has more than `max_points` points."""
    counts = [sum(len(stroke) for stroke in strokes) for strokes in drawings]
    if max_points is not None and any(c > max_points for c in counts):
        first = next(i for i, c in enumerate(counts) if c > max_points)
        raise ValueError(f"drawing {first} has {counts[first]} points; at most {max_points} are taken.")
    packed = np.zeros((len(drawings), max(counts + [1]), 4), np.float32)
    packed[..., 3] = PAD_STROKE
    for i, strokes in enumerate(drawings):
        row = 0
        for index, stroke in enumerate(strokes):
            stroke = np.asarray(stroke, np.float64)
            packed[i, row:row + len(stroke), :stroke.shape[1]] = stroke
            packed[i, row:row + len(stroke), 3] = index
            row += len(stroke)
    return packed


def raster_options(meta: dict) -> dict:
    """The rasterize keyword arguments of an exported model (model_meta.json): its stored raster
    settings at its image size; RasterConfig's defaults when it stored none."""
    options = dict(meta.get("raster") or dataclasses.asdict(RasterConfig()))
    options["image_size"] = int(meta["image_size"])
    return {k: v for k, v in options.items() if k in RASTER_OPTIONS}


def as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (H, W, channels): grey repeated into colour; ValueError otherwise."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == channels:
        return image
    if image.shape[2] == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f"a {image.shape[2]}-channel image for a {channels}-channel model")


def stroke_pixels(strokes: Sequence, meta: dict) -> np.ndarray:
    """One drawing ((points, 2 or 3) arrays) as the model's uint8 [S, S, C] input; ValueError
    (naming the problem) for an empty drawing, a misshapen stroke or non-finite coordinates."""
    return as_channels(rasterize(strokes, **raster_options(meta)), int(meta["channels"]))


def strokes_to_pixels(strokes, options: dict, channels: int):
    """In the graph: packed strokes float32 [N, P, 4] -> the model's uint8 [N, S, S, channels] pixels,
    white on black (data_prep.raster_tf with the model's raster `options`, raster_options)."""
    import tensorflow as tf

    from data_prep import raster_tf

    valid = strokes[..., 3] >= 0  # padding rows, and a NaN index, are not points
    num_points = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    stroke_ids = tf.cast(tf.where(valid, strokes[..., 3], PAD_STROKE), tf.int32)
    images = raster_tf.rasterize_batch(strokes[..., :3], stroke_ids, num_points, **options)
    if images.shape[-1] == 1 and channels == 3:
        images = tf.repeat(images, 3, axis=-1)
    return images

