"""Warm start (-init_from): give a new model the weights of another model's layers of the same name.

A sketch classifier trained on Quick, Draw! and an embedding network on Sketchy share their trunk
(models/sknet.py, models/skresnet.py name its layers alike), so the embedding network can start from
what the classifier learned. Every weighted trunk layer of the new model must be found in the source
with weights of the same shapes (another backbone, image size or channel count is refused, naming
both sides); the head (`logits`, `embedding`, `proxies`, and `features` / `fc`) is copied where it
fits and otherwise keeps its fresh weights.
"""

from __future__ import annotations

import keras

HEAD_LAYERS = frozenset({"logits", "embedding", "proxies", "features", "fc"})
# A classifier's 1024-unit `features` layer is the layer an embedding network calls `fc`.
SOURCE_NAMES = {"fc": ("fc", "features")}


class WarmStartError(ValueError):
    """The source model cannot initialise the new one; the message names both sides."""


def _weighted(model: keras.Model) -> dict[str, keras.layers.Layer]:
    return {layer.name: layer for layer in model.layers if layer.weights}


def _shapes(layer: keras.layers.Layer) -> list[tuple[int, ...]]:
    return [tuple(w.shape) for w in layer.weights]


def copy_matching_layers(source: keras.Model, target: keras.Model, source_name: str = "the source model") -> dict:
    """Copy into `target` the weights of each layer `source` has under the same name (for `fc`: or
    `features`) with equal shapes. Returns {"copied": [...], "kept_fresh": [...]} (layer names).
    WarmStartError when an input shape differs or a trunk layer is missing or shaped otherwise."""
    if tuple(source.input_shape[1:]) != tuple(target.input_shape[1:]):
        raise WarmStartError(f"-init_from: {source_name} takes images of {tuple(source.input_shape[1:])}, the new model "
                             f"{tuple(target.input_shape[1:])} (height, width, channels): train with the same "
                             "-image_size and -channels, or start from another model.")
    available = _weighted(source)
    copied, fresh = [], []
    for name, layer in _weighted(target).items():
        found = next((available[n] for n in SOURCE_NAMES.get(name, (name,))
                      if n in available and _shapes(available[n]) == _shapes(layer)), None)
        if found is None:
            if name in HEAD_LAYERS:
                fresh.append(name)
                continue
            mine = available.get(name)
            why = "has no layer of that name" if mine is None else f"has weights of shapes {_shapes(mine)} there"
            raise WarmStartError(f"-init_from: the new model's layer {name!r} (weights {_shapes(layer)}) cannot come from "
                                 f"{source_name}, which {why}: its trunk differs (another -model or -backbone).")
        layer.set_weights(found.get_weights())
        copied.append(name)
    if not copied:
        raise WarmStartError(f"-init_from: {source_name} shares no layer with the new model.")
    return {"copied": copied, "kept_fresh": fresh}
