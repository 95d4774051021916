"""Pairwise distances and in-batch online miners for metric learning.

Every miner is vectorised over the batch (masks, sorts and reductions; no Python loop
over examples). It takes a pairwise distance matrix `dist` [B, B] and labels [B] and
returns which pairs or triplets the batch yields, as dense masks, so that the loss
only applies its formula. The registries `TRIPLET_MINERS` and `PAIR_MINERS` map the
names used in configs to these functions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf


def safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    """sqrt(x) for x >= 0 whose gradient at x <= 0 is 0 instead of inf/NaN.

    The double `where` keeps the sqrt of the unselected branch away from 0, so no
    infinite derivative can leak into the backward pass (0 * inf = NaN).
    """
    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


def check_rank(tensor: tf.Tensor, rank: int, name: str) -> None:
    """Raise a ValueError naming `name` when the static rank is known and differs."""
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(
            f"Invalid rank for `{name}`: expected rank {rank}, received shape {tensor.shape}."
        )


def pairwise_distances(embeddings: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """Euclidean distances [B, B] between the rows of `embeddings` [B, D].

    Uses |a|^2 - 2 a.b + |b|^2; the negatives that cancellation produces are clipped
    to 0, the diagonal is exactly 0, and the sqrt has a zero (not NaN) gradient at 0.
    """
    embeddings = tf.convert_to_tensor(embeddings)
    check_rank(embeddings, 2, "embeddings")
    dot = tf.matmul(embeddings, embeddings, transpose_b=True)
    sq_norms = tf.linalg.diag_part(dot)
    d2 = tf.maximum(sq_norms[:, None] - 2.0 * dot + sq_norms[None, :], 0.0)
    d2 = tf.linalg.set_diag(d2, tf.zeros_like(sq_norms))
    return d2 if squared else safe_sqrt(d2)


def pairwise_cosine_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """1 - cos(a, b) [B, B] in [0, 2], diagonal exactly 0; safe for all-zero rows."""
    embeddings = tf.convert_to_tensor(embeddings)
    check_rank(embeddings, 2, "embeddings")
    unit = tf.math.l2_normalize(embeddings, axis=1)
    dist = tf.clip_by_value(1.0 - tf.matmul(unit, unit, transpose_b=True), 0.0, 2.0)
    return tf.linalg.set_diag(dist, tf.zeros_like(dist[:, 0]))


def _l2(embeddings: tf.Tensor, squared: bool) -> tf.Tensor:
    return pairwise_distances(embeddings, squared=squared)


def _cosine(embeddings: tf.Tensor, squared: bool) -> tf.Tensor:
    del squared  # rejected at construction: the cosine distance has no squared form here
    return pairwise_cosine_distances(embeddings)


DISTANCES: dict[str, Callable[[tf.Tensor, bool], tf.Tensor]] = {"l2": _l2, "cosine": _cosine}


def positive_mask(labels: tf.Tensor) -> tf.Tensor:
    """[B, B] bool: same label and i != j."""
    same = tf.equal(labels[:, None], labels[None, :])
    return tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))


def negative_mask(labels: tf.Tensor) -> tf.Tensor:
    """[B, B] bool: different labels."""
    return tf.not_equal(labels[:, None], labels[None, :])


def _fill_value(dist: tf.Tensor) -> tf.Tensor:
    """A finite value above every distance, used to hide entries from a min."""
    return tf.stop_gradient(tf.reduce_max(dist)) + 1.0


class MinedTriplets(NamedTuple):
    """Anchor-positive and anchor-negative distances and which entries are real triplets.

    The three tensors broadcast together: ap - an + margin is the per-triplet hinge
    argument, and `valid` says which entries take part in the average.
    """

    ap: tf.Tensor
    an: tf.Tensor
    valid: tf.Tensor


def batch_all_triplets(dist: tf.Tensor, labels: tf.Tensor) -> MinedTriplets:
    """Every valid triplet (a, p, n) of the batch: shapes [B, B, 1], [B, 1, B], [B, B, B]."""
    valid = tf.logical_and(positive_mask(labels)[:, :, None], negative_mask(labels)[:, None, :])
    return MinedTriplets(dist[:, :, None], dist[:, None, :], valid)


def batch_hard_triplets(dist: tf.Tensor, labels: tf.Tensor) -> MinedTriplets:
    """Per anchor, its farthest positive and nearest negative (Hermans et al. 2017), [B].

    Anchors without a positive or without a negative are not valid.
    """
    pos, neg = positive_mask(labels), negative_mask(labels)
    hardest_pos = tf.reduce_max(tf.where(pos, dist, tf.zeros_like(dist)), axis=1)
    hardest_neg = tf.reduce_min(tf.where(neg, dist, tf.fill(tf.shape(dist), _fill_value(dist))), axis=1)
    valid = tf.logical_and(tf.reduce_any(pos, axis=1), tf.reduce_any(neg, axis=1))
    return MinedTriplets(hardest_pos, hardest_neg, valid)


def semi_hard_triplets(dist: tf.Tensor, labels: tf.Tensor) -> MinedTriplets:
    """Per positive pair (a, p), the nearest negative farther than p (Schroff et al. 2015), [B, B].

    Fallback, as in FaceNet's reference and TF-Addons `triplet_semihard_loss`: when no
    negative is farther than the positive, the anchor's farthest negative is used.
    Adding "within the margin" to the choice changes no loss value: if the nearest
    farther negative lies beyond the margin, every choice gives a zero hinge.
    Vectorised with a per-anchor sort of the negative distances and a searchsorted,
    so memory is O(B^2), not the O(B^3) of the tiled formulation.
    """
    pos, neg = positive_mask(labels), negative_mask(labels)
    batch = tf.shape(dist)[0]
    neg_dist = tf.where(neg, dist, tf.fill(tf.shape(dist), _fill_value(dist)))
    sorted_neg = tf.sort(neg_dist, axis=1)
    num_neg = tf.reduce_sum(tf.cast(neg, tf.int32), axis=1)
    first_farther = tf.searchsorted(sorted_neg, dist, side="right")
    has_farther = first_farther < num_neg[:, None]
    nearest_farther = tf.gather(sorted_neg, tf.minimum(first_farther, batch - 1), batch_dims=1)
    farthest = tf.gather(sorted_neg, tf.maximum(num_neg - 1, 0)[:, None], batch_dims=1)
    an = tf.where(has_farther, nearest_farther, farthest)
    valid = tf.logical_and(pos, (num_neg > 0)[:, None])
    return MinedTriplets(dist, an, valid)


class TripletMiner(NamedTuple):
    """A registered triplet miner and the average its loss uses.

    average: "nonzero" divides the hinge sum by the number of triplets with a positive
    loss (Hermans' batch-all "BA!=0"); "valid" divides by the number of mined triplets.
    """

    mine: Callable[[tf.Tensor, tf.Tensor], MinedTriplets]
    average: str


TRIPLET_MINERS: dict[str, TripletMiner] = {
    "batch_all": TripletMiner(batch_all_triplets, "nonzero"),
    "batch_hard": TripletMiner(batch_hard_triplets, "valid"),
    "semi_hard": TripletMiner(semi_hard_triplets, "valid"),
}


class MinedPairs(NamedTuple):
    """[B, B] bool masks of the ordered pairs (i, j) used as positive and as negative pairs."""

    pos: tf.Tensor
    neg: tf.Tensor


def all_pairs(dist: tf.Tensor, labels: tf.Tensor) -> MinedPairs:
    """Every ordered pair i != j: same label positive, different label negative."""
    del dist
    return MinedPairs(positive_mask(labels), negative_mask(labels))


def hard_negative_pairs(dist: tf.Tensor, labels: tf.Tensor) -> MinedPairs:
    """All positive pairs plus, per anchor, its single nearest negative (first on ties)."""
    pos, neg = positive_mask(labels), negative_mask(labels)
    neg_dist = tf.where(neg, dist, tf.fill(tf.shape(dist), _fill_value(dist)))
    hardest = tf.argmin(neg_dist, axis=1, output_type=tf.int32)
    chosen = tf.cast(tf.one_hot(hardest, tf.shape(dist)[0], dtype=tf.int32), tf.bool)
    return MinedPairs(pos, tf.logical_and(chosen, tf.reduce_any(neg, axis=1, keepdims=True)))


PAIR_MINERS: dict[str | None, Callable[[tf.Tensor, tf.Tensor], MinedPairs]] = {
    None: all_pairs,
    "hard_negative": hard_negative_pairs,
}
