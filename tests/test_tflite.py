"""serving.tflite on real drawings: a classifier trained on Quick, Draw! bitmaps is exported with its
TensorFlow Lite files, which give the SavedModel's probabilities (float32, polarity 'auto' included)
and nearly its classes (int8, dynamic range) on drawings it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.quickdraw import read_ndjson
from data_prep.raster import rasterize
from serving import export, tflite
from serving import model as serving_model
from tests.conftest import QUICKDRAW, SHARED_DATA

CLASSES = ("boomerang", "clock", "cloud", "smiley face", "train", "tree")
BITMAPS = SHARED_DATA / "quickdraw_bitmap"
TRAIN_ROWS = 300  # rows 0-299 of each class train the model
HELD_OUT = slice(500, 700)  # 200 rows of each class it never sees
SIZE = 28


def bitmap_rows(rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28, 1] numpy_bitmap rows (white strokes on black) of CLASSES, and their labels."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        part = np.load(BITMAPS / f"{name}.npy", allow_pickle=False)[rows]
        images.append(part.reshape(-1, SIZE, SIZE, 1))
        labels.append(np.full(len(part), label))
    return np.concatenate(images), np.concatenate(labels)


def rasterized_drawings() -> tuple[np.ndarray, np.ndarray]:
    """The simplified sample's drawings of CLASSES rendered at 28 px by the project's rasterizer."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for drawing in read_ndjson(QUICKDRAW / "simplified" / f"{name}.ndjson"):
            images.append(rasterize(drawing.strokes, image_size=SIZE)[..., None])
            labels.append(label)
    return np.stack(images), np.array(labels)


def small_classifier(num_classes: int):
    """A small CNN with the `features` layer the export contract embeds with; logits out."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(64, activation="relu", name="features")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(features))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The trained classifier exported with model.tflite (export_model) and model_int8.tflite."""
    import keras

    keras.utils.set_random_seed(0)
    images, labels = bitmap_rows(slice(0, TRAIN_ROWS))
    model = small_classifier(len(CLASSES))
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images.astype(np.float32) / 255.0, labels, batch_size=64, epochs=4, shuffle=True, verbose=0)
    export_dir = tmp_path_factory.mktemp("tflite") / "export"
    common = dict(class_names=list(CLASSES), image_size=SIZE, channels=1, kind="classifier",
                  polarity="white_on_black")
    meta = export.export_model(model, export_dir, tflite="float32", **common)
    servable, _, _ = export.build_servable(model, **common)
    int8 = tflite.write_tflite(servable, export_dir, kind="classifier", image_size=SIZE, channels=1,
                               quantization="int8")
    return export_dir, meta, int8


def held_out_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"bitmap rows 500-699": bitmap_rows(HELD_OUT), "rasterized sample": rasterized_drawings()}


@pytest.mark.slow  # shares the ~30 s training and export of `exported`
def test_float32_tflite_gives_the_saved_models_outputs(exported):
    export_dir, meta, _ = exported
    described = meta["tflite"]
    assert described["file"] == "model.tflite" and described["quantization"] == "float32"
    assert (export_dir / "model.tflite").stat().st_size == described["bytes"]
    assert json.loads((export_dir / "model_meta.json").read_text())["tflite"] == described
    assert described["inputs"] == {"images": "uint8 [N, 28, 28, 1] (the model's size: no resizing in TFLite; "
                                             "N is free)"}
    assert described["outputs"] == {"embedding": "float32 [N, 64]", "probabilities": "float32 [N, 6]",
                                    "top_classes": "string [N, 5]", "top_probabilities": "float32 [N, 5]"}
    assert described["left_out"] == [] and described["signature"] == "serving_default"
    saved = serving_model.load(export_dir)
    runner = tflite.signature_runner(export_dir / "model.tflite")
    for name, (images, _) in held_out_sets().items():
        expected = saved.run("images", images)
        got = tflite.run_tflite(runner, images)
        assert np.abs(got["probabilities"] - expected["probabilities"]).max() < 1e-4, name
        np.testing.assert_allclose(got["embedding"], expected["embedding"], rtol=1e-4, atol=1e-4)
        assert (got["top_classes"] == expected["top_classes"]).all(), name
        # independent of both: the classes are the arg-sorted probabilities
        top = np.array(CLASSES)[np.argsort(-expected["probabilities"], axis=1)[:, :5]]
        assert [c.decode() for c in got["top_classes"][:, 0]] == list(top[:, 0]), name


@pytest.mark.slow  # shares the ~30 s training and export of `exported`
def test_float32_tflite_inverts_dark_on_light_drawings_like_the_saved_model(exported):
    """Polarity 'auto' is inside the TFLite graph: black-on-white drawings give the probabilities the
    SavedModel gives for the white-on-black originals."""
    export_dir, _, _ = exported
    images, _ = rasterized_drawings()
    canonical = serving_model.load(export_dir).run("images", images)["probabilities"]
    inverted = tflite.run_tflite(export_dir / "model.tflite", 255 - images)["probabilities"]
    assert np.abs(inverted - canonical).max() < 1e-4


@pytest.mark.slow  # shares the ~30 s training and export of `exported`
def test_int8_tflite_agrees_with_the_saved_model(exported, record_property):
    export_dir, _, int8 = exported
    assert int8["file"] == "model_int8.tflite" and int8["quantization"] == "int8"
    assert (export_dir / "model_int8.tflite").stat().st_size < 0.4 * (export_dir / "model.tflite").stat().st_size
    saved = serving_model.load(export_dir)
    for name, (images, labels) in held_out_sets().items():
        expected = saved.run("images", images)["probabilities"].argmax(axis=1)
        got = tflite.run_tflite(export_dir / "model_int8.tflite", images)["probabilities"].argmax(axis=1)
        agreement = float(np.mean(got == expected))
        accuracy = float(np.mean(expected == labels))
        change = float(np.mean(got == labels)) - accuracy
        record_property(f"int8 {name}", {"images": len(labels), "agreement": agreement, "accuracy": accuracy,
                                         "accuracy_change": change})
        print(f"int8 on {name} ({len(labels)} drawings): top-1 agreement {agreement:.4f}, SavedModel accuracy "
              f"{accuracy:.4f}, change {change:+.4f}")
        assert accuracy > 0.7, name  # a trained model (chance is 1/6), so agreement means something
        assert agreement >= 0.9, name
        assert abs(change) <= 0.02, name


@pytest.mark.slow  # shares the ~30 s training and export of `exported`
def test_run_tflite_checks_its_input(exported):
    export_dir, _, _ = exported
    path = export_dir / "model.tflite"
    for bad, received in ((np.zeros((2, 64, 64, 1), np.uint8), "uint8 [2, 64, 64, 1]"),
                          (np.zeros((2, 28, 28, 1), np.float32), "float32 [2, 28, 28, 1]"),
                          (np.zeros((28, 28, 1), np.uint8), "uint8 [28, 28, 1]")):
        with pytest.raises(serving_model.ServingInputError) as error:
            tflite.run_tflite(path, bad)
        assert str(error.value) == (f"the TFLite model takes images uint8 [N, 28, 28, 1] (the model's size: resize "
                                    f"first, or use the SavedModel); received {received}.")
    empty = tflite.run_tflite(path, np.zeros((0, 28, 28, 1), np.uint8))
    assert {k: v.shape for k, v in empty.items()} == {"embedding": (0, 64), "probabilities": (0, 6),
                                                      "top_classes": (0, 5), "top_probabilities": (0, 5)}


def test_hash_model_codes_are_the_packed_signs_of_its_embedding(tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(12, activation="tanh")(x))
    servable, _, _ = export.build_servable(model, kind="hash", class_names=None, image_size=SIZE, channels=1,
                                           polarity="white_on_black")
    described = tflite.write_tflite(servable, tmp_path, kind="hash", image_size=SIZE, channels=1,
                                    quantization="float32")
    assert described["outputs"] == {"codes": "uint8 [N, 2]", "embedding": "float32 [N, 12]"}
    images, _ = rasterized_drawings()
    got = tflite.run_tflite(tmp_path / "model.tflite", images)
    expected = model.predict(images.astype(np.float32) / 255.0, verbose=0)
    np.testing.assert_allclose(got["embedding"], expected, atol=1e-5)
    np.testing.assert_array_equal(got["codes"], np.packbits(got["embedding"] > 0, axis=1))


def test_a_tflite_file_that_differs_from_the_model_is_refused(tmp_path, monkeypatch):
    """The export's own check: a float32 file that does not reproduce the SavedModel is not written."""
    import keras

    def classifier(seed):
        keras.utils.set_random_seed(seed)
        return small_classifier(len(CLASSES))

    common = dict(kind="classifier", class_names=list(CLASSES), image_size=SIZE, channels=1,
                  polarity="white_on_black")
    other, _, _ = export.build_servable(classifier(2), **common)
    function = tflite.endpoint_function(other, kind="classifier", image_size=SIZE, channels=1)
    converted = tflite.convert(other, function, "float32")
    monkeypatch.setattr(tflite, "convert", lambda *args: converted)
    servable, _, _ = export.build_servable(classifier(3), **common)
    with pytest.raises(export.ExportError, match="the TFLite conversion does not reproduce the model"):
        tflite.write_tflite(servable, tmp_path, kind="classifier", image_size=SIZE, channels=1, quantization="float32")
    assert not (tmp_path / "model.tflite").exists()


def test_a_model_tflite_cannot_convert_is_a_one_line_export_error(tmp_path):
    import keras
    import tensorflow as tf

    class InverseErf(keras.layers.Layer):  # tf.math.erfinv has no TFLite kernel
        def call(self, x):
            return tf.math.erfinv(x * 0.5)

    inputs = keras.Input((SIZE, SIZE, 1))
    x = InverseErf()(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    servable, _, _ = export.build_servable(model, kind="embedding", class_names=None, image_size=SIZE, channels=1,
                                           polarity="white_on_black")
    with pytest.raises(export.ExportError) as error:
        tflite.write_tflite(servable, tmp_path, kind="embedding", image_size=SIZE, channels=1, quantization="float32")
    assert str(error.value) == ("TensorFlow Lite cannot convert this model: 'tf.Erfinv' op is neither a custom op "
                                "nor a flex op")
    assert not list(tmp_path.iterdir())
