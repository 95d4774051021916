"""Learned class proxies: the head whose cosines the proxy losses (normalised softmax, proxy-anchor)
train, so that an embedding model sees every class at every step, not only the pairs in its batch."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="sketch")
class CosineProxies(keras.layers.Layer):
    """embeddings [B, D] -> cos(embedding, proxy of class c) [B, C], one learned proxy per class.

    Both sides are L2-normalised (a zero embedding gives cosines of 0). Initialised as the
    proxy-anchor authors do (Kaiming normal, fan-out), so the proxies start spread over the sphere.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Invalid value for argument `num_classes`. Received: {num_classes!r}. "
                             "Expected an integer >= 2.")
        self.num_classes = num_classes

    def build(self, input_shape):
        self.proxies = self.add_weight(name="proxies", shape=(self.num_classes, int(input_shape[-1])),
                                       initializer=keras.initializers.HeNormal(), trainable=True)

    def call(self, embeddings):
        embeddings = tf.math.l2_normalize(embeddings, axis=-1)
        proxies = tf.math.l2_normalize(tf.cast(self.proxies, embeddings.dtype), axis=-1)
        return tf.matmul(embeddings, proxies, transpose_b=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
