"""Strokes -> the model's input pixels, with the raster settings the model was trained with.

The one rendering of drawings given as strokes for the batch job, the retrieval tools and the
web app (data_prep.raster's skia recipe), so each answers a drawing as the others do. The
exported model's strokes endpoints of the strokes issue will take the same inputs in the graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from configuration_sketch import RasterConfig
from data_prep.raster import RASTER_OPTIONS, rasterize


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
