"""Warm start (-init_from): give a new model the weights of another model's layers of the same name.

A sketch classifier trained on Quick, Draw! and an embedding network on Sketchy share their trunk
(models/sknet.py, models/skresnet.py name its layers alike), so the embedding network can start from
what the classifier learned. Every weighted trunk layer of the new model must be found in the source
with weights of the same shapes (another backbone, image size or channel count is refused, naming
both sides); the head (`logits`, `embedding`, `proxies`, vse's `projection`, and `features` / `fc`) is copied where it
fits and otherwise keeps its fresh weights. Grey and colour models warm-start each other: the first
convolution's kernel is summed over colour (3 -> 1) or shared equally among them (1 -> 3), which gives
the same response to a grey image, e.g. a Quick, Draw! classifier for Sketchy's 3-channel images.
"""

from __future__ import annotations

import keras
import numpy as np

HEAD_LAYERS = frozenset({"logits", "embedding", "proxies", "features", "fc", "projection"})
# A classifier's 1024-unit `features` layer is the layer an embedding network calls `fc`.
SOURCE_NAMES = {"fc": ("fc", "features")}


class WarmStartError(ValueError):
    """The source model cannot initialise the new one; the message names both sides."""


def _weighted(model: keras.Model) -> dict[str, keras.layers.Layer]:
    return {layer.name: layer for layer in model.layers if layer.weights}


def _shapes(layer: keras.layers.Layer) -> list[tuple[int, ...]]:
    return [tuple(w.shape) for w in layer.weights]


def adapt_channels(weights: list[np.ndarray], channels: int) -> list[np.ndarray]:
    """A convolution's weights for `channels` input channels from a grey (1) or colour (3) kernel
    [kh, kw, c, out]: 3 -> 1 sums over colour, 1 -> 3 shares the kernel equally (grey images respond alike)."""
    kernel, rest = weights[0], weights[1:]
    if kernel.shape[2] == channels:
        return weights
    if channels == 1:
        return [kernel.sum(axis=2, keepdims=True), *rest]
    return [np.repeat(kernel / channels, channels, axis=2), *rest]


def _fits(source: keras.layers.Layer, target: keras.layers.Layer, recolour: bool) -> bool:
    mine, theirs = _shapes(source), _shapes(target)
    if mine == theirs:
        return True
    return (recolour and len(mine) == len(theirs) and len(mine[0]) == 4 and mine[0][2] in (1, 3)
            and mine[0][:2] + mine[0][3:] == theirs[0][:2] + theirs[0][3:] and mine[1:] == theirs[1:])


def copy_matching_layers(source: keras.Model, target: keras.Model, source_name: str = "the source model") -> dict:
    """Copy into `target` the weights of each layer `source` has under the same name (for `fc`: or
    `features`) with equal shapes (a convolution's input channels adapted between grey and colour).
    Returns {"copied": [...], "kept_fresh": [...]} (layer names). WarmStartError when the image size
    differs or a trunk layer is missing or shaped otherwise."""
    (sh, sw, sc), (th, tw, tc) = tuple(source.input_shape[1:]), tuple(target.input_shape[1:])
    if (sh, sw) != (th, tw) or {sc, tc} - {1, 3}:
        raise WarmStartError(f"-init_from: {source_name} takes images of {tuple(source.input_shape[1:])}, the new model "
                             f"{tuple(target.input_shape[1:])} (height, width, channels): train with the same "
                             "-image_size (grey and colour convert), or start from another model.")
    recolour = sc != tc
    available = _weighted(source)
    copied, fresh = [], []
    for name, layer in _weighted(target).items():
        found = next((available[n] for n in SOURCE_NAMES.get(name, (name,))
                      if n in available and _fits(available[n], layer, recolour)), None)
        if found is None:
            if name in HEAD_LAYERS:
                fresh.append(name)
                continue
            mine = available.get(name)
            why = "has no layer of that name" if mine is None else f"has weights of shapes {_shapes(mine)} there"
            raise WarmStartError(f"-init_from: the new model's layer {name!r} (weights {_shapes(layer)}) cannot come from "
                                 f"{source_name}, which {why}: its trunk differs (another -model or -backbone).")
        layer.set_weights(adapt_channels(found.get_weights(), tc) if _shapes(found) != _shapes(layer)
                          else found.get_weights())
        copied.append(name)
    if not copied:
        raise WarmStartError(f"-init_from: {source_name} shares no layer with the new model.")
    return {"copied": copied, "kept_fresh": fresh}
