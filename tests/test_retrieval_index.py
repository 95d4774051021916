"""retrieval.index: faiss gallery indexes against exact brute-force search, save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.index import GalleryIndexError, build_index, load_index
from retrieval.plots import nearest
from retrieval.ranking import pack_codes


def gallery(seed=0, n=2000, d=32, classes=20):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d)) * 2
    x = (centres[labels] + rng.standard_normal((n, d))).astype(np.float32)
    return x, labels, rng


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_index_equals_brute_force(metric):
    x, y, rng = gallery()
    q = (x[:50] + 0.1 * rng.standard_normal((50, 32))).astype(np.float32)
    index = build_index(x, y, metric=metric)
    dist, idx = index.search(q, 10)
    ref_idx, ref_dist = nearest(q, x, 10, metric)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    assert len(index) == 2000 and index.dimensions == 32


def test_binary_index_equals_brute_force_hamming():
    x, y, rng = gallery(seed=1, d=64)
    codes = pack_codes(x)
    index = build_index(codes, y, metric="hamming")
    dist, idx = index.search(codes[:30], 5)
    ref_idx, ref_dist = nearest(codes[:30], codes, 5, "hamming")
    np.testing.assert_array_equal(dist, ref_dist)  # distances are exact integers
    assert index.dimensions == 64
    assert np.all(dist[:, 0] == 0)


@pytest.mark.parametrize("approximate", ["ivf", "hnsw"])
@pytest.mark.parametrize("metric", ["l2", "cosine", "hamming"])
def test_approximate_indexes_recall_most_exact_neighbours(approximate, metric):
    x, y, rng = gallery(seed=2, n=3000, d=64)
    q = (x[:100] + 0.3 * rng.standard_normal((100, 64))).astype(np.float32)
    if metric == "hamming":
        x, q = pack_codes(x), pack_codes(q)
    exact = build_index(x, y, metric=metric)
    approx = build_index(x, y, metric=metric, approximate=approximate, nprobe=16)
    _, e_idx = exact.search(q, 10)
    _, a_idx = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(a_idx, e_idx)])
    assert recall >= 0.8, recall
    assert approx.approximate == approximate and approx.params


def test_save_and_load_round_trip(tmp_path):
    x, y, rng = gallery(seed=3, n=500)
    ids = np.array([f"item{i}" for i in range(500)])
    thumbs = rng.integers(0, 255, (500, 8, 8, 3), dtype=np.uint8)
    index = build_index(x, y, ids=ids, metric="cosine", approximate="hnsw", class_names=[f"c{i}" for i in range(20)],
                        image_paths=[f"/img/{i}.png" for i in range(500)], thumbnails=thumbs, model_dir="/m")
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index_meta.json").read_text())
    assert meta["metric"] == "cosine" and meta["approximate"] == "hnsw" and meta["count"] == 500
    loaded = load_index(tmp_path / "idx")
    q = x[:20]
    np.testing.assert_array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_array_equal(loaded.thumbnails, thumbs)
    assert loaded.class_name(0) == f"c{y[0]}"
    assert loaded.image_paths[7] == "/img/7.png" and loaded.model_dir == "/m"
    assert loaded.params["efSearch"] == 64


def test_binary_index_round_trip(tmp_path):
    x, y, _ = gallery(seed=4, n=300, d=48)
    codes = pack_codes(x)
    build_index(codes, y, metric="hamming", approximate="ivf").save(tmp_path / "b")
    loaded = load_index(tmp_path / "b")
    assert loaded.metric == "hamming" and len(loaded) == 300
    assert loaded.search(codes[:3], 1)[1][:, 0].tolist() == [0, 1, 2]


def test_bad_input(tmp_path):
    x, y, _ = gallery(seed=5, n=100)
    index = build_index(x, y)
    with pytest.raises(GalleryIndexError, match="queries have 16 dimensions but the index has 32"):
        index.search(np.zeros((1, 16), np.float32), 3)
    with pytest.raises(GalleryIndexError, match="NaN or infinite"):
        index.search(np.full((1, 32), np.nan, np.float32), 3)
    with pytest.raises(GalleryIndexError, match="Expected k >= 1"):
        index.search(x[:1], 0)
    with pytest.raises(GalleryIndexError, match="Invalid value for argument `approximate`"):
        build_index(x, y, approximate="lsh")
    with pytest.raises(GalleryIndexError, match="packed uint8 codes"):
        build_index(pack_codes(x), y, metric="hamming").search(x[:1], 3)
    with pytest.raises(ValueError, match="has 100 items but its labels have 99"):
        build_index(x, y[:-1])
    with pytest.raises(GalleryIndexError, match="is not an index folder: missing"):
        load_index(tmp_path)
    assert index.search(x[:1], 1000)[1].shape == (1, 100)  # k is capped at the gallery size


def test_the_default_index_folder_is_beside_the_export_never_inside(tmp_path):
    from retrieval.index import default_index_dir

    assert default_index_dir(tmp_path / "runs" / "sknet" / "export") == str(tmp_path / "runs" / "sknet" / "index")
    assert default_index_dir(tmp_path / "models" / "mine") == str(tmp_path / "models" / "mine_index")
    assert default_index_dir(tmp_path / "runs" / "sknet" / "export" / "") == str(tmp_path / "runs" / "sknet" / "index")
