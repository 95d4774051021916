"""Training augmentation: identity at inference, random but range-preserving in training, noise rate."""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import numpy as np
import orjson
import pytest
import tensorflow as tf

from configuration_sketch import AugmentConfig
from tests.test_models import rasterize
from training.augment import SaltAndPepper, build_augmenter

OFF = AugmentConfig(
    aug_translate=0.0, aug_zoom=0.0, aug_rotation=0.0, aug_shear=0.0, aug_flip=False, aug_salt_pepper=0.0
)


@pytest.fixture(scope="module")
def images(quickdraw_dir: pathlib.Path) -> np.ndarray:
    """32 real drawings (8 categories x 4) rasterized at 28 px: float32 (32, 28, 28, 1) in [0, 1]."""
    out = []
    for category in ("airplane", "apple", "bicycle", "cat", "clock", "fish", "house", "tree"):
        for line in (quickdraw_dir / "simplified" / f"{category}.ndjson").read_bytes().splitlines()[:4]:
            out.append(rasterize(orjson.loads(line)["drawing"], 28))
    return np.stack(out)[..., None]


def only(**fields) -> AugmentConfig:
    return dataclasses.replace(OFF, **fields)


@pytest.mark.parametrize(
    "config",
    [AugmentConfig(), AugmentConfig(aug_translate=0.3, aug_zoom=0.3, aug_rotation=45, aug_shear=0.3, aug_salt_pepper=0.2)],
)
def test_identity_at_inference(config, images):
    augmenter = build_augmenter(config)
    out = augmenter(images, training=False)
    np.testing.assert_array_equal(np.asarray(out), images)
    model = keras.Sequential([keras.Input((28, 28, 1)), augmenter])
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)


def test_training_changes_images_keeps_shape_and_range(images):
    keras.utils.set_random_seed(1)
    out = np.asarray(build_augmenter(AugmentConfig())(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = [not np.array_equal(a, b) for a, b in zip(out, images)]
    assert all(changed)
    # Drawings stay mostly inside the frame: ink is neither lost nor multiplied.
    ink_ratio = out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    assert 0.6 < np.median(ink_ratio) < 1.4, ink_ratio


@pytest.mark.parametrize(
    "fields",
    [dict(aug_translate=0.2), dict(aug_zoom=0.2), dict(aug_rotation=30.0), dict(aug_shear=0.2)],
)
def test_each_affine_transform_alone_moves_ink_within_range(fields, images):
    keras.utils.set_random_seed(2)
    augmenter = build_augmenter(only(**fields))
    assert len(augmenter.layers) == 1
    out = np.asarray(augmenter(images, training=True))
    assert out.min() >= 0.0 and out.max() <= 1.0
    differing = np.mean([not np.allclose(a, b, atol=1e-3) for a, b in zip(out, images)])
    assert differing > 0.8
    # Per-image transforms: two images' changes are not one shared transform.
    assert not np.array_equal(out[0] - images[0], out[1] - images[1])


def test_flip_mirrors_some_images_and_keeps_the_rest(images):
    keras.utils.set_random_seed(3)
    out = np.asarray(build_augmenter(only(aug_flip=True))(images, training=True))
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 4 <= sum(mirrored) <= 28


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_salt_and_pepper_fraction_matches_rate(rate):
    keras.utils.set_random_seed(4)
    grey = np.full((16, 64, 64, 3), 0.5, np.float32)
    out = np.asarray(build_augmenter(only(aug_salt_pepper=rate))(grey, training=True))
    salt = (out == 1.0).all(axis=-1)
    pepper = (out == 0.0).all(axis=-1)
    untouched = (out == 0.5).all(axis=-1)
    assert np.all(salt | pepper | untouched)  # the channels of a pixel change together
    n = salt.size
    tolerance = 5 * np.sqrt(rate * (1 - rate) / n)
    assert abs((salt.sum() + pepper.sum()) / n - rate) < tolerance
    assert abs(salt.sum() / n - rate / 2) < tolerance


def test_salt_and_pepper_config_round_trip_and_validation():
    layer = SaltAndPepper(0.03, seed=5, name="noise")
    clone = SaltAndPepper.from_config(layer.get_config())
    assert (clone.rate, clone.seed, clone.name) == (0.03, 5, "noise")
    x = np.full((2, 8, 8, 1), 0.5, np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    with pytest.raises(ValueError, match=r"`rate`\. Received: 1\.5"):
        SaltAndPepper(1.5)


def test_augmenter_serializes(images):
    augmenter = build_augmenter(AugmentConfig(aug_seed=7, aug_salt_pepper=0.01))
    clone = keras.Sequential.from_config(augmenter.get_config())
    assert [layer.name for layer in clone.layers] == ["flip", "rotate", "shear", "zoom", "translate", "salt_and_pepper"]
    assert clone.get_layer("salt_and_pepper").rate == 0.01
    np.testing.assert_array_equal(np.asarray(clone(images, training=False)), images)


def test_seeded_augmenters_repeat_and_differ_by_seed(images):
    first = np.asarray(build_augmenter(AugmentConfig(aug_seed=11))(images, training=True))
    again = np.asarray(build_augmenter(AugmentConfig(aug_seed=11))(images, training=True))
    other = np.asarray(build_augmenter(AugmentConfig(aug_seed=12))(images, training=True))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_works_in_a_tf_data_pipeline(images):
    augmenter = build_augmenter(AugmentConfig(aug_seed=0))
    labels = np.arange(len(images))
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    ds = ds.map(lambda x, y: (augmenter(x, training=True), y))
    batches = [(np.asarray(x), np.asarray(y)) for x, y in ds]
    out = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, images)


def test_all_rates_zero_is_an_identity_layer(images):
    augmenter = build_augmenter(OFF)
    assert [type(layer).__name__ for layer in augmenter.layers] == ["Identity"]
    np.testing.assert_array_equal(np.asarray(augmenter(images, training=True)), images)


@pytest.mark.parametrize(
    "fields,name",
    [(dict(aug_rotation=200.0), "aug_rotation"), (dict(aug_zoom=-0.1), "aug_zoom"), (dict(aug_salt_pepper=2.0), "aug_salt_pepper")],
)
def test_bad_config_names_the_field(fields, name):
    with pytest.raises(ValueError, match=rf"AugmentConfig field `{name}`\. Received: "):
        build_augmenter(dataclasses.replace(AugmentConfig(), **fields))
