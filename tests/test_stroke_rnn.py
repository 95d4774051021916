"""stroke_rnn on real drawings: the (dx, dy, pen) conversion, masking, the points cap, the trainer's
train/evaluate/test/export, the strokes endpoint against the Keras model, and data sets without strokes."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from data_prep import stroke_sequences, tfrecords
from data_prep.pipeline import parse_batch
from serving.strokes import pack_strokes
from tests.conftest import ROOT

# A small stroke_rnn for the trainer run (the tutorial's 3 x 128 BiLSTMs take 10 s a step on 2 cores).
SMALL = ["-conv_filters", "8,8", "-conv_kernels", "5,3", "-rnn_layers", "1", "-rnn_units", "8", "-features_dim", "16"]


def drawings_of(data_dir, split="test"):
    """{key_id: list of (points, dims) stroke arrays} of a split, straight from its records."""
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    files = [str(p) for p in tfrecords.shard_paths(data_dir, info, split)]
    out = {}
    for batch in tf.data.TFRecordDataset(files).batch(256):
        parsed = parse_batch(batch, specs, ["key_id", *stroke_sequences.STROKE_FEATURES])
        for i in range(int(batch.shape[0])):
            dims = int(parsed["strokes/dims"][i])
            points = parsed["strokes/points"][i].numpy().reshape(-1, dims)
            ends = np.cumsum(parsed["strokes/lengths"][i].numpy())
            out[parsed["key_id"][i].numpy().decode()] = np.split(points, ends[:-1])
    return out


def reference_sequence(strokes, max_points=None):
    """The tutorial's conversion as an explicit loop: scale each axis to [0, 1] by the bounding box, then
    offsets from the previous point, pen 1 on each stroke's last point; the first point stays (0, 0, pen)."""
    rows = [(float(x), float(y), 0.0) for stroke in strokes for x, y in stroke[:, :2]]
    ends, count = set(), 0
    for stroke in strokes:
        count += len(stroke)
        ends.add(count - 1)
    rows = rows[:max_points] if max_points else rows
    ends.add(len(rows) - 1)
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    sx, sy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    out = np.zeros((len(rows), 3))
    for t in range(len(rows)):
        x, y = (xs[t] - min(xs)) / sx, (ys[t] - min(ys)) / sy
        px, py = ((xs[t - 1] - min(xs)) / sx, (ys[t - 1] - min(ys)) / sy) if t else (x, y)
        out[t] = (x - px, y - py, 1.0 if t in ends else 0.0)
    return out


def batches_by_key(data_dir, max_points, batch_size=16):
    """{key_id: (the drawing's rows of its padded batch, the whole padded batch row)} of the test split."""
    out = {}
    for sequences, _, keys in stroke_sequences.load_sequences(data_dir, "test", batch_size, max_points,
                                                              with_key_ids=True):
        for row, key in zip(sequences.numpy(), keys.numpy()):
            out[key.decode()] = row
    return out


def test_conversion_matches_an_explicit_loop_on_real_drawings(quickdraw_28px):
    drawings = drawings_of(quickdraw_28px)
    rows = batches_by_key(quickdraw_28px, max_points=10_000)
    assert set(rows) == set(drawings) and len(rows) >= 30
    for key, strokes in drawings.items():
        expected = reference_sequence(strokes)
        got = rows[key]
        np.testing.assert_allclose(got[:len(expected)], expected, atol=1e-5, err_msg=key)
        assert np.all(got[len(expected):] == [0.0, 0.0, stroke_sequences.PAD_PEN])


def test_points_cap_truncates_to_the_first_points_and_counts_them(quickdraw_28px):
    cap = 20
    drawings = drawings_of(quickdraw_28px)
    rows = batches_by_key(quickdraw_28px, max_points=cap)
    lengths = {key: sum(len(s) for s in strokes) for key, strokes in drawings.items()}
    assert any(n > cap for n in lengths.values()) and any(n <= cap for n in lengths.values())
    for key, strokes in drawings.items():
        assert len(rows[key]) <= cap
        expected = reference_sequence(strokes, max_points=cap)
        np.testing.assert_allclose(rows[key][:len(expected)], expected, atol=1e-5, err_msg=key)
    counted = stroke_sequences.count_over_cap(quickdraw_28px, "test", cap)
    assert counted == {"drawings": len(drawings), "truncated": sum(n > cap for n in lengths.values()),
                       "max_points": cap}


def test_padding_changes_nothing(quickdraw_28px):
    keras.utils.set_random_seed(0)
    model = models.build_model("stroke_rnn", input_size=0, channels=0, num_classes=8, conv_batch_norm=True,
                               rnn_layers=2, rnn_units=16, features_dim=32)
    sequences = next(iter(stroke_sequences.load_sequences(quickdraw_28px, "test", 12, 256)))[0].numpy()
    lengths = (sequences[..., 2] >= 0).sum(axis=1)
    assert lengths.min() < lengths.max()
    batched = model(sequences, training=False).numpy()
    for i in np.argsort(lengths)[:3]:
        alone = model(sequences[i:i + 1, :lengths[i]], training=False).numpy()
        np.testing.assert_allclose(batched[i], alone[0], rtol=1e-4, atol=1e-5)
    # garbage in the padding rows of the data set's padding value (pen PAD_PEN) is ignored too
    noisy = sequences.copy()
    pad = noisy[..., 2] < 0
    noisy[..., :2][pad] = 7.0
    np.testing.assert_allclose(model(noisy, training=False).numpy(), batched, rtol=1e-4, atol=1e-5)


def run_tool(*args, check=True):
    result = subprocess.run([sys.executable, str(ROOT / "train_sketch_net.py"), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_evaluate_test_export_and_the_strokes_endpoint(quickdraw_28px, tmp_path):
    run = tmp_path / "run"
    common = ["-model", "stroke_rnn", "-data_path", str(quickdraw_28px), "-model_dir", str(run)]
    run_tool("-mode", "train", "-preset", "smoke", "-max_points", "64", *SMALL, *common)
    run_tool("-mode", "evaluate", *common)
    evaluated = json.loads((run / "evaluate.json").read_text())
    assert evaluated["num_examples"] == 38 and 0 <= evaluated["top1_accuracy"] <= evaluated["top5_accuracy"]
    assert evaluated["points_cap"]["max_points"] == 64 and evaluated["points_cap"]["drawings"] == 38
    run_tool("-mode", "test", *common)
    similarity = json.loads((run / "similarity.json").read_text())
    assert similarity["features_layer"] == "features" and 0 < similarity["map"] <= 1
    with np.load(run / "features_test.npz") as features:
        assert features[features.files[0]].shape[0] == 38
    run_tool("-mode", "export", *common)
    meta = json.loads((run / "export" / "model_meta.json").read_text())
    assert meta["inputs"] == "strokes" and meta["serving_default"] == "classify_strokes"
    assert meta["max_points"] == 64

    drawings = drawings_of(quickdraw_28px)
    keys = sorted(drawings)[:10]
    loaded = tf.saved_model.load(str(run / "export" / "saved_model"))
    served = loaded.classify_strokes(tf.constant(pack_strokes([drawings[k] for k in keys])))
    model = keras.models.load_model(run / "export" / "model.keras")
    rows = batches_by_key(quickdraw_28px, max_points=64)
    lengths = [int((rows[k][:, 2] >= 0).sum()) for k in keys]
    logits = np.concatenate([model(rows[k][None, :n], training=False).numpy() for k, n in zip(keys, lengths)])
    np.testing.assert_allclose(served["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-5)
    signature = loaded.signatures["serving_default"](strokes=tf.constant(pack_strokes([drawings[keys[0]]])))
    np.testing.assert_allclose(signature["probabilities"].numpy()[0], served["probabilities"].numpy()[0], atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        loaded.classify_strokes(tf.constant([[[np.nan, 0.0, 0.0, 0.0]]]))
    # The image tools refuse the strokes-only export in one line instead of feeding it images.
    from serving import model as serving_model
    from serving.export import ExportError

    with pytest.raises(ExportError, match="holds a strokes-only model .*do not take it yet"):
        serving_model.load(run / "export")
    done = subprocess.run([sys.executable, "-m", "serving.batch", "--model", str(run / "export"), "--input",
                           str(quickdraw_28px), "--out", str(tmp_path / "job")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "strokes-only model" in done.stderr and "Traceback" not in done.stderr


def test_a_data_set_without_strokes_is_a_one_line_error(quickdraw_28px, tmp_path):
    info = json.loads((quickdraw_28px / "dataset_info.json").read_text())
    bitmap = tmp_path / "bitmap"
    bitmap.mkdir()
    for split in info["splits"].values():
        for shard in split["shards"]:
            (bitmap / shard["file"]).symlink_to(quickdraw_28px / shard["file"])
    (bitmap / "dataset_info.json").write_text(json.dumps({**info, "source_format": "bitmap"}))
    result = run_tool("-mode", "train", "-model", "stroke_rnn", "-preset", "smoke", "-data_path", str(bitmap),
                      "-model_dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "needs strokes" in line]
    assert len(lines) == 1 and "--format bitmap" in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(stroke_sequences.NoStrokesError, match="stores no strokes/points"):
        stroke_sequences.check_strokes({"features": {"image": {}}}, "sketchy")
