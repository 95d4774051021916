"""skNet: the plain VGG-style sketch classifier (four conv blocks, a 1024-unit embedding, a linear classifier).

Architecture (original): four blocks of two 3x3 convolutions, stride 1, same padding, with
64,64 / 128,128 / 128,128 / 256,256 filters; each convolution is followed by batch norm and ReLU;
a 3x3 stride-2 max-pool closes each block; then a 1024-unit ReLU fully connected layer (`features`,
the embedding) and a linear layer to the classes (`logits`). Input 128x128x1 in the original.

Departures from the original, and why:
- The pools use padding='same' (output ceil(n/2)), so any input from 16 px up works: 128 -> 8x8x256
  as in the original, 28 (Quick, Draw! bitmaps) -> 2x2x256. With 'valid' pools 28 px would vanish.
- Batch-norm momentum defaults to 0.9, not Keras' 0.99: with 0.99 the moving variance lags the weights
  in short runs (3 epochs: 0.95 train accuracy but 0.15-0.54 test accuracy; 0.9 gave 0.97).
- Convolutions carry no bias: the batch norm that follows adds its own offset (beta), so a bias is
  redundant; the function class is the same.
- `logits` is computed in float32 so the model trains under the mixed_float16 policy.
- Optional dropout (default 0, i.e. none) between `features` and `logits` for small data sets.
"""

from __future__ import annotations

import keras

from models.registry import check_dimensions, check_fraction, register

MIN_INPUT_SIZE = 16
BLOCK_FILTERS = (64, 128, 128, 256)
FEATURES_WIDTH = 1024


def apply_conv_bn_relu(x, filters: int, *, bn_momentum: float, name: str):
    """3x3 stride-1 'same' convolution, batch norm, ReLU."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def apply_sknet_block(x, filters: int, *, bn_momentum: float, name: str):
    """Two conv+BN+ReLU units with `filters` filters, then a 3x3 stride-2 max-pool."""
    x = apply_conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"{name}_1")
    x = apply_conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"{name}_2")
    return keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)


def apply_sknet_trunk(x, *, bn_momentum: float):
    """The convolutional trunk: the four blocks of BLOCK_FILTERS. The classifier (build_sknet) and the
    embedding backbone (models.embedding) both use it."""
    for i, filters in enumerate(BLOCK_FILTERS, start=1):
        x = apply_sknet_block(x, filters, bn_momentum=bn_momentum, name=f"block{i}")
    return x


def apply_classifier_head(x, num_classes: int, *, dropout: float):
    """Flatten, the 1024-unit ReLU `features` layer, optional dropout, float32 linear `logits`."""
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(FEATURES_WIDTH, activation="relu", name="features")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="features_dropout")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


@register("sknet")
def build_sknet(
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "sknet",
) -> keras.Model:
    """skNet for `input_size`-pixel square images (>= 16; 128 in the original); returns logits."""
    check_dimensions("sknet", input_size, channels, num_classes, MIN_INPUT_SIZE)
    check_fraction("sknet", "bn_momentum", bn_momentum)
    check_fraction("sknet", "dropout", dropout)
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = apply_sknet_trunk(inputs, bn_momentum=bn_momentum)
    logits = apply_classifier_head(x, num_classes, dropout=dropout)
    return keras.Model(inputs, logits, name=name)
