"""On-the-fly rendering: `--store strokes` builds, load_split drawing the strokes (raster_cpu, or raster_tf) at any size,
stroke-space augmentation in training batches only, and the trainer on a strokes-only data set."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from configuration_sketch import AugmentConfig, QuickDrawBuildConfig, RasterConfig
from data_prep import quickdraw_build, raster_tf, tfrecords, verify
from data_prep.pipeline import load_split, render_plan
from training import trainer
from training.augment import stroke_augmenter

CATEGORIES = "apple,cat,house,tree"


def build(out: pathlib.Path, source: pathlib.Path, store: str) -> pathlib.Path:
    """4 real simplified categories at 28 px, 20 train and 5 test drawings each."""
    config = QuickDrawBuildConfig(source=str(source / "simplified"), format="simplified", categories=CATEGORIES,
                                  train_per_class=20, test_per_class=5, out=str(out), shards=2, workers=1,
                                  store=store)
    quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory, quickdraw_dir) -> pathlib.Path:
    return build(tmp_path_factory.mktemp("both"), quickdraw_dir, "both")


@pytest.fixture(scope="module")
def strokes(tmp_path_factory, quickdraw_dir) -> pathlib.Path:
    return build(tmp_path_factory.mktemp("strokes"), quickdraw_dir, "strokes")


def shard_bytes(data_dir: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("*.tfrecord*"))


def keyed_images(data_dir: pathlib.Path, split: str, **kwargs) -> dict[bytes, np.ndarray]:
    return {key: image for images, _, keys in load_split(data_dir, split, 16, with_key_ids=True, **kwargs)
            .as_numpy_iterator() for image, key in zip(images, keys)}


def test_strokes_only_build_is_smaller_and_verifies(both, strokes):
    info = tfrecords.read_dataset_info(strokes)
    assert info["store"] == "strokes" and "image" not in info["features"] and "strokes/points" in info["features"]
    assert tfrecords.read_dataset_info(both)["store"] == "both"
    assert verify.verify(strokes)["splits"] == verify.verify(both)["splits"]
    storage = info["storage"]
    assert storage["bytes_per_record"] < 0.6 * storage["bytes_per_record_with_images"]
    # the measured figure is the files' own: shard bytes of both stores, same drawings
    assert shard_bytes(strokes) / shard_bytes(both) == pytest.approx(
        storage["bytes_per_record"] / storage["bytes_per_record_with_images"], abs=0.01)


def test_on_the_fly_images_match_the_stored_ones(both, strokes):
    stored, drawn = keyed_images(both, "test"), keyed_images(strokes, "test")
    assert stored.keys() == drawn.keys() and len(drawn) == 20
    difference = np.mean([np.abs(stored[k] - drawn[k]).mean() * 255 for k in stored])
    assert difference <= 3.0  # raster_tf's fidelity bound to skia at 28 px
    forced = keyed_images(both, "test", render="on_the_fly")  # a data set with both, drawn when asked
    assert all(np.array_equal(forced[k], drawn[k]) for k in drawn)


def test_any_size_and_time_channels(strokes):
    images, labels = next(iter(load_split(strokes, "train", 8, image_size=64)))
    assert images.shape == (8, 64, 64, 1) and float(images.numpy().max()) == 1.0
    images, _ = next(iter(load_split(strokes, "train", 8, image_size=32, time_channels=True)))
    assert images.shape == (8, 32, 32, 3)


@pytest.mark.parametrize("size, time_channels", [(28, False), (64, True)])
def test_cpu_and_graph_renderers_draw_the_same_batches(strokes, size, time_channels):
    """The default renderer (raster_cpu in tf.numpy_function) and raster_tf under XLA on the same stream: equal
    up to float rounding. (Stroke augmentation's random draws follow the padded width, which differs between
    the two, so augmented streams are equal in distribution only.)"""
    drawn = {renderer: np.concatenate([images for images, _ in load_split(
        strokes, "train", 32, image_size=size, time_channels=time_channels, renderer=renderer).as_numpy_iterator()])
        for renderer in ("cpu", "graph")}
    difference = np.abs(drawn["cpu"] - drawn["graph"]) * 255
    assert drawn["cpu"].shape == drawn["graph"].shape and drawn["cpu"].shape[1:] == (size, size, 1 + 2 * time_channels)
    assert len(drawn["cpu"]) > 60 and drawn["cpu"].max() == 1.0
    assert difference.max() <= 1.0 + 1e-4 and (difference > 0.5).mean() < 1e-3
    with pytest.raises(ValueError, match="renderer"):
        load_split(strokes, "train", 8, renderer="gpu")


def test_render_plan_and_one_line_errors(both, strokes, tmp_path):
    info, stored_info = tfrecords.read_dataset_info(strokes), tfrecords.read_dataset_info(both)
    assert render_plan(stored_info) == "stored" and render_plan(info) == "on_the_fly"
    assert render_plan(stored_info, time_channels=True) == "on_the_fly"  # 1-channel images cannot serve
    with pytest.raises(tfrecords.DatasetInfoError, match="strokes only"):
        render_plan(info, "stored")
    bitmap = {**stored_info, "source_format": "bitmap",
              "features": {k: v for k, v in stored_info["features"].items() if not k.startswith("strokes/")}}
    for asked in ({"time_channels": True}, {"render": "on_the_fly"}, {"stroke_augment": True}):
        with pytest.raises(tfrecords.DatasetInfoError, match="needs strokes.*bitmap format"):
            render_plan(bitmap, **asked)
    with pytest.raises(trainer.ToolError, match="strokes only") as error:
        trainer.prepare_run(*trainer.resolve("smoke", {"mode": "train", "data_path": str(strokes),
                                                       "model_dir": str(tmp_path / "m"), "render": "stored"}))
    assert "\n" not in str(error.value)


def test_stroke_augment_in_training_batches_only(strokes, tmp_path):
    plain = {image.tobytes() for image in keyed_images(strokes, "train").values()}
    run, task = trainer.prepare_run(*trainer.resolve("smoke", {
        "mode": "train", "data_path": str(strokes), "model_dir": str(tmp_path / "plan"), "stroke_augment": True}))
    images, _ = next(iter(task.train_dataset(run, seed=5)))
    assert np.mean([image.tobytes() not in plain for image in images.numpy()]) > 0.5
    test = {image.tobytes() for image in keyed_images(strokes, "test").values()}
    validation, _ = next(iter(task.validation_dataset(run)))
    assert all(image.tobytes() in test for image in validation.numpy())  # evaluation: never augmented


def test_trains_on_strokes_only_at_28_and_64_px(strokes, tmp_path):
    """One build, two models: 28 px plain and 64 px with time channels; the export records the latter's raster."""
    for size, time_channels in ((28, False), (64, True)):
        model_dir = tmp_path / f"run{size}"
        result = trainer.run_mode(*trainer.resolve("smoke", {"mode": "train", "data_path": str(strokes),
                                                             "model_dir": str(model_dir), "image_size": size,
                                                             "time_channels": time_channels, "epochs": 1}))
        assert result["final_step"] == 3
    trainer.run_mode(*trainer.resolve("", {"mode": "export", "data_path": str(strokes), "model_dir": str(model_dir)}))
    meta = json.loads(next(model_dir.rglob("model_meta.json")).read_text())
    assert meta["raster"]["image_size"] == 64 and meta["raster"]["time_channels"] is True
    assert meta["raster"]["line_width"] == 16.0 and meta["channels"] == 3
    with pytest.raises(trainer.ToolError, match="-channels 1 does not match"):
        trainer.prepare_run(*trainer.resolve("smoke", {"mode": "train", "data_path": str(strokes), "channels": 1,
                                                       "model_dir": str(tmp_path / "c"), "time_channels": True}))


def test_stroke_augmenter_is_seeded_and_the_identity_at_zero_rates():
    drawings = [[np.array([[10, 10], [200, 40], [120, 220]], np.float32), np.array([[30, 30], [60, 90]], np.float32)],
                [np.array([[0, 0], [255, 255]], np.float32)]]
    batch = raster_tf.pad_drawings(drawings)
    augment = stroke_augmenter(AugmentConfig(), 256, "auto")
    first, again, other = (augment(batch.points, batch.stroke_ids, batch.num_points, tf.constant(seed)).numpy()
                           for seed in ([1, 2], [1, 2], [1, 3]))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(np.nan_to_num(first), np.nan_to_num(other))
    zero = AugmentConfig(stroke_scale=0, stroke_shear=0, stroke_rotation=0, stroke_translate=0, stroke_jitter=0,
                         stroke_dropout=0, stroke_partial=0)
    moved = stroke_augmenter(zero, 256, "auto")(batch.points, batch.stroke_ids, batch.num_points, tf.constant([0, 0]))
    drawn = raster_tf.rasterize_batch(moved, batch.stroke_ids, batch.num_points, normalize="never").numpy()
    np.testing.assert_array_equal(drawn, raster_tf.rasterize_batch(*batch[:3]).numpy())
