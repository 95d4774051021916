"""The embedded synthetic Quick, Draw! data set: file format, determinism, variety, learnability."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import orjson
import pytest

from data_prep import synthetic as syn
from tests.conftest import ROOT

KEYS = ["word", "countrycode", "timestamp", "recognized", "key_id", "drawing"]
PER_CLASS = 12
SEED = 3


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, syn.generate(out, per_class=PER_CLASS, seed=SEED)


def _lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _file_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.ndjson"))}


def test_registry_has_at_least_ten_callable_shapes():
    assert len(syn.SHAPES) >= 10
    rng = np.random.default_rng(0)
    for name, fn in syn.SHAPES.items():
        strokes = fn(rng)
        assert strokes and all(s.ndim == 2 and s.shape[1] == 2 and len(s) >= 2 for s in strokes), name


def test_one_file_per_class_and_format_with_the_counts(made):
    out, summary = made
    assert summary["classes"] == list(syn.SHAPES)
    assert summary["counts"] == {w: PER_CLASS for w in syn.SHAPES}
    assert summary["num_drawings"] == PER_CLASS * len(syn.SHAPES)
    for fmt in ("raw", "simplified"):
        assert sorted(p.name for p in (out / fmt).iterdir()) == sorted(f"{w}.ndjson" for w in syn.SHAPES)
        for word in syn.SHAPES:
            assert summary[fmt][word] == str(out / fmt / f"{word}.ndjson")
            assert len((out / fmt / f"{word}.ndjson").read_bytes().splitlines()) == PER_CLASS


def test_records_have_googles_keys_and_values(made):
    out, _ = made
    for fmt in ("raw", "simplified"):
        for path in (out / fmt).iterdir():
            for record in _lines(path):
                assert list(record) == KEYS
                assert record["word"] == path.stem
                assert re.fullmatch(r"[1-9]\d{15}", record["key_id"])
                assert re.fullmatch(r"2017-0[1-4]-\d\d \d\d:\d\d:\d\d\.\d{1,6} UTC", record["timestamp"])
                assert re.fullmatch(r"[A-Z]{2}", record["countrycode"])
                assert isinstance(record["recognized"], bool)


def test_raw_strokes_are_x_y_t_rows_on_a_pixel_canvas_with_increasing_time(made):
    out, _ = made
    spans, kinds, recognized = [], set(), []
    for path in (out / "raw").iterdir():
        for record in _lines(path):
            recognized.append(record["recognized"])
            last_t = -1
            points = []
            for stroke in record["drawing"]:
                assert len(stroke) == 3
                xs, ys, ts = stroke
                assert len(xs) == len(ys) == len(ts) >= 1
                assert all(isinstance(t, int) for t in ts)
                assert ts[0] > last_t, "a stroke starts after the previous one ended"
                assert all(b >= a for a, b in zip(ts, ts[1:]))
                last_t = ts[-1]
                kinds.update(type(v) for v in xs + ys)
                points += list(zip(xs, ys))
            p = np.asarray(points, dtype=float)
            spans.append((p.max(0) - p.min(0)).max())
            assert record["drawing"][0][2][0] == 0
    assert kinds == {int, float}  # integer devices and float32 devices, as in the real raw files
    spans = np.asarray(spans)
    assert 60 < spans.min() and spans.max() < 900 and (spans > 255).any()
    assert spans.std() > 30  # sizes vary
    assert 0.8 < np.mean(recognized) < 1.0


def test_simplified_strokes_are_integer_rows_in_0_255_aligned_top_left(made):
    """Google's frame: aligned to the top-left, longer side scaled to 255. As in Google's files,
    the simplification may drop an extreme point, so a drawing can stop a few units short."""
    out, _ = made
    reach = []
    for path in (out / "simplified").iterdir():
        for record in _lines(path):
            for xs, ys in record["drawing"]:
                assert len(xs) == len(ys) >= 2
                assert all(isinstance(v, int) and 0 <= v <= 255 for v in xs + ys)
            p = np.concatenate([np.asarray(s).T for s in record["drawing"]])
            assert p.min(0).max() <= 5 and p.max() >= 245
            reach.append(p.max() == 255 and p.min(0).tolist() == [0, 0])
    assert np.mean(reach) > 0.6  # 0.71 over the 8,600 real simplified drawings in ../shared


def test_raw_and_simplified_hold_the_same_drawings_in_the_same_order(made):
    out, _ = made
    for word in syn.SHAPES:
        raw = _lines(out / "raw" / f"{word}.ndjson")
        simple = _lines(out / "simplified" / f"{word}.ndjson")
        assert [{k: r[k] for k in KEYS[:-1]} for r in raw] == [{k: s[k] for k in KEYS[:-1]} for s in simple]
        assert [len(r["drawing"]) for r in raw] == [len(s["drawing"]) for s in simple]


def test_key_ids_are_unique_across_all_files(made):
    out, _ = made
    keys = [r["key_id"] for p in (out / "raw").iterdir() for r in _lines(p)]
    assert len(keys) == len(set(keys)) == PER_CLASS * len(syn.SHAPES)


def test_same_seed_same_bytes_other_seed_other_bytes(made, tmp_path):
    out, _ = made
    again = syn.generate(tmp_path / "again", per_class=PER_CLASS, seed=SEED)
    assert again["counts"] == made[1]["counts"]
    assert _file_bytes(tmp_path / "again") == _file_bytes(out)
    syn.generate(tmp_path / "other", per_class=PER_CLASS, seed=SEED + 1)
    other = _file_bytes(tmp_path / "other")
    assert other.keys() == _file_bytes(out).keys()
    assert all(other[name] != data for name, data in _file_bytes(out).items())


def test_worker_processes_write_the_same_bytes(made, tmp_path):
    out, _ = made
    summary = syn.generate(tmp_path, classes=["house", "cloud", "sun"], per_class=PER_CLASS, seed=SEED, workers=2)
    assert summary["counts"] == {"house": PER_CLASS, "cloud": PER_CLASS, "sun": PER_CLASS}
    for name, data in _file_bytes(tmp_path).items():
        assert data == (out / name).read_bytes(), name


def test_a_class_does_not_depend_on_the_other_classes_or_the_count(made, tmp_path):
    out, _ = made
    syn.generate(tmp_path, classes=["moon", "star"], per_class=5, seed=SEED)
    for word in ("moon", "star"):
        for fmt in ("raw", "simplified"):
            full = (out / fmt / f"{word}.ndjson").read_bytes().splitlines(keepends=True)
            assert (tmp_path / fmt / f"{word}.ndjson").read_bytes() == b"".join(full[:5])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["moon.ndjson", "star.ndjson"]


def test_pen_lifts_split_strokes_and_multi_part_shapes_have_many_strokes(tmp_path):
    syn.generate(tmp_path, classes=["circle", "ladder", "sun"], per_class=60, seed=0)
    words = ("circle", "ladder", "sun")
    strokes = {w: [len(r["drawing"]) for r in _lines(tmp_path / "raw" / f"{w}.ndjson")] for w in words}
    assert 0.7 < np.mean(np.asarray(strokes["circle"]) == 1) < 1.0  # mostly one stroke, sometimes split
    assert min(strokes["ladder"]) >= 5 and min(strokes["sun"]) >= 7


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`classes`.*'unicorn'.*Expected a non-empty selection of \["):
        syn.generate(tmp_path, classes=["circle", "unicorn"], per_class=1)
    with pytest.raises(ValueError, match="must not repeat"):
        syn.generate(tmp_path, classes=["circle", "circle"], per_class=1)
    with pytest.raises(ValueError, match=r"`per_class`. Received: 0"):
        syn.generate(tmp_path, per_class=0)
    with pytest.raises(ValueError, match="`classes`"):
        syn.generate(tmp_path, classes=[], per_class=1)
    with pytest.raises(ValueError, match=r"`workers`. Received: 0"):
        syn.generate(tmp_path, per_class=1, workers=0)


def _raster(drawing, size=28):
    """Google's bitmap recipe in miniature: 0..255 frame to `size` px, anti-aliased polylines."""
    img = np.zeros((size, size), np.uint8)
    scale = (size - 4) / 255.0
    for xs, ys in drawing:
        pts = (np.stack([xs, ys], axis=1) * scale + 2) * 16
        cv2.polylines(img, [pts.astype(np.int32)], False, 255, 1, cv2.LINE_AA, shift=4)
    return img.astype(np.float32).ravel() / 255.0


def test_classes_are_distinguishable_by_a_nearest_class_mean(tmp_path):
    """No model: class mean images of 28-px renderings must separate held-out drawings."""
    summary = syn.generate(tmp_path, per_class=40, seed=11)
    train, test = [], []
    for word in summary["classes"]:
        images = np.stack([_raster(r["drawing"]) for r in _lines(tmp_path / "simplified" / f"{word}.ndjson")])
        train.append(images[:30])
        test.append(images[30:])
    means = np.stack([t.mean(0) for t in train])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(len(means), dtype=bool)]
    assert gaps.min() > 1.0
    x = np.concatenate(test)
    y = np.repeat(np.arange(len(test)), 10)
    predicted = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == y).mean()
    assert accuracy > 0.5, accuracy  # chance is 1/20


def test_cli_writes_the_files_and_reports_bad_classes_without_traceback(tmp_path):
    run = [sys.executable, "-m", "data_prep.synthetic", "--out", str(tmp_path), "--per_class", "3", "--seed", "5"]
    done = subprocess.run(run + ["--classes", "star,smiley face"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 drawings (2 classes x 3)" in done.stdout
    assert sorted(p.name for p in (tmp_path / "simplified").iterdir()) == ["smiley face.ndjson", "star.ndjson"]
    expected = tmp_path / "expected"
    syn.generate(expected, classes=["star"], per_class=3, seed=5)
    assert (tmp_path / "raw" / "star.ndjson").read_bytes() == (expected / "raw" / "star.ndjson").read_bytes()
    bad = subprocess.run(run + ["--classes", "unicorn"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "unicorn" in bad.stderr and "Traceback" not in bad.stderr
