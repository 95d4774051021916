"""evaluate_similarity_lookup.py: evaluate, plots, bad input, and the index/lookup/features commands."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import orjson
import pytest
from PIL import Image

from retrieval.features import load_features
from serving.features import save_features
from retrieval.metrics import evaluate
from retrieval.ranking import pack_codes
from tests.test_lookup import real_drawings, save_folder, tiny_classifier

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "evaluate_similarity_lookup.py"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def real_features(quickdraw_dir, tmp_path_factory):
    """Point-count grids of 250 real drawings (10 classes), with ids, class names and thumbnails."""
    files = sorted((quickdraw_dir / "simplified").glob("*.ndjson"))[:10]
    feats, labels, ids, thumbs = [], [], [], []
    for label, path in enumerate(files):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            xs = np.concatenate([s[0] for s in record["drawing"]])
            ys = np.concatenate([s[1] for s in record["drawing"]])
            hist, _, _ = np.histogram2d(xs, ys, bins=8, range=[[0, 256], [0, 256]])
            feats.append(hist.ravel())
            labels.append(label)
            ids.append(record["key_id"])
            img = np.zeros((16, 16), np.uint8)
            img[np.clip(ys // 16, 0, 15).astype(int), np.clip(xs // 16, 0, 15).astype(int)] = 255
            thumbs.append(img)
    out = tmp_path_factory.mktemp("features") / "real.npz"
    save_features(out, np.asarray(feats, np.float32), labels, ids=ids, class_names=[f.stem for f in files],
                  images=np.stack(thumbs))
    return out


def test_evaluate_prints_table_writes_report_and_plots(real_features, tmp_path):
    done = run("--features", real_features, "--k", "1,5,25", "--report", tmp_path / "r.json",
               "--plots", tmp_path / "plots", "--tsne_points", 200)
    assert done.returncode == 0, done.stderr
    assert "mAP (all relevant)" in done.stdout and "kNN accuracy@K" in done.stdout and "@25" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    fs = load_features(real_features)
    expected = evaluate(fs.features, fs.labels, query_ids=fs.ids, k=(1, 5, 25))
    for key in expected:
        if key != "timing":
            assert report[key] == expected[key], key
    assert f"{report['map']:.4f}" in done.stdout
    for name in ("tsne.png", "pca.png", "precision_recall.png", "examples.png"):
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 10_000, name
        pixels = np.asarray(Image.open(path).convert("L"))
        assert pixels.std() > 5 and min(pixels.shape) > 300, name  # drawn, not blank


def test_evaluate_query_gallery_hamming(real_features, tmp_path):
    fs = load_features(real_features)
    codes = pack_codes(fs.features - np.median(fs.features, axis=0))
    save_features(tmp_path / "q.npz", codes[::5], fs.labels[::5], ids=fs.ids[::5])
    save_features(tmp_path / "g.npz", codes, fs.labels, ids=fs.ids)
    done = run("--features", tmp_path / "q.npz", "--gallery", tmp_path / "g.npz", "--metric", "hamming",
               "--k", "1,10", "--report", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "query_gallery" and report["metric"] == "hamming" and report["dimensions"] == 64
    assert report["num_queries"] == 50 and report["num_gallery"] == 250
    assert report["instance_queries"] == 50  # every query id is in the gallery
    assert report["instance_accuracy@10"] >= report["instance_accuracy@1"] > 0
    assert "instance acc@K" in done.stdout


def _bad_files(tmp: pathlib.Path) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = np.arange(20) % 4
    np.savez(tmp / "objects.npz", features=np.array([None] * 20, dtype=object), labels=y)
    np.savez(tmp / "nolabels.npz", features=x)
    np.savez(tmp / "short.npz", features=x, labels=y[:-2])
    xn = x.copy()
    xn[3, 1] = np.nan
    np.savez(tmp / "nan.npz", features=xn, labels=y)
    xi = x.copy()
    xi[4, 0] = np.inf
    np.savez(tmp / "inf.npz", features=xi, labels=y)
    np.savez(tmp / "good.npz", features=x, labels=y)
    np.savez(tmp / "empty.npz", features=np.zeros((0, 4), np.float32), labels=np.zeros(0, int))
    np.savez(tmp / "wide.npz", features=np.zeros((5, 6), np.float32), labels=np.zeros(5, int))
    np.save(tmp / "plain.npy", x)
    (tmp / "text.npz").write_text("features,labels\n1,2\n")
    return {
        "objects": (["--features", tmp / "objects.npz"], "Object arrays cannot be loaded"),
        "nolabels": (["--features", tmp / "nolabels.npz"], "missing labels"),
        "short": (["--features", tmp / "short.npz"], "has 20 items but its labels have 18"),
        "nan": (["--features", tmp / "nan.npz"], "holds NaN values in 1 of 20 rows"),
        "inf": (["--features", tmp / "inf.npz"], "holds infinite values in 1 of 20 rows"),
        "empty_gallery": (["--features", tmp / "good.npz", "--gallery", tmp / "empty.npz"], "is empty"),
        "dims": (["--features", tmp / "good.npz", "--gallery", tmp / "wide.npz"],
                 "queries have 4 dimensions but the gallery has 6"),
        "npy": (["--features", tmp / "plain.npy"], "holds a single array, not a feature file"),
        "text": (["--features", tmp / "text.npz"], "is not a feature file"),
        "missing": (["--features", tmp / "nothere.npz"], "does not exist"),
        "budget": (["--features", tmp / "good.npz", "--memory_budget", "100"], "memory_budget of 100 bytes"),
        "command": (["evaluat", "--features", tmp / "good.npz"], "unknown command"),
    }


@pytest.mark.parametrize("case", ["objects", "nolabels", "short", "nan", "inf", "empty_gallery", "dims", "npy",
                                  "text", "missing", "budget", "command"])
def test_bad_input_is_a_clear_error(case, tmp_path):
    args, message = _bad_files(tmp_path)[case]
    done = run(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_index_lookup_and_features_commands(quickdraw_dir, sketchy_dir, tmp_path):
    """Export a tiny model, index real Sketchy photos, look up a sketch and a drawing."""
    import keras

    from serving.export import export_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(16, activation="relu", name="features")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(features))
    classes = sorted(p.name for p in (sketchy_dir / "photo").iterdir())[:3]
    export_model(model, tmp_path / "exp", class_names=classes, image_size=28, channels=1, polarity="white_on_black",
                 raster={"image_size": 28, "line_width": 16.0, "padding": 16.0, "frame": 256,
                         "time_channels": False})
    photos = tmp_path / "photos"
    for c in classes:
        (photos / c).mkdir(parents=True)
        for p in sorted((sketchy_dir / "photo" / c).glob("*.jpg"))[:5]:
            shutil.copy(p, photos / c / p.name)

    export_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "exp").rglob("*"))
    done = run("index", "--model", tmp_path / "exp", "--images", photos, "--approximate", "hnsw")
    assert done.returncode == 0, done.stderr
    assert "indexed 15 items (l2, hnsw, 16 dimensions)" in done.stdout
    assert (tmp_path / "exp_index" / "index.faiss").is_file()  # beside the export, which is left as it was
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "exp").rglob("*")) == export_files

    sketch = sorted((sketchy_dir / "sketch" / classes[0]).glob("*.png"))[0]
    done = run("lookup", "--model", tmp_path / "exp", "--query", sketch, "--k", 5, "--grid", tmp_path / "g.png")
    assert done.returncode == 0, done.stderr
    found = result_lines(done.stdout)
    assert (tmp_path / "g.png").stat().st_size > 5_000
    # The same ranking by brute force: the query and the photos embedded by the `features` command,
    # L2 distances in NumPy, ties to the lower index.
    (tmp_path / "query" / classes[0]).mkdir(parents=True)
    shutil.copy(sketch, tmp_path / "query" / classes[0] / sketch.name)
    for folder, out in ((tmp_path / "query", "q.npz"), (photos, "p.npz")):
        done = run("features", "--model", tmp_path / "exp", "--images", folder, "--out", tmp_path / out)
        assert done.returncode == 0, done.stderr
    query, gallery = load_features(tmp_path / "q.npz"), load_features(tmp_path / "p.npz")
    distances = np.sqrt(((gallery.features.astype(np.float64) - query.features[0]) ** 2).sum(axis=1))
    nearest = sorted(range(len(distances)), key=lambda j: (distances[j], j))[:5]
    assert [(rank, cls, item) for rank, _, cls, item in found] == [
        (rank, gallery.class_names[gallery.labels[j]], gallery.ids[j]) for rank, j in enumerate(nearest, 1)]
    assert [d for _, d, _, _ in found] == pytest.approx(distances[nearest], abs=2e-4)  # printed to 4 decimals

    drawing = quickdraw_dir / "simplified" / "cat.ndjson"
    done = run("lookup", "--model", tmp_path / "exp", "--query", drawing)
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]) == 10
    grid = tmp_path / "exp_index" / "lookups" / "cat_lookup.png"  # under the index, not beside the query
    assert grid.is_file() and f"grid: {grid}" in done.stdout

    done = run("features", "--model", tmp_path / "exp", "--images", photos, "--out", tmp_path / "f.npz")
    assert done.returncode == 0, done.stderr
    fs = load_features(tmp_path / "f.npz")
    assert fs.features.shape == (15, 16) and fs.class_names == classes and fs.images.shape == (15, 64, 64, 3)

    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"word": "cat"}\n')
    done = run("lookup", "--model", tmp_path / "exp", "--query", bad)
    assert done.returncode == 2 and "is not a Quick, Draw! drawing" in done.stderr
    done = run("lookup", "--model", tmp_path / "nothing", "--query", sketch)
    assert done.returncode == 2 and "is not an exported model folder" in done.stderr


def result_lines(stdout: str) -> list[tuple[int, float, str, str]]:
    """(rank, distance, class, id) of each result row a lookup printed."""
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    return [(int(r[0]), float(r[1]), r[2], r[3]) for r in rows]


@pytest.mark.slow
def test_lookup_finds_a_drawing_whatever_its_polarity_or_alpha(quickdraw_dir, tmp_path):
    """A gallery of real drawings saved dark on white (64 px) and a query of one of them saved white on
    black, or dark strokes on a transparent ground: the model (28 px, trained white on black) sees the
    same input, so that drawing comes first at distance ~0, far ahead of the others (that the policy
    reaches the endpoints, as_is and invert included, is tested in test_lookup)."""
    from serving.export import export_model

    drawings = real_drawings(quickdraw_dir, size=64)
    export_model(tiny_classifier(), tmp_path / "exp", class_names=sorted({d[0] for d in drawings}), image_size=28,
                 channels=1, polarity="white_on_black")
    gallery = save_folder(tmp_path / "gallery", drawings, render=lambda x: 255 - x)
    done = run("index", "--model", tmp_path / "exp", "--images", gallery)
    assert done.returncode == 0, done.stderr
    assert f"indexed {len(drawings)} items (l2, none, 16 dimensions)" in done.stdout

    name, key, pixels = drawings[9]
    Image.fromarray(pixels).save(tmp_path / "white_on_black.png")
    Image.fromarray(np.dstack([np.zeros_like(pixels)] * 3 + [pixels])).save(tmp_path / "transparent.png")
    found = {}
    for query in ("white_on_black", "transparent"):
        done = run("lookup", "--model", tmp_path / "exp", "--query", tmp_path / f"{query}.png", "--k", 3,
                   "--polarity", "auto", "--grid", tmp_path / f"{query}_grid.png")
        assert done.returncode == 0, done.stderr
        assert "polarity auto" in done.stdout and (tmp_path / f"{query}_grid.png").is_file()
        found[query] = result_lines(done.stdout)
    for query in ("white_on_black", "transparent"):
        (_, first, cls, first_id), (_, second, _, _) = found[query][:2]
        assert (first_id, cls) == (key, name), query
        assert first < 1e-3 and second > 0.02, (query, first, second)
