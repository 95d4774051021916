"""Visual-semantic embedding (issue 14): DeViSE hinge and cosine regression losses against explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.losses import (CosineRegressionLoss, DeViSEHingeLoss, cosine_regression_loss, devise_hinge_loss)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hinge_by_loops(labels, embeddings, vectors, margin) -> float:
    total = 0.0
    for v, y in zip(embeddings.astype(np.float64), labels):
        true = sum(a * b for a, b in zip(vectors[y], v))
        for j, t in enumerate(vectors.astype(np.float64)):
            if j != y:
                total += max(0.0, margin - true + sum(a * b for a, b in zip(t, v)))
    return total / len(labels)


def cosine_by_loops(labels, embeddings, vectors) -> float:
    total = 0.0
    for v, y in zip(embeddings.astype(np.float64), labels):
        t = vectors[y].astype(np.float64)
        total += 1.0 - sum(a * b for a, b in zip(v, t)) / (math.sqrt(sum(a * a for a in v)) *
                                                            math.sqrt(sum(b * b for b in t)))
    return total / len(labels)


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng.normal(size=(6, 5))).astype(np.float32)
    embeddings = unit_rows(rng.normal(size=(9, 5))).astype(np.float32)
    labels = rng.integers(0, 6, size=9).astype(np.int32)
    return labels, embeddings, vectors


@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
def test_devise_hinge_matches_a_loop(batch, margin):
    labels, embeddings, vectors = batch
    expected = hinge_by_loops(labels, embeddings, vectors, margin)
    assert float(devise_hinge_loss(labels, embeddings, vectors, margin)) == pytest.approx(expected, rel=1e-5)
    assert float(DeViSEHingeLoss(vectors, margin=margin)(labels, embeddings)) == pytest.approx(expected, rel=1e-5)
    assert float(DeViSEHingeLoss(vectors, margin=margin)(labels[:, None], embeddings)) == pytest.approx(expected,
                                                                                                        rel=1e-5)


def test_devise_hinge_is_zero_when_every_class_is_beaten_by_the_margin():
    vectors = np.eye(3, dtype=np.float32)
    assert float(devise_hinge_loss([0, 1, 2], vectors, vectors, margin=0.1)) == 0.0  # 1 - 0 > 0.1
    # margin 1.5 > 1: each of the 2 other classes costs 1.5 - 1 = 0.5
    assert float(devise_hinge_loss([0, 1, 2], vectors, vectors, margin=1.5)) == pytest.approx(1.0)


def test_cosine_regression_matches_a_loop(batch):
    labels, embeddings, vectors = batch
    expected = cosine_by_loops(labels, 3.0 * embeddings, vectors)  # not unit: cos normalises
    assert float(cosine_regression_loss(labels, 3.0 * embeddings, vectors)) == pytest.approx(expected, rel=1e-5)
    assert float(CosineRegressionLoss(vectors)(labels, 3.0 * embeddings)) == pytest.approx(expected, rel=1e-5)
    assert float(cosine_regression_loss([1], vectors[1:2], vectors)) == pytest.approx(0.0, abs=1e-6)


def test_losses_have_gradients_and_round_trip_their_config(batch):
    import keras
    import tensorflow as tf

    labels, embeddings, vectors = batch
    for loss in (DeViSEHingeLoss(vectors, margin=0.3), CosineRegressionLoss(vectors)):
        x = tf.Variable(embeddings)
        with tf.GradientTape() as tape:
            value = loss(labels, x)
        assert np.isfinite(tape.gradient(value, x).numpy()).all()
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is type(loss)
        assert float(again(labels, embeddings)) == pytest.approx(float(value), rel=1e-6)


@pytest.mark.parametrize("margin", [0, -0.1, float("nan"), "0.1", True])
def test_bad_margin_is_one_line_in_the_house_style(margin):
    vectors = np.eye(3, dtype=np.float32)
    for make in (lambda: DeViSEHingeLoss(vectors, margin=margin),
                 lambda: devise_hinge_loss([0], vectors[:1], vectors, margin=margin)):
        with pytest.raises(ValueError, match=r"^Invalid value for argument `margin`\. Received: margin=.*Expected"):
            make()


def test_shape_errors_name_both_numbers():
    with pytest.raises(ValueError, match="embeddings .* have 4 but the class vectors have 3"):
        devise_hinge_loss([0], np.ones((1, 4), np.float32), np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="Invalid value for argument `class_vectors`"):
        CosineRegressionLoss(np.ones(3, np.float32))
