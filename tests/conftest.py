"""Shared fixtures: paths to the real samples in ../shared/data (never copied into the project),
a small real data set and a trained classifier export built once per test run."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import shutil
from typing import Any

import numpy as np
import pytest

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
QUICKDRAW = SHARED_DATA / "quickdraw"
SKETCHY = SHARED_DATA / "sketchy"


@pytest.fixture(scope="session")
def quickdraw_dir() -> pathlib.Path:
    if not QUICKDRAW.is_dir():
        pytest.fail(f"real Quick, Draw! sample missing at {QUICKDRAW} (../shared must sit beside the project)")
    return QUICKDRAW


@pytest.fixture(scope="session")
def sketchy_dir() -> pathlib.Path:
    if not SKETCHY.is_dir():
        pytest.fail(f"real Sketchy sample missing at {SKETCHY} (../shared must sit beside the project)")
    return SKETCHY


def _first_drawings(path: pathlib.Path, count: int) -> list[list[np.ndarray]]:
    """The first `count` drawings of an ndjson file, read by the project's reader."""
    from data_prep import quickdraw

    reader = quickdraw.read_ndjson(path)
    return [next(reader).strokes for _ in range(count)]


@pytest.fixture(scope="session")
def simplified(quickdraw_dir) -> list[list[np.ndarray]]:
    """344 real simplified drawings: the first of every category."""
    drawings = [_first_drawings(p, 1)[0] for p in sorted((quickdraw_dir / "simplified").glob("*.ndjson"))]
    assert len(drawings) == 344
    return drawings


@pytest.fixture(scope="session")
def raw(quickdraw_dir) -> list[list[np.ndarray]]:
    """173 real raw drawings (x, y, t; screen coordinates): the first of every second category."""
    drawings = [_first_drawings(p, 1)[0] for p in sorted((quickdraw_dir / "raw").glob("*.ndjson"))[::2]]
    assert all(d[0].shape[1] == 3 for d in drawings)
    return drawings


@pytest.fixture(scope="session")
def edge_cases() -> list[list[np.ndarray]]:
    """Drawings that stress a rasterizer's clipping and windows: a lone point, long segments across (and
    far outside) the frame, a stroke that crosses itself, non-finite points, two empty drawings (last)."""
    nan = np.nan
    return [
        [np.array([[100.0, 100.0]])],
        [np.array([[0.0, 0.0], [255.0, 255.0]]), np.array([[255.0, 0.0], [0.0, 255.0]])],
        [np.array([[-5000.0, 128.0], [5000.0, 130.0]]), np.array([[0.0, 0.0], [255.0, 255.0]])],
        [np.array([[0.0, 0.0], [255.0, 3.0], [0.0, 6.0], [255.0, 9.0], [0.0, 0.0]])],
        [np.array([[10.0, 10.0], [nan, 50.0], [200.0, 40.0], [np.inf, 0.0], [30.0, 220.0]]), np.array([[nan, nan]])],
        [np.array([[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]), np.array([[250.0, 250.0]])],
        [],
        [np.zeros((0, 2))],
    ]


TRAIN_CATEGORIES = "apple,bicycle,cat,fish,house,star,tree,umbrella"


@pytest.fixture(scope="session")
def quickdraw_28px(tmp_path_factory, quickdraw_dir) -> pathlib.Path:
    """TFRecords of 8 real categories of the simplified sample at 28 px: about 150 train and 38 test
    drawings (the sample has 25 per category); built once per test session for the training tests."""
    from configuration_sketch import QuickDrawBuildConfig, RasterConfig
    from data_prep import quickdraw_build

    out = tmp_path_factory.mktemp("quickdraw_28px")
    config = QuickDrawBuildConfig(source=str(quickdraw_dir / "simplified"), format="simplified",
                                  categories=TRAIN_CATEGORIES, train_per_class=20, test_per_class=5,
                                  out=str(out), shards=2, workers=1)
    quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return out


BITMAP = SHARED_DATA / "quickdraw_bitmap"
BITMAP_CLASSES = ["boomerang", "clock", "cloud", "smiley face", "train", "tree"]
# The first rows of each numpy_bitmap file are the drawings of ../quickdraw/{simplified,raw} (same
# order, up to 41 per class): kept out of training so tests classify drawings the model never saw.
BITMAP_HELD_OUT = 50


@dataclasses.dataclass(frozen=True)
class TrainedExport:
    """A classifier trained on real drawings and its export (see `trained_bitmap_export`)."""

    export_dir: pathlib.Path
    model: Any  # keras.Model: logits out, a Dense layer named "features" before them
    class_names: list[str]
    image_size: int
    channels: int
    held_out_accuracy: float  # top-1 on the held-out numpy_bitmap rows (6 x 50)


def bitmap_rows(held_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28, 1] numpy_bitmap rows of BITMAP_CLASSES and int labels: the first
    BITMAP_HELD_OUT rows of each class (held_out=True) or the rest."""
    images, labels = [], []
    for label, name in enumerate(BITMAP_CLASSES):
        rows = np.load(BITMAP / f"{name}.npy", allow_pickle=False)
        rows = rows[:BITMAP_HELD_OUT] if held_out else rows[BITMAP_HELD_OUT:]
        images.append(rows.reshape(-1, 28, 28, 1))
        labels.append(np.full(len(rows), label))
    return np.concatenate(images), np.concatenate(labels)


def train_bitmap_classifier(seed: int = 0, epochs: int = 4):
    """A small CNN (logits; 'features' = the 64-wide Dense layer) fitted on the real numpy_bitmap
    rows (7,700 drawings, white strokes on black, 28 px): about 10 s on 2 cores."""
    import keras

    images, labels = bitmap_rows(held_out=False)
    order = np.random.default_rng(seed).permutation(len(images))
    x, y = images[order].astype(np.float32) / 255.0, labels[order]
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dropout(0.3)(keras.layers.Flatten()(h))
    features = keras.layers.Dense(64, activation="relu", name="features")(h)
    model = keras.Model(inputs, keras.layers.Dense(len(BITMAP_CLASSES), name="logits")(features))
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=epochs, shuffle=True, verbose=0)
    return model


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """`build(folder)` run once per test run, shared by pytest-xdist workers (they wait on a lock
    file in the run's common temporary folder); returns the folder."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            (folder / ".done").touch()
    return folder


@pytest.fixture(scope="session")
def trained_bitmap_export(tmp_path_factory) -> TrainedExport:
    """`train_bitmap_classifier()` exported with serving.export.export_model (classifier, 28 px,
    1 channel, polarity 'white_on_black', Quick, Draw! raster settings): built once per test run
    (about 25 s) and shared by every test and xdist worker. Reuse it for any test that needs a real
    trained classifier export; `model` is the Keras model read back from the export's model.keras."""
    import keras

    from serving.export import KERAS_FILE, export_model

    def build(folder):
        export_model(train_bitmap_classifier(), folder, class_names=BITMAP_CLASSES, image_size=28, channels=1,
                     polarity="white_on_black", raster={"image_size": 28, "line_width": 16.0, "padding": 16.0})

    folder = built_once(tmp_path_factory, "trained_bitmap_export", build)
    model = keras.models.load_model(folder / KERAS_FILE)
    images, labels = bitmap_rows(held_out=True)
    accuracy = float(np.mean(model.predict(images / 255.0, verbose=0).argmax(1) == labels))
    return TrainedExport(folder, model, list(BITMAP_CLASSES), 28, 1, accuracy)


@dataclasses.dataclass(frozen=True)
class HashExport:
    """An untrained hash model and its export (see `photo_hash_export`)."""

    export_dir: pathlib.Path
    model: Any  # keras.Model: 64 x 64 x 3 in, 48 values out
    image_size: int
    channels: int


def tiny_embedding_network(size: int, channels: int, dims: int, seed: int):
    """A seeded, untrained conv net from [size, size, channels] to `dims` values."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(dims, name="embedding")(x))


@pytest.fixture(scope="session")
def photo_hash_export(tmp_path_factory) -> HashExport:
    """A 48-bit hash model (kind 'hash', untrained, seeded) on 64 px colour images, polarity
    'as_is' (photos), exported once per test run and shared by xdist workers: for tests of the
    embedding-only endpoints and of colour input."""
    import keras

    from serving.export import KERAS_FILE, export_model

    def build(folder):
        export_model(tiny_embedding_network(64, 3, 48, seed=3), folder, class_names=None, image_size=64, channels=3,
                     kind="hash", polarity="as_is")

    folder = built_once(tmp_path_factory, "photo_hash_export", build)
    return HashExport(folder, keras.models.load_model(folder / KERAS_FILE), 64, 3)
