"""Learned class proxies: the head whose cosines the proxy losses (normalised softmax, proxy-anchor)
train, so that an embedding model sees every class at every step, not only the pairs in its batch."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="sketch")
class CosineProxies(keras.layers.Layer):
    """embeddings [B, D] -> cos(embedding, proxy of class c) [B, C], one learned proxy per class.

    Both sides are L2-normalised (a zero embedding gives cosines of 0). Initialised as the
    proxy-anchor authors do (normal, std sqrt(2 / classes)), so the proxies start spread over the
    sphere. `lr_multiplier` m makes the proxies learn m times faster than the network under Adam-type
    optimizers (the authors train them at 100x the learning rate): the stored weight is proxies / m
    and the layer uses m x it, so Adam's steps of about the learning rate move the proxies m times as
    far; the cosines do not depend on the scale.
    """

    def __init__(self, num_classes: int, lr_multiplier: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Invalid value for argument `num_classes`. Received: {num_classes!r}. "
                             "Expected an integer >= 2.")
        if isinstance(lr_multiplier, bool) or not isinstance(lr_multiplier, (int, float)) or not lr_multiplier > 0:
            raise ValueError(f"Invalid value for argument `lr_multiplier`. Received: {lr_multiplier!r}. "
                             "Expected a number > 0.")
        self.num_classes, self.lr_multiplier = num_classes, float(lr_multiplier)

    def build(self, input_shape):
        std = (2.0 / self.num_classes) ** 0.5 / self.lr_multiplier
        self.proxies = self.add_weight(name="proxies", shape=(self.num_classes, int(input_shape[-1])),
                                       initializer=keras.initializers.RandomNormal(stddev=std), trainable=True)

    def call(self, embeddings):
        embeddings = tf.math.l2_normalize(embeddings, axis=-1)
        proxies = tf.math.l2_normalize(tf.cast(self.proxies * self.lr_multiplier, embeddings.dtype), axis=-1)
        return tf.matmul(embeddings, proxies, transpose_b=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "lr_multiplier": self.lr_multiplier}
