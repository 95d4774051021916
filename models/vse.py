"""vse: a visual-semantic embedding (DeViSE, Frome et al. 2013) of images into a word-vector space.

An image trunk from the registry (`trunk`, any image model with a layer named `features`: sknet,
skresnet, sketch_a_net) up to its `features`, a linear `projection` to the word vectors' dimension
`semantic_dim` (D), and L2-normalisation: the output `semantic` [B, D] is a unit vector compared with
class names' unit word vectors by cosine (training/tasks/vse.py trains it; serving/vse_export.py adds
the text endpoints). The trunk's `features` layer stays in the model, so feature extraction finds it.
"""

from __future__ import annotations

import keras

from models.registry import check_fraction, get_builder, input_kind, register

FEATURES_LAYER = "features"
SEMANTIC_LAYER = "semantic"


def check_trunk(trunk) -> None:
    """ValueError unless `trunk` is a registered image model other than vse."""
    if trunk == "vse":
        raise ValueError("Invalid value for argument `trunk` of model 'vse'. Received: 'vse'. Expected an image "
                         "model with a `features` layer (sknet, skresnet, sketch_a_net).")
    try:
        kind = input_kind(trunk)
    except ValueError as e:
        raise ValueError(f"Invalid value for argument `trunk` of model 'vse'. {e}") from None
    if kind != "images":
        raise ValueError(f"Invalid value for argument `trunk` of model 'vse'. Received: {trunk!r}, which reads "
                         f"{kind}. Expected an image model (sknet, skresnet, sketch_a_net).")


def check_semantic_dim(semantic_dim) -> None:
    if isinstance(semantic_dim, bool) or not isinstance(semantic_dim, int) or semantic_dim < 1:
        raise ValueError(f"Invalid value for argument `semantic_dim` of model 'vse'. Received: {semantic_dim!r}. "
                         "Expected an integer >= 1 (the word vectors' dimension).")


@register("vse")
def build_vse(input_size: int, channels: int, num_classes: int, *, semantic_dim: int, trunk: str = "sknet",
              bn_momentum: float = 0.9, dropout: float = 0.0, name: str = "vse") -> keras.Model:
    """image -> `trunk` up to `features` -> [dropout] -> linear `projection` (D) -> unit `semantic` [B, D].
    `num_classes` sizes the trunk's unused classifier head only (it is not part of this model)."""
    check_trunk(trunk)
    check_semantic_dim(semantic_dim)
    check_fraction("vse", "dropout", dropout)
    base = get_builder(trunk)(input_size=input_size, channels=channels, num_classes=max(int(num_classes), 1),
                              bn_momentum=bn_momentum)
    try:
        features = base.get_layer(FEATURES_LAYER).output
    except ValueError:
        raise ValueError(f"Invalid value for argument `trunk` of model 'vse'. Received: {trunk!r}, which has no "
                         f"layer named {FEATURES_LAYER!r}. Expected sknet, skresnet or sketch_a_net.") from None
    x = keras.layers.Flatten(name="features_flat")(features) if len(features.shape) > 2 else features
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="features_dropout")(x)
    x = keras.layers.Dense(semantic_dim, dtype="float32", name="projection")(x)
    x = keras.layers.UnitNormalization(dtype="float32", name=SEMANTIC_LAYER)(x)
    return keras.Model(base.inputs, x, name=name)
