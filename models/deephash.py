"""`deephash`: a deep hashing network, B-bit codes from a tanh embedding trained with a triplet objective.

image -> backbone (models/embedding.py) -> linear `bits`-unit layer -> batch norm -> tanh, the
layer `features` whose outputs u lie in (-1, 1). Training (`models.embedding.make_loss(config, "deephash")`, a
DeepHashLoss): triplet loss on u over P x K batches plus `quantization_weight` * ||sign(u) - u||^2,
which pulls u towards the corners of the hypercube; optionally the margin ramps up over the first
steps (MarginRamp callback, see `models.embedding.loss_callbacks`). The binary code of an image is
sign(u), packed 8 bits per byte by `codes_from_outputs`, the format of the Hamming evaluator.

The batch norm before tanh is our addition: it centres every bit over the batch (bit balance),
so the codes cannot all fall into one corner. Without it, on 4 x 4 batches of real drawings
with Adam at 1e-3, every drawing collapsed onto a single saturated code within 10 steps (loss
stuck at the margin, tanh gradients 0); with it the training loss kept falling and 32 drawings
got 25 distinct 32-bit codes.

The quantization term is a sum over bits, so its pull grows with the code length while the triplet
margin does not. With lambda 0.1 at 128 bits it outweighed the triplet term and 3 x 100-step runs on
real drawings ended at 0.21-0.23 Hamming mAP; lambda 0.01 with the trainer's learning-rate warm-up gave
0.31 on every seed (bench/metric_recipes.py, BENCHMARKS.md). Lambda 0.03 (the default) matched 0.01's
Hamming mAP at 64 and 128 bits over 3 seeds and kept it within 0.014 of the float mAP, where 0.01 left
0.021 on one seed (bench/retrieval_quality.py --quantization_weight).
"""

from __future__ import annotations

import numbers

import keras
import numpy as np

from models.embedding import check_backbone
from models.registry import check_dimensions, check_fraction, register

BITS = (16, 32, 64, 128)


def check_bits(model: str, bits) -> None:
    """Raise ValueError unless `bits` is one of BITS."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in BITS:
        raise ValueError(
            f"Invalid value for argument `bits` of model {model!r}. Received: {bits!r}. Expected one of: "
            f"{', '.join(map(str, BITS))}."
        )


@register("deephash")
def build_deephash(
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    bits: int = 64,
    backbone: str = "sknet",
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "deephash",
) -> keras.Model:
    """Hash network image -> `features` = tanh(batch_norm(linear [bits])) in (-1, 1), float32."""
    spec = check_backbone("deephash", backbone)
    check_dimensions("deephash", input_size, channels, num_classes, spec.min_input_size, spec.why)
    check_bits("deephash", bits)
    check_fraction("deephash", "bn_momentum", bn_momentum)
    check_fraction("deephash", "dropout", dropout)
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = spec.apply(inputs, bn_momentum=bn_momentum, dropout=dropout)
    x = keras.layers.Dense(bits, use_bias=False, dtype="float32", name="hash")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, dtype="float32", name="hash_bn")(x)
    u = keras.layers.Activation("tanh", dtype="float32", name="features")(x)
    return keras.Model(inputs, u, name=name)


def codes_from_outputs(u) -> np.ndarray:
    """Packed binary codes (N, bits / 8) uint8 from tanh outputs u (N, bits): bit = u > 0, np.packbits order.

    The packing is retrieval.ranking.pack_codes itself (the Hamming evaluator's format, one
    implementation); this adds the checks that model outputs must pass: real and finite.
    """
    from retrieval.ranking import pack_codes

    u = np.asarray(u)
    if not np.issubdtype(u.dtype, np.floating):
        raise ValueError(f"codes_from_outputs expects real outputs u in (-1, 1). Received dtype {u.dtype}.")
    if not np.isfinite(u).all():
        raise ValueError(f"codes_from_outputs received {int((~np.isfinite(u)).sum())} non-finite values.")
    return pack_codes(u)
