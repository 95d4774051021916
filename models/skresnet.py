"""skResNet: the residual sketch classifier (skNet's layout with identity-shortcut blocks).

Architecture (original): a stem of two 64-filter 3x3 convolutions and a pool; three stages of 64,
128 and 256 filters, each of two residual blocks (two 3x3 conv+BN+ReLU units, the block's input
added to the second unit's output); between stages a transition (3x3 convolution to the next
width, then a pool); after the last stage a 256-filter convolution and a pool; then the 1024-unit
ReLU `features` layer (the embedding) and a linear classifier (`logits`). Every convolution has
stride 1 and same padding and is followed by batch norm and ReLU; every pool is 3x3 stride 2.

The shortcut is added after the second unit's ReLU, as in the original; He et al.'s ResNet adds it
before that ReLU. Four pools divide the side by 16: 128 -> 8x8x256, 28 -> 2x2x256.

Departures from the original, and why (the same as skNet's, see models/sknet.py):
- padding='same' pools, so inputs from 16 px up work (28 px Quick, Draw! bitmaps included);
- batch-norm momentum 0.9 by default instead of Keras' 0.99 (moving statistics lag in short runs);
- no convolution bias (the following batch norm's beta replaces it);
- float32 `logits` for mixed precision; optional dropout (default none) before `logits`.
"""

from __future__ import annotations

import keras

from models.registry import check_dimensions, check_fraction, register
from models.sknet import apply_classifier_head, apply_conv_bn_relu

MIN_INPUT_SIZE = 16
STAGE_FILTERS = (64, 128, 256)
BLOCKS_PER_STAGE = 2
FEATURES_WIDTH = 1024


def apply_max_pool(x, *, name: str):
    """3x3 stride-2 'same' max-pool (halves the side, rounding up)."""
    return keras.layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)


def apply_residual_block(x, filters: int, *, bn_momentum: float, name: str):
    """Two conv+BN+ReLU units; the block input (already `filters` wide) is added to their output."""
    shortcut = x
    x = apply_conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"{name}_1")
    x = apply_conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"{name}_2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, x])


def apply_transition(x, filters: int, *, bn_momentum: float, name: str):
    """Conv+BN+ReLU to `filters` channels, then a pool: changes width and halves the side."""
    x = apply_conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=name)
    return apply_max_pool(x, name=f"{name}_pool")


def apply_skresnet_trunk(x, *, bn_momentum: float):
    """The convolutional trunk: stem, three residual stages with transitions, final convolution and pool.

    The classifier (build_skresnet) and the embedding backbone (models.embedding) both use it.
    """
    x = apply_conv_bn_relu(x, STAGE_FILTERS[0], bn_momentum=bn_momentum, name="stem_1")
    x = apply_transition(x, STAGE_FILTERS[0], bn_momentum=bn_momentum, name="stem_2")
    for s, filters in enumerate(STAGE_FILTERS, start=1):
        if s > 1:
            x = apply_transition(x, filters, bn_momentum=bn_momentum, name=f"transition{s}")
        for b in range(1, BLOCKS_PER_STAGE + 1):
            x = apply_residual_block(x, filters, bn_momentum=bn_momentum, name=f"stage{s}_block{b}")
    x = apply_transition(x, STAGE_FILTERS[-1], bn_momentum=bn_momentum, name="final")
    return x


@register("skresnet")
def build_skresnet(
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "skresnet",
) -> keras.Model:
    """skResNet for `input_size`-pixel square images (>= 16; 128 in the original); returns logits."""
    check_dimensions("skresnet", input_size, channels, num_classes, MIN_INPUT_SIZE)
    check_fraction("skresnet", "bn_momentum", bn_momentum)
    check_fraction("skresnet", "dropout", dropout)
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = apply_skresnet_trunk(inputs, bn_momentum=bn_momentum)
    logits = apply_classifier_head(x, num_classes, dropout=dropout)
    return keras.Model(inputs, logits, name=name)
