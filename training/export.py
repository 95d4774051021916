"""Export a trained model as a SavedModel with named serving endpoints, plus its `.keras` file.

`export_model` writes into `export_dir`:

    saved_model/      keras.export.ExportArchive, endpoints below
    model.keras       the Keras model itself
    model_meta.json   kind, image_size, channels, class_names, embedding_dim, raster, endpoints

Endpoints (their names and signatures are a contract; images are scaled to float32 [0, 1]
inside, which is what the models are trained on):

    embed_images(images: uint8 [None, H, W, C]) -> float32 [None, D]
    embed_png(png: string [None]) -> float32 [None, D]      decode, grey/colour to C, resize to H x W
    classify_images(images: uint8 [None, H, W, C]) -> {'probabilities': float32 [None, K],
        'top_classes': string [None, T], 'top_probabilities': float32 [None, T]}   (classifiers)
    classify_png(png: string [None]) -> the same                                     (classifiers)

D is the width of the layer named `features_layer` for classifiers and the model output for
embedding and hash models; T = min(5, K).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

KINDS = ("classifier", "embedding", "hash")
SAVED_MODEL = "saved_model"
KERAS_FILE = "model.keras"
META_FILE = "model_meta.json"
TOP = 5


class ExportError(ValueError):
    """A model or export folder that does not fit the export contract; the message says why."""


def _is_softmax(model) -> bool:
    activation = getattr(model.layers[-1], "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def export_model(model: "keras.Model", export_dir, *, class_names: list[str] | None, image_size: int,
                 channels: int, kind: str = "classifier", raster: dict | None = None,
                 features_layer: str = "features", outputs_are_logits: bool | None = None) -> dict:
    """Write the SavedModel, the .keras file and model_meta.json; returns the meta dict.

    `outputs_are_logits` None decides from the last layer (softmax activation: probabilities,
    otherwise logits, to which the classify endpoints apply a softmax).
    """
    import keras
    import tensorflow as tf

    if kind not in KINDS:
        raise ExportError(f"Invalid value for argument `kind`. Received: {kind!r}. Expected one of {KINDS}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ExportError(f"Invalid value for argument `image_size`. Received: {image_size!r}. "
                          "Expected a positive integer.")
    if channels not in (1, 3):
        raise ExportError(f"Invalid value for argument `channels`. Received: {channels!r}. Expected 1 or 3.")
    expected = (image_size, image_size, channels)
    input_shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if input_shape is not None and any(a is not None and a != b for a, b in zip(input_shape, expected)):
        raise ExportError(f"the model takes inputs of shape {input_shape} but image_size={image_size}, "
                          f"channels={channels} give {expected}.")
    if kind == "classifier":
        try:
            features = model.get_layer(features_layer).output
        except ValueError:
            raise ExportError(f"a classifier needs a layer named {features_layer!r} to embed with; "
                              f"the model has {[layer.name for layer in model.layers]}.") from None
        embedder = keras.Model(model.inputs, features, name=f"{model.name}_{features_layer}")
        num_classes = int(model.outputs[0].shape[-1])
        if class_names is None or len(class_names) != num_classes:
            raise ExportError(f"a classifier with {num_classes} outputs needs {num_classes} class_names; "
                              f"received {None if class_names is None else len(class_names)}.")
    else:
        embedder = model
    if outputs_are_logits is None:
        outputs_are_logits = not _is_softmax(model)
    embedding_dim = int(np.prod([d for d in embedder.outputs[0].shape[1:]]))

    def scale(images):
        return tf.cast(images, tf.float32) / 255.0

    def decode(png):
        def one(data):
            image = tf.io.decode_png(data, channels=channels)
            # Antialiased resizing to the same size is the identity, so H x W PNGs pass unchanged.
            resized = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
        return tf.map_fn(one, png, fn_output_signature=tf.TensorSpec(expected, tf.uint8))

    def embed_images(images):
        out = embedder(scale(images), training=False)
        return tf.reshape(tf.cast(out, tf.float32), [-1, embedding_dim])

    image_spec = tf.TensorSpec([None, *expected], tf.uint8, name="images")
    png_spec = tf.TensorSpec([None], tf.string, name="png")
    archive = keras.export.ExportArchive()
    archive.track(model)
    if embedder is not model:
        archive.track(embedder)
    archive.add_endpoint("embed_images", embed_images, input_signature=[image_spec])
    archive.add_endpoint("embed_png", lambda png: embed_images(decode(png)), input_signature=[png_spec])
    endpoints = {
        "embed_images": {"inputs": "images uint8 [None, H, W, C]", "outputs": "float32 [None, D]"},
        "embed_png": {"inputs": "png string [None]", "outputs": "float32 [None, D]"},
    }
    if kind == "classifier":
        names = tf.constant([str(c) for c in class_names])
        top = min(TOP, len(class_names))

        def classify_images(images):
            out = tf.cast(model(scale(images), training=False), tf.float32)
            probabilities = tf.nn.softmax(out, axis=-1) if outputs_are_logits else out
            values, indices = tf.math.top_k(probabilities, k=top)
            return {"probabilities": probabilities, "top_classes": tf.gather(names, indices),
                    "top_probabilities": values}

        archive.add_endpoint("classify_images", classify_images, input_signature=[image_spec])
        archive.add_endpoint("classify_png", lambda png: classify_images(decode(png)), input_signature=[png_spec])
        described = f"{{probabilities float32 [None, K], top_classes string [None, {top}], " \
                    f"top_probabilities float32 [None, {top}]}}"
        endpoints["classify_images"] = {"inputs": "images uint8 [None, H, W, C]", "outputs": described}
        endpoints["classify_png"] = {"inputs": "png string [None]", "outputs": described}

    export_dir = pathlib.Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    archive.write_out(str(export_dir / SAVED_MODEL), verbose=False)
    model.save(export_dir / KERAS_FILE)
    meta = {
        "kind": kind,
        "image_size": int(image_size),
        "channels": int(channels),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "embedding_dim": embedding_dim,
        "raster": raster,
        "features_layer": features_layer if kind == "classifier" else None,
        "outputs_are_logits": bool(outputs_are_logits),
        "endpoints": endpoints,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    (export_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def read_meta(export_dir) -> dict:
    """model_meta.json of an export folder, checked to be one (no TensorFlow import)."""
    export_dir = pathlib.Path(export_dir)
    meta_path = export_dir / META_FILE
    if not meta_path.is_file() or not (export_dir / SAVED_MODEL).is_dir():
        raise ExportError(f"{str(export_dir)!r} is not an exported model folder: expected "
                          f"{META_FILE} and {SAVED_MODEL}/ inside.")
    try:
        return json.loads(meta_path.read_text())
    except ValueError as err:
        raise ExportError(f"{str(meta_path)!r} is not valid JSON: {err}") from None


def load_exported(export_dir):
    """(the loaded SavedModel object, meta dict) of a folder written by export_model."""
    import tensorflow as tf

    meta = read_meta(export_dir)
    return tf.saved_model.load(os.fspath(pathlib.Path(export_dir) / SAVED_MODEL)), meta
