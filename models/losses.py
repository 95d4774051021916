"""Metric-learning losses: contrastive, triplet (with online miners), deep hashing, and the proxy
losses that see every class at every step (normalised softmax, proxy-anchor); and the classifier's
cross-entropy on integer labels with label smoothing.

Two layers: pure functions returning `MinedLoss(value, valid)` for a training loop of
one's own, and serializable `keras.losses.Loss` classes for `model.compile(loss=...)`
that take y_true = labels [B] and y_pred = embeddings [B, D].

Batch semantics. A batch that yields no valid pair or triplet (all labels distinct:
no positive; one class only: no negative) gives a loss of exactly 0 with a zero
gradient, and the Keras losses add 1 to their `num_invalid_batches` counter.
Under `tf.distribute` every replica mines inside its own slice of the global batch
(no cross-replica mining): the gradient is the mean of the per-replica gradients and
the loss Keras reports is the mean of the per-replica losses. Each replica that sees
an invalid slice counts one event.

The proxy losses take y_pred = the cosine similarities [B, C] of each embedding to one learned proxy
per class (models.proxies.CosineProxies computes them), so they need no pair in the batch: every
example pulls towards its class's proxy and away from all the others.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import keras
import tensorflow as tf

from models.miners import (
    DISTANCES,
    PAIR_MINERS,
    TRIPLET_MINERS,
    check_rank,
    pairwise_distances,
    safe_sqrt,
)

__all__ = [
    "ContrastiveLoss",
    "DeepHashLoss",
    "LogInvalidBatches",
    "MarginRamp",
    "MinedLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "SmoothedSparseCrossentropy",
    "SoftmaxTripletLoss",
    "TripletLoss",
    "contrastive_loss",
    "in_batch_contrastive_loss",
    "normalized_softmax_loss",
    "pairwise_distances",
    "proxy_anchor_loss",
    "quantization_loss",
    "ramp_margin",
    "softmax_triplet_loss",
    "triplet_loss",
]


class MinedLoss(NamedTuple):
    """A scalar loss and whether the batch held anything to mine (False: value is 0)."""

    value: tf.Tensor
    valid: tf.Tensor


def _check_margin(margin, name: str = "margin") -> None:
    if tf.is_tensor(margin) or isinstance(margin, tf.Variable):
        return
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real):
        raise ValueError(f"Invalid value for argument `{name}`. Received: {name}={margin!r}. Expected a number > 0.")
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"Invalid value for argument `{name}`. Received: {name}={margin!r}. Expected a finite number > 0.")


def _check_delta(delta) -> None:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"Invalid value for argument `delta`. Received: delta={delta!r}. Expected a finite number >= 0.")


def _check_choice(value, allowed, name: str) -> None:
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected one of: {listed}.")


def _check_distance(distance: str, squared: bool) -> None:
    _check_choice(distance, tuple(DISTANCES), "distance")
    if squared and distance != "l2":
        raise ValueError(
            f"Invalid combination: squared=True needs distance='l2'. Received: distance={distance!r}."
        )


def _labels_and_embeddings(labels, embeddings) -> tuple[tf.Tensor, tf.Tensor]:
    """Check ranks (labels [B] or [B, 1], embeddings [B, D]) and the batch sizes."""
    labels = tf.convert_to_tensor(labels)
    embeddings = tf.convert_to_tensor(embeddings)
    if labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    check_rank(labels, 1, "labels (y_true)")
    check_rank(embeddings, 2, "embeddings (y_pred)")
    if labels.shape[0] is not None and embeddings.shape[0] is not None and labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"Batch sizes differ: labels (y_true) has {labels.shape[0]} rows, embeddings (y_pred) has {embeddings.shape[0]}."
        )
    return labels, embeddings


def contrastive_loss(emb_a, emb_b, y, margin: float = 1.0) -> tf.Tensor:
    """Per-pair contrastive loss [B] (Hadsell, Chopra, LeCun 2006), Y = 1 for a different-class pair.

    (1 - Y)/2 * D^2 + Y/2 * max(0, margin - D)^2 with D = ||a - b||; D^2 is used as is
    and D comes from a guarded sqrt, so identical embeddings give a finite gradient.
    """
    _check_margin(margin)
    emb_a, emb_b = tf.convert_to_tensor(emb_a), tf.convert_to_tensor(emb_b)
    check_rank(emb_a, 2, "emb_a")
    check_rank(emb_b, 2, "emb_b")
    if emb_a.shape.is_fully_defined() and emb_b.shape.is_fully_defined() and emb_a.shape != emb_b.shape:
        raise ValueError(f"`emb_a` and `emb_b` must have the same shape. Received: {emb_a.shape} and {emb_b.shape}.")
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] == 1:
        y = tf.squeeze(y, axis=-1)
    check_rank(y, 1, "y")
    y = tf.cast(y, emb_a.dtype)
    d2 = tf.reduce_sum(tf.square(emb_a - emb_b), axis=-1)
    d = safe_sqrt(d2)
    return 0.5 * (1.0 - y) * d2 + 0.5 * y * tf.square(tf.nn.relu(margin - d))


def in_batch_contrastive_loss(
    labels, embeddings, margin: float = 1.0, miner: str | None = None, distance: str = "l2"
) -> MinedLoss:
    """Mean contrastive loss over the ordered in-batch pairs chosen by `miner`.

    miner=None: every ordered pair i != j; 'hard_negative': every positive pair plus,
    per anchor, its nearest negative. The mean runs over the chosen pairs. A batch
    needs at least one positive and one negative pair (a one-sided batch would only
    pull together or only push apart); otherwise the loss is 0 and `valid` False.
    """
    _check_margin(margin)
    _check_choice(miner, tuple(PAIR_MINERS), "miner")
    _check_distance(distance, False)
    labels, embeddings = _labels_and_embeddings(labels, embeddings)
    dist = DISTANCES[distance](embeddings, False)
    pairs = PAIR_MINERS[miner](dist, labels)
    zeros = tf.zeros_like(dist)
    pos_term = tf.where(pairs.pos, 0.5 * tf.square(dist), zeros)
    neg_term = tf.where(pairs.neg, 0.5 * tf.square(tf.nn.relu(margin - dist)), zeros)
    count = tf.reduce_sum(tf.cast(pairs.pos, dist.dtype)) + tf.reduce_sum(tf.cast(pairs.neg, dist.dtype))
    valid = tf.logical_and(tf.reduce_any(pairs.pos), tf.reduce_any(pairs.neg))
    value = tf.reduce_sum(pos_term + neg_term) / tf.maximum(count, 1.0)
    return MinedLoss(tf.where(valid, value, tf.zeros_like(value)), valid)


def triplet_loss(
    labels,
    embeddings,
    margin=0.2,
    miner: str = "batch_hard",
    squared: bool = False,
    distance: str = "l2",
) -> MinedLoss:
    """Triplet loss max(0, d(a, p) - d(a, n) + margin) over the triplets `miner` picks.

    Averages: 'batch_all' divides by the number of triplets with a positive loss
    (Hermans et al. "BA!=0"; 0 when every triplet is satisfied); 'batch_hard' by the
    number of anchors with a positive and a negative; 'semi_hard' by the number of
    positive pairs whose anchor has a negative (as TF-Addons). `margin` may be a tensor.
    """
    _check_margin(margin)
    _check_choice(miner, tuple(TRIPLET_MINERS), "miner")
    _check_distance(distance, squared)
    labels, embeddings = _labels_and_embeddings(labels, embeddings)
    dist = DISTANCES[distance](embeddings, squared)
    spec = TRIPLET_MINERS[miner]
    mined = spec.mine(dist, labels)
    margin = tf.cast(margin, dist.dtype) if tf.is_tensor(margin) else tf.constant(margin, dist.dtype)
    hinge = tf.nn.relu(mined.ap - mined.an + margin)
    valid = tf.broadcast_to(mined.valid, tf.shape(hinge))
    hinge = tf.where(valid, hinge, tf.zeros_like(hinge))
    counted = tf.logical_and(valid, hinge > 0) if spec.average == "nonzero" else valid
    value = tf.reduce_sum(hinge) / tf.maximum(tf.reduce_sum(tf.cast(counted, dist.dtype)), 1.0)
    return MinedLoss(value, tf.reduce_any(valid))


def _labels_and_similarities(labels, similarities) -> tuple[tf.Tensor, tf.Tensor]:
    """Check labels [B] (or [B, 1]) against similarities [B, C]; labels as int32."""
    labels, similarities = _labels_and_embeddings(labels, similarities)
    return tf.cast(labels, tf.int32), similarities


def normalized_softmax_loss(labels, similarities, temperature: float = 0.05) -> tf.Tensor:
    """Mean cross-entropy of softmax(cos / temperature) over the classes: a cosine classifier
    (Zhai & Wu 2019, "Classification is a strong baseline for deep metric learning")."""
    _check_margin(temperature, "temperature")
    labels, similarities = _labels_and_similarities(labels, similarities)
    logits = similarities / tf.constant(temperature, similarities.dtype)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def softmax_triplet_loss(labels, outputs, embedding_dim: int, margin: float = 0.2, miner: str = "semi_hard",
                         temperature: float = 0.05, softmax_weight: float = 1.0) -> MinedLoss:
    """Triplet loss on the embedding plus softmax_weight x normalised softmax on the cosines to the class
    proxies, on one output [B, D + C] = [embedding, cosines]: the triplet term shapes the neighbourhoods
    of the batch, the softmax term sees every class at every step. Valid when the triplet term is."""
    embeddings, similarities = outputs[:, :embedding_dim], outputs[:, embedding_dim:]
    triplet = triplet_loss(labels, embeddings, margin, miner)
    softmax = normalized_softmax_loss(labels, similarities, temperature)
    return MinedLoss(triplet.value + softmax_weight * softmax, triplet.valid)


def _log1p_sum_exp(z: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Per column of z [B, C]: log(1 + sum over the masked rows of exp(z)), without overflow."""
    z = tf.where(mask, z, tf.fill(tf.shape(z), tf.constant(-math.inf, z.dtype)))
    return tf.reduce_logsumexp(tf.concat([tf.zeros_like(z[:1]), z], axis=0), axis=0)


def proxy_anchor_loss(labels, similarities, alpha: float = 32.0, delta: float = 0.1) -> MinedLoss:
    """Proxy-anchor loss (Kim et al. 2020): with s = cos(x, p) [B, C],
    mean over the proxies of classes in the batch of log(1 + sum_{x of p} exp(-alpha (s - delta)))
    plus the mean over all C proxies of log(1 + sum_{x not of p} exp(alpha (s + delta))).
    `valid` is False only for an empty batch (the value is then 0)."""
    _check_margin(alpha, "alpha")
    _check_delta(delta)
    labels, similarities = _labels_and_similarities(labels, similarities)
    positive = tf.one_hot(labels, tf.shape(similarities)[1], on_value=True, off_value=False)
    alpha_, delta_ = tf.constant(alpha, similarities.dtype), tf.constant(delta, similarities.dtype)
    pos_terms = _log1p_sum_exp(-alpha_ * (similarities - delta_), positive)
    neg_terms = _log1p_sum_exp(alpha_ * (similarities + delta_), tf.logical_not(positive))
    with_positives = tf.cast(tf.reduce_any(positive, axis=0), similarities.dtype)
    value = (tf.reduce_sum(pos_terms * with_positives) / tf.maximum(tf.reduce_sum(with_positives), 1.0)
             + tf.reduce_mean(neg_terms))
    valid = tf.shape(labels)[0] > 0
    return MinedLoss(tf.where(valid, value, tf.zeros_like(value)), valid)


def quantization_loss(u) -> tf.Tensor:
    """mean_i ||b_i - u_i||^2 with b = sign(u) held constant (sign(0) taken as +1).

    Pulls relaxed codes u [B, K] towards the binary codes {-1, +1}^K they are hashed to.
    """
    u = tf.convert_to_tensor(u)
    check_rank(u, 2, "u")
    codes = tf.stop_gradient(tf.where(u >= 0, tf.ones_like(u), -tf.ones_like(u)))
    return tf.reduce_mean(tf.reduce_sum(tf.square(codes - u), axis=1))


def ramp_margin(step, margin_start: float, margin: float, ramp_steps: int, dtype=tf.float32) -> tf.Tensor:
    """Margin growing linearly from `margin_start` at step 0 to `margin` at `ramp_steps`, then flat."""
    if ramp_steps <= 0:
        return tf.constant(margin, dtype)
    fraction = tf.minimum(tf.cast(step, dtype) / tf.constant(ramp_steps, dtype), 1.0)
    return tf.constant(margin_start, dtype) + tf.constant(margin - margin_start, dtype) * fraction


def _scale_for_replicas(value: tf.Tensor) -> tf.Tensor:
    """Divide by the replica count, as Keras expects of a mean loss under tf.distribute."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


def _count(counter: tf.Variable, event: tf.Tensor) -> None:
    """Add 1 to `counter` when `event` is True, in a replica or in the cross-replica context.

    A SUM-synchronised counter takes assign_add only inside `strategy.run`; called
    elsewhere the whole batch is one call, so its first local component takes the
    increment (reading the counter sums the components).
    """
    increment = tf.cast(event, counter.dtype)
    in_replica = tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()
    if isinstance(counter, tf.distribute.DistributedValues) and not in_replica:
        counter.distribute_strategy.experimental_local_results(counter)[0].assign_add(increment)
    else:
        counter.assign_add(increment)


class _InBatchLoss(keras.losses.Loss):
    """Base of the mined Keras losses: (labels [B], embeddings [B, D]) -> one scalar.

    `num_invalid_batches` (int64 tf.Variable; summed over replicas when the loss is
    built inside a strategy scope) counts the batches that held nothing to mine.
    """

    def __init__(self, name: str, reduction: str = "sum_over_batch_size", dtype=None):
        _check_choice(reduction, ("sum_over_batch_size", "mean"), "reduction")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_invalid_batches = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="num_invalid_batches",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> MinedLoss:
        raise NotImplementedError

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"`{type(self).__name__}` mines pairs inside the batch and takes no `sample_weight`. "
                "Received a sample_weight; balance the batch with a sampler instead."
            )
        with tf.name_scope(self.name):
            result = self.compute(*_labels_and_embeddings(y_true, tf.cast(y_pred, self.dtype)))
            _count(self.num_invalid_batches, tf.logical_not(result.valid))
            return _scale_for_replicas(result.value)

    def call(self, y_true, y_pred):
        return self.compute(*_labels_and_embeddings(y_true, tf.cast(y_pred, self.dtype))).value

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="sketch")
class TripletLoss(_InBatchLoss):
    """In-batch triplet loss; see `triplet_loss` for the miners and their averages."""

    def __init__(
        self,
        margin: float = 0.2,
        miner: str = "batch_hard",
        squared: bool = False,
        distance: str = "l2",
        name: str = "triplet_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        _check_margin(margin)
        _check_choice(miner, tuple(TRIPLET_MINERS), "miner")
        _check_distance(distance, squared)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin, self.miner, self.squared, self.distance = float(margin), miner, bool(squared), distance

    def compute(self, labels, embeddings):
        return triplet_loss(labels, embeddings, self.margin, self.miner, self.squared, self.distance)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "miner": self.miner,
            "squared": self.squared,
            "distance": self.distance,
        }


@keras.saving.register_keras_serializable(package="sketch")
class ContrastiveLoss(_InBatchLoss):
    """In-batch contrastive loss; see `in_batch_contrastive_loss`."""

    def __init__(
        self,
        margin: float = 1.0,
        miner: str | None = None,
        distance: str = "l2",
        name: str = "contrastive_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        _check_margin(margin)
        _check_choice(miner, tuple(PAIR_MINERS), "miner")
        _check_distance(distance, False)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin, self.miner, self.distance = float(margin), miner, distance

    def compute(self, labels, embeddings):
        return in_batch_contrastive_loss(labels, embeddings, self.margin, self.miner, self.distance)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "miner": self.miner, "distance": self.distance}


@keras.saving.register_keras_serializable(package="sketch")
class DeepHashLoss(TripletLoss):
    """Triplet loss on relaxed codes u plus `quantization_weight` * quantization_loss(u).

    With `margin_ramp_steps` > 0 the triplet margin grows linearly from `margin_start`
    to `margin`; the step is read from `self.step`, which the `MarginRamp` callback
    sets from the optimizer before each training batch. An invalid batch zeroes the
    triplet part only: the quantization part needs no pairs.
    """

    def __init__(
        self,
        margin: float = 0.5,
        miner: str = "batch_hard",
        squared: bool = False,
        distance: str = "l2",
        quantization_weight: float = 0.03,
        margin_start: float | None = None,
        margin_ramp_steps: int = 0,
        name: str = "deep_hash_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(margin, miner, squared, distance, name=name, reduction=reduction, dtype=dtype)
        if isinstance(quantization_weight, bool) or not (
            isinstance(quantization_weight, (int, float)) and math.isfinite(quantization_weight) and quantization_weight >= 0
        ):
            raise ValueError(
                f"Invalid value for argument `quantization_weight`. Received: {quantization_weight!r}. Expected a number >= 0."
            )
        if isinstance(margin_ramp_steps, bool) or not isinstance(margin_ramp_steps, int) or margin_ramp_steps < 0:
            raise ValueError(
                f"Invalid value for argument `margin_ramp_steps`. Received: {margin_ramp_steps!r}. Expected an integer >= 0."
            )
        start = self.margin if margin_start is None else margin_start
        if isinstance(start, bool) or not (isinstance(start, (int, float)) and 0 <= start <= self.margin):
            raise ValueError(
                f"Invalid value for argument `margin_start`. Received: {margin_start!r}. "
                f"Expected a number in [0, margin={self.margin}] or None."
            )
        self.quantization_weight = float(quantization_weight)
        self.margin_start = None if margin_start is None else float(margin_start)
        self.margin_ramp_steps = margin_ramp_steps
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="margin_step")

    def current_margin(self, dtype=tf.float32) -> tf.Tensor:
        start = self.margin if self.margin_start is None else self.margin_start
        return ramp_margin(self.step, start, self.margin, self.margin_ramp_steps, dtype)

    def compute(self, labels, embeddings):
        margin = self.current_margin(embeddings.dtype)
        triplet = triplet_loss(labels, embeddings, margin, self.miner, self.squared, self.distance)
        value = triplet.value + self.quantization_weight * quantization_loss(embeddings)
        return MinedLoss(value, triplet.valid)

    def get_config(self):
        return {
            **super().get_config(),
            "quantization_weight": self.quantization_weight,
            "margin_start": self.margin_start,
            "margin_ramp_steps": self.margin_ramp_steps,
        }


@keras.saving.register_keras_serializable(package="sketch")
class NormalizedSoftmaxLoss(keras.losses.Loss):
    """`normalized_softmax_loss` for compile: y_true labels [B], y_pred cosines [B, C]."""

    def __init__(self, temperature: float = 0.05, name: str = "normalized_softmax_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        _check_margin(temperature, "temperature")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        return normalized_softmax_loss(y_true, tf.cast(y_pred, self.dtype), self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="sketch")
class ProxyAnchorLoss(_InBatchLoss):
    """`proxy_anchor_loss` for compile: y_true labels [B], y_pred cosines [B, C]."""

    def __init__(self, alpha: float = 32.0, delta: float = 0.1, name: str = "proxy_anchor_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        _check_margin(alpha, "alpha")
        _check_delta(delta)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha, self.delta = float(alpha), float(delta)

    def compute(self, labels, similarities):
        return proxy_anchor_loss(labels, similarities, self.alpha, self.delta)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "delta": self.delta}


@keras.saving.register_keras_serializable(package="sketch")
class SoftmaxTripletLoss(_InBatchLoss):
    """`softmax_triplet_loss` for compile: y_true labels [B], y_pred [B, embedding_dim + C]."""

    def __init__(self, embedding_dim: int, margin: float = 0.2, miner: str = "semi_hard", temperature: float = 0.05,
                 softmax_weight: float = 1.0, name: str = "softmax_triplet_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"Invalid value for argument `embedding_dim`. Received: {embedding_dim!r}. "
                             "Expected an integer >= 1.")
        _check_margin(margin)
        _check_choice(miner, tuple(TRIPLET_MINERS), "miner")
        _check_margin(temperature, "temperature")
        if isinstance(softmax_weight, bool) or not isinstance(softmax_weight, numbers.Real) or not (
                math.isfinite(softmax_weight) and softmax_weight >= 0):
            raise ValueError(f"Invalid value for argument `softmax_weight`. Received: {softmax_weight!r}. "
                             "Expected a finite number >= 0.")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.embedding_dim, self.margin, self.miner = embedding_dim, float(margin), miner
        self.temperature, self.softmax_weight = float(temperature), float(softmax_weight)

    def compute(self, labels, outputs):
        return softmax_triplet_loss(labels, outputs, self.embedding_dim, self.margin, self.miner, self.temperature,
                                    self.softmax_weight)

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim, "margin": self.margin,
                "miner": self.miner, "temperature": self.temperature, "softmax_weight": self.softmax_weight}


@keras.saving.register_keras_serializable(package="sketch")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits [B, C] against integer labels [B] with label smoothing s: the target
    puts 1 - s + s / C on the label and s / C on every other class (Szegedy et al. 2016). s = 0 is
    Keras' SparseCategoricalCrossentropy(from_logits=True)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy",
                 reduction: str = "sum_over_batch_size", dtype=None):
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Invalid value for -label_smoothing: {label_smoothing!r}. Expected a number in [0, 1).")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        targets = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(targets, y_pred, from_logits=True,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class MarginRamp(keras.callbacks.Callback):
    """Copy the optimizer's iteration count into `loss.step` before every training batch."""

    def __init__(self, loss: DeepHashLoss):
        super().__init__()
        self.loss = loss

    def on_train_batch_begin(self, batch, logs=None):
        self.loss.step.assign(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))


class LogInvalidBatches(keras.callbacks.Callback):
    """Put the loss's running `num_invalid_batches` count into the epoch logs."""

    def __init__(self, loss: _InBatchLoss):
        super().__init__()
        self.loss = loss

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["num_invalid_batches"] = int(self.loss.num_invalid_batches.numpy())


# ---------------------------------------------------------------- visual-semantic embedding (DeViSE)


def _class_vector_matrix(class_vectors, name: str = "class_vectors") -> tf.Tensor:
    """float32 [C, D] class word vectors (unit rows expected), checked for rank and emptiness."""
    matrix = tf.convert_to_tensor(class_vectors, tf.float32)
    if matrix.shape.rank != 2 or (matrix.shape[0] is not None and matrix.shape[0] < 1):
        raise ValueError(f"Invalid value for argument `{name}`. Received: shape {matrix.shape}. "
                         "Expected a [C, D] matrix with C >= 1 (one word vector per class).")
    return matrix


def _labels_and_semantic(labels, embeddings, matrix: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    labels, embeddings = _labels_and_embeddings(labels, embeddings)
    embeddings = tf.cast(embeddings, tf.float32)
    if embeddings.shape[-1] is not None and matrix.shape[-1] is not None and embeddings.shape[-1] != matrix.shape[-1]:
        raise ValueError(f"Dimensions differ: embeddings (y_pred) have {embeddings.shape[-1]} but the class vectors "
                         f"have {matrix.shape[-1]}.")
    return tf.cast(labels, tf.int32), embeddings


def devise_hinge_per_example(labels, embeddings, class_vectors, margin: float = 0.1) -> tf.Tensor:
    """DeViSE's hinge rank loss per example (Frome et al. 2013): with v the image's projected embedding
    [B, D] and T the class word vectors [C, D] (unit rows),
    loss_i = sum over classes j != y_i of max(0, margin - t_{y_i} . v_i + t_j . v_i). Returns [B]."""
    _check_margin(margin)
    matrix = _class_vector_matrix(class_vectors)
    labels, embeddings = _labels_and_semantic(labels, embeddings, matrix)
    scores = tf.matmul(embeddings, matrix, transpose_b=True)  # [B, C]
    true = tf.gather(scores, labels, axis=1, batch_dims=1)[:, None]
    hinge = tf.nn.relu(tf.constant(margin, tf.float32) - true + scores)
    others = tf.logical_not(tf.one_hot(labels, tf.shape(matrix)[0], on_value=True, off_value=False))
    return tf.reduce_sum(tf.where(others, hinge, tf.zeros_like(hinge)), axis=1)


def devise_hinge_loss(labels, embeddings, class_vectors, margin: float = 0.1) -> tf.Tensor:
    """`devise_hinge_per_example` averaged over the batch (0 for an empty batch)."""
    per_example = devise_hinge_per_example(labels, embeddings, class_vectors, margin)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example), tf.cast(tf.size(per_example), tf.float32))


def cosine_regression_per_example(labels, embeddings, class_vectors) -> tf.Tensor:
    """1 - cos(v_i, t_{y_i}) per example: the embedding regressed onto its class's word vector. Returns [B]."""
    matrix = _class_vector_matrix(class_vectors)
    labels, embeddings = _labels_and_semantic(labels, embeddings, matrix)
    targets = tf.math.l2_normalize(tf.gather(matrix, labels), axis=1)
    return 1.0 - tf.reduce_sum(tf.math.l2_normalize(embeddings, axis=1) * targets, axis=1)


def cosine_regression_loss(labels, embeddings, class_vectors) -> tf.Tensor:
    """`cosine_regression_per_example` averaged over the batch (0 for an empty batch)."""
    per_example = cosine_regression_per_example(labels, embeddings, class_vectors)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example), tf.cast(tf.size(per_example), tf.float32))


class _SemanticLoss(keras.losses.Loss):
    """Base of the visual-semantic losses: y_true labels [B] (row indices of `class_vectors`),
    y_pred projected image embeddings [B, D]; the class word vectors [C, D] are held as a constant."""

    def __init__(self, class_vectors, name: str, reduction: str = "sum_over_batch_size", dtype=None):
        self.class_vectors = _class_vector_matrix(class_vectors)
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def get_config(self):
        return {**super().get_config(), "class_vectors": keras.ops.convert_to_numpy(self.class_vectors).tolist()}


@keras.saving.register_keras_serializable(package="sketch")
class DeViSEHingeLoss(_SemanticLoss):
    """`devise_hinge_per_example` for compile (margin 0.1 as in DeViSE); Keras averages over the batch."""

    def __init__(self, class_vectors, margin: float = 0.1, name: str = "devise_hinge_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        _check_margin(margin)
        super().__init__(class_vectors, name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return devise_hinge_per_example(y_true, y_pred, self.class_vectors, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="sketch")
class CosineRegressionLoss(_SemanticLoss):
    """`cosine_regression_per_example` (1 - cos(v, t_y)) for compile; Keras averages over the batch."""

    def __init__(self, class_vectors, name: str = "cosine_regression_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(class_vectors, name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return cosine_regression_per_example(y_true, y_pred, self.class_vectors)


__all__ += ["CosineRegressionLoss", "DeViSEHingeLoss", "cosine_regression_loss", "devise_hinge_loss"]


@keras.saving.register_keras_serializable(package="sketch")
class ConSECrossEntropy(SmoothedSparseCrossentropy):
    """ConSE's training loss: the label-smoothed cross-entropy of the logits that follow the first
    `semantic_dim` columns of a vse model's output [B, D + C] (models/vse.py, head 'conse')."""

    def __init__(self, semantic_dim: int, label_smoothing: float = 0.0, name: str = "conse_crossentropy",
                 reduction: str = "sum_over_batch_size", dtype=None):
        if isinstance(semantic_dim, bool) or not isinstance(semantic_dim, int) or semantic_dim < 1:
            raise ValueError(f"Invalid value for argument `semantic_dim`. Received: {semantic_dim!r}. Expected an "
                             "integer >= 1.")
        super().__init__(label_smoothing, name=name, reduction=reduction, dtype=dtype)
        self.semantic_dim = semantic_dim

    def call(self, y_true, y_pred):
        return super().call(y_true, tf.convert_to_tensor(y_pred)[:, self.semantic_dim:])

    def get_config(self):
        return {**super().get_config(), "semantic_dim": self.semantic_dim}


__all__ += ["ConSECrossEntropy"]
