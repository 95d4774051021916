"""Shared pieces of the metric-learning models: backbones, the embedding head, checks, the loss factory.

The three embedding models (`siamese`, `triplet`, `deephash`) are a backbone (a convolutional trunk
ending in a flat vector) plus a head whose last layer is named `features` and outputs the embedding,
so export (`embed_images` = output of `features`) and feature extraction treat them alike.

Backbones (BACKBONES):
- 'siamese_cnn': the small 3-convolution net of the Sketchy Siamese baseline (Wang et al. 2015,
  "Sketch-based 3D shape retrieval using CNNs"; grey 100x100 input there): 32 15x15, 2x2 pool,
  64 8x8, 3x3 pool, 256 5x5, 2x2 pool, all 'valid' with ReLU and no batch norm, as the original;
  the fully connected layer after it is the embedding itself. Needs inputs >= 64 px.
- 'sknet', 'skresnet': the convolutional trunks of models/sknet.py and models/skresnet.py, then
  their 1024-unit ReLU fully connected layer (named `fc` here), then the embedding. Inputs >= 16 px.

Training batch layouts (what the losses from `make_loss` expect):
- triplet, deephash: x = images [B, H, W, C], y = integer class labels [B], arranged P x K (P classes,
  K images each, a class's K images next to each other, as data_prep.metric_pipelines.pk_batches
  yields). Under tf.distribute each replica mines in its own contiguous slice of B / replicas, so P
  must be a multiple of the replica count with at least 2 classes per slice (`check_pk`).
- siamese: x = (image_a, image_b), each [B, H, W, C] (a = sketch, b = photo for cross-domain pairs),
  y = same [B], 1.0 when the two images share a class, 0.0 otherwise
  (data_prep.metric_pipelines.pair_batches). The model outputs both embeddings stacked, [B, 2, D].
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import keras
import tensorflow as tf

from models import losses
from models.miners import PAIR_MINERS, TRIPLET_MINERS
from models.registry import check_dimensions, check_fraction
from models.sknet import apply_sknet_trunk
from models.skresnet import apply_skresnet_trunk

if TYPE_CHECKING:
    from configuration_sketch import EmbeddingConfig

EMBEDDING_DIM_RANGE = (2, 4096)
HIDDEN_WIDTH = 1024
DOMAINS = ("sketch", "photo")
EMBEDDING_MODELS = ("siamese", "triplet", "deephash")
# Layer names of the sub-networks inside a siamese twin model (see `branch`).
SHARED_BRANCH = "embedding_net"
DOMAIN_BRANCHES = {"sketch": "sketch_branch", "photo": "photo_branch"}
# The layer of class proxies after `features` in a model trained with a proxy loss (see `branch`).
PROXY_LAYER = "proxies"
PROXY_LOSSES = ("proxy_anchor", "normalized_softmax", "softmax_triplet")
# Proxy learning-rate multipliers at -proxy_lr_multiplier -1, from the 3-seed study in BENCHMARKS.md:
# 100 gave proxy-anchor a higher mAP on every seed than 1; the cosine classifier did better at 1.
DEFAULT_PROXY_LR_MULTIPLIERS = {"proxy_anchor": 100.0, "normalized_softmax": 1.0, "softmax_triplet": 1.0}
# Embedding widths at -embedding_dim -1: the proxy losses' authors train 512-d embeddings, and at 512
# proxy-anchor retrieved better than at 128 on every seed of the Quick, Draw! study (BENCHMARKS.md).
PROXY_EMBEDDING_DIM, DEFAULT_EMBEDDING_DIM = 512, 128
# Margins used when the config leaves `margin` at AUTO_MARGIN: each loss's usual value.
AUTO_MARGIN = -1.0
DEFAULT_MARGINS = {"triplet": 0.2, "contrastive": 1.0, "deephash": 0.5}
# Semi-hard (FaceNet) by default: batch-hard from random initialisation collapsed every embedding to
# one point (loss stuck at the margin) in our runs on Quick, Draw! and Sketchy; semi-hard learned.
AUTO_TRIPLET_MINER = "semi_hard"
# What -loss auto trains. The triplet model's is proxy-anchor, the best embedding of the studies in
# BENCHMARKS.md (above the triplet loss on every seed on Quick, Draw!, 0.268-0.357 against 0.259-0.298 mAP,
# and on Sketchy's seen classes, 0.048-0.051 against 0.036; tied zero-shot), unless a miner or margin is
# given: only the triplet loss takes those, so auto then means it.
AUTO_LOSSES = {"siamese": "contrastive", "triplet": "proxy_anchor", "deephash": "triplet"}
# Runs saved before proxy-anchor became the triplet model's default recorded -loss auto for the triplet loss.
LEGACY_AUTO_LOSS = "triplet"


# ---------------------------------------------------------------- backbones


def apply_siamese_cnn(x, *, bn_momentum: float, dropout: float):
    """Wang et al. 2015 trunk: three 'valid' conv+ReLU layers with pools, flattened (100 px -> 4x4x256)."""
    del bn_momentum  # the original has no batch norm
    for i, (filters, kernel, pool) in enumerate(((32, 15, 2), (64, 8, 3), (256, 5, 2)), start=1):
        x = keras.layers.Conv2D(filters, kernel, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(pool, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="flatten_dropout")(x)
    return x


def _apply_fc(x, *, dropout: float):
    """Flatten, the 1024-unit ReLU layer of skNet/skResNet (`fc`), optional dropout."""
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(HIDDEN_WIDTH, activation="relu", name="fc")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="fc_dropout")(x)
    return x


def apply_sknet_backbone(x, *, bn_momentum: float, dropout: float):
    """skNet's four conv blocks (models/sknet.py) and its 1024-unit ReLU layer."""
    x = apply_sknet_trunk(x, bn_momentum=bn_momentum)
    return _apply_fc(x, dropout=dropout)


def apply_skresnet_backbone(x, *, bn_momentum: float, dropout: float):
    """skResNet's stem, three residual stages and final convolution (models/skresnet.py), then `fc`."""
    x = apply_skresnet_trunk(x, bn_momentum=bn_momentum)
    return _apply_fc(x, dropout=dropout)


class Backbone(NamedTuple):
    """A trunk `apply(x, bn_momentum=, dropout=) -> flat vector` and the smallest input side it takes."""

    apply: Callable
    min_input_size: int
    why: str


BACKBONES: dict[str, Backbone] = {
    "siamese_cnn": Backbone(
        apply_siamese_cnn, 64, " (the 'valid' 15/8/5 convolutions and 2/3/2 pools of backbone 'siamese_cnn' "
        "need 64 px; 100 in the original; use backbone 'sknet' for smaller images)"),
    "sknet": Backbone(apply_sknet_backbone, 16, " (four stride-2 pools)"),
    "skresnet": Backbone(apply_skresnet_backbone, 16, " (four stride-2 pools)"),
}


# ---------------------------------------------------------------- checks


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def check_embedding_dim(model: str, embedding_dim) -> None:
    """Raise ValueError unless `embedding_dim` is an integer in EMBEDDING_DIM_RANGE."""
    low, high = EMBEDDING_DIM_RANGE
    if not _is_int(embedding_dim) or not low <= embedding_dim <= high:
        raise ValueError(
            f"Invalid value for argument `embedding_dim` of model {model!r}. Received: {embedding_dim!r}. "
            f"Expected an integer in [{low}, {high}]."
        )


def check_backbone(model: str, backbone) -> Backbone:
    """The Backbone registered as `backbone`; ValueError listing the valid names otherwise."""
    if backbone not in BACKBONES:
        raise ValueError(
            f"Invalid value for argument `backbone` of model {model!r}. Received: {backbone!r}. "
            f"Expected one of: {', '.join(BACKBONES)}."
        )
    return BACKBONES[backbone]


def check_bool(model: str, arg: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid value for argument `{arg}` of model {model!r}. Received: {value!r}. Expected True or False.")


def check_pk(classes_per_batch, per_class, replicas: int = 1) -> None:
    """Raise ValueError unless P x K batches can feed an in-batch loss on `replicas` replicas.

    An anchor needs a positive (K >= 2) and a negative (P >= 2) in its own replica's slice, and
    a slice must hold whole classes: P a multiple of `replicas`, P / replicas >= 2.
    """
    for arg, value in (("classes_per_batch (P)", classes_per_batch), ("per_class (K)", per_class)):
        if not _is_int(value) or value < 2:
            raise ValueError(
                f"Invalid value for argument `{arg}`. Received: {value!r}. Expected an integer >= 2: every anchor "
                "needs a positive (K >= 2) and a negative (P >= 2) in its batch."
            )
    if not _is_int(replicas) or replicas < 1:
        raise ValueError(f"Invalid value for argument `replicas`. Received: {replicas!r}. Expected an integer >= 1.")
    if classes_per_batch % replicas or classes_per_batch // replicas < 2:
        raise ValueError(
            f"Invalid value for argument `classes_per_batch (P)`. Received: {classes_per_batch} with {replicas} "
            f"replicas. Expected a multiple of the replica count with at least 2 classes per replica "
            f"(each replica mines in its own {per_class}-per-class slice): P = {2 * replicas}, {3 * replicas}, ..."
        )


# ---------------------------------------------------------------- networks


def build_embedding_network(
    model: str,
    input_size: int,
    channels: int,
    num_classes: int,
    *,
    embedding_dim: int,
    backbone: str,
    l2_normalize: bool,
    bn_momentum: float,
    dropout: float,
    name: str,
) -> keras.Model:
    """image -> backbone -> linear `embedding_dim` layer (no softmax) -> `features` (unit norm if asked).

    `model` names the caller in error messages; `num_classes` is checked but unused (no classifier).
    The last layers run in float32, so the embedding is float32 under mixed precision too.
    """
    spec = check_backbone(model, backbone)
    check_dimensions(model, input_size, channels, num_classes, spec.min_input_size, spec.why)
    check_embedding_dim(model, embedding_dim)
    check_bool(model, "l2_normalize", l2_normalize)
    check_fraction(model, "bn_momentum", bn_momentum)
    check_fraction(model, "dropout", dropout)
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = spec.apply(inputs, bn_momentum=bn_momentum, dropout=dropout)
    if l2_normalize:
        x = keras.layers.Dense(embedding_dim, dtype="float32", name="embedding")(x)
        x = keras.layers.UnitNormalization(dtype="float32", name="features")(x)
    else:
        x = keras.layers.Dense(embedding_dim, dtype="float32", name="features")(x)
    return keras.Model(inputs, x, name=name)


# One image -> features network per proxy-trained model, so repeated calls reuse its compiled steps.
_FEATURE_NETWORKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def branch(model: keras.Model, domain: str) -> keras.Model:
    """The image -> embedding network that embeds images of `domain` ('sketch' or 'photo').

    For a siamese twin model: its sketch or photo branch (the same network when weights are
    shared); export and feature extraction use the sketch branch for queries and the photo branch
    for the gallery. For a single-input embedding model (triplet, deephash): the model itself, or for
    one trained with proxies its network up to `features` (the same object on every call). Each
    returned network ends in its layer `features`.
    """
    if domain not in DOMAINS:
        raise ValueError(f"Invalid value for argument `domain`. Received: {domain!r}. Expected one of: {', '.join(DOMAINS)}.")
    names = {layer.name for layer in model.layers}
    if PROXY_LAYER in names and "features" in names:  # trained with proxies: the network up to `features`
        if model not in _FEATURE_NETWORKS:
            _FEATURE_NETWORKS[model] = keras.Model(model.input, model.get_layer("features").output,
                                                   name=f"{model.name}_features")
        return _FEATURE_NETWORKS[model]
    for name in (DOMAIN_BRANCHES[domain], SHARED_BRANCH):
        if name in names:
            return model.get_layer(name)
    if len(model.inputs) == 1 and "features" in names and model.get_layer("features").output is model.outputs[0]:
        return model
    raise ValueError(
        f"Model {model.name!r} is neither an embedding model (one input, output = layer `features`) nor a "
        f"siamese twin (layers {SHARED_BRANCH!r} or {DOMAIN_BRANCHES['sketch']!r}/{DOMAIN_BRANCHES['photo']!r}). "
        f"It has {len(model.inputs)} input(s) and its last layer is {model.layers[-1].name!r}."
    )


# ---------------------------------------------------------------- pair loss


def _split_pair(y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    if y_pred.shape.rank != 3 or (y_pred.shape[1] is not None and y_pred.shape[1] != 2):
        raise ValueError(
            f"PairContrastiveLoss expects y_pred of shape [B, 2, D] (both embeddings of each pair, as the "
            f"siamese model outputs). Received shape {y_pred.shape}."
        )
    return y_pred[:, 0], y_pred[:, 1]


@keras.saving.register_keras_serializable(package="sketch")
class PairContrastiveLoss(keras.losses.Loss):
    """Contrastive loss of given pairs: y_true = same [B] (1 same class, 0 not), y_pred = [B, 2, D].

    Per pair 1/2 same * D^2 + 1/2 (1 - same) * max(0, margin - D)^2 (losses.contrastive_loss,
    whose Y is 1 for a *different* pair: Y = 1 - same), averaged over the batch by Keras.
    """

    def __init__(self, margin: float = 1.0, name: str = "pair_contrastive_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        losses._check_margin(margin)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        a, b = _split_pair(tf.convert_to_tensor(y_pred))
        same = tf.reshape(tf.cast(y_true, a.dtype), [-1])
        return losses.contrastive_loss(a, b, 1.0 - same, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


# ---------------------------------------------------------------- from a config


def _check_model(model) -> None:
    if model not in EMBEDDING_MODELS:
        raise ValueError(f"Invalid value for argument `model`. Received: {model!r}. Expected one of: {', '.join(EMBEDDING_MODELS)}.")


def resolve_loss(config: EmbeddingConfig, model: str) -> str:
    """The loss `model` trains under `config`: config.loss, or for 'auto' AUTO_LOSSES[model] (the triplet
    loss for the triplet model when config sets a miner or a margin)."""
    _check_model(model)
    if config.loss != "auto":
        return config.loss
    if model == "triplet" and (config.miner != "auto" or config.margin != AUTO_MARGIN):
        return "triplet"
    return AUTO_LOSSES[model]


def resolved(config: EmbeddingConfig, model: str) -> EmbeddingConfig:
    """`config` with its loss resolved (`resolve_loss`): what a run records, so it resumes with the same loss."""
    return dataclasses.replace(config, loss=resolve_loss(config, model))


def builder_kwargs(config: EmbeddingConfig, model: str) -> dict:
    """The keyword arguments of `build_model(model, ...)` that come from an EmbeddingConfig."""
    config = resolved(config, model)
    if model == "deephash":
        return {"bits": config.bits, "backbone": config.backbone}
    kwargs = {"embedding_dim": embedding_dim(config, model), "backbone": config.backbone, "l2_normalize": config.l2_normalize}
    if model == "siamese":
        kwargs["shared_weights"] = config.shared_weights
    if model == "triplet":
        kwargs["proxies"] = config.loss in PROXY_LOSSES
        if kwargs["proxies"]:
            kwargs["proxy_lr_multiplier"] = proxy_lr_multiplier(config)
            kwargs["with_features"] = config.loss == "softmax_triplet"
    return kwargs


def embedding_dim(config: EmbeddingConfig, model: str) -> int:
    """The config's embedding_dim, or at AUTO_MARGIN (-1) its loss's own: PROXY_EMBEDDING_DIM for the proxy
    losses, else DEFAULT_EMBEDDING_DIM."""
    if config.embedding_dim == AUTO_MARGIN:
        return PROXY_EMBEDDING_DIM if resolve_loss(config, model) in PROXY_LOSSES else DEFAULT_EMBEDDING_DIM
    return config.embedding_dim


def proxy_lr_multiplier(config: EmbeddingConfig) -> float:
    """The config's proxy_lr_multiplier, or at AUTO_MARGIN (-1) its proxy loss's own DEFAULT_PROXY_LR_MULTIPLIERS."""
    value = config.proxy_lr_multiplier
    if value == AUTO_MARGIN:
        return DEFAULT_PROXY_LR_MULTIPLIERS[config.loss]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid value for EmbeddingConfig field `proxy_lr_multiplier`. Received: {value!r}. "
                         f"Expected a finite number > 0 (or {AUTO_MARGIN} for the loss's own: {DEFAULT_PROXY_LR_MULTIPLIERS}).")
    return float(value)


def _margin(config: EmbeddingConfig, kind: str) -> float:
    margin = config.margin
    if margin == AUTO_MARGIN:
        return DEFAULT_MARGINS[kind]
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not (math.isfinite(margin) and margin > 0):
        raise ValueError(
            f"Invalid value for EmbeddingConfig field `margin`. Received: {margin!r}. Expected a finite number > 0 "
            f"(or {AUTO_MARGIN} for the loss's default: {DEFAULT_MARGINS})."
        )
    return float(margin)


def _choice_error(field: str, value, allowed, why: str) -> ValueError:
    return ValueError(
        f"Invalid value for EmbeddingConfig field `{field}`. Received: {value!r}. Expected one of: "
        f"{', '.join(repr(a) for a in allowed)} ({why})."
    )


def make_loss(config: EmbeddingConfig, model: str) -> keras.losses.Loss:
    """The Keras loss that trains `model` ('siamese', 'triplet' or 'deephash') as `config` says.

    siamese: PairContrastiveLoss on (pair, same) batches (loss 'auto' or 'contrastive'; no miner).
    triplet: loss 'triplet' -> TripletLoss (miner 'auto' = semi_hard, batch_hard, batch_all);
        'contrastive' -> in-batch ContrastiveLoss (miner 'auto'/'none' = all pairs, hard_negative);
        'proxy_anchor' -> ProxyAnchorLoss(proxy_alpha, proxy_delta), 'normalized_softmax' ->
        NormalizedSoftmaxLoss(temperature), on the cosines of the model built with proxies=True;
        'softmax_triplet' -> SoftmaxTripletLoss: the triplet loss (margin, miner) on `features` plus the
        normalised softmax (temperature) on the cosines, the model giving both (with_features=True).
        'auto' is 'proxy_anchor', or 'triplet' when a miner or margin is given (`resolve_loss`).
    deephash: loss 'auto'/'triplet' -> DeepHashLoss (triplet + quantization_weight * quantization
        loss, margin ramped from margin_start over margin_ramp_steps when > 0).
    A margin left at AUTO_MARGIN takes DEFAULT_MARGINS of the loss. Every value is checked here,
    before any training.
    """
    config = resolved(config, model)
    loss, miner = config.loss, config.miner
    if model == "siamese":
        if loss not in ("auto", "contrastive"):
            raise _choice_error("loss", loss, ("auto", "contrastive"), "model 'siamese' trains on given pairs")
        if miner not in ("auto", "none"):
            raise _choice_error("miner", miner, ("auto", "none"), "model 'siamese' takes given pairs, nothing to mine")
        return PairContrastiveLoss(_margin(config, "contrastive"))
    allowed_losses = ("auto", "triplet", "contrastive", *PROXY_LOSSES) if model == "triplet" else ("auto", "triplet")
    if loss not in allowed_losses:
        raise _choice_error("loss", loss, allowed_losses, f"for model {model!r}")
    if loss == "softmax_triplet":
        allowed = ("auto", *TRIPLET_MINERS)
        if miner not in allowed:
            raise _choice_error("miner", miner, allowed, "triplet miners")
        proxy_lr_multiplier(config)
        return losses.SoftmaxTripletLoss(embedding_dim(config, model), _margin(config, "triplet"),
                                         AUTO_TRIPLET_MINER if miner == "auto" else miner, config.temperature)
    if loss in PROXY_LOSSES:
        if miner != "auto":
            raise _choice_error("miner", miner, ("auto",), f"loss {loss!r} uses every class's proxy, nothing to mine")
        if config.margin != AUTO_MARGIN:
            raise ValueError(f"Invalid value for EmbeddingConfig field `margin`: {config.margin!r}. Loss {loss!r} takes "
                             "no margin: set proxy_delta (proxy_anchor) or temperature (normalized_softmax).")
        proxy_lr_multiplier(config)
        if loss == "proxy_anchor":
            return losses.ProxyAnchorLoss(config.proxy_alpha, config.proxy_delta)
        return losses.NormalizedSoftmaxLoss(config.temperature)
    if loss == "contrastive":
        allowed = ("auto", "none", *(m for m in PAIR_MINERS if m))
        if miner not in allowed:
            raise _choice_error("miner", miner, allowed, "pair miners of the in-batch contrastive loss")
        return losses.ContrastiveLoss(_margin(config, "contrastive"), None if miner in ("auto", "none") else miner)
    allowed = ("auto", *TRIPLET_MINERS)
    if miner not in allowed:
        raise _choice_error("miner", miner, allowed, "triplet miners")
    miner = AUTO_TRIPLET_MINER if miner == "auto" else miner
    if model == "triplet":
        return losses.TripletLoss(_margin(config, "triplet"), miner)
    margin = _margin(config, "deephash")
    ramp = config.margin_ramp_steps
    if not _is_int(ramp) or ramp < 0:
        raise ValueError(f"Invalid value for EmbeddingConfig field `margin_ramp_steps`. Received: {ramp!r}. Expected an integer >= 0.")
    start = config.margin_start
    if ramp and (isinstance(start, bool) or not isinstance(start, numbers.Real) or not 0 <= start <= margin):
        raise ValueError(
            f"Invalid value for EmbeddingConfig field `margin_start`. Received: {start!r}. Expected a number in "
            f"[0, margin={margin}] (the ramp grows the margin from margin_start to margin)."
        )
    return losses.DeepHashLoss(
        margin, miner, quantization_weight=config.quantization_weight,
        margin_start=float(start) if ramp else None, margin_ramp_steps=ramp,
    )


def loss_callbacks(loss: keras.losses.Loss) -> list[keras.callbacks.Callback]:
    """Callbacks a loss from `make_loss` needs in `fit`: the invalid-batch log and the margin ramp."""
    callbacks: list[keras.callbacks.Callback] = []
    if isinstance(loss, (losses.TripletLoss, losses.ContrastiveLoss, losses.ProxyAnchorLoss,
                         losses.SoftmaxTripletLoss)):  # and DeepHashLoss
        callbacks.append(losses.LogInvalidBatches(loss))
    if isinstance(loss, losses.DeepHashLoss) and loss.margin_ramp_steps > 0:
        callbacks.append(losses.MarginRamp(loss))
    return callbacks
