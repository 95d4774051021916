"""vse: a visual-semantic embedding (DeViSE, Frome et al. 2013) of images into a word-vector space.

An image trunk from the registry (`trunk`, any image model with a layer named `features`: sknet,
skresnet, sketch_a_net) up to its `features`, a linear `projection` to the word vectors' dimension
`semantic_dim` (D), and L2-normalisation: the output `semantic` [B, D] is a unit vector compared with
class names' unit word vectors by cosine (training/tasks/vse.py trains it; serving/vse_export.py adds
the text endpoints). The trunk's `features` layer stays in the model, so feature extraction finds it.

`head="conse"` (ConSE, Norouzi et al. 2014) replaces the trained projection with a classifier: `logits`
over the seen classes (trained by cross-entropy), and `semantic` = the unit convex combination of the
`conse_top` most probable seen classes' word vectors, weighted by their probabilities. The model's
output is then [B, D + C]: `semantic` and the logits side by side (the loss reads the logits; feature
extraction and export read the `semantic` layer).
"""

from __future__ import annotations

import keras
import numpy as np

from models.registry import check_fraction, get_builder, input_kind, register

FEATURES_LAYER = "features"
SEMANTIC_LAYER = "semantic"
LOGITS_LAYER = "logits"
HEADS = ("projection", "conse")


@keras.saving.register_keras_serializable(package="sketch")
class ConvexSemantic(keras.layers.Layer):
    """ConSE's embedding: logits [B, C] -> sum over the `top` most probable classes of p_i / (sum of
    those p) * class_vectors[i], [B, D]. The class vectors are constants saved in the layer's config."""

    def __init__(self, class_vectors, top: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.class_vectors = np.asarray(class_vectors, np.float32)
        self.top = int(top)

    def call(self, logits):
        ops = keras.ops
        probabilities = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        values, indices = ops.top_k(probabilities, k=min(self.top, self.class_vectors.shape[0]))
        weights = values / ops.maximum(ops.sum(values, axis=-1, keepdims=True), 1e-12)
        chosen = ops.take(ops.convert_to_tensor(self.class_vectors), indices, axis=0)  # [B, T, D]
        return ops.sum(weights[..., None] * chosen, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.class_vectors.shape[1])

    def get_config(self):
        return {**super().get_config(), "class_vectors": self.class_vectors.tolist(), "top": self.top}


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


def check_head(head, class_vectors, conse_top, num_classes: int, semantic_dim: int) -> None:
    """ValueError unless `head` is one of HEADS and, for conse, the class vectors are [num_classes, D] and
    `conse_top` an integer >= 1."""
    if head not in HEADS:
        raise ValueError(f"Invalid value for argument `head` of model 'vse'. Received: {head!r}. Expected one of "
                         f"{', '.join(HEADS)}.")
    if head != "conse":
        return
    shape = None if class_vectors is None else np.shape(class_vectors)
    if shape != (int(num_classes), semantic_dim):
        raise ValueError(f"Invalid value for argument `class_vectors` of model 'vse' (head 'conse'). Received: shape "
                         f"{shape}. Expected ({num_classes}, {semantic_dim}): one word vector per seen class.")
    if isinstance(conse_top, bool) or not isinstance(conse_top, int) or conse_top < 1:
        raise ValueError(f"Invalid value for argument `conse_top` of model 'vse'. Received: {conse_top!r}. "
                         "Expected an integer >= 1.")


@register("vse")
def build_vse(input_size: int, channels: int, num_classes: int, *, semantic_dim: int, trunk: str = "sknet",
              bn_momentum: float = 0.9, dropout: float = 0.0, head: str = "projection", class_vectors=None,
              conse_top: int = 5, name: str = "vse") -> keras.Model:
    """image -> `trunk` up to `features` -> [dropout] -> linear `projection` (D) -> unit `semantic` [B, D];
    with head="conse": -> `logits` (num_classes) -> ConvexSemantic -> unit `semantic`, output
    [semantic, logits] [B, D + num_classes]. Without conse, `num_classes` sizes the trunk's unused
    classifier head only (it is not part of this model)."""
    check_trunk(trunk)
    check_semantic_dim(semantic_dim)
    check_fraction("vse", "dropout", dropout)
    check_head(head, class_vectors, conse_top, num_classes, semantic_dim)
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
    if head == "conse":
        logits = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)(x)
        mixed = ConvexSemantic(class_vectors, conse_top, dtype="float32", name="conse")(logits)
        semantic = keras.layers.UnitNormalization(dtype="float32", name=SEMANTIC_LAYER)(mixed)
        both = keras.layers.Concatenate(dtype="float32", name="semantic_and_logits")([semantic, logits])
        return keras.Model(base.inputs, both, name=name)
    x = keras.layers.Dense(semantic_dim, dtype="float32", name="projection")(x)
    x = keras.layers.UnitNormalization(dtype="float32", name=SEMANTIC_LAYER)(x)
    return keras.Model(base.inputs, x, name=name)


def has_logits(model: keras.Model) -> bool:
    """True for a vse model with the conse head (its output carries the logits after `semantic`)."""
    return any(layer.name == LOGITS_LAYER for layer in model.layers)


def semantic_branch(model: keras.Model) -> keras.Model:
    """image -> `semantic` [B, D] of a vse model of either head (the model itself for projection)."""
    if not has_logits(model):
        return model
    return keras.Model(model.inputs, model.get_layer(SEMANTIC_LAYER).output, name=f"{model.name}_semantic")
