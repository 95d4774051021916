"""Evaluation math and inference over a split: loss, top-k accuracy, confusion matrix, features.

The math is in small NumPy functions (`classification_metrics`, `per_class_accuracy`; the confusion
matrix and most-confused pairs are serving.classification_metrics');
`run_inference` pushes a split through a model once, in inference mode, and returns every
output asked for (logits and the `features` layer together), with labels and key ids in the
split's fixed order.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from scipy.special import log_softmax


def classification_metrics(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    """Mean cross-entropy of softmax(logits), top-1 and top-k accuracy (k capped at the class count).

    Ties in top-k are broken towards the lower class index (a stable sort), so a constant
    prediction is not counted as a top-k hit for every class.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be N x C and labels N; received {logits.shape} and {labels.shape}.")
    if len(labels) == 0:
        raise ValueError("cannot evaluate 0 examples.")
    num_classes = logits.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels run from {labels.min()} to {labels.max()} but there are {num_classes} classes.")
    top_k = min(k, num_classes)
    losses = -log_softmax(logits, axis=1)[np.arange(len(labels)), labels]
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    return {
        "loss": float(np.mean(losses)),
        "top1_accuracy": float(np.mean(order[:, 0] == labels)),
        f"top{k}_accuracy": float(np.mean((order == labels[:, None]).any(axis=1))),
        "top_k": top_k,
        "num_examples": int(len(labels)),
    }


def per_class_accuracy(matrix: np.ndarray, class_names: list[str]) -> dict[str, float | None]:
    """Recall of each class (None for a class with no example)."""
    totals = matrix.sum(axis=1)
    return {name: (float(matrix[i, i] / totals[i]) if totals[i] else None) for i, name in enumerate(class_names)}


def output_model(model: keras.Model, layer_names: tuple[str, ...]) -> keras.Model:
    """A model with the same input returning the outputs of `layer_names` ('output' = the model's own)."""
    outputs = [model.outputs[0] if name == "output" else model.get_layer(name).output for name in layer_names]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_inference")


def run_inference(model: keras.Model, dataset: tf.data.Dataset, layer_names: tuple[str, ...] = ("output",),
                  jit_compile: bool = False) -> dict[str, np.ndarray]:
    """Outputs of `layer_names` for every batch of `dataset` (image, label[, key_id]), in order.

    Returns {layer name: array, 'labels': int64 [N], 'key_ids': str [N] when the dataset has them}.
    """
    inference = output_model(model, layer_names)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def step(images):
        outputs = inference(images, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [tf.cast(o, tf.float32) for o in outputs]

    collected: dict[str, list[np.ndarray]] = {name: [] for name in layer_names}
    labels: list[np.ndarray] = []
    key_ids: list[np.ndarray] = []
    for batch in dataset:
        for name, value in zip(layer_names, step(batch[0])):
            collected[name].append(value.numpy())
        labels.append(batch[1].numpy())
        if len(batch) > 2:
            key_ids.append(batch[2].numpy())
    if not labels:
        raise ValueError("the split is empty: nothing to evaluate.")
    result = {name: np.concatenate(values) for name, values in collected.items()}
    result["labels"] = np.concatenate(labels).astype(np.int64)
    if key_ids:
        result["key_ids"] = np.array([k.decode("utf-8", "replace") for k in np.concatenate(key_ids)])
    return result
