"""Metric-learning losses against plain NumPy loops over every pair and triplet.

Run as a script (`python tests/test_losses.py mirrored`) it is the worker of the
MirroredStrategy test: it must configure two logical CPUs before any other TF use,
so it runs in a subprocess of its own.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent

if __name__ == "__main__":  # subprocess worker: logical devices first, before any TF op
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import pytest
import tensorflow as tf

from models import losses

# ---------------------------------------------------------------- NumPy references


def np_dist(x, squared=False, distance="l2"):
    b = len(x)
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if i == j:
                continue
            if distance == "cosine":
                ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
                d[i, j] = 1.0 - x[i] @ x[j] / (ni * nj)
            else:
                d[i, j] = np.sum((x[i] - x[j]) ** 2) if squared else np.linalg.norm(x[i] - x[j])
    return d


def np_triplet(x, y, margin, miner, squared=False, distance="l2"):
    """(loss, valid, number of valid triplets, number with a positive loss)."""
    d, b = np_dist(x, squared, distance), len(y)
    hinges = []
    for a in range(b):
        pos = [p for p in range(b) if p != a and y[p] == y[a]]
        neg = [n for n in range(b) if y[n] != y[a]]
        if not pos or not neg:
            continue
        if miner == "batch_all":
            hinges += [max(d[a, p] - d[a, n] + margin, 0.0) for p in pos for n in neg]
        elif miner == "batch_hard":
            hinges.append(max(max(d[a, p] for p in pos) - min(d[a, n] for n in neg) + margin, 0.0))
        else:  # semi_hard with the FaceNet / TF-Addons fallback
            for p in pos:
                farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
                an = min(farther) if farther else max(d[a, n] for n in neg)
                hinges.append(max(d[a, p] - an + margin, 0.0))
    nonzero = [h for h in hinges if h > 0]
    if not hinges:
        return 0.0, False, 0, 0
    if miner == "batch_all":
        value = sum(nonzero) / len(nonzero) if nonzero else 0.0
    else:
        value = sum(hinges) / len(hinges)
    return value, True, len(hinges), len(nonzero)


def np_contrastive_pairs(a, b, y, margin):
    out = []
    for i in range(len(y)):
        dd = np.linalg.norm(a[i] - b[i])
        out.append(0.5 * (1 - y[i]) * dd**2 + 0.5 * y[i] * max(margin - dd, 0.0) ** 2)
    return np.array(out)


def np_contrastive_in_batch(x, y, margin, miner):
    d, b = np_dist(x), len(y)
    terms, n_pos, n_neg = [], 0, 0
    for i in range(b):
        for j in range(b):
            if i != j and y[i] == y[j]:
                terms.append(0.5 * d[i, j] ** 2)
                n_pos += 1
        negs = [j for j in range(b) if y[j] != y[i]]
        if miner == "hard_negative" and negs:
            negs = [min(negs, key=lambda j: d[i, j])]
        for j in negs:
            terms.append(0.5 * max(margin - d[i, j], 0.0) ** 2)
            n_neg += 1
    if n_pos == 0 or n_neg == 0:
        return 0.0, False
    return sum(terms) / len(terms), True


def np_quantization(u):
    codes = np.where(u >= 0, 1.0, -1.0)
    return np.mean(np.sum((codes - u) ** 2, axis=1))


def _batch(seed, b=16, d=6, classes=4, scale=1.0):
    rng = np.random.default_rng(seed)
    return scale * rng.normal(size=(b, d)), rng.integers(0, classes, size=b)


def _grad(loss_fn, x):
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        value = loss_fn(xt)
    return value, tape.gradient(value, xt)


TRIPLET_MINERS = ["batch_all", "batch_hard", "semi_hard"]

# ---------------------------------------------------------------- triplet loss


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("miner", TRIPLET_MINERS)
def test_triplet_loss_matches_loop(miner, squared, seed):
    x, y = _batch(seed)
    margin = 2.0 if squared else 0.7
    ref, ref_valid, n_valid, n_nonzero = np_triplet(x, y, margin, miner, squared)
    assert ref_valid and n_nonzero > 0
    if miner != "batch_hard":
        assert n_nonzero < n_valid  # satisfied triplets present: the average matters
    got = losses.triplet_loss(tf.constant(y), tf.constant(x), margin, miner, squared)
    assert bool(got.valid)
    assert got.value.numpy() == pytest.approx(ref, rel=1e-10)
    keras_loss = losses.TripletLoss(margin, miner, squared, dtype="float64")
    assert keras_loss(y, x).numpy() == pytest.approx(ref, rel=1e-10)
    float32 = losses.TripletLoss(margin, miner, squared)(y, x.astype(np.float32)).numpy()
    assert float32 == pytest.approx(ref, rel=1e-5)


def test_batch_all_averages_over_positive_triplets_only():
    x, y = _batch(3)
    ref, _, n_valid, n_nonzero = np_triplet(x, y, 0.5, "batch_all")
    total = ref * n_nonzero
    got = losses.triplet_loss(y, x, 0.5, "batch_all").value.numpy()
    assert got == pytest.approx(total / n_nonzero, rel=1e-10)
    assert got != pytest.approx(total / n_valid, rel=1e-3)  # not the mean over every valid triplet


@pytest.mark.parametrize("miner", TRIPLET_MINERS)
def test_triplet_loss_cosine_distance_matches_loop(miner):
    x, y = _batch(4)
    ref = np_triplet(x, y, 0.3, miner, distance="cosine")[0]
    got = losses.TripletLoss(0.3, miner, distance="cosine", dtype="float64")(y, x).numpy()
    assert got == pytest.approx(ref, rel=1e-10)


def test_batch_all_all_satisfied_is_zero_but_valid():
    y = np.array([0, 0, 1, 1, 2, 2])
    x = np.array([[0.0, 0], [0, 0.1], [10, 0], [10, 0.1], [0, 10], [0.1, 10]])
    loss = losses.TripletLoss(margin=0.2, miner="batch_all", dtype="float64")
    assert loss(y, x).numpy() == 0.0
    assert int(loss.num_invalid_batches.numpy()) == 0


@pytest.mark.parametrize("miner", TRIPLET_MINERS)
def test_triplet_gradient_finite_at_identical_embeddings(miner):
    y = tf.constant([0, 0, 1, 1, 2])
    x = np.ones((5, 3))
    x[4] = 0.0
    for squared in (False, True):
        value, grad = _grad(lambda e: losses.triplet_loss(y, e, 0.5, miner, squared).value, x)
        assert np.isfinite(value.numpy()) and np.all(np.isfinite(grad.numpy()))


# ---------------------------------------------------------------- contrastive loss


def test_contrastive_pair_form_matches_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    y = rng.integers(0, 2, size=20)
    ref = np_contrastive_pairs(a, b, y, margin=3.0)
    assert 0 < np.count_nonzero(ref[y == 1]) < np.sum(y == 1)  # some dissimilar pairs beyond margin
    np.testing.assert_allclose(losses.contrastive_loss(a, b, y, 3.0).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(losses.contrastive_loss(a, b, y[:, None], 3.0).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("y_value", [0, 1])
def test_contrastive_pair_gradient_finite_at_zero_distance(y_value):
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    y = tf.constant([y_value, y_value])
    value, grad = _grad(lambda e: tf.reduce_sum(losses.contrastive_loss(e, tf.constant(a), y, 1.0)), a)
    assert np.all(np.isfinite(grad.numpy()))
    assert value.numpy() == pytest.approx(0.0 if y_value == 0 else 1.0)  # 2 pairs * 0.5 * m^2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("miner", [None, "hard_negative"])
def test_in_batch_contrastive_matches_loop(miner, seed):
    x, y = _batch(seed, b=12, classes=3)
    ref, valid = np_contrastive_in_batch(x, y, 3.0, miner)
    assert valid
    got = losses.in_batch_contrastive_loss(y, x, 3.0, miner)
    assert got.value.numpy() == pytest.approx(ref, rel=1e-10)
    assert losses.ContrastiveLoss(3.0, miner, dtype="float64")(y, x).numpy() == pytest.approx(ref, rel=1e-10)
    assert losses.ContrastiveLoss(3.0, miner)(y, x.astype(np.float32)).numpy() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("miner", [None, "hard_negative"])
def test_in_batch_contrastive_gradient_finite_at_identical_embeddings(miner):
    y = tf.constant([0, 0, 1, 1])
    value, grad = _grad(lambda e: losses.in_batch_contrastive_loss(y, e, 1.0, miner).value, np.ones((4, 3)))
    assert np.all(np.isfinite(grad.numpy()))
    assert value.numpy() == pytest.approx(0.5 * 1.0**2 * (8 if miner is None else 4) / (4 + (8 if miner is None else 4)))


# ---------------------------------------------------------------- batches with nothing to mine


ALL_LOSSES = [
    lambda: losses.TripletLoss(miner="batch_all"),
    lambda: losses.TripletLoss(miner="batch_hard"),
    lambda: losses.TripletLoss(miner="semi_hard"),
    lambda: losses.ContrastiveLoss(),
    lambda: losses.ContrastiveLoss(miner="hard_negative"),
]


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("labels", [np.arange(8), np.zeros(8, np.int64)], ids=["all_distinct", "one_class"])
def test_batch_without_positive_or_negative_gives_zero_and_counts(make, labels):
    loss = make()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    value, grad = _grad(lambda e: loss(labels, e), x)
    assert value.numpy() == 0.0
    assert np.all(grad.numpy() == 0.0)
    assert int(loss.num_invalid_batches.numpy()) == 1
    loss(labels, x)
    loss(np.array([0, 0, 1, 1, 2, 2, 3, 3]), x)  # a valid batch counts nothing
    assert int(loss.num_invalid_batches.numpy()) == 2


def test_single_example_batch_is_invalid_not_a_crash():
    loss = losses.TripletLoss()
    assert loss(np.array([3]), np.ones((1, 4), np.float32)).numpy() == 0.0
    assert int(loss.num_invalid_batches.numpy()) == 1


def test_deep_hash_invalid_batch_keeps_only_quantization_part():
    u = np.random.default_rng(1).normal(size=(6, 8))
    loss = losses.DeepHashLoss(quantization_weight=0.5, dtype="float64")
    assert loss(np.arange(6), u).numpy() == pytest.approx(0.5 * np_quantization(u), rel=1e-10)
    assert int(loss.num_invalid_batches.numpy()) == 1


# ---------------------------------------------------------------- deep hashing


def test_quantization_loss_value_and_gradient():
    u = np.random.default_rng(2).normal(size=(10, 12))
    u[0, 0] = 0.0  # sign(0) is taken as +1
    value, grad = _grad(losses.quantization_loss, u)
    assert value.numpy() == pytest.approx(np_quantization(u), rel=1e-12)
    codes = np.where(u >= 0, 1.0, -1.0)
    np.testing.assert_allclose(grad.numpy(), -2.0 * (codes - u) / len(u), rtol=1e-12)


def test_ramp_margin_schedule():
    values = [float(losses.ramp_margin(s, 0.1, 0.5, 10)) for s in (0, 5, 10, 25)]
    np.testing.assert_allclose(values, [0.1, 0.3, 0.5, 0.5], rtol=1e-6)
    assert float(losses.ramp_margin(7, 0.1, 0.5, 0)) == pytest.approx(0.5)


@pytest.mark.parametrize("step", [0, 4, 100])
def test_deep_hash_loss_matches_loop(step):
    x, y = _batch(5, d=8)
    loss = losses.DeepHashLoss(
        margin=0.9, miner="semi_hard", quantization_weight=0.25, margin_start=0.1, margin_ramp_steps=8, dtype="float64"
    )
    loss.step.assign(step)
    margin = 0.1 + 0.8 * min(step / 8, 1.0)
    ref = np_triplet(x, y, margin, "semi_hard")[0] + 0.25 * np_quantization(x)
    assert loss(y, x).numpy() == pytest.approx(ref, rel=1e-10)


# ---------------------------------------------------------------- arguments and config


@pytest.mark.parametrize("margin", [0, -0.5, float("nan"), float("inf"), "1", True])
def test_bad_margin_raises(margin):
    with pytest.raises(ValueError, match="margin"):
        losses.TripletLoss(margin=margin)
    with pytest.raises(ValueError, match="margin"):
        losses.ContrastiveLoss(margin=margin)
    with pytest.raises(ValueError, match="margin"):
        losses.contrastive_loss(np.ones((2, 2)), np.ones((2, 2)), [0, 1], margin=margin)


def test_unknown_miner_lists_valid_ones():
    with pytest.raises(ValueError, match="'batch_all', 'batch_hard', 'semi_hard'"):
        losses.TripletLoss(miner="hardest")
    with pytest.raises(ValueError, match="None, 'hard_negative'"):
        losses.ContrastiveLoss(miner="batch_hard")
    with pytest.raises(ValueError, match="miner"):
        losses.triplet_loss([0, 0], np.ones((2, 2)), miner="semihard")


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match="distance"):
        losses.TripletLoss(distance="manhattan")
    with pytest.raises(ValueError, match="squared=True needs distance='l2'"):
        losses.TripletLoss(squared=True, distance="cosine")
    with pytest.raises(ValueError, match="reduction"):
        losses.TripletLoss(reduction="sum")
    with pytest.raises(ValueError, match="quantization_weight"):
        losses.DeepHashLoss(quantization_weight=-1.0)
    with pytest.raises(ValueError, match="margin_start"):
        losses.DeepHashLoss(margin=0.5, margin_start=0.6)
    with pytest.raises(ValueError, match="margin_ramp_steps"):
        losses.DeepHashLoss(margin_ramp_steps=2.5)


def test_wrong_ranks_raise_with_shapes():
    loss = losses.TripletLoss()
    with pytest.raises(ValueError, match=r"labels \(y_true\).*rank 1"):
        loss(np.zeros((4, 2)), np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"embeddings \(y_pred\).*rank 2"):
        loss(np.zeros(4), np.ones((4, 3, 1), np.float32))
    with pytest.raises(ValueError, match="Batch sizes differ.*4.*5"):
        loss(np.zeros(4), np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="emb_a"):
        losses.contrastive_loss(np.ones(3), np.ones(3), [1, 0, 1])
    with pytest.raises(ValueError, match="same shape"):
        losses.contrastive_loss(np.ones((3, 2)), np.ones((3, 4)), [1, 0, 1])
    with pytest.raises(ValueError, match="sample_weight"):
        loss(np.zeros(4), np.ones((4, 3), np.float32), sample_weight=np.ones(4))


def test_labels_as_column_are_accepted():
    x, y = _batch(6)
    loss = losses.TripletLoss(dtype="float64")
    assert loss(y[:, None], x).numpy() == loss(y, x).numpy()


CONFIGURED = [
    losses.TripletLoss(margin=0.3, miner="semi_hard", squared=True, name="t"),
    losses.TripletLoss(margin=0.1, miner="batch_all", distance="cosine", dtype="float64"),
    losses.ContrastiveLoss(margin=2.0, miner="hard_negative"),
    losses.ContrastiveLoss(margin=0.5, miner=None, distance="cosine"),
    losses.DeepHashLoss(margin=0.8, miner="batch_all", quantization_weight=0.3, margin_start=0.2, margin_ramp_steps=50),
]


@pytest.mark.parametrize("loss", CONFIGURED, ids=lambda l: type(l).__name__)
def test_get_config_round_trip(loss):
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == f"sketch>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    x, y = _batch(8)
    assert restored(y, x).numpy() == pytest.approx(loss(y, x).numpy(), rel=1e-7)


# ---------------------------------------------------------------- inside Keras fit


def _tiny_model(seed=0, dim=4):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(dim)])


@pytest.mark.parametrize(
    "make",
    [
        lambda: losses.TripletLoss(0.5, "batch_hard"),
        lambda: losses.TripletLoss(0.5, "semi_hard"),
        lambda: losses.TripletLoss(0.5, "batch_all", squared=True),
        lambda: losses.ContrastiveLoss(2.0, "hard_negative"),
        lambda: losses.DeepHashLoss(0.5, quantization_weight=0.1),
    ],
)
def test_losses_train_in_model_fit(make, tmp_path):
    x, y = _batch(9, b=32, classes=4)
    x = x.astype(np.float32)
    loss = make()
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    first_batch = float(loss(y[:16], model(x[:16])))
    before = [w.numpy().copy() for w in model.weights]
    history = model.fit(x, y, batch_size=16, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(first_batch, rel=1e-5)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.weights))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.loss) is type(loss) and reloaded.loss.get_config() == loss.get_config()


def test_fit_under_xla_matches_eager_loss():
    x, y = _batch(10, b=16, classes=3)
    x = x.astype(np.float32)
    results = []
    for jit in (False, True):
        loss = losses.TripletLoss(0.5, "semi_hard")
        model = _tiny_model()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=jit)
        results.append(model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5)


def test_margin_ramp_and_invalid_batch_callbacks():
    x, y = _batch(11, b=24, classes=3)
    y[16:] = np.arange(100, 108)  # the third batch of 8 has no positive pair
    loss = losses.DeepHashLoss(0.5, margin_start=0.1, margin_ramp_steps=10)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    history = model.fit(
        x.astype(np.float32),
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[losses.MarginRamp(loss), losses.LogInvalidBatches(loss)],
    )
    assert int(loss.step.numpy()) == 5  # set before the 6th batch from optimizer.iterations
    assert float(loss.current_margin()) == pytest.approx(0.1 + 0.4 * 5 / 10)
    assert history.history["num_invalid_batches"] == [1, 2]


# ---------------------------------------------------------------- MirroredStrategy, 2 logical CPUs

MIRRORED_CASES = {
    "batch_hard": lambda: losses.TripletLoss(0.5, "batch_hard"),
    "semi_hard": lambda: losses.TripletLoss(0.5, "semi_hard"),
    "batch_all": lambda: losses.TripletLoss(0.5, "batch_all"),
    "contrastive_hard_negative": lambda: losses.ContrastiveLoss(2.0, "hard_negative"),
}
_LR = 0.1


def _mirrored_data():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.concatenate([rng.integers(0, 3, 8), rng.integers(0, 3, 8)])
    y_bad = np.concatenate([y[:8], np.arange(100, 108)])  # second replica's slice has no positive
    return x, kernel, y, y_bad


def _mirrored_worker() -> None:
    """Evaluate and train one step on 2 replicas; print what each case produced as JSON."""
    x, kernel, y, y_bad = _mirrored_data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    for name, make in MIRRORED_CASES.items():
        with strategy.scope():
            loss = make()
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(kernel))])
            model.compile(optimizer=keras.optimizers.SGD(_LR), loss=loss)
        case = {"eval": model.evaluate(x, y, batch_size=16, verbose=0)}
        case["eval_bad"] = model.evaluate(x, y_bad, batch_size=16, verbose=0)
        case["invalid_after_eval"] = int(loss.num_invalid_batches.numpy())
        loss(y_bad[8:], model(x[8:]))  # an eager call outside strategy.run counts too
        case["invalid_after_eager"] = int(loss.num_invalid_batches.numpy())
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        case["kernel"] = model.weights[0].numpy().tolist()
        case["bias"] = model.weights[1].numpy().tolist()
        out[name] = case
    print("RESULT " + json.dumps(out))


def _reference_step(name, x, kernel, y):
    """Mean of the two per-slice gradients, on one device, then one SGD step."""
    loss = MIRRORED_CASES[name]()
    k = tf.Variable(kernel.astype(np.float64))
    b = tf.Variable(np.zeros(4))
    grads = []
    for part in (slice(0, 8), slice(8, 16)):
        with tf.GradientTape() as tape:
            value = loss.compute(tf.constant(y[part]), tf.constant(x[part].astype(np.float64)) @ k + b).value
        grads.append(tape.gradient(value, [k, b]))
    return [v.numpy() - _LR * (g0.numpy() + g1.numpy()) / 2 for v, g0, g1 in zip((k, b), *grads)]


@pytest.mark.slow
def test_mirrored_strategy_mines_per_replica():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, __file__, "mirrored"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2
    x, kernel, y, y_bad = _mirrored_data()
    emb = x.astype(np.float64) @ kernel.astype(np.float64)
    for name, case in ((n, out[n]) for n in MIRRORED_CASES):
        if name.startswith("contrastive"):
            per_slice = [np_contrastive_in_batch(emb[s], y[s], 2.0, "hard_negative")[0] for s in (slice(0, 8), slice(8, 16))]
            global_loss = np_contrastive_in_batch(emb, y, 2.0, "hard_negative")[0]
        else:
            per_slice = [np_triplet(emb[s], y[s], 0.5, name)[0] for s in (slice(0, 8), slice(8, 16))]
            global_loss = np_triplet(emb, y, 0.5, name)[0]
        # Each replica mines in its own 8 examples; Keras reports the mean of the two losses.
        assert case["eval"] == pytest.approx(np.mean(per_slice), rel=1e-5), name
        assert not math.isclose(case["eval"], global_loss, rel_tol=1e-3), name  # no cross-replica mining
        # An invalid slice on replica 1: loss 0 there, one event counted, reported mean halves replica 0's.
        assert case["eval_bad"] == pytest.approx(per_slice[0] / 2, rel=1e-5), name
        assert case["invalid_after_eval"] == 1, name
        assert case["invalid_after_eager"] == 2, name
        ref_kernel, ref_bias = _reference_step(name, x, kernel, y)
        np.testing.assert_allclose(case["kernel"], ref_kernel, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(case["bias"], ref_bias, rtol=1e-5, atol=1e-6, err_msg=name)


if __name__ == "__main__" and sys.argv[1:] == ["mirrored"]:
    _mirrored_worker()
