"""The exported model's strokes endpoints (classify_strokes, embed_strokes, preprocess_strokes) on real
drawings: a fresh process that imports nothing of this project classifies strokes as the images endpoint
classifies the skia rendering of the same drawings; bad input is refused, padding changes nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import orjson
import pytest
import tensorflow as tf

from serving.export import STROKES_MESSAGE, read_meta
from serving.strokes import pack_strokes, stroke_pixels
from tests.conftest import BITMAP_CLASSES

PER_CLASS = 25


def real_drawings(quickdraw_dir, kind: str) -> list[list[np.ndarray]]:
    """The first PER_CLASS drawings of each class the fixture classifier knows, simplified (x, y) or raw
    (x, y, t) strokes (the raw sample holds fewer of some classes: 139 in all)."""
    drawings = []
    for name in BITMAP_CLASSES:
        lines = (quickdraw_dir / kind / f"{name}.ndjson").read_bytes().splitlines()[:PER_CLASS]
        for line in lines:
            columns = 2 if kind == "simplified" else 3
            drawings.append([np.asarray(s[:columns], np.float64).T for s in orjson.loads(line)["drawing"]])
    return drawings


@pytest.fixture(scope="module")
def loaded(trained_bitmap_export):
    return tf.saved_model.load(str(trained_bitmap_export.export_dir / "saved_model"))


def test_pack_strokes_rows_by_loops():
    drawings = [[np.array([[1, 2], [3, 4]]), np.array([[5, 6]])], [np.array([[7, 8, 100], [9, 10, 150]])]]
    packed = pack_strokes(drawings)
    expected = np.array([[[1, 2, 0, 0], [3, 4, 0, 0], [5, 6, 0, 1]],
                         [[7, 8, 100, 0], [9, 10, 150, 0], [0, 0, 0, -1]]], np.float32)
    np.testing.assert_array_equal(packed, expected)
    assert pack_strokes([]).shape == (0, 1, 4)
    with pytest.raises(ValueError, match="drawing 0 has 3 points; at most 2"):
        pack_strokes(drawings, max_points=2)


def test_meta_documents_the_strokes_endpoints(trained_bitmap_export):
    endpoints = read_meta(trained_bitmap_export.export_dir)["endpoints"]
    for name in ("classify_strokes", "embed_strokes", "preprocess_strokes"):
        assert endpoints[name]["inputs"].startswith("strokes float32 [N, P, 4]"), name


FRESH = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1] + "/saved_model")
    data = np.load(sys.argv[2])
    out = {}
    for kind in ("simplified", "raw"):
        strokes = loaded.classify_strokes(data[kind])
        signature = loaded.signatures["classify_strokes"](strokes=tf.constant(data[kind]))
        out[kind + "/strokes"] = strokes["probabilities"].numpy()
        out[kind + "/signature"] = signature["probabilities"].numpy()
        out[kind + "/images"] = loaded.classify_images(data[kind + "_pixels"])["probabilities"].numpy()
        out[kind + "/model_input"] = loaded.preprocess_strokes(data[kind])["model_input"].numpy()
    assert not any(name.split(".")[0] in ("serving", "data_prep", "models", "training") for name in sys.modules)
    np.savez(sys.argv[3], **out)
""")


@pytest.mark.slow
def test_a_fresh_process_classifies_strokes_as_the_images_endpoint_classifies_skia(
        trained_bitmap_export, quickdraw_dir, tmp_path):
    meta = read_meta(trained_bitmap_export.export_dir)
    inputs = {}
    for kind in ("simplified", "raw"):
        drawings = real_drawings(quickdraw_dir, kind)
        inputs[kind] = pack_strokes(drawings)
        inputs[kind + "_pixels"] = np.stack([stroke_pixels(d, meta) for d in drawings])  # skia, the CPU path
    np.savez(tmp_path / "inputs.npz", **inputs)
    (tmp_path / "fresh.py").write_text(FRESH)
    done = subprocess.run([sys.executable, str(tmp_path / "fresh.py"), str(trained_bitmap_export.export_dir),
                           str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as out:
        for kind in ("simplified", "raw"):
            strokes, images = out[kind + "/strokes"], out[kind + "/images"]
            np.testing.assert_array_equal(out[kind + "/signature"], strokes)
            agree = strokes.argmax(1) == images.argmax(1)
            top2 = np.sort(images, axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 0.05  # the fixture scores some drawings nearly level (0.315/0.319)
            assert agree[clear].all() and agree.mean() >= 0.98 and len(strokes) == len(inputs[kind]), (kind, agree.mean())
            assert np.abs(strokes - images).mean() < 0.01, kind
            skia = inputs[kind + "_pixels"] / 255.0
            assert np.abs(out[kind + "/model_input"] - skia).mean() * 255 <= 3.0, kind


def test_padding_and_batch_company_change_nothing(loaded, quickdraw_dir):
    drawings = real_drawings(quickdraw_dir, "simplified")[:12]
    together = loaded.classify_strokes(pack_strokes(drawings))["probabilities"].numpy()
    for i in (0, 5, 11):
        alone = pack_strokes([drawings[i]])
        padded = np.concatenate([alone, np.tile([[[0, 0, 0, -1]]], (1, 300, 1)).astype(np.float32)], axis=1)
        for packed in (alone, padded):
            np.testing.assert_allclose(loaded.classify_strokes(packed)["probabilities"].numpy()[0], together[i],
                                       rtol=1e-5, atol=1e-6)


def test_bad_strokes_are_refused_not_drawn(loaded, quickdraw_dir):
    packed = pack_strokes(real_drawings(quickdraw_dir, "simplified")[:3])
    with pytest.raises((TypeError, ValueError), match=r"dtype=tf.float32, name='strokes'"):
        loaded.classify_strokes(packed.astype(np.float64))
    with pytest.raises((TypeError, ValueError), match=r"shape=\(None, None, 4\)"):
        loaded.classify_strokes(packed[..., :3])
    with pytest.raises((TypeError, ValueError), match=r"name='strokes'"):
        loaded.classify_strokes(packed[0])
    nan = packed.copy()
    nan[1, 2, 0] = np.nan
    empty = packed.copy()
    empty[2, :, 3] = -1
    for bad in (nan, empty):
        with pytest.raises(tf.errors.InvalidArgumentError, match=STROKES_MESSAGE[:40]):
            loaded.classify_strokes(bad)
        with pytest.raises(tf.errors.InvalidArgumentError, match=STROKES_MESSAGE[:40]):
            loaded.signatures["embed_strokes"](strokes=tf.constant(bad))
    nan_in_padding = pack_strokes(real_drawings(quickdraw_dir, "simplified")[:1])
    nan_in_padding = np.concatenate([nan_in_padding, [[[np.nan, 0, 0, -1]]]], axis=1).astype(np.float32)
    assert np.isfinite(loaded.classify_strokes(nan_in_padding)["probabilities"].numpy()).all()
    none = loaded.classify_strokes(np.zeros((0, 5, 4), np.float32))
    assert {k: tuple(v.shape) for k, v in none.items()} == {"probabilities": (0, 6), "top_classes": (0, 5),
                                                           "top_probabilities": (0, 5), "embedding": (0, 64)}
