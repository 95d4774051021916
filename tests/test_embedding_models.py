"""Metric-learning models (siamese, triplet, deephash): shapes, `features`, weight sharing, codes, training on
real drawings, saving, the loss factory and bad input.

Run as a script (`python tests/test_embedding_models.py mirrored`) it is the worker of the
MirroredStrategy test: two logical CPUs must be configured before any other TF use, so it runs in a
subprocess of its own.
"""

from __future__ import annotations

import dataclasses

import json
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
import orjson
import pytest
import tensorflow as tf
from absl import flags

import models
from configuration_sketch import EmbeddingConfig, define_flags, from_flags
from data_prep.raster import rasterize
from models import embedding, losses
from models.deephash import BITS, codes_from_outputs

CATEGORIES = ("apple", "bicycle", "cat", "house")
P, K = 4, 4
QUICKDRAW = ROOT.parent / "shared" / "data" / "quickdraw"


# ---------------------------------------------------------------- real drawings as P x K batches


def load_drawings(quickdraw_dir: pathlib.Path, per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` real drawings of each of CATEGORIES: images (N, size, size, 1) float in [0, 1], labels (N,)."""
    images, labels = [], []
    for label, category in enumerate(CATEGORIES):
        lines = (quickdraw_dir / "simplified" / f"{category}.ndjson").read_bytes().splitlines()[:per_class]
        assert len(lines) == per_class
        for line in lines:
            strokes = [np.stack(stroke[:2], axis=1).astype(np.float32) for stroke in orjson.loads(line)["drawing"]]
            images.append(rasterize(strokes, size))
            labels.append(label)
    return np.stack(images)[..., None].astype(np.float32) / 255.0, np.array(labels, np.int32)


def pk_order(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices putting the data in P x K batches: batch b holds the b-th K drawings of every class."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    batches = len(per_class[0]) // k
    return np.concatenate([np.concatenate([idx[b * k:(b + 1) * k] for idx in per_class]) for b in range(batches)])


def make_pairs(images: np.ndarray, labels: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Per class block of 4 [x0..x3]: a positive pair (x0, x1) and a negative pair (x2, next class's x3),
    as data_prep.metric_pipelines.pair_batches; returns ((a, b), same)."""
    a, b, same = [], [], []
    classes = np.unique(labels)
    blocks = {c: np.flatnonzero(labels == c) for c in classes}
    for start in range(0, len(blocks[classes[0]]) - 3, 4):
        for i, c in enumerate(classes):
            x = blocks[c][start:start + 4]
            other = blocks[classes[(i + 1) % len(classes)]][start + 3]
            a += [x[0], x[2]]
            b += [x[1], other]
            same += [1.0, 0.0]
    return (images[a], images[b]), np.array(same, np.float32)


@pytest.fixture(scope="module")
def drawings28(quickdraw_dir) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_drawings(quickdraw_dir, 8, 28)
    order = pk_order(labels, K)
    return images[order], labels[order]


def build(name: str, size: int = 28, **kwargs) -> keras.Model:
    return models.build_model(name, input_size=size, channels=1, num_classes=len(CATEGORIES), **kwargs)


# ---------------------------------------------------------------- registry, shapes, `features`


def test_registry_lists_the_embedding_models():
    assert {"siamese", "triplet", "deephash"} <= set(models.model_names())
    assert models.get_builder("triplet") is models.build_triplet


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize(
    "name,kwargs,width",
    [
        ("triplet", {}, 128),
        ("triplet", dict(embedding_dim=32, backbone="skresnet"), 32),
        ("deephash", dict(bits=16), 16),
        ("deephash", dict(bits=128), 128),
    ],
)
def test_single_input_models_output_the_features_layer(name, kwargs, width, size):
    model = build(name, size, **kwargs)
    assert model.input.shape == (None, size, size, 1)
    assert model.output.shape == (None, width)
    assert model.get_layer("features").output is model.output
    assert models.branch(model, "sketch") is model and models.branch(model, "photo") is model
    out = model.predict(np.zeros((2, size, size, 1), np.float32), verbose=0)
    assert out.shape == (2, width) and out.dtype == np.float32


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("shared", [True, False])
def test_siamese_outputs_both_embeddings_and_exposes_branches(shared, size):
    model = build("siamese", size, embedding_dim=48, shared_weights=shared)
    assert [tuple(x.shape) for x in model.inputs] == [(None, size, size, 1)] * 2
    assert model.output.shape == (None, 2, 48)
    for domain in ("sketch", "photo"):
        net = models.branch(model, domain)
        assert net.input.shape == (None, size, size, 1) and net.get_layer("features").output is net.output
        assert net.output.shape == (None, 48)
    expected = {"embedding_net"} if shared else {"sketch_branch", "photo_branch"}
    assert expected <= {layer.name for layer in model.layers}
    out = model.predict([np.zeros((3, size, size, 1), np.float32)] * 2, verbose=0)
    assert out.shape == (3, 2, 48) and out.dtype == np.float32


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def test_sketchy_siamese_baseline_at_100_px():
    """Wang et al. 2015: 100 -> conv 15 (86) -> pool 2 (43) -> conv 8 (36) -> pool 3 (12) -> conv 5 (8) -> pool 2 (4)."""
    model = build("siamese", 100, backbone="siamese_cnn", embedding_dim=64, l2_normalize=False, shared_weights=False)
    net = models.branch(model, "sketch")
    sides = {name: net.get_layer(name).output.shape[1:] for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3")}
    assert sides == {"conv1": (86, 86, 32), "pool1": (43, 43, 32), "conv2": (36, 36, 64), "pool2": (12, 12, 64),
                     "conv3": (8, 8, 256), "pool3": (4, 4, 256)}
    per_branch = conv(15, 1, 32) + conv(8, 32, 64) + conv(5, 64, 256) + (4 * 4 * 256 * 64 + 64)
    assert per_branch == 810_432
    assert net.count_params() == per_branch and model.count_params() == 2 * per_branch
    assert net.get_layer("features").get_config()["activation"] == "linear"  # linear embedding, no softmax
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in net.layers)
    out = model.predict([np.zeros((2, 100, 100, 1), np.float32)] * 2, verbose=0)
    assert out.shape == (2, 2, 64)


def test_siamese_cnn_builds_at_64_px_and_refuses_smaller():
    assert build("triplet", 64, backbone="siamese_cnn").get_layer("pool3").output.shape == (None, 1, 1, 256)
    with pytest.raises(ValueError, match=r"`input_size` of model 'triplet'\. Received: 63\. Expected an integer >= 64 .*'sknet'"):
        build("triplet", 63, backbone="siamese_cnn")


def test_l2_normalised_outputs_have_unit_norm(drawings28):
    images, _ = drawings28
    for model in (build("triplet"), build("triplet", backbone="skresnet", embedding_dim=8)):
        norms = np.linalg.norm(model.predict(images, verbose=0), axis=1)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    pair = build("siamese", shared_weights=False).predict([images, images], verbose=0)
    np.testing.assert_allclose(np.linalg.norm(pair, axis=2), 1.0, rtol=1e-5)
    raw = np.linalg.norm(build("triplet", l2_normalize=False).predict(images, verbose=0), axis=1)
    assert np.all(np.abs(raw - 1.0) > 1e-3)


def test_shared_weights_are_one_network(drawings28):
    images, _ = drawings28
    model = build("siamese", shared_weights=True)
    net = models.branch(model, "sketch")
    assert models.branch(model, "photo") is net
    assert [id(w) for w in model.weights] == [id(w) for w in net.weights]
    out = model.predict([images, images], verbose=0)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])


def test_unshared_branches_have_their_own_weights(drawings28):
    images, labels = drawings28
    model = build("siamese", shared_weights=False)
    sketch, photo = models.branch(model, "sketch"), models.branch(model, "photo")
    assert sketch is not photo and sketch.name == "sketch_branch" and photo.name == "photo_branch"
    assert not {id(w) for w in sketch.weights} & {id(w) for w in photo.weights}
    assert model.count_params() == sketch.count_params() + photo.count_params() == 2 * sketch.count_params()
    assert not np.allclose(sketch.get_layer("fc").kernel.numpy(), photo.get_layer("fc").kernel.numpy())
    out = model.predict([images, images], verbose=0)
    assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-3
    # Training a sketch-only step moves only the sketch branch's embedding layer differently from the photo one.
    (a, b), same = make_pairs(images, labels)
    before = [photo.get_layer("embedding").kernel.numpy().copy(), sketch.get_layer("embedding").kernel.numpy().copy()]
    model.compile(keras.optimizers.SGD(0.1), loss=models.make_loss(EmbeddingConfig(), "siamese"))
    model.fit([a, b], same, batch_size=len(same), epochs=1, verbose=0)
    delta_photo = photo.get_layer("embedding").kernel.numpy() - before[0]
    delta_sketch = sketch.get_layer("embedding").kernel.numpy() - before[1]
    assert np.abs(delta_photo).max() > 0 and np.abs(delta_sketch).max() > 0
    assert not np.allclose(delta_photo, delta_sketch)


def test_branch_rejects_other_models_and_domains():
    with pytest.raises(ValueError, match=r"`domain`\. Received: 'video'\. Expected one of: sketch, photo"):
        models.branch(build("triplet"), "video")
    with pytest.raises(ValueError, match=r"Model 'sknet' is neither an embedding model .* last layer is 'logits'"):
        models.branch(build("sknet"), "sketch")


# ---------------------------------------------------------------- deephash outputs and codes


@pytest.mark.parametrize("bits", BITS)
def test_deephash_outputs_in_open_interval_and_codes(drawings28, bits):
    images, _ = drawings28
    model = build("deephash", bits=bits)
    u = model.predict(images, verbose=0)
    assert u.shape == (len(images), bits)
    assert np.all(np.abs(u) < 1.0) and np.abs(u).max() > 0
    codes = codes_from_outputs(u)
    assert codes.shape == (len(images), bits // 8) and codes.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1), (u > 0).astype(np.uint8))


def test_codes_bit_order_matches_the_evaluator():
    u = np.full((2, 16), -0.5, np.float32)
    u[0, 0] = u[0, 7] = 0.9  # first byte 1000_0001
    u[1, 15] = 0.1  # second byte 0000_0001
    u[1, 8] = 0.0  # exactly 0 is a 0 bit, as pack_codes (value > 0)
    np.testing.assert_array_equal(codes_from_outputs(u), [[129, 0], [0, 1]])
    ranking = pytest.importorskip("retrieval.ranking")
    rng = np.random.default_rng(0)
    u = np.tanh(rng.normal(size=(50, 64))).astype(np.float32)
    np.testing.assert_array_equal(codes_from_outputs(u), ranking.pack_codes(u))


@pytest.mark.parametrize(
    "value,message",
    [
        (np.zeros(16, np.float32), r"2-D array .* shape \(16,\)"),
        (np.zeros((2, 16), np.int32), r"real outputs .* dtype int32"),
        (np.array([[0.5, np.nan] * 8]), r"received 8 non-finite values"),
    ],
)
def test_codes_from_outputs_bad_input(value, message):
    with pytest.raises(ValueError, match=message):
        codes_from_outputs(value)


@pytest.mark.parametrize("backbone, last", [("sknet", "block4_pool"), ("skresnet", "final_pool")])
def test_embedding_backbones_are_the_classifiers_trunk(backbone, last):
    """One trunk function per network: the embedding model holds the classifier's trunk layers, same names
    in the same order, and with the classifier's weights its trunk computes the same output."""
    classifier = build(backbone, size=32)
    embedder = build("triplet", size=32, backbone=backbone, embedding_dim=8)
    names = [layer.name for layer in classifier.layers]
    trunk = classifier.layers[: names.index(last) + 1]
    assert [layer.name for layer in embedder.layers[: len(trunk)]] == [layer.name for layer in trunk]
    for layer in trunk:
        embedder.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    expected = keras.Model(classifier.inputs, classifier.get_layer(last).output)(x, training=False)
    got = keras.Model(embedder.inputs, embedder.get_layer(last).output)(x, training=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_outputs_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for name, kwargs in (("triplet", {}), ("deephash", dict(bits=32)), ("siamese", dict(shared_weights=False))):
            model = build(name, **kwargs)
            assert model.output.dtype == "float32", name
            assert model.get_layer("block1_1_conv" if name != "siamese" else "sketch_branch").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = build("triplet")
    norms = np.linalg.norm(model.predict(np.random.default_rng(1).random((4, 28, 28, 1), np.float32), verbose=0), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


# ---------------------------------------------------------------- training on real drawings

TRAIN_CASES = {
    "triplet_batch_hard": ("triplet", {}, EmbeddingConfig(miner="batch_hard")),
    "triplet_semi_hard": ("triplet", dict(embedding_dim=64), EmbeddingConfig()),
    "triplet_contrastive": ("triplet", {}, EmbeddingConfig(loss="contrastive", miner="hard_negative")),
    "deephash_ramp": ("deephash", dict(bits=32), EmbeddingConfig(margin_ramp_steps=4, margin_start=0.1)),
    "siamese_shared": ("siamese", {}, EmbeddingConfig()),
    "siamese_unshared": ("siamese", dict(shared_weights=False), EmbeddingConfig(margin=0.5)),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_model_trains_and_loss_falls_on_real_drawings(drawings28, case):
    name, kwargs, config = TRAIN_CASES[case]
    images, labels = drawings28
    keras.utils.set_random_seed(0)
    model = build(name, **kwargs)
    loss = models.make_loss(config, name)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss)
    if name == "siamese":
        x, y, batch = *make_pairs(images, labels), 8
    else:
        x, y, batch = images, labels, P * K
        assert all(sorted(np.bincount(labels[i:i + batch])) == [K] * P for i in range(0, len(labels), batch))
    history = model.fit(x, y, batch_size=batch, epochs=6, shuffle=False, verbose=0, callbacks=models.loss_callbacks(loss))
    values = history.history["loss"]
    assert np.all(np.isfinite(values))
    # The ramp starts the margin at 0.1 and reaches 0.5 after 4 of the 12 steps, so its first epochs'
    # losses are understated: it is held to a 25% fall (measured 37% alone, order-dependent in a full run).
    assert np.mean(values[-3:]) < (0.75 if case == "deephash_ramp" else 0.6) * np.mean(values[:2]), values
    if name != "siamese":
        assert history.history["num_invalid_batches"][-1] == 0
    if case == "deephash_ramp":
        assert float(loss.current_margin()) == pytest.approx(0.5)  # ramp over after 4 of 12 steps


# ---------------------------------------------------------------- saving


SAVE_CASES = {
    "triplet": ("triplet", {}, EmbeddingConfig()),
    "deephash": ("deephash", dict(bits=16), EmbeddingConfig()),
    "siamese_shared": ("siamese", {}, EmbeddingConfig()),
    "siamese_unshared_baseline": ("siamese", dict(shared_weights=False, backbone="siamese_cnn"), EmbeddingConfig()),
}


@pytest.mark.parametrize("case", list(SAVE_CASES))
def test_keras_save_load_and_get_config_round_trip(drawings28, tmp_path, case):
    name, kwargs, config = SAVE_CASES[case]
    size = 64 if kwargs.get("backbone") == "siamese_cnn" else 28
    images = drawings28[0][:6]
    if size != 28:
        images = tf.image.resize(images, (size, size)).numpy()
    x = [images, images[::-1]] if name == "siamese" else images
    model = build(name, size, **kwargs)
    model.compile(keras.optimizers.Adam(1e-3), loss=models.make_loss(config, name))
    model.optimizer.build(model.trainable_variables)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)
    assert type(reloaded.loss) is type(model.loss) and reloaded.loss.get_config() == model.loss.get_config()
    if name == "siamese":
        for domain in ("sketch", "photo"):
            np.testing.assert_array_equal(models.branch(reloaded, domain).predict(images, verbose=0),
                                          models.branch(model, domain).predict(images, verbose=0))
        assert (models.branch(reloaded, "sketch") is models.branch(reloaded, "photo")) == kwargs.get("shared_weights", True)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x, verbose=0), expected)


def test_pair_contrastive_loss_matches_the_pair_formula():
    rng = np.random.default_rng(3)
    pair = rng.normal(size=(6, 2, 5)).astype(np.float32)
    same = np.array([1, 0, 1, 0, 0, 1], np.float32)
    d = np.linalg.norm(pair[:, 0] - pair[:, 1], axis=1)
    margin = 2.0
    expected = np.mean(0.5 * same * d**2 + 0.5 * (1 - same) * np.maximum(0, margin - d) ** 2)
    loss = embedding.PairContrastiveLoss(margin)
    assert float(loss(same, pair)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(same[:, None], pair)) == pytest.approx(expected, rel=1e-5)
    assert embedding.PairContrastiveLoss.from_config(loss.get_config()).get_config() == loss.get_config()
    with pytest.raises(ValueError, match=r"shape \[B, 2, D\].*Received shape \(6, 10\)"):
        loss(same, pair.reshape(6, 10))


# ---------------------------------------------------------------- loss factory and config


def test_auto_loss_is_proxy_anchor_for_triplet_unless_a_miner_or_margin_asks_for_the_triplet_loss():
    assert type(models.make_loss(EmbeddingConfig(), "triplet")) is losses.ProxyAnchorLoss
    assert embedding.resolve_loss(EmbeddingConfig(), "triplet") == "proxy_anchor"
    assert embedding.embedding_dim(EmbeddingConfig(), "triplet") == embedding.PROXY_EMBEDDING_DIM
    assert embedding.resolve_loss(EmbeddingConfig(miner="batch_all"), "triplet") == "triplet"
    assert embedding.resolve_loss(EmbeddingConfig(margin=0.3), "triplet") == "triplet"
    assert embedding.embedding_dim(EmbeddingConfig(margin=0.3), "triplet") == embedding.DEFAULT_EMBEDDING_DIM
    assert embedding.resolve_loss(EmbeddingConfig(loss="contrastive"), "triplet") == "contrastive"
    assert [embedding.resolve_loss(EmbeddingConfig(), m) for m in ("siamese", "deephash")] == ["contrastive", "triplet"]
    assert embedding.resolved(EmbeddingConfig(miner="semi_hard"), "triplet") == EmbeddingConfig(loss="triplet",
                                                                                                  miner="semi_hard")
    kwargs = models.builder_kwargs(EmbeddingConfig(), "triplet")
    assert kwargs["proxies"] is True and kwargs["embedding_dim"] == 512 and kwargs["proxy_lr_multiplier"] == 100.0
    with pytest.raises(ValueError, match="Loss 'proxy_anchor' takes no margin"):
        models.make_loss(EmbeddingConfig(loss="proxy_anchor", margin=0.3), "triplet")


def test_make_loss_picks_loss_miner_and_margin():
    made = models.make_loss(EmbeddingConfig(loss="triplet"), "triplet")
    assert type(made) is losses.TripletLoss and (made.miner, made.margin) == ("semi_hard", 0.2)  # auto miner, margin
    made = models.make_loss(EmbeddingConfig(miner="batch_all", margin=0.3), "triplet")
    assert (made.miner, made.margin) == ("batch_all", 0.3)
    made = models.make_loss(EmbeddingConfig(loss="contrastive"), "triplet")
    assert type(made) is losses.ContrastiveLoss and (made.miner, made.margin) == (None, 1.0)
    made = models.make_loss(EmbeddingConfig(loss="contrastive", miner="hard_negative"), "triplet")
    assert made.miner == "hard_negative"
    made = models.make_loss(EmbeddingConfig(quantization_weight=0.2), "deephash")
    assert type(made) is losses.DeepHashLoss
    assert (made.margin, made.quantization_weight, made.margin_ramp_steps, made.margin_start) == (0.5, 0.2, 0, None)
    made = models.make_loss(EmbeddingConfig(margin_ramp_steps=100, margin_start=0.1, margin=0.8), "deephash")
    assert (made.margin, made.margin_start, made.margin_ramp_steps) == (0.8, 0.1, 100)
    made = models.make_loss(EmbeddingConfig(), "siamese")
    assert type(made) is embedding.PairContrastiveLoss and made.margin == 1.0


def test_loss_callbacks():
    assert models.loss_callbacks(models.make_loss(EmbeddingConfig(), "siamese")) == []
    kinds = [type(c) for c in models.loss_callbacks(models.make_loss(EmbeddingConfig(loss="triplet"), "triplet"))]
    assert kinds == [losses.LogInvalidBatches]
    kinds = [type(c) for c in models.loss_callbacks(models.make_loss(EmbeddingConfig(margin_ramp_steps=5), "deephash"))]
    assert kinds == [losses.LogInvalidBatches, losses.MarginRamp]


def test_builder_kwargs_build_each_model():
    config = EmbeddingConfig(loss="triplet", embedding_dim=16, bits=32, shared_weights=False, l2_normalize=False)
    assert models.builder_kwargs(config, "deephash") == {"bits": 32, "backbone": "sknet"}
    assert models.builder_kwargs(config, "triplet") == {"embedding_dim": 16, "backbone": "sknet", "l2_normalize": False,
                                                        "proxies": False}
    assert models.builder_kwargs(config, "siamese")["shared_weights"] is False
    widths = {name: build(name, **models.builder_kwargs(config, name)).output.shape[-1] for name in embedding.EMBEDDING_MODELS}
    assert widths == {"siamese": 16, "triplet": 16, "deephash": 32}
    with pytest.raises(ValueError, match=r"`model`\. Received: 'sknet'\. Expected one of: siamese, triplet, deephash"):
        models.builder_kwargs(config, "sknet")


@pytest.mark.parametrize("loss, expected", [("proxy_anchor", (losses.ProxyAnchorLoss, {"alpha": 16.0, "delta": 0.2})),
                                            ("normalized_softmax", (losses.NormalizedSoftmaxLoss, {"temperature": 0.1}))])
def test_a_proxy_loss_gives_triplet_a_proxy_head_and_branch_its_features(loss, expected):
    config = EmbeddingConfig(embedding_dim=16, loss=loss, proxy_alpha=16.0, proxy_delta=0.2, temperature=0.1)
    made = models.make_loss(config, "triplet")
    assert type(made) is expected[0] and {k: made.get_config()[k] for k in expected[1]} == expected[1]
    model = build("triplet", **models.builder_kwargs(config, "triplet"))
    assert model.output.shape[-1] == len(CATEGORIES) and model.layers[-1].name == embedding.PROXY_LAYER
    features = models.branch(model, "sketch")
    assert features is models.branch(model, "photo") and features.output.shape[-1] == 16
    assert features.layers[-1].name == "features" and features.layers[-1] is model.get_layer("features")
    callbacks = [type(c) for c in models.loss_callbacks(made)]
    assert callbacks == ([losses.LogInvalidBatches] if loss == "proxy_anchor" else [])
    assert model.get_layer(embedding.PROXY_LAYER).lr_multiplier == (100.0 if loss == "proxy_anchor" else 1.0)
    chosen = models.builder_kwargs(dataclasses.replace(config, proxy_lr_multiplier=7.0), "triplet")
    assert chosen["proxy_lr_multiplier"] == 7.0
    with pytest.raises(ValueError, match="`proxy_lr_multiplier`. Received: 0.0"):
        models.make_loss(dataclasses.replace(config, proxy_lr_multiplier=0.0), "triplet")


@pytest.mark.parametrize("model, loss, width", [("triplet", "proxy_anchor", 512), ("triplet", "normalized_softmax", 512),
                                                 ("triplet", "softmax_triplet", 512), ("triplet", "auto", 512), ("triplet", "triplet", 128),
                                                 ("triplet", "contrastive", 128), ("siamese", "auto", 128)])
def test_embedding_dim_minus_one_takes_the_loss_own_width(model, loss, width):
    assert EmbeddingConfig().embedding_dim == -1
    assert models.builder_kwargs(EmbeddingConfig(loss=loss), model)["embedding_dim"] == width
    assert models.builder_kwargs(EmbeddingConfig(loss=loss, embedding_dim=48), model)["embedding_dim"] == 48
    if loss == "softmax_triplet":
        assert models.make_loss(EmbeddingConfig(loss=loss), model).embedding_dim == width


def test_softmax_triplet_gives_features_and_cosines_side_by_side():
    config = EmbeddingConfig(embedding_dim=16, loss="softmax_triplet", temperature=0.1, margin=0.3, miner="batch_hard")
    made = models.make_loss(config, "triplet")
    assert type(made) is losses.SoftmaxTripletLoss
    assert {k: made.get_config()[k] for k in ("embedding_dim", "margin", "miner", "temperature")} == {
        "embedding_dim": 16, "margin": 0.3, "miner": "batch_hard", "temperature": 0.1}
    assert models.make_loss(dataclasses.replace(config, miner="auto"), "triplet").miner == "semi_hard"
    model = build("triplet", **models.builder_kwargs(config, "triplet"))
    assert model.output.shape[-1] == 16 + len(CATEGORIES)
    features = models.branch(model, "sketch")
    assert features.output.shape[-1] == 16 and features.layers[-1] is model.get_layer("features")
    x = np.random.default_rng(0).random((3, *model.input.shape[1:])).astype(np.float32)
    np.testing.assert_allclose(model(x)[:, :16], features(x), atol=1e-6)
    assert [type(c) for c in models.loss_callbacks(made)] == [losses.LogInvalidBatches]
    with pytest.raises(ValueError, match="`miner`"):
        models.make_loss(dataclasses.replace(config, miner="hard_negative"), "triplet")


def test_embedding_config_flags():
    values = flags.FlagValues()
    define_flags(EmbeddingConfig, values)
    values(["prog", "-embedding_dim", "64", "-miner", "semi_hard", "-margin", "0.3", "-noshared_weights", "-bits", "32"])
    config = from_flags(EmbeddingConfig, values)
    assert (config.embedding_dim, config.miner, config.margin, config.shared_weights, config.bits) == (64, "semi_hard", 0.3, False, 32)
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "-backbone", "resnet50"])


# ---------------------------------------------------------------- bad input, before training


@pytest.mark.parametrize("value", [1, 4097, 0, -8, 2.0, True, "64"])
@pytest.mark.parametrize("name", ["triplet", "siamese"])
def test_embedding_dim_out_of_range(name, value):
    with pytest.raises(ValueError, match=rf"`embedding_dim` of model '{name}'\. Received: .*Expected an integer in \[2, 4096\]"):
        build(name, embedding_dim=value)


def test_embedding_dim_bounds_are_accepted():
    assert build("triplet", embedding_dim=2).output.shape == (None, 2)
    assert build("triplet", embedding_dim=4096).output.shape == (None, 4096)


@pytest.mark.parametrize("bits", [8, 48, 256, 0, True, 64.0])
def test_bits_not_allowed(bits):
    with pytest.raises(ValueError, match=rf"`bits` of model 'deephash'\. Received: {bits!r}\. Expected one of: 16, 32, 64, 128"):
        build("deephash", bits=bits)


@pytest.mark.parametrize("name", ["siamese", "triplet", "deephash"])
def test_unknown_backbone_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match=rf"`backbone` of model '{name}'\. Received: 'vgg16'\. Expected one of: siamese_cnn, sknet, skresnet"):
        build(name, backbone="vgg16")


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(input_size=8), "input_size"),
        (dict(channels=0), "channels"),
        (dict(num_classes=0), "num_classes"),
        (dict(bn_momentum=1.5), "bn_momentum"),
        (dict(dropout=1.0), "dropout"),
        (dict(l2_normalize="yes"), "l2_normalize"),
        (dict(shared_weights=1), "shared_weights"),
    ],
)
def test_other_bad_builder_arguments(kwargs, argument):
    args = dict(input_size=28, channels=1, num_classes=3) | kwargs
    with pytest.raises(ValueError, match=rf"`{argument}` of model 'siamese'\. Received: "):
        models.build_model("siamese", **args)


@pytest.mark.parametrize("margin", [0.0, -0.5, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["siamese", "triplet", "deephash"])
def test_bad_margin_raises_before_training(name, margin):
    with pytest.raises(ValueError, match=r"field `margin`\. Received: .*Expected a finite number > 0"):
        models.make_loss(EmbeddingConfig(margin=margin), name)


@pytest.mark.parametrize(
    "name,changes,field",
    [
        ("siamese", dict(loss="triplet"), "loss"),
        ("siamese", dict(miner="batch_hard"), "miner"),
        ("deephash", dict(loss="contrastive"), "loss"),
        ("triplet", dict(miner="hard_negative"), "miner"),
        ("triplet", dict(loss="contrastive", miner="semi_hard"), "miner"),
        ("triplet", dict(loss="arcface"), "loss"),
        ("deephash", dict(margin_ramp_steps=10, margin_start=0.9), "margin_start"),
        ("deephash", dict(margin_ramp_steps=-1), "margin_ramp_steps"),
    ],
)
def test_bad_loss_choices_name_the_field(name, changes, field):
    with pytest.raises(ValueError, match=rf"EmbeddingConfig field `{field}`\. Received: "):
        models.make_loss(EmbeddingConfig(**changes), name)


def test_bad_quantization_weight_and_model():
    with pytest.raises(ValueError, match=r"`quantization_weight`\. Received: -0\.1"):
        models.make_loss(EmbeddingConfig(quantization_weight=-0.1), "deephash")
    with pytest.raises(ValueError, match=r"`model`\. Received: 'sknet'"):
        models.make_loss(EmbeddingConfig(), "sknet")


@pytest.mark.parametrize(
    "p,k,replicas,message",
    [
        (1, 4, 1, r"`classes_per_batch \(P\)`\. Received: 1\. Expected an integer >= 2"),
        (8, 1, 1, r"`per_class \(K\)`\. Received: 1\. Expected an integer >= 2"),
        (4, 0, 1, r"`per_class \(K\)`\. Received: 0"),
        (2.0, 4, 1, r"`classes_per_batch \(P\)`\. Received: 2\.0"),
        (6, 4, 4, r"Received: 6 with 4 replicas\. Expected a multiple of the replica count"),
        (2, 4, 2, r"Received: 2 with 2 replicas\. .*at least 2 classes per replica"),
        (4, 4, 0, r"`replicas`\. Received: 0"),
    ],
)
def test_check_pk_rejects_infeasible_batches(p, k, replicas, message):
    with pytest.raises(ValueError, match=message):
        embedding.check_pk(p, k, replicas)


def test_check_pk_accepts_feasible_batches():
    for p, k, replicas in ((2, 2, 1), (8, 4, 2), (16, 4, 8)):
        embedding.check_pk(p, k, replicas)


# ---------------------------------------------------------------- MirroredStrategy, 2 logical CPUs

MIRRORED_CASES = {
    "triplet": ("triplet", dict(embedding_dim=32), EmbeddingConfig()),
    "deephash": ("deephash", dict(bits=16), EmbeddingConfig(margin_ramp_steps=2, margin_start=0.1)),
    "siamese_unshared": ("siamese", dict(embedding_dim=32, shared_weights=False), EmbeddingConfig()),
}


def _mirrored_worker() -> None:
    """Train every case 2 epochs of 2 steps on 2 replicas; print losses and weight changes as JSON."""
    images, labels = load_drawings(QUICKDRAW, 8, 28)
    order = pk_order(labels, K)
    images, labels = images[order], labels[order]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    for case, (name, kwargs, config) in MIRRORED_CASES.items():
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build(name, **kwargs)
            loss = models.make_loss(config, name)
            model.compile(keras.optimizers.Adam(1e-3), loss=loss)
        if name == "siamese":
            x, y, batch = *make_pairs(images, labels), 8
        else:
            embedding.check_pk(P, K, strategy.num_replicas_in_sync)
            x, y, batch = images, labels, P * K
        before = [w.numpy().copy() for w in model.trainable_weights]
        history = model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0,
                            callbacks=models.loss_callbacks(loss))
        out[case] = {
            "loss": history.history["loss"],
            "invalid": history.history.get("num_invalid_batches"),
            "mirrored": all(isinstance(w.value, tf.distribute.DistributedValues) for w in model.trainable_weights),
            "changed": sum(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)),
            "weights": len(before),
            "step": int(loss.step.numpy()) if hasattr(loss, "step") else None,
        }
    print("RESULT " + json.dumps(out))


@pytest.mark.slow
def test_models_train_under_mirrored_strategy(quickdraw_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, __file__, "mirrored"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2
    for case in MIRRORED_CASES:
        result = out[case]
        assert len(result["loss"]) == 2 and np.all(np.isfinite(result["loss"])), case
        assert result["loss"][1] < result["loss"][0], case
        assert result["mirrored"], case
        assert result["changed"] == result["weights"], case
        if case != "siamese_unshared":
            assert result["invalid"] == [0, 0], case  # 2 classes x 4 per replica slice: always valid
    assert out["deephash"]["step"] == 3  # set from optimizer.iterations before the 4th step


if __name__ == "__main__" and sys.argv[1:] == ["mirrored"]:
    _mirrored_worker()
