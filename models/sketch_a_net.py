"""Sketch-a-Net (Yu et al., "Sketch-a-Net that Beats Humans", BMVC 2015; IJCV 2017).

Architecture (original, input 225x225):
  L1  conv 15x15, 64, stride 3, no padding, ReLU, max-pool 3x3 stride 2     225 -> 71 -> 35
  L2  conv 5x5, 128, stride 1, no padding, ReLU, max-pool 3x3 stride 2      35 -> 31 -> 15
  L3  conv 3x3, 256, padding 1, ReLU                                        15
  L4  conv 3x3, 256, padding 1, ReLU                                        15
  L5  conv 3x3, 256, padding 1, ReLU, max-pool 3x3 stride 2                 15 -> 7
  L6  conv 7x7, 512, no padding (a fully connected layer), ReLU, dropout 0.5   7 -> 1
  L7  conv 1x1, 512, ReLU, dropout 0.5 (flattened: the `features` embedding, 512 wide)
  L8  linear layer to the classes (`logits`; a 1x1 convolution in the paper, a Dense here: the same map)
No batch norm and no local response normalisation. 8,508,666 parameters at 250 classes.

Departures from the original, and why:
- Other input sizes: L6 is a fully connected layer written as a convolution, so its kernel is the side
  of the map it sees: 7 at 225 px, 6 at 224 px (the paper's 224 crop), 2 at 128 px. The smallest input
  that leaves a 1x1 map for L6 is 81 px; smaller sizes (28, 64) are refused with a ValueError.
- `batch_norm=True` (default False, as in the paper) adds batch norm after L1-L7, with `bn_momentum`
  (default 0.9: Keras' 0.99 makes moving statistics lag in short runs). Trained from scratch, the paper's
  network (Glorot init, no normalisation, dropout 0.5) barely moves in its first dozen Adam steps on a
  32-drawing batch, where the batch-norm variant fits it (tests/test_models.py).
- `logits` is computed in float32 so the model trains under the mixed_float16 policy.
"""

from __future__ import annotations

import keras

from models.registry import check_dimensions, check_fraction, register

MIN_INPUT_SIZE = 81
FEATURES_WIDTH = 512


def l6_kernel_size(input_size: int) -> int:
    """Side of the map entering L6 (L6's kernel size): 7 for 225 px, 6 for 224; < 1 when too small."""

    def conv(n: int, kernel: int, stride: int = 1) -> int:
        return (n - kernel) // stride + 1 if n >= kernel else 0

    def pool(n: int) -> int:
        return conv(n, 3, 2)

    side = pool(conv(input_size, 15, 3))  # L1
    side = pool(conv(side, 5))  # L2
    return pool(side)  # L3-L5 keep the side, then pool


def apply_sketch_conv(x, filters: int, kernel: int, *, strides: int = 1, padding: str = "valid",
                      batch_norm: bool, bn_momentum: float, name: str):
    """Convolution, optional batch norm, ReLU (one Sketch-a-Net layer without its pool)."""
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=not batch_norm, name=name)(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def apply_pool(x, *, name: str):
    """3x3 stride-2 max-pool without padding, as in the paper."""
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


@register("sketch_a_net")
def build_sketch_a_net(
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    bn_momentum: float = 0.9,
    dropout: float = 0.5,
    batch_norm: bool = False,
    name: str = "sketch_a_net",
) -> keras.Model:
    """Sketch-a-Net for `input_size`-pixel square images (>= 81; 225 in the paper); returns logits."""
    check_dimensions(
        "sketch_a_net", input_size, channels, num_classes, MIN_INPUT_SIZE,
        why=" (smaller inputs leave no map for the 7x7 L6 layer after two strided pools)",
    )
    check_fraction("sketch_a_net", "bn_momentum", bn_momentum)
    check_fraction("sketch_a_net", "dropout", dropout)
    layer = dict(batch_norm=batch_norm, bn_momentum=bn_momentum)
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = apply_sketch_conv(inputs, 64, 15, strides=3, name="L1", **layer)
    x = apply_pool(x, name="L1_pool")
    x = apply_sketch_conv(x, 128, 5, name="L2", **layer)
    x = apply_pool(x, name="L2_pool")
    x = apply_sketch_conv(x, 256, 3, padding="same", name="L3", **layer)
    x = apply_sketch_conv(x, 256, 3, padding="same", name="L4", **layer)
    x = apply_sketch_conv(x, 256, 3, padding="same", name="L5", **layer)
    x = apply_pool(x, name="L5_pool")
    x = apply_sketch_conv(x, 512, l6_kernel_size(input_size), name="L6", **layer)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="L6_dropout")(x)
    x = apply_sketch_conv(x, FEATURES_WIDTH, 1, name="L7", **layer)
    x = keras.layers.Flatten(name="features")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="L7_dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
