"""training.export: the SavedModel endpoints, reloaded in a fresh process, equal the Keras model.

The inputs are real Quick, Draw! drawings rasterized with data_prep.raster.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import orjson
import pytest
import tensorflow as tf

from data_prep.raster import rasterize
from training.export import ExportError, export_model, load_exported

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSES = ["apple", "bicycle", "cat", "house"]


def real_images(quickdraw_dir, size=28, per_class=6):
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        lines = (quickdraw_dir / "simplified" / f"{name}.ndjson").read_bytes().splitlines()[:per_class]
        for line in lines:
            strokes = [np.asarray(s[:2], np.float32).T for s in orjson.loads(line)["drawing"]]
            images.append(rasterize(strokes, image_size=size))
            labels.append(label)
    return np.stack(images)[..., None], np.asarray(labels)


def tiny_classifier(size=28, channels=1, classes=4, softmax=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(16, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None, name="logits")(features)
    return keras.Model(inputs, outputs)


RELOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1] + "/saved_model")
    data = np.load(sys.argv[2])
    images = tf.constant(data["images"])
    blob, ends = data["png_blob"].tobytes(), data["png_ends"].tolist()
    pngs = tf.constant([blob[a:b] for a, b in zip([0] + ends[:-1], ends)])
    out = {"embed_images": model.embed_images(images).numpy(),
           "embed_png": model.embed_png(pngs).numpy()}
    if hasattr(model, "classify_images"):
        c = model.classify_images(images)
        out.update({"probabilities": c["probabilities"].numpy(),
                    "top_classes": c["top_classes"].numpy().astype(str),
                    "top_probabilities": c["top_probabilities"].numpy(),
                    "png_probabilities": model.classify_png(pngs)["probabilities"].numpy()})
    np.savez(sys.argv[3], **out)
""")


def reload_in_fresh_process(export_dir, images, tmp_path):
    pngs = [tf.io.encode_png(i).numpy() for i in images]
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=images, png_blob=np.frombuffer(b"".join(pngs), np.uint8),
             png_ends=np.cumsum([len(p) for p in pngs]))
    outputs = tmp_path / "outputs.npz"
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    done = subprocess.run([sys.executable, str(script), str(export_dir), str(inputs), str(outputs)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(outputs, allow_pickle=False) as out:
        return {k: out[k] for k in out.files}


def test_classifier_endpoints_match_keras_in_a_fresh_process(quickdraw_dir, tmp_path):
    images, _ = real_images(quickdraw_dir)
    model = tiny_classifier()
    meta = export_model(model, tmp_path / "exp", class_names=CLASSES, image_size=28, channels=1,
                        raster={"image_size": 28, "line_width": 16.0})
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["model.keras", "model_meta.json", "saved_model"]
    on_disk = json.loads((tmp_path / "exp" / "model_meta.json").read_text())
    assert on_disk == meta
    assert meta["kind"] == "classifier" and meta["embedding_dim"] == 16 and meta["class_names"] == CLASSES
    assert set(meta["endpoints"]) == {"embed_images", "embed_png", "classify_images", "classify_png"}
    assert meta["raster"]["line_width"] == 16.0 and meta["outputs_are_logits"] is True

    out = reload_in_fresh_process(tmp_path / "exp", images, tmp_path)
    x = images.astype(np.float32) / 255.0
    features = keras.Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    probabilities = tf.nn.softmax(model.predict(x, verbose=0)).numpy()
    assert out["embed_images"].shape == (24, 16) and out["embed_images"].dtype == np.float32
    np.testing.assert_allclose(out["embed_images"], features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["embed_png"], features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["png_probabilities"], probabilities, rtol=1e-5, atol=1e-6)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :4]
    assert out["top_classes"].shape == (24, 4)  # min(5, K) with K = 4
    np.testing.assert_array_equal(out["top_classes"], np.array(CLASSES)[order])
    np.testing.assert_allclose(out["top_probabilities"], np.take_along_axis(probabilities, order, 1), rtol=1e-5)
    assert np.all(np.diff(out["top_probabilities"], axis=1) <= 0)

    reloaded = keras.models.load_model(tmp_path / "exp" / "model.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_embed_png_converts_colour_and_resizes(quickdraw_dir, tmp_path):
    images, _ = real_images(quickdraw_dir, size=28, per_class=1)
    model = tiny_classifier(channels=3, softmax=True)
    export_model(model, tmp_path / "exp3", class_names=CLASSES, image_size=28, channels=3)
    loaded, meta = load_exported(tmp_path / "exp3")
    assert meta["outputs_are_logits"] is False and meta["channels"] == 3
    grey_png = tf.constant([tf.io.encode_png(i).numpy() for i in images])  # 1-channel PNGs
    rgb = np.repeat(images, 3, axis=-1)
    np.testing.assert_allclose(loaded.embed_png(grey_png).numpy(), loaded.embed_images(rgb).numpy(), rtol=1e-5,
                               atol=1e-6)
    probabilities = loaded.classify_images(rgb)["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, model.predict(rgb / 255.0, verbose=0), rtol=1e-5, atol=1e-6)
    big = np.random.default_rng(2).integers(0, 256, (4, 40, 56, 3), dtype=np.uint8)  # RGB, not square
    big_png = tf.constant([tf.io.encode_png(i).numpy() for i in big])
    embedded = loaded.embed_png(big_png).numpy()
    resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(tf.cast(big, tf.float32), [28, 28],
                                                                 antialias=True)), 0, 255), tf.uint8)
    assert embedded.shape == (4, 16)
    np.testing.assert_allclose(embedded, loaded.embed_images(resized).numpy(), rtol=1e-5, atol=1e-6)


def test_embedding_model_exports_its_output(tmp_path):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(8, name="embedding")(x)
    model = keras.Model(inputs, outputs)
    meta = export_model(model, tmp_path / "emb", class_names=None, image_size=16, channels=1, kind="embedding")
    loaded, _ = load_exported(tmp_path / "emb")
    assert meta["embedding_dim"] == 8 and "classify_images" not in meta["endpoints"]
    assert not hasattr(loaded, "classify_images")
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    np.testing.assert_allclose(loaded.embed_images(images).numpy(), model.predict(images / 255.0, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_export_errors(tmp_path):
    model = tiny_classifier()
    with pytest.raises(ExportError, match="needs 4 class_names; received 3"):
        export_model(model, tmp_path / "a", class_names=CLASSES[:3], image_size=28, channels=1)
    with pytest.raises(ExportError, match="needs a layer named 'embedding'"):
        export_model(model, tmp_path / "b", class_names=CLASSES, image_size=28, channels=1,
                     features_layer="embedding")
    with pytest.raises(ExportError, match=r"takes inputs of shape \(28, 28, 1\)"):
        export_model(model, tmp_path / "c", class_names=CLASSES, image_size=32, channels=1)
    with pytest.raises(ExportError, match="Invalid value for argument `kind`"):
        export_model(model, tmp_path / "d", class_names=CLASSES, image_size=28, channels=1, kind="detector")
    with pytest.raises(ExportError, match="is not an exported model folder"):
        load_exported(tmp_path)
