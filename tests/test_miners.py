"""Distances and miners against plain NumPy loops over every pair and triplet."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models import miners


def _np_dist(x: np.ndarray) -> np.ndarray:
    b = len(x)
    return np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])


def _batch(seed: int, b: int = 16, d: int = 8, classes: int = 5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)), rng.integers(0, classes, size=b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_distances_match_loop(seed):
    x, _ = _batch(seed)
    ref = _np_dist(x)
    got = miners.pairwise_distances(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    got_sq = miners.pairwise_distances(tf.constant(x), squared=True).numpy()
    np.testing.assert_allclose(got_sq, ref**2, rtol=1e-10, atol=1e-10)
    got32 = miners.pairwise_distances(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(got32, ref, rtol=1e-5, atol=1e-5)


def test_pairwise_distances_diagonal_zero_and_no_negatives():
    rng = np.random.default_rng(3)
    x = (1000.0 + rng.normal(size=(10, 32))).astype(np.float32)  # large norms: strong cancellation
    x[4] = x[2]
    d2 = miners.pairwise_distances(tf.constant(x), squared=True).numpy()
    assert np.all(np.diag(d2) == 0.0)
    assert np.all(d2 >= 0.0)
    d = miners.pairwise_distances(tf.constant(x)).numpy()
    assert np.all(np.diag(d) == 0.0) and np.all(np.isfinite(d))


@pytest.mark.parametrize("squared", [False, True])
def test_pairwise_distances_gradient_finite_at_zero(squared):
    x = np.zeros((4, 3), np.float32)
    x[1] = [1.0, 2.0, 3.0]
    x[2] = x[1]  # an identical pair off the diagonal, and rows 0 and 3 identical at the origin
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(miners.pairwise_distances(xt, squared=squared))
    grad = tape.gradient(total, xt).numpy()
    assert np.all(np.isfinite(grad))


def test_pairwise_distance_gradient_matches_analytic():
    x, _ = _batch(4, b=6, d=3)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(miners.pairwise_distances(xt))
    ref = np.zeros_like(x)
    d = _np_dist(x)
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j:
                ref[i] += 2.0 * (x[i] - x[j]) / d[i, j]  # d_ij and d_ji both depend on x_i
    np.testing.assert_allclose(tape.gradient(total, xt).numpy(), ref, rtol=1e-8)


def test_cosine_distances_match_loop():
    x, _ = _batch(5)
    x[3] = 0.0  # a zero row: distance 1 to every other row, no NaN
    b = len(x)
    ref = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            cos = 0.0 if ni == 0 or nj == 0 else x[i] @ x[j] / (ni * nj)
            ref[i, j] = 0.0 if i == j else 1.0 - cos
    np.testing.assert_allclose(miners.pairwise_cosine_distances(tf.constant(x)).numpy(), ref, atol=1e-10)


def test_masks_match_loop():
    labels = np.array([0, 1, 0, 2, 1, 0])
    pos = miners.positive_mask(tf.constant(labels)).numpy()
    neg = miners.negative_mask(tf.constant(labels)).numpy()
    for i in range(6):
        for j in range(6):
            assert pos[i, j] == (i != j and labels[i] == labels[j])
            assert neg[i, j] == (labels[i] != labels[j])


def test_rank_error_names_argument():
    with pytest.raises(ValueError, match="embeddings.*rank 2"):
        miners.pairwise_distances(tf.zeros([4]))


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_all_triplets_are_every_valid_triplet(seed):
    x, y = _batch(seed)
    dist = tf.constant(_np_dist(x))
    mined = miners.batch_all_triplets(dist, tf.constant(y))
    valid = np.broadcast_to(mined.valid.numpy(), (16, 16, 16))
    ap = np.broadcast_to(mined.ap.numpy(), (16, 16, 16))
    an = np.broadcast_to(mined.an.numpy(), (16, 16, 16))
    d = dist.numpy()
    expected = set()
    for a in range(16):
        for p in range(16):
            for n in range(16):
                if a != p and y[a] == y[p] and y[n] != y[a]:
                    expected.add((a, p, n))
                    assert ap[a, p, n] == d[a, p] and an[a, p, n] == d[a, n]
    assert set(map(tuple, np.argwhere(valid))) == expected
    assert expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_matches_loop(seed):
    x, y = _batch(seed, b=12, classes=6)
    y[0] = 99  # a singleton anchor: no positive, not valid
    d = _np_dist(x)
    mined = miners.batch_hard_triplets(tf.constant(d), tf.constant(y))
    n_valid = 0
    for a in range(12):
        pos = [d[a, p] for p in range(12) if p != a and y[p] == y[a]]
        neg = [d[a, n] for n in range(12) if y[n] != y[a]]
        assert bool(mined.valid[a]) == bool(pos and neg)
        if pos and neg:
            n_valid += 1
            assert mined.ap[a].numpy() == pytest.approx(max(pos), abs=1e-12)
            assert mined.an[a].numpy() == pytest.approx(min(neg), abs=1e-12)
    assert 0 < n_valid < 12  # the batch has singletons, so both branches ran


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_semi_hard_matches_facenet_loop_with_fallback(seed):
    x, y = _batch(seed, b=16, d=2, classes=3)
    d = _np_dist(x)
    mined = miners.semi_hard_triplets(tf.constant(d), tf.constant(y))
    valid = mined.valid.numpy()
    an = mined.an.numpy()
    used = {"farther": 0, "fallback": 0}
    for a in range(16):
        negs = [d[a, n] for n in range(16) if y[n] != y[a]]
        for p in range(16):
            is_pair = p != a and y[p] == y[a] and bool(negs)
            assert valid[a, p] == is_pair
            if not is_pair:
                continue
            farther = [v for v in negs if v > d[a, p]]
            if farther:
                used["farther"] += 1
                assert an[a, p] == pytest.approx(min(farther), abs=1e-12)
            else:
                used["fallback"] += 1
                assert an[a, p] == pytest.approx(max(negs), abs=1e-12)
    assert used["farther"] > 0
    np.testing.assert_array_equal(mined.ap.numpy(), d)


def test_semi_hard_fallback_is_the_farthest_negative():
    # Anchor 0 at the origin, positive 1 far away, both negatives closer than it.
    d = np.array(
        [
            [0.0, 5.0, 1.0, 2.0],
            [5.0, 0.0, 4.5, 4.0],
            [1.0, 4.5, 0.0, 1.5],
            [2.0, 4.0, 1.5, 0.0],
        ]
    )
    y = np.array([0, 0, 1, 2])
    mined = miners.semi_hard_triplets(tf.constant(d), tf.constant(y))
    assert mined.an.numpy()[0, 1] == 2.0  # no negative beyond 5.0: farthest negative of anchor 0
    assert mined.an.numpy()[1, 0] == 4.5  # anchor 1: both negatives closer than 5.0 too
    assert mined.valid.numpy()[0, 1] and not mined.valid.numpy()[2, 3]


def test_semi_hard_under_xla_matches_eager():
    x, y = _batch(7, b=20, classes=4)
    dist = tf.constant(_np_dist(x), tf.float32)
    eager = miners.semi_hard_triplets(dist, tf.constant(y))
    jitted = tf.function(miners.semi_hard_triplets, jit_compile=True)(dist, tf.constant(y))
    np.testing.assert_allclose(jitted.an.numpy(), eager.an.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(jitted.valid.numpy(), eager.valid.numpy())


@pytest.mark.parametrize("seed", [0, 1])
def test_hard_negative_pairs_match_loop(seed):
    x, y = _batch(seed, b=12, classes=4)
    y[0] = 99  # a singleton still has negatives
    d = _np_dist(x)
    pairs = miners.hard_negative_pairs(tf.constant(d), tf.constant(y))
    pos, neg = pairs.pos.numpy(), pairs.neg.numpy()
    for a in range(12):
        negs = [n for n in range(12) if y[n] != y[a]]
        hardest = min(negs, key=lambda n: d[a, n])
        assert list(np.flatnonzero(neg[a])) == [hardest]
        for p in range(12):
            assert pos[a, p] == (p != a and y[p] == y[a])


def test_hard_negative_pairs_one_class_has_no_negative():
    d = _np_dist(np.random.default_rng(0).normal(size=(5, 3)))
    pairs = miners.hard_negative_pairs(tf.constant(d), tf.constant(np.zeros(5, np.int64)))
    assert not pairs.neg.numpy().any()
    assert pairs.pos.numpy().sum() == 20


def test_all_pairs_are_every_ordered_pair():
    y = tf.constant([0, 0, 1, 2])
    pairs = miners.all_pairs(tf.zeros([4, 4]), y)
    assert pairs.pos.numpy().sum() == 2 and pairs.neg.numpy().sum() == 10


def test_registries():
    assert set(miners.TRIPLET_MINERS) == {"batch_all", "batch_hard", "semi_hard"}
    assert miners.TRIPLET_MINERS["batch_all"].average == "nonzero"
    assert set(miners.PAIR_MINERS) == {None, "hard_negative"}
    assert set(miners.DISTANCES) == {"l2", "cosine"}
