"""Training-only image augmentation for sketches: flips, random affine transforms, salt-and-pepper noise.

`build_augmenter(AugmentConfig())` returns a keras.Sequential of Keras' own random layers
(RandomFlip, RandomRotation, RandomShear, RandomZoom, RandomTranslation), each drawing a new transform
per image, plus `SaltAndPepper`. Images are float in [0, 1] with a 0 background (strokes bright);
pixels moved in from outside take `aug_fill_value`, interpolation is bilinear, so values stay in [0, 1].

Called with training=False (model.predict / evaluate, or explicitly) every layer returns its input
unchanged, so the block is the identity at inference. Keras' random layers default to training=True
when called bare: apply the block in the training input pipeline,
`ds.map(lambda x, y: (augmenter(x, training=True), y))`, or pass `training` explicitly.

RandomShear shears about the image's top-left corner, so a shear also moves the drawing's centre by about
`aug_shear` / 2 of the side; the default 0.1 keeps drawings inside the frame's padding.

Stroke space (`stroke_augmenter`, with -stroke_augment): a function on a padded batch of points
(data_prep.raster_tf's form) applied before on-the-fly rendering, training batches only. Each drawing is
first placed as the renderer's layout would place it, then gets a random affine map about the frame's
centre (scale, shear, rotation, translation), Gaussian jitter of every point, the dropout of whole strokes
(never the first) and, for a share of drawings, only its first k strokes. Dropped points become nan, which
the renderer skips as absent. The result is drawn with normalize 'never', shifted so that the renderer's
centring puts it exactly where the transform did. Stateless: one seed per batch, so runs repeat.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from configuration_sketch import AugmentConfig


@keras.saving.register_keras_serializable(package="sketch")
class SaltAndPepper(keras.layers.Layer):
    """Set a random `rate` of the pixels to 1 (salt) or 0 (pepper), half each; identity when not training.

    One draw per pixel is shared by all channels, so a noisy pixel is noisy in every channel.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"Invalid value for argument `rate`. Received: {rate!r}. Expected a number in [0, 1].")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        if not training or self.rate == 0.0:
            return inputs
        shape = keras.ops.shape(inputs)
        draw = keras.random.uniform((*shape[:-1], 1), seed=self.seed_generator)
        salt = keras.ops.cast(draw < self.rate / 2, inputs.dtype)
        noisy = keras.ops.cast(draw < self.rate, inputs.dtype)
        return inputs * (1 - noisy) + salt

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _check(name: str, value: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= high:
        raise ValueError(
            f"Invalid value for AugmentConfig field `{name}`. Received: {value!r}. Expected a number in [0, {high}]."
        )


def build_augmenter(config: AugmentConfig) -> keras.Sequential:
    """The augmentation block for `config`; a rate of 0 leaves its layer out (all 0: an Identity layer)."""
    _check("aug_translate", config.aug_translate, 1.0)
    _check("aug_zoom", config.aug_zoom, 1.0)
    _check("aug_rotation", config.aug_rotation, 180.0)
    _check("aug_shear", config.aug_shear, 1.0)
    _check("aug_salt_pepper", config.aug_salt_pepper, 1.0)
    _check("aug_fill_value", config.aug_fill_value, 1.0)
    seeds = iter(range(config.aug_seed, config.aug_seed + 6)) if config.aug_seed >= 0 else iter([None] * 6)
    fill = dict(fill_mode="constant", fill_value=config.aug_fill_value)
    layers: list[keras.layers.Layer] = []
    if config.aug_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=next(seeds), name="flip"))
    if config.aug_rotation > 0:
        layers.append(keras.layers.RandomRotation(config.aug_rotation / 360.0, seed=next(seeds), name="rotate", **fill))
    if config.aug_shear > 0:
        # (0, s), not s: RandomShear flips the sign at random itself, so both span [-s, s], but a bare
        # number is stored as (-s, s) in get_config, which its constructor rejects when reloading.
        shear = (0.0, config.aug_shear)
        layers.append(keras.layers.RandomShear(shear, shear, seed=next(seeds), name="shear", **fill))
    if config.aug_zoom > 0:
        layers.append(keras.layers.RandomZoom(config.aug_zoom, seed=next(seeds), name="zoom", **fill))
    if config.aug_translate > 0:
        shift = config.aug_translate
        layers.append(keras.layers.RandomTranslation(shift, shift, seed=next(seeds), name="translate", **fill))
    if config.aug_salt_pepper > 0:
        layers.append(SaltAndPepper(config.aug_salt_pepper, seed=next(seeds), name="salt_and_pepper"))
    if not layers:
        layers.append(keras.layers.Identity(name="identity"))
    return keras.Sequential(layers, name="augmenter")


def augment_images(ds: tf.data.Dataset, config: AugmentConfig) -> tf.data.Dataset:
    """A stream of (images, labels) batches with `build_augmenter(config)` applied to the images."""
    augmenter = build_augmenter(config)
    return ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)


def _check_stroke_rates(config: AugmentConfig) -> None:
    """Refuse stroke rates outside their ranges, naming the field."""
    for name, high in (("stroke_scale", 0.9), ("stroke_shear", 1.0), ("stroke_rotation", 180.0),
                       ("stroke_translate", 1.0), ("stroke_jitter", 256.0), ("stroke_dropout", 1.0),
                       ("stroke_partial", 1.0)):
        _check(name, getattr(config, name), high)


def _affine(config: AugmentConfig, batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """[B, 2, 2] random maps: rotation @ shear @ scale, each drawn uniformly within its rate."""
    u = tf.random.stateless_uniform([batch, 4], seed, -1.0, 1.0)
    scale = 1.0 + config.stroke_scale * u[:, 0]
    shear_x, shear_y = config.stroke_shear * u[:, 1], config.stroke_shear * u[:, 2]
    angle = math.radians(config.stroke_rotation) * u[:, 3]
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = tf.reshape(tf.stack([cos, -sin, sin, cos], axis=1), [-1, 2, 2])
    shear = tf.reshape(tf.stack([tf.ones_like(shear_x), shear_x, shear_y, tf.ones_like(shear_y)], axis=1), [-1, 2, 2])
    return rotation @ shear * scale[:, None, None]


def _kept_strokes(config: AugmentConfig, stroke_ids: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """[B, P] bool: the points of strokes that survive dropout (never stroke 0) and the partial-drawing cut."""
    shape = tf.shape(stroke_ids)
    ids = tf.maximum(stroke_ids, 0)
    draw = tf.random.stateless_uniform(tf.stack([shape[0], tf.reduce_max(ids) + 1]), seed)
    survives = (tf.gather(draw, ids, batch_dims=1) >= config.stroke_dropout) | tf.equal(ids, 0)
    strokes = tf.cast(tf.reduce_max(ids, axis=1) + 1, tf.float32)
    cut = tf.random.stateless_uniform([shape[0], 2], seed + 1)
    first_k = tf.where(cut[:, 0] < config.stroke_partial, tf.floor(cut[:, 1] * strokes) + 1, strokes)
    return survives & (tf.cast(ids, tf.float32) < first_k[:, None])


def stroke_augmenter(config: AugmentConfig, frame: int, normalize: str):
    """fn(points [B, P, 2|3], stroke_ids, num_points, seed [2]) -> points to draw with normalize 'never'.

    `frame` and `normalize` are the data set's raster settings, so the unaugmented placement is the
    renderer's own; the drawing's t (if any) is kept.
    """
    from data_prep.raster_tf import _layout, _valid_points

    _check_stroke_rates(config)

    def augment(points: tf.Tensor, stroke_ids: tf.Tensor, num_points: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seed = tf.cast(seed, tf.int32)
        valid = _valid_points(points, num_points)
        xy, offset = _layout(points[..., :2], valid, frame, normalize)
        placed = xy + offset[:, None]
        centre = frame / 2.0
        batch = tf.shape(points)[0]
        shift = config.stroke_translate * frame * tf.random.stateless_uniform([batch, 1, 2], seed + 2, -1.0, 1.0)
        moved = tf.einsum("bij,bpj->bpi", _affine(config, batch, seed + 3), placed - centre) + centre + shift
        moved += config.stroke_jitter * tf.random.stateless_normal(tf.shape(moved), seed + 4)
        kept = valid & _kept_strokes(config, stroke_ids, seed + 5)
        top = tf.reduce_max(tf.where(kept[..., None], moved, -math.inf), axis=1, keepdims=True)
        top = tf.where(tf.math.is_finite(top), top, float(frame))
        moved = moved + top - frame  # the renderer adds (frame - top) / 2 to centre: this cancels it
        moved = tf.where(kept[..., None], moved, math.nan)
        return tf.concat([moved, points[..., 2:]], axis=-1)

    return augment
