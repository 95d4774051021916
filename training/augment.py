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
"""

from __future__ import annotations

import keras

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
