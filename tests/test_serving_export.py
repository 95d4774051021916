"""serving.export: the SavedModel contract on a classifier trained on real drawings.

Every value is checked against an independent computation: the Keras model itself (softmax of its
logits, its `features` layer), np.packbits, the data builder's renderings (data_prep.quickdraw_build
read back by data_prep.pipeline.load_split) and its image-folder resize (OpenCV), and a fresh Python
process that loads the SavedModel alone.
"""

from __future__ import annotations

import io
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
from PIL import Image

from data_prep.image_folder import load_image, resize_square
from data_prep.pipeline import load_split
from data_prep.raster import rasterize
from tests.conftest import tiny_embedding_network
from serving.export import SAVED_MODEL, ExportError, build_servable, export_model, read_meta, write_meta

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSIFY = ("probabilities", "top_classes", "top_probabilities", "embedding")
INPUT_KINDS = ("images", "images_float", "encoded", "strokes")  # strokes: the model has raster settings


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, "PNG")
    return buf.getvalue()


def drawings_of(quickdraw_dir, categories, per_class):
    """{key_id: strokes} of the first `per_class` simplified drawings of each category, and their order."""
    strokes = {}
    for name in categories:
        for line in (quickdraw_dir / "simplified" / f"{name}.ndjson").read_bytes().splitlines()[:per_class]:
            record = orjson.loads(line)
            strokes[str(record["key_id"])] = [np.asarray(s[:2], np.float32).T for s in record["drawing"]]
    return strokes


def rendered(quickdraw_dir, categories, per_class, size=28) -> np.ndarray:
    """uint8 [N, size, size, 1]: real drawings, white strokes on black (the builder's raster)."""
    return np.stack([rasterize(s, image_size=size) for s in drawings_of(quickdraw_dir, categories, per_class).values()])[
        ..., None]


@pytest.fixture(scope="module")
def classifier(trained_bitmap_export):
    return trained_bitmap_export, tf.saved_model.load(str(trained_bitmap_export.export_dir / SAVED_MODEL))


@pytest.fixture(scope="module")
def real_pixels(quickdraw_dir, trained_bitmap_export):
    """uint8 [30, 28, 28, 1]: 5 real drawings of each of the classifier's classes."""
    return rendered(quickdraw_dir, trained_bitmap_export.class_names, per_class=5)


@pytest.fixture(scope="module")
def hash_model(photo_hash_export):
    meta = read_meta(photo_hash_export.export_dir)
    return photo_hash_export.model, meta, tf.saved_model.load(str(photo_hash_export.export_dir / SAVED_MODEL))


@pytest.fixture(scope="module")
def photos(sketchy_dir):
    """uint8 [12, 128, 128, 3] real Sketchy photos and their JPEG bytes."""
    files = sorted((sketchy_dir / "photo").glob("*/*.jpg"))[::260]
    data = [p.read_bytes() for p in files]
    return np.stack([load_image(d, 3)[0] for d in data]), data


def numpy_outputs(outputs: dict) -> dict:
    return {k: v.numpy() for k, v in outputs.items()}


def assert_same_outputs(a: dict, b: dict, atol=1e-6):
    assert sorted(a) == sorted(b)
    for key in a:
        if a[key].dtype.kind in "SOU":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=atol, err_msg=key)


def keras_reference(model, pixels, class_names):
    """What the classify endpoints must answer, from the Keras model alone."""
    x = pixels.astype(np.float32) / 255.0
    probabilities = tf.nn.softmax(model.predict(x, verbose=0)).numpy()
    features = keras.Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]
    return {"probabilities": probabilities, "embedding": features,
            "top_classes": np.array(class_names)[order].astype(bytes),
            "top_probabilities": np.take_along_axis(probabilities, order, 1)}


def test_meta_documents_the_contract(classifier):
    trained, _ = classifier
    meta = read_meta(trained.export_dir)
    assert meta == json.loads((trained.export_dir / "model_meta.json").read_text())
    assert meta["format_version"] == 2 and meta["kind"] == "classifier"
    assert meta["polarity"] == "white_on_black" and "white strokes on black" in meta["input"]["pixels"]
    assert meta["input"]["polarity_policies"] == ["auto", "as_is", "invert"]
    assert meta["serving_default"] == "classify_images" and meta["outputs_are_logits"] is True
    assert meta["class_names"] == trained.class_names and meta["embedding_dim"] == 64
    assert meta["image_size"] == 28 and meta["channels"] == 1 and meta["raster"]["line_width"] == 16.0
    expected = {f"{head}_{kind}" for head in ("classify", "embed", "preprocess") for kind in INPUT_KINDS}
    assert set(meta["endpoints"]) == expected | {"classify_png", "embed_png"}
    assert meta["endpoints"]["classify_png"] == {"alias_of": "classify_encoded"}
    assert set(meta["endpoints"]["classify_images"]["outputs"]) == set(CLASSIFY)
    assert meta["endpoints"]["classify_images"]["outputs"]["probabilities"] == "float32 [N, 6]"
    assert set(meta["endpoints"]["embed_encoded"]["outputs"]) == {"embedding"}
    assert "auto" in meta["endpoints"]["classify_encoded"]["polarity"]
    assert sorted(p.name for p in trained.export_dir.iterdir() if not p.name.startswith(".")) == [
        "model.keras", "model_meta.json", "saved_model"]


def test_classify_endpoints_equal_the_keras_model(classifier, real_pixels):
    """Probabilities = softmax of the Keras logits, embedding = its `features` layer, top classes in
    order, from uint8 pixels, floats in [0, 1] and PNG bytes alike; serving_default and the named
    signatures answer the same."""
    trained, loaded = classifier
    expected = keras_reference(trained.model, real_pixels, trained.class_names)
    assert expected["probabilities"].argmax(1).tolist() != [0] * len(real_pixels)  # a model that discriminates
    from_pixels = numpy_outputs(loaded.classify_images(real_pixels))
    assert sorted(from_pixels) == sorted(CLASSIFY)
    assert from_pixels["top_classes"].shape == (30, 5) and from_pixels["embedding"].shape == (30, 64)
    assert_same_outputs(from_pixels, expected)
    assert_same_outputs(numpy_outputs(loaded.classify_images_float(real_pixels / np.float32(255))), expected)
    encoded = tf.constant([png(p) for p in real_pixels])
    assert_same_outputs(numpy_outputs(loaded.classify_encoded(encoded)), expected)
    assert_same_outputs(numpy_outputs(loaded.classify_png(encoded)), expected)
    assert_same_outputs(numpy_outputs(loaded.classify_encoded(encoded=encoded, polarity="auto")), expected)
    assert_same_outputs(numpy_outputs(loaded.classify_images(images=real_pixels)), expected)
    for name in ("serving_default", "classify_images"):
        assert_same_outputs(numpy_outputs(loaded.signatures[name](images=tf.constant(real_pixels))), expected)
    assert_same_outputs(numpy_outputs(loaded.signatures["classify_encoded"](encoded=encoded)), expected)
    embedded = numpy_outputs(loaded.embed_images(real_pixels))
    assert sorted(embedded) == ["embedding"]
    np.testing.assert_allclose(embedded["embedding"], expected["embedding"], rtol=1e-5, atol=1e-6)


def test_softmax_layer_output_is_served_as_probabilities(trained_bitmap_export, real_pixels):
    """A model that ends in a Softmax layer: its output is the probabilities (it was taken for
    logits, Softmax having no `activation`, and softmaxed again)."""
    base = trained_bitmap_export.model
    model = keras.Model(base.inputs, keras.layers.Softmax(name="probabilities")(base.outputs[0]))
    servable, signatures, info = build_servable(model, kind="classifier", class_names=trained_bitmap_export.class_names,
                                                image_size=28, channels=1, polarity="white_on_black")
    assert info["outputs_are_logits"] is False
    expected = model.predict(real_pixels / np.float32(255), verbose=0)
    served = servable.classify_images(real_pixels)["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    assert served.max() > 0.9  # a second softmax over 6 classes could not exceed e / (e + 5) = 0.35
    default = signatures["serving_default"](images=tf.constant(real_pixels))
    np.testing.assert_allclose(default["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_hash_model_contract(hash_model, photos):
    """serving_default is embed_images; outputs are exactly embedding and codes (np.packbits of
    embedding > 0); no classify endpoint; meta says so."""
    model, meta, loaded = hash_model
    pixels, jpegs = photos
    assert meta["serving_default"] == "embed_images" and meta["bits"] == 48 and meta["outputs_are_logits"] is None
    assert meta["endpoints"]["embed_images"]["outputs"]["codes"].startswith("uint8 [N, 6]")
    assert not any(name.startswith("classify") for name in meta["endpoints"])
    assert not hasattr(loaded, "classify_images") and "classify_images" not in loaded.signatures
    resized = np.stack([resize_square(p, 64) for p in pixels])
    out = numpy_outputs(loaded.embed_images(resized))
    assert sorted(out) == ["codes", "embedding"]
    np.testing.assert_allclose(out["embedding"], model.predict(resized / np.float32(255), verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert out["codes"].dtype == np.uint8 and out["codes"].shape == (len(pixels), 6)
    np.testing.assert_array_equal(out["codes"], np.packbits(out["embedding"] > 0, axis=1))
    assert 0.2 < np.mean(out["embedding"] > 0) < 0.8  # codes with both bit values
    assert_same_outputs(numpy_outputs(loaded.signatures["serving_default"](images=tf.constant(resized))), out)
    from_files = numpy_outputs(loaded.embed_encoded(tf.constant(jpegs)))
    np.testing.assert_array_equal(from_files["codes"], np.packbits(from_files["embedding"] > 0, axis=1))
    model_input = loaded.preprocess_encoded(tf.constant(jpegs))["model_input"].numpy()
    np.testing.assert_allclose(from_files["embedding"], model.predict(model_input, verbose=0), rtol=1e-5, atol=1e-6)


def test_embedding_model_contract(real_pixels):
    """kind='embedding' (built in process): serving_default is embed_images, outputs exactly
    `embedding` = the model's output, no codes, no classify endpoint."""
    model = tiny_embedding_network(28, 1, 16, seed=4)
    servable, signatures, info = build_servable(model, kind="embedding", class_names=None, image_size=28, channels=1,
                                                polarity="white_on_black")
    assert info == {"embedding_dim": 16, "outputs_are_logits": None, "bits": None}
    assert "classify_images" not in signatures and not hasattr(servable, "classify_images")
    out = numpy_outputs(signatures["serving_default"](images=tf.constant(real_pixels)))
    assert sorted(out) == ["embedding"]
    np.testing.assert_allclose(out["embedding"], model.predict(real_pixels / np.float32(255), verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert_same_outputs(numpy_outputs(servable.embed_images(real_pixels)), out)


def empty_input(name: str, channels: int):
    if name.endswith("strokes"):
        return tf.zeros([0, 3, 4], tf.float32)
    if name.endswith(("encoded", "png")):
        return tf.constant([], tf.string)
    return tf.zeros([0, 40, 40, channels], tf.float32 if name.endswith("float") else tf.uint8)


@pytest.mark.slow
def test_empty_batch_gives_empty_outputs_on_every_endpoint(classifier, hash_model):
    trained, loaded = classifier
    _, _, hashed = hash_model
    shapes = {"probabilities": (0, 6), "top_classes": (0, 5), "top_probabilities": (0, 5), "embedding": (0, 64),
              "model_input": (0, 28, 28, 1)}
    names = read_meta(trained.export_dir)["endpoints"]
    assert len(names) == 14
    for name in names:
        outputs = getattr(loaded, name)(empty_input(name, 1))
        assert {k: tuple(v.shape) for k, v in outputs.items()} == {k: shapes[k] for k in outputs}, name
        signature = loaded.signatures[name]
        outputs = signature(**{next(iter(signature.structured_input_signature[1])): empty_input(name, 1)})
        assert {k: tuple(v.shape) for k, v in outputs.items()} == {k: shapes[k] for k in outputs}, name
    for name in ("embed_images", "embed_images_float", "embed_encoded"):
        outputs = getattr(hashed, name)(empty_input(name, 3))
        assert {k: tuple(v.shape) for k, v in outputs.items()} == {"embedding": (0, 48), "codes": (0, 6)}
        assert outputs["codes"].dtype == tf.uint8


def test_float_endpoint_equals_uint8_and_refuses_out_of_range(classifier, real_pixels):
    _, loaded = classifier
    np.testing.assert_allclose(loaded.classify_images_float(real_pixels / np.float32(255))["probabilities"].numpy(),
                               loaded.classify_images(real_pixels)["probabilities"].numpy(), rtol=1e-6, atol=1e-7)
    x = real_pixels[:2] / np.float32(255)
    for bad in (x * 255, x - 0.5, np.where(x > 0.5, np.nan, x).astype(np.float32)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images_float must hold floats in \[0, 1\]"):
            loaded.classify_images_float(bad)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images_float must hold floats in \[0, 1\]"):
            loaded.signatures["embed_images_float"](images=tf.constant(bad))


def test_wrong_dtype_rank_or_channels_is_refused_naming_the_spec(classifier, real_pixels, trained_bitmap_export):
    """Floats (in [0, 1]: they would cast to 0), int32, 3 channels, rank 3 and pixels sent to the
    encoded endpoint are refused with the expected spec named; nothing is cast."""
    _, loaded = classifier
    spec = r"TensorSpec\(shape=\(None, None, None, 1\), dtype=tf.uint8, name='images'\)"
    bad_inputs = [real_pixels / np.float32(255), real_pixels.astype(np.int32), np.repeat(real_pixels, 3, -1),
                  real_pixels[0]]
    for bad in bad_inputs:
        with pytest.raises((ValueError, TypeError), match=spec):
            loaded.classify_images(bad)
    with pytest.raises((ValueError, TypeError), match=r"dtype=tf.float32, name='images'"):
        loaded.embed_images_float(real_pixels)
    with pytest.raises((ValueError, TypeError), match=r"dtype=tf.string, name='encoded'"):
        loaded.classify_encoded(real_pixels)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor but is a float"):
        loaded.signatures["classify_images"](images=tf.constant(real_pixels / np.float32(255)))
    servable, _, _ = build_servable(trained_bitmap_export.model, kind="classifier", image_size=28, channels=1,
                                    class_names=trained_bitmap_export.class_names, polarity="white_on_black")
    with pytest.raises(TypeError, match=r"images must be uint8 \[N, H, W, 1\]; received float32"):
        servable.classify_images(real_pixels / np.float32(255))


def test_polarity_argument_reaches_the_graph(classifier, real_pixels):
    _, loaded = classifier
    inverted = 255 - real_pixels
    canonical = loaded.preprocess_images(real_pixels, polarity="as_is")["model_input"].numpy()
    np.testing.assert_allclose(loaded.preprocess_images(inverted)["model_input"].numpy(), canonical, atol=1e-6)
    np.testing.assert_allclose(loaded.preprocess_images(inverted, polarity="invert")["model_input"].numpy(), canonical,
                               atol=1e-6)
    np.testing.assert_allclose(loaded.preprocess_images(inverted, polarity="as_is")["model_input"].numpy(),
                               1 - canonical, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="polarity must be one of auto, as_is, invert"):
        loaded.classify_images(real_pixels, polarity="negative")


def test_read_meta_refuses_other_formats(classifier, tmp_path):
    trained, _ = classifier
    folder = tmp_path / "old"
    (folder / SAVED_MODEL).mkdir(parents=True)
    meta = read_meta(trained.export_dir)
    write_meta(folder, {**meta, "format_version": 1})
    with pytest.raises(ExportError, match=r"format_version 1, expected 2\); export it again") as err:
        read_meta(folder)
    assert "\n" not in str(err.value)
    (folder / "model_meta.json").write_text("{not json")
    with pytest.raises(ExportError, match="is not valid JSON"):
        read_meta(folder)
    with pytest.raises(ExportError, match="is not an exported model folder"):
        read_meta(tmp_path)


def test_export_errors(trained_bitmap_export, tmp_path):
    model, names = trained_bitmap_export.model, trained_bitmap_export.class_names
    with pytest.raises(ExportError, match="needs 6 class_names; received 5"):
        export_model(model, tmp_path / "a", class_names=names[:5], image_size=28, channels=1)
    with pytest.raises(ExportError, match="needs a layer named 'embedding'"):
        export_model(model, tmp_path / "b", class_names=names, image_size=28, channels=1, features_layer="embedding")
    with pytest.raises(ExportError, match=r"takes inputs of shape \(28, 28, 1\)"):
        export_model(model, tmp_path / "c", class_names=names, image_size=32, channels=1)
    with pytest.raises(ExportError, match="Invalid value for argument `kind`"):
        export_model(model, tmp_path / "d", class_names=names, image_size=28, channels=1, kind="detector")
    with pytest.raises(ExportError, match="Invalid value for argument `polarity`"):
        export_model(model, tmp_path / "e", class_names=names, image_size=28, channels=1, polarity="dark")
    assert not any((tmp_path / x).exists() for x in "abcde")


RELOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1] + "/saved_model")
    data = np.load(sys.argv[2])
    blob, ends = data["png_blob"].tobytes(), data["png_ends"].tolist()
    pngs = tf.constant([blob[a:b] for a, b in zip([0] + ends[:-1], ends)])
    out = {}
    for name, result in [("images", loaded.classify_images(data["images"])), ("encoded", loaded.classify_encoded(pngs)),
                         ("default", loaded.signatures["serving_default"](images=tf.constant(data["images"])))]:
        out.update({f"{name}/{k}": v.numpy().astype(str) if v.dtype == tf.string else v.numpy()
                    for k, v in result.items()})
    np.savez(sys.argv[3], **out)
""")


@pytest.mark.slow
def test_fresh_process_reload_equals_in_process(classifier, real_pixels, tmp_path):
    """A Python process that imports nothing of this project loads the SavedModel and answers what
    the in-process load answers, for pixels, PNG bytes (black on white: polarity auto) and serving_default."""
    trained, loaded = classifier
    pngs = [png(255 - p) for p in real_pixels]
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=real_pixels, png_blob=np.frombuffer(b"".join(pngs), np.uint8),
             png_ends=np.cumsum([len(p) for p in pngs]))
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    done = subprocess.run([sys.executable, str(script), str(trained.export_dir), str(inputs), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {}
    for name, result in [("images", loaded.classify_images(real_pixels)),
                         ("encoded", loaded.classify_encoded(tf.constant(pngs))),
                         ("default", loaded.signatures["serving_default"](images=tf.constant(real_pixels)))]:
        expected.update({f"{name}/{k}": v.numpy().astype(str) if v.dtype == tf.string else v.numpy()
                         for k, v in result.items()})
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        fresh = {k: out[k] for k in out.files}
    assert sorted(fresh) == sorted(expected) and len(fresh) == 12
    assert_same_outputs(fresh, expected, atol=1e-7)
    np.testing.assert_array_equal(fresh["encoded/top_classes"], fresh["images/top_classes"])


# Train/serve skew: the data builder's rendering against each endpoint.

def builder_test_split(data_dir):
    """(float images [N, 28, 28, 1] as training reads them, key_ids) of a built Quick, Draw! data set."""
    images, ids = [], []
    for x, _, key_ids in load_split(data_dir, "test", batch_size=64, with_key_ids=True):
        images.append(x.numpy())
        ids += [k.decode() for k in key_ids.numpy()]
    return np.concatenate(images), ids


def test_builder_rendering_and_every_endpoint_give_the_same_model_input(quickdraw_28px, quickdraw_dir, classifier):
    """Train/serve skew is zero: a drawing rendered by data_prep.quickdraw_build and read by the
    training pipeline (load_split) equals the model input of preprocess_images (its uint8 pixels),
    preprocess_images_float and preprocess_encoded (a PNG of the pixels), bit for bit; a
    black-on-white PNG of it (polarity auto) within 1.2e-7 (2**-23, float32 spacing below 1: the
    rounding of 1 - (1 - x))."""
    _, loaded = classifier
    trained_on, key_ids = builder_test_split(quickdraw_28px)
    assert len(key_ids) >= 30
    pixels = np.round(trained_on * 255).astype(np.uint8)
    np.testing.assert_allclose(pixels / np.float32(255), trained_on, atol=0)  # the builder stores uint8 pixels
    strokes = drawings_of(quickdraw_dir, "apple,bicycle,cat,fish,house,star,tree,umbrella".split(","), per_class=25)
    np.testing.assert_array_equal(pixels[..., 0], np.stack([rasterize(strokes[k], image_size=28) for k in key_ids]))

    served = {
        "preprocess_images": loaded.preprocess_images(pixels),
        "preprocess_images_float": loaded.preprocess_images_float(trained_on),
        "preprocess_encoded": loaded.preprocess_encoded(tf.constant([png(p) for p in pixels])),
        "signature preprocess_encoded": loaded.signatures["preprocess_encoded"](
            encoded=tf.constant([png(p) for p in pixels])),
    }
    for name, out in served.items():
        assert np.abs(out["model_input"].numpy() - trained_on).max() == 0, name
    inverted = loaded.preprocess_encoded(tf.constant([png(255 - p) for p in pixels]))["model_input"].numpy()
    assert np.abs(inverted - trained_on).max() <= 2.0**-23


def test_larger_rendering_sent_as_png_is_within_the_stated_bound(quickdraw_28px, quickdraw_dir, classifier):
    """The same drawings rendered at 256 px by data_prep.raster and sent as PNG, against the
    builder's 28 px rendering (model input in [0, 1]). Measured on the 38 test drawings: mean |d|
    0.0078, worst image mean 0.0135, 99th percentile 0.105, max 0.616 (one pixel where strokes
    cross). Bounds: mean 0.01, image mean 0.018, 99th percentile 0.13, max 0.7. The difference is
    the rasterizer's anti-aliasing at 28 px, not the resize: the same PNG is within 0.51 grey level
    of OpenCV's INTER_AREA (the image-folder builder's resize_square) of the 256 px rendering."""
    _, loaded = classifier
    trained_on, key_ids = builder_test_split(quickdraw_28px)
    strokes = drawings_of(quickdraw_dir, "apple,bicycle,cat,fish,house,star,tree,umbrella".split(","), per_class=25)
    large = np.stack([rasterize(strokes[k], image_size=256) for k in key_ids])[..., None]
    served = loaded.preprocess_encoded(tf.constant([png(p) for p in large]))["model_input"].numpy()
    difference = np.abs(served - trained_on)
    measured = (difference.mean(), difference.mean(axis=(1, 2, 3)).max(), np.percentile(difference, 99),
                difference.max())
    assert all(m <= bound for m, bound in zip(measured, (0.01, 0.018, 0.13, 0.7))), measured
    opencv = np.stack([resize_square(p, 28) for p in large]).astype(np.float32)
    assert np.abs(served * 255 - opencv).max() <= 0.51


@pytest.mark.slow
def test_image_folder_builder_resize_equals_preprocess_encoded(sketchy_dir, hash_model, classifier):
    """Real Sketchy photos (JPEG) and sketches (PNG), 128 px: the image-folder builder's pixels
    (PIL decode, data_prep.image_folder.resize_square with OpenCV) against preprocess_encoded of the
    original file. Colour at 64 px: within 0.51 grey level (the builder's uint8 rounding; JPEG
    decodes identically with the accurate DCT). Grey at 28 px: within 1.0 (PIL rounds its grey
    conversion to integers before resizing; measured 0.85)."""
    files = sorted((sketchy_dir / "photo").glob("*/*.jpg"))[::300] + sorted((sketchy_dir / "sketch").glob("*/*.png"))[::300]
    data = [p.read_bytes() for p in files]
    for loaded, size, channels, bound in ((hash_model[2], 64, 3, 0.51), (classifier[1], 28, 1, 1.0)):
        builder = np.stack([resize_square(load_image(d, channels)[0], size) for d in data]).astype(np.float32)
        served = loaded.preprocess_encoded(tf.constant(data), polarity="as_is")["model_input"].numpy() * 255
        assert served.shape == (len(data), size, size, channels)
        difference = np.abs(served - builder)
        assert difference.max() <= bound, (size, channels, difference.max())
