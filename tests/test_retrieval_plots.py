"""retrieval/plots.py and the CLI around it: embedding scatters name their classes, example and lookup
grids draw the stored drawings or say plainly that there are none (hardening item 15)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import orjson
import pytest

from retrieval import lookup, plots
from retrieval.features import load_features
from serving.export import export_model
from serving.features import save_features
from tests.test_lookup import CLASSES, real_drawings, tiny_classifier

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "evaluate_similarity_lookup.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def grid_features(quickdraw_dir, classes: int, per_class: int):
    """8 x 8 point-count grids of real drawings of the first `classes` classes, their labels, class names,
    ids and 16 x 16 white-on-black thumbnails."""
    files = sorted((quickdraw_dir / "simplified").glob("*.ndjson"))[:classes]
    feats, labels, ids, thumbs = [], [], [], []
    for label, path in enumerate(files):
        for line in path.read_bytes().splitlines()[:per_class]:
            record = orjson.loads(line)
            xs = np.concatenate([s[0] for s in record["drawing"]])
            ys = np.concatenate([s[1] for s in record["drawing"]])
            feats.append(np.histogram2d(xs, ys, bins=8, range=[[0, 256], [0, 256]])[0].ravel())
            labels.append(label)
            ids.append(record["key_id"])
            img = np.zeros((16, 16), np.uint8)
            img[np.clip(ys // 16, 0, 15).astype(int), np.clip(xs // 16, 0, 15).astype(int)] = 255
            thumbs.append(img)
    return np.asarray(feats, np.float32), np.asarray(labels), [f.stem for f in files], ids, np.stack(thumbs)


def test_many_classes_are_named_at_their_centroids_few_in_a_legend(quickdraw_dir):
    feats, labels, names, _, _ = grid_features(quickdraw_dir, 50, 6)
    xy = plots.project(feats, "pca")
    fig, ax = plt.subplots()
    assert plots.draw_embedding(ax, xy, labels, names) == "class names at their centroids"
    placed = {t.get_text(): t.get_position() for t in ax.texts}
    assert sorted(placed) == sorted(names) and ax.get_legend() is None
    for c, name in enumerate(names):
        members = [xy[i] for i in range(len(labels)) if labels[i] == c]
        expected = (sum(p[0] for p in members) / len(members), sum(p[1] for p in members) / len(members))
        assert placed[name] == pytest.approx(expected, rel=1e-6, abs=1e-9), name
    plt.close(fig)

    few = labels < 20
    fig, ax = plt.subplots()
    assert plots.draw_embedding(ax, xy[few], labels[few], names) == "legend"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names[:20] and not ax.texts
    plt.close(fig)


def test_examples_grid_draws_stored_images_or_says_there_are_none(quickdraw_dir, tmp_path, monkeypatch):
    feats, labels, names, ids, thumbs = grid_features(quickdraw_dir, 10, 25)
    save_features(tmp_path / "with.npz", feats, labels, ids=ids, class_names=names, images=thumbs)
    save_features(tmp_path / "without.npz", feats, labels, ids=ids, class_names=names)
    grids = []
    monkeypatch.setattr(plots, "plot_result_grid", lambda rows, out, title="": grids.append((rows, title)))

    plots.plot_example_queries(load_features(tmp_path / "with.npz"), None, tmp_path / "a.png", k=4)
    rows, title = grids.pop()
    by_id = {str(i): thumbs[n] for n, i in enumerate(ids)}
    for row in rows:  # every tile is the drawing of the item its caption names
        assert np.array_equal(row["query"]["image"], by_id[row["query"]["caption"].split("\n")[-1]])
        for tile in row["results"]:
            assert np.array_equal(tile["image"], by_id[tile["caption"].split("\n")[1]])
            assert tile["image"].std() > 0  # a drawing, not a uniform box
    assert "no drawings" not in title

    plots.plot_example_queries(load_features(tmp_path / "without.npz"), None, tmp_path / "b.png", k=4)
    rows, title = grids.pop()
    assert all(t["image"] is None for row in rows for t in row["results"])
    assert f"no drawings to show: {tmp_path / 'without.npz'} has no `images`" in title


def stored_records(data_dir: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N x H x W uint8, labels, key_ids) of a split, parsed here from the tf.train.Examples."""
    import tensorflow as tf

    info = orjson.loads((data_dir / "dataset_info.json").read_bytes())
    images, labels, ids = [], [], []
    for shard in info["splits"][split]["shards"]:
        for record in tf.data.TFRecordDataset(str(data_dir / shard["file"])):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            size = info["image"]["height"]
            images.append(np.frombuffer(feature["image"].bytes_list.value[0], np.uint8).reshape(size, size))
            labels.append(feature["label"].int64_list.value[0])
            ids.append(feature["key_id"].bytes_list.value[0].decode())
    return np.stack(images), np.asarray(labels), ids


def test_examples_grid_draws_records_of_the_data_set_for_features_without_images(quickdraw_28px, tmp_path,
                                                                                  monkeypatch):
    """Hardening item 15: the trainer's feature files keep ids but no images; --data_path draws the tiles
    from the data set's records, dark strokes on white."""
    images, labels, ids = stored_records(quickdraw_28px, "test")
    features = images.reshape(len(images), -1).astype(np.float32)
    save_features(tmp_path / "f.npz", features, labels, ids=ids)
    grids = []
    monkeypatch.setattr(plots, "plot_result_grid", lambda rows, out, title="": grids.append((rows, title)))
    asked = []

    def fetch(wanted):
        asked.append(wanted)
        return lookup.dataset_thumbnails(quickdraw_28px, wanted, 64)

    plots.plot_example_queries(load_features(tmp_path / "f.npz"), None, tmp_path / "a.png", k=4, fetch_images=fetch)
    rows, title = grids.pop()
    assert len(asked) == 1 and "no drawings" not in title
    by_id = {key: np.repeat(255 - image[..., None], 3, axis=2) for key, image in zip(ids, images)}
    for row in rows:
        tiles = [row["query"]] + row["results"]
        assert len(tiles) == 5
        for tile in tiles:  # the caption's lines: [query,] class, id[, distance]
            (key,) = [line for line in tile["caption"].split("\n") if line in by_id]
            assert np.array_equal(tile["image"], by_id[key])
    assert lookup.dataset_thumbnails(quickdraw_28px, ["no such id"], 64) == {}

    done = run("--features", tmp_path / "f.npz", "--plots", tmp_path / "plots", "--tsne_points", 50,
               "--data_path", quickdraw_28px)
    assert done.returncode == 0, done.stderr
    assert "examples.png: no drawings" not in done.stdout and "plots/examples.png" in done.stdout
    assert (tmp_path / "plots" / "examples.png").stat().st_size > 10_000


def test_evaluate_prints_when_examples_have_no_drawings(quickdraw_dir, tmp_path):
    feats, labels, names, ids, _ = grid_features(quickdraw_dir, 10, 10)
    save_features(tmp_path / "f.npz", feats, labels, ids=ids, class_names=names)
    done = run("--features", tmp_path / "f.npz", "--plots", tmp_path / "plots", "--tsne_points", 100)
    assert done.returncode == 0, done.stderr
    assert f"examples.png: no drawings to show: {tmp_path / 'f.npz'} has no `images`" in done.stdout


def test_lookup_on_an_index_without_thumbnails_says_so(quickdraw_dir, tmp_path):
    """An index built from a feature file without `images` (the trainer's features_test.npz) has nothing
    to draw: index and lookup say so, where they used to leave blank tiles without a word."""
    import keras

    model = tiny_classifier()
    export_model(model, tmp_path / "exp", class_names=CLASSES, image_size=28, channels=1, polarity="white_on_black")
    drawings = real_drawings(quickdraw_dir)
    images = np.stack([d[2] for d in drawings])[..., None].astype(np.float32) / 255.0
    feats = keras.Model(model.input, model.get_layer("features").output)(images).numpy()
    save_features(tmp_path / "g.npz", feats, [CLASSES.index(d[0]) for d in drawings], ids=[d[1] for d in drawings])
    done = run("index", "--model", tmp_path / "exp", "--features", tmp_path / "g.npz")
    assert done.returncode == 0, done.stderr
    assert "no thumbnails and no image files in the index" in done.stdout
    done = run("lookup", "--model", tmp_path / "exp", "--query", quickdraw_dir / "simplified" / "cat.ndjson",
               "--k", 5)
    assert done.returncode == 0, done.stderr
    assert "5 of 5 results have no thumbnail in the index and no image file" in done.stdout
