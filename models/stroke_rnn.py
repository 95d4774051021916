"""stroke_rnn: a stroke-sequence classifier, the design of TensorFlow's Quick, Draw! RNN tutorial.

tensorflow/models `tutorials/rnn/quickdraw`: (dx, dy, pen) sequences (data_prep.stroke_sequences)
-> Conv1D layers (48, 64, 96 filters, kernels 5, 5, 3, linear, optional batch-norm) -> bidirectional
LSTMs (3 x 128 units) -> the sum of the last LSTM's outputs over a drawing's rows -> dense logits.

Departures, for Keras 3 and this trainer:
- a `features` Dense layer (ReLU) between the masked sum and the logits, the layer the classifier
  task's `-mode test`, the export's `embed_*` endpoints and retrieval read (as skNet's);
- the mask comes from the input itself (padding rows carry pen = PAD_PEN) instead of a lengths
  tensor, and is applied explicitly: conv outputs are zeroed on padding rows after every layer (a
  plain Conv1D would carry bias into the rows next to a drawing's end), the LSTMs get it as their
  `mask`, batch-norm computes its moments over real rows only, and the sum is over real rows; so
  padding changes nothing;
- dropout is Keras' (between conv layers and inside the LSTMs' inputs), its rate ModelConfig's.
The optimizer, schedule, weight decay and gradient clipping are the trainer's (AdamW with warm-up
and cosine decay), not the tutorial's Adam with clipping at 9.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from data_prep.stroke_sequences import PAD_PEN
from models.registry import check_fraction, register

DEFAULT_DROPOUT = 0.3
INPUT_FEATURES = 3  # dx, dy, pen


@keras.saving.register_keras_serializable(package="stroke_rnn")
class PaddingMask(layers.Layer):
    """(dx, dy, pen) [B, T, 3] -> bool [B, T]: True on a drawing's rows, False on padding (pen PAD_PEN)."""

    def call(self, inputs):
        return ops.greater(inputs[..., 2], PAD_PEN)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:2])


@keras.saving.register_keras_serializable(package="stroke_rnn")
class ZeroPadding(layers.Layer):
    """Values [B, T, C] with the padding rows (mask False) set to 0."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None  # the mask goes to each layer explicitly; Conv1D would warn about (and drop) a propagated one

    def call(self, inputs, mask):
        return inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype)


@keras.saving.register_keras_serializable(package="stroke_rnn")
class MaskedSum(layers.Layer):
    """Values [B, T, C] -> [B, C]: the sum over a drawing's rows (mask True), the tutorial's pooling."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs, mask):
        return ops.sum(inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def _parse_ints(value, name: str) -> tuple[int, ...]:
    """'48,64,96' or a sequence of ints -> a tuple of positive ints; ValueError naming `name`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        parsed = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        parsed = ()
    if not parsed or min(parsed) < 1:
        raise ValueError(f"Invalid value for argument `{name}` of model 'stroke_rnn'. Received: {value!r}. "
                         "Expected positive integers, comma-separated.")
    return parsed


@register("stroke_rnn", inputs="strokes")
def build_stroke_rnn(input_size: int = 0, channels: int = 0, num_classes: int = 345, *,
                     conv_filters="48,64,96", conv_kernels="5,5,3", conv_batch_norm: bool = False,
                     rnn_layers: int = 3, rnn_units: int = 128, features_dim: int = 256,
                     dropout: float = DEFAULT_DROPOUT, bn_momentum: float = 0.9) -> keras.Model:
    """The stroke-sequence classifier: (dx, dy, pen) float32 [B, T, 3] -> logits [B, num_classes].
    `input_size` and `channels` (the image models' arguments) are unused: it reads no images."""
    filters, kernels = _parse_ints(conv_filters, "conv_filters"), _parse_ints(conv_kernels, "conv_kernels")
    if len(filters) != len(kernels):
        raise ValueError(f"stroke_rnn needs one kernel per conv layer; received {len(filters)} conv_filters and "
                         f"{len(kernels)} conv_kernels.")
    for arg, value in (("rnn_layers", rnn_layers), ("rnn_units", rnn_units), ("features_dim", features_dim),
                       ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid value for argument `{arg}` of model 'stroke_rnn'. Received: {value!r}. "
                             "Expected an integer >= 1.")
    check_fraction("stroke_rnn", "dropout", dropout)
    check_fraction("stroke_rnn", "bn_momentum", bn_momentum)

    inputs = keras.Input((None, INPUT_FEATURES), name="strokes")
    mask = PaddingMask(name="padding_mask")(inputs)
    x = ZeroPadding(name="input_zero_padding")(inputs, mask=mask)
    for i, (width, kernel) in enumerate(zip(filters, kernels), start=1):
        if i > 1 and dropout:
            x = layers.Dropout(dropout, name=f"conv{i}_dropout")(x)
        x = layers.Conv1D(width, kernel, padding="same", use_bias=not conv_batch_norm, name=f"conv{i}")(x)
        if conv_batch_norm:
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"conv{i}_bn")(x, mask=mask)
        x = ZeroPadding(name=f"conv{i}_zero_padding")(x, mask=mask)
    for i in range(1, rnn_layers + 1):
        lstm = layers.LSTM(rnn_units, return_sequences=True, dropout=dropout, name=f"lstm{i}")
        x = layers.Bidirectional(lstm, name=f"bilstm{i}")(x, mask=mask)
    x = MaskedSum(name="masked_sum")(x, mask=mask)
    features = layers.Dense(features_dim, activation="relu", name="features")(x)
    outputs = layers.Dense(num_classes, name="logits")(features)
    return keras.Model(inputs, outputs, name="stroke_rnn")
