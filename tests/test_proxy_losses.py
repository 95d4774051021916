"""Proxy losses (normalised softmax, proxy-anchor) and the CosineProxies head against plain NumPy loops."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import losses
from models.proxies import CosineProxies


def np_cosines(x, proxies):
    out = np.zeros((len(x), len(proxies)))
    for i, e in enumerate(x):
        for c, p in enumerate(proxies):
            ne, np_ = np.linalg.norm(e), np.linalg.norm(p)
            out[i, c] = 0.0 if ne == 0 or np_ == 0 else e @ p / (ne * np_)
    return out


def np_normalized_softmax(y, s, temperature):
    total = 0.0
    for i, label in enumerate(y):
        logits = [s[i, c] / temperature for c in range(s.shape[1])]
        top = max(logits)
        total += -(logits[label] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / len(y)


def np_proxy_anchor(y, s, alpha, delta):
    """Kim et al. 2020, eq. 4, one proxy at a time."""
    classes = s.shape[1]
    pos_sum, with_positives, neg_sum = 0.0, 0, 0.0
    for c in range(classes):
        members = [i for i in range(len(y)) if y[i] == c]
        others = [i for i in range(len(y)) if y[i] != c]
        if members:
            with_positives += 1
            pos_sum += math.log(1 + sum(math.exp(-alpha * (s[i, c] - delta)) for i in members))
        neg_sum += math.log(1 + sum(math.exp(alpha * (s[i, c] + delta)) for i in others))
    return pos_sum / with_positives + neg_sum / classes


def cosines_of(seed, batch=12, classes=5, dim=6):
    rng = np.random.default_rng(seed)
    s = np.clip(rng.normal(0, 0.5, (batch, classes)), -1, 1)
    y = rng.integers(0, classes - 1, batch)  # the last class has no example in the batch
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_normalized_softmax_matches_loop(seed, temperature):
    y, s = cosines_of(seed)
    got = losses.normalized_softmax_loss(y, tf.constant(s, tf.float64), temperature)
    assert float(got) == pytest.approx(np_normalized_softmax(y, s, temperature), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha,delta", [(32.0, 0.1), (4.0, 0.0), (1.0, 0.5)])
def test_proxy_anchor_matches_loop(seed, alpha, delta):
    y, s = cosines_of(seed)
    result = losses.proxy_anchor_loss(y, tf.constant(s, tf.float64), alpha, delta)
    assert bool(result.valid)
    assert float(result.value) == pytest.approx(np_proxy_anchor(y, s, alpha, delta), rel=1e-9)


def test_proxy_anchor_stays_finite_where_exp_overflows():
    y = np.array([0, 1, 1, 2])
    s = np.array([[1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, -1.0]], np.float32)
    value = losses.proxy_anchor_loss(y, tf.constant(s), alpha=200.0, delta=0.1).value  # exp(220) > float32 max
    expected = np_proxy_anchor(y, s.astype(np.float64), 1.0, 0.1)  # scale check below, not equality
    assert np.isfinite(float(value)) and float(value) > expected
    with tf.GradientTape() as tape:
        t = tf.Variable(s)
        loss = losses.proxy_anchor_loss(y, t, alpha=200.0).value
    assert np.isfinite(tape.gradient(loss, t).numpy()).all()


def test_an_empty_batch_is_invalid_and_zero():
    result = losses.proxy_anchor_loss(tf.zeros([0], tf.int32), tf.zeros([0, 3]))
    assert not bool(result.valid) and float(result.value) == 0.0


def test_cosine_proxies_match_loop_and_a_zero_embedding_gives_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    x[2] = 0.0
    layer = CosineProxies(4)
    out = layer(x).numpy()
    np.testing.assert_allclose(out, np_cosines(x, layer.proxies.numpy()), atol=1e-6)
    assert out.shape == (7, 4) and np.all(out[2] == 0.0)


@pytest.mark.parametrize("bad", [{"alpha": 0}, {"alpha": -1.0}, {"delta": -0.1}, {"delta": math.nan}, {"alpha": True}])
def test_bad_proxy_anchor_arguments_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="Invalid value for argument"):
        losses.ProxyAnchorLoss(**bad)


def test_bad_temperature_and_class_count_are_errors():
    with pytest.raises(ValueError, match="temperature"):
        losses.NormalizedSoftmaxLoss(temperature=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        CosineProxies(1)


@pytest.mark.parametrize("loss", [losses.NormalizedSoftmaxLoss(0.1), losses.ProxyAnchorLoss(16.0, 0.2)])
def test_config_round_trip(loss):
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()


@pytest.mark.parametrize("make", [lambda: losses.NormalizedSoftmaxLoss(0.1), lambda: losses.ProxyAnchorLoss()])
def test_a_proxy_head_learns_clusters_it_cannot_see_pairs_of(make, tmp_path):
    """Batches of 4 from 8 classes: rarely a positive pair, yet the proxies pull each class together."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 3
    y = rng.integers(0, 8, 800)
    x = (centres[y] + rng.normal(size=(800, 16))).astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    embedding = keras.layers.Dense(8, name="features")(inputs)
    model = keras.Model(inputs, CosineProxies(8)(embedding))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=make())
    before = model.evaluate(x, y, batch_size=200, verbose=0)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert model.evaluate(x, y, batch_size=200, verbose=0) < 0.5 * before
    assert np.mean(model.predict(x, verbose=0).argmax(1) == y) > 0.95  # nearest proxy is the class
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-6)


def test_the_lr_multiplier_moves_the_proxies_that_many_times_further_under_adam():
    """Same starting proxies and embeddings: one Adam step moves the used proxies (m x stored) m times as far."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 6)).astype(np.float32), rng.integers(0, 4, 8)
    start = rng.normal(size=(4, 6)).astype(np.float32)
    moved = {}
    for m in (1.0, 10.0):
        layer = CosineProxies(4, lr_multiplier=m)
        layer.build((None, 6))
        layer.proxies.assign(start / m)
        np.testing.assert_allclose(layer(x).numpy(), np_cosines(x, start), atol=1e-6)  # the scale changes nothing
        optimizer = keras.optimizers.Adam(1e-3)
        with tf.GradientTape() as tape:
            loss = losses.proxy_anchor_loss(y, layer(x)).value
        optimizer.apply_gradients(zip(tape.gradient(loss, [layer.proxies]), [layer.proxies]))
        moved[m] = np.abs(layer.proxies.numpy() * m - start).max()
    assert moved[10.0] == pytest.approx(10 * moved[1.0], rel=1e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_sparse_crossentropy_matches_a_loop_and_keras_at_zero(smoothing):
    rng = np.random.default_rng(11)
    logits, labels = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, 6)
    expected = 0.0
    for row, label in zip(logits, labels):
        top = row.max()
        log_softmax = row - top - math.log(sum(math.exp(v - top) for v in row))
        target = [smoothing / 5 + (1 - smoothing if c == label else 0.0) for c in range(5)]
        expected -= sum(t * lp for t, lp in zip(target, log_softmax))
    got = losses.SmoothedSparseCrossentropy(smoothing)(labels, tf.constant(logits, tf.float32))
    assert float(got) == pytest.approx(expected / 6, rel=1e-5)
    if smoothing == 0.0:
        plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, tf.constant(logits, tf.float32))
        assert float(got) == pytest.approx(float(plain), rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.SmoothedSparseCrossentropy(1.0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("miner", ["semi_hard", "batch_hard"])
def test_softmax_triplet_is_the_triplet_loop_plus_the_softmax_loop(seed, miner):
    """One output [embedding (6), cosines (5)]: the triplet loop on the first part plus 0.5 x the
    normalised-softmax loop on the second, as the Keras loss computes it."""
    from tests.test_losses import np_triplet

    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 3)
    embedding = rng.normal(size=(12, 6))
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    s = np.clip(rng.normal(0, 0.5, (12, 5)), -1, 1)
    outputs = np.concatenate([embedding, s], axis=1)
    expected = np_triplet(embedding, y, 0.2, miner)[0] + 0.5 * np_normalized_softmax(y, s, 0.1)
    result = losses.softmax_triplet_loss(y, tf.constant(outputs, tf.float64), 6, 0.2, miner, 0.1, 0.5)
    assert bool(result.valid) and float(result.value) == pytest.approx(expected, rel=1e-6)
    loss = losses.SoftmaxTripletLoss(6, 0.2, miner, 0.1, 0.5)
    assert float(loss(y, tf.constant(outputs, tf.float32))) == pytest.approx(expected, rel=1e-4)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()


def test_softmax_triplet_arguments_are_one_line_errors():
    for kwargs, name in (({"embedding_dim": 0}, "embedding_dim"), ({"embedding_dim": 4, "softmax_weight": -1.0},
                                                                    "softmax_weight"),
                         ({"embedding_dim": 4, "miner": "nope"}, "miner")):
        with pytest.raises(ValueError, match=f"argument `{name}`"):
            losses.SoftmaxTripletLoss(**kwargs)
