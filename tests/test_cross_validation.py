"""k-fold cross-validation (-mode cv, training/cross_validation.py and training/folds.py) on real drawings:
the id hash in TensorFlow equals its plain-Python reference and the published SipHash vector, folds are
disjoint and cover the train split, cv.json's mean and spread equal NumPy's over its folds, each fold's
figures equal an independent evaluation of its held-out records, finished folds are kept and an
interrupted one resumes, and bad settings are one-line errors."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from data_prep import tfrecords
from retrieval import metrics as retrieval_metrics
from training import cross_validation, folds, trainer
from training.tasks.classification import ClassificationTask

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOL = ROOT / "train_sketch_net.py"
FOLDS = 2
# The recipe of every cv run here: 2 steps of 16 drawings per fold, a checkpoint after each step.
RECIPE = {"preset": "smoke", "epochs": 1, "steps_per_epoch": 2, "bn_recalibration": 2, "steps_per_checkpoint": 1,
          "verbose": 0}


def run_api(**values) -> dict:
    """One mode of the tool in this process, from flag-like values."""
    return trainer.run_mode(*trainer.resolve(values.pop("preset", ""), values))


def train_records(data_dir: pathlib.Path) -> list[tuple[bytes, int, np.ndarray]]:
    """(key_id, label, float image) of every train record, read from the shard files in plain Python."""
    info = tfrecords.read_dataset_info(data_dir)
    out = []
    for path in tfrecords.shard_paths(data_dir, info, "train"):
        for record in tfrecords.read_records(path):
            feature = example_pb2.Example.FromString(record).features.feature
            image = np.frombuffer(feature["image"].bytes_list.value[0], np.uint8).reshape(28, 28, 1) / 255.0
            out.append((feature["key_id"].bytes_list.value[0], int(feature["label"].int64_list.value[0]), image))
    return out


def file_states(folder: pathlib.Path) -> dict[str, tuple[int, str]]:
    """(mtime in ns, SHA-256) of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cv_run(quickdraw_28px, tmp_path_factory) -> pathlib.Path:
    """A finished 2-fold cross-validation of skNet on the 8-class fixture (150 train drawings)."""
    model_dir = tmp_path_factory.mktemp("cv") / "sknet"
    result = run_api(mode="cv", folds=FOLDS, data_path=str(quickdraw_28px), model_dir=str(model_dir), **RECIPE)
    assert result["cv_file"] == str(model_dir / "cv.json")
    return model_dir


def test_the_hash_is_siphash_and_tensorflow_agrees_with_the_python_reference(quickdraw_28px):
    k0, k1 = struct.unpack("<QQ", bytes(range(16)))
    assert folds.siphash24(k0, k1, bytes(range(15))) == 0xA129CA6149BE45E5  # the SipHash paper's test vector
    ids = [key for key, _, _ in train_records(quickdraw_28px)] + [b"", b"x" * 41, b"apple/0"]
    for count, seed in ((2, 0), (5, 0), (7, 12345), (3, 2**62)):
        expected = [folds.fold_of(key, count, seed) for key in ids]
        assert folds.tf_fold_of(tf.constant(ids), count, seed).numpy().tolist() == expected
        assert sorted(set(expected)) == list(range(count))
    numbers = [0, 7, 4503599627370496, -3]
    assert (folds.tf_fold_of(tf.constant(numbers, tf.int64), 5, 1).numpy().tolist()
            == [folds.fold_of(n, 5, 1) for n in numbers] == [folds.fold_of(str(n), 5, 1) for n in numbers])


def test_the_assignment_is_stable_across_processes():
    ids = [b"apple/0", b"4503599627370496", "cat/7", 123]
    here = [folds.fold_of(key, 5, 0) for key in ids]
    assert here == [4, 1, 1, 3]  # fixed for good: a change would silently reshuffle every saved cross-validation
    script = "from training import folds; print([folds.fold_of(k, 5, 0) for k in %r])" % (ids,)
    for hash_seed in ("1", "987"):  # Python's own str/bytes hash differs between these processes
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(here)


def test_folds_are_disjoint_and_cover_the_train_split(quickdraw_28px, tmp_path):
    records = train_records(quickdraw_28px)
    every = {key for key, _, _ in records}
    assert len(every) == len(records) > 100
    count = 3
    held_out_sets = []
    for fold in range(1, count + 1):
        run, task = trainer.prepare_run(*trainer.resolve("smoke", {
            "mode": "train", "data_path": str(quickdraw_28px), "model_dir": str(tmp_path / f"f{fold}"),
            "folds": count, "fold": fold}))
        read = {}
        for split in (task.train_split, task.test_split):
            ids = [key for batch in task._split(run, split, with_key_ids=True) for key in batch[2].numpy()]
            assert len(ids) == len(set(ids)) == run.num_examples(split)
            read[split] = set(ids)
        assert not read["train"] & read["test"]
        assert read["train"] | read["test"] == every
        assert {folds.fold_of(key, count, 0) for key in read["test"]} == {fold - 1}
        held_out_sets.append(read["test"])
    assert set().union(*held_out_sets) == every
    assert sum(len(s) for s in held_out_sets) == len(every)  # pairwise disjoint


def test_cv_json_holds_the_folds_and_numpy_mean_and_std(cv_run, quickdraw_28px):
    report = json.loads((cv_run / "cv.json").read_text())
    rows = report["per_fold"]
    assert [row["fold"] for row in rows] == [1, 2] and report["folds"] == FOLDS and report["ddof"] == 1
    for name in ("top1_accuracy", "top5_accuracy", "map"):
        values = np.array([row[name] for row in rows])
        assert report["mean"][name] == pytest.approx(np.mean(values), abs=1e-12)
        assert report["std"][name] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert report["chance"][name] == pytest.approx(np.mean([row["chance"][name] for row in rows]), abs=1e-12)
    assert report["chance"]["top1_accuracy"] == pytest.approx(1 / 8)
    counts = [sum(folds.fold_of(key, FOLDS, 0) == k for key, _, _ in train_records(quickdraw_28px))
              for k in range(FOLDS)]
    assert report["records"]["per_fold"] == counts == [row["held_out_records"] for row in rows]
    total = sum(counts)
    assert [row["train_records"] for row in rows] == [total - n for n in counts] == report["records"]["train_per_fold"]
    assert report["seeds"] == {"seed": 0, "fold_seed": 0}
    assert report["config"]["CvConfig"] == {"folds": 2, "fold": 0, "fold_seed": 0}
    assert report["config"]["TrainConfig"]["steps_per_epoch"] == 2
    saved = json.loads((cv_run / "fold_2of2" / "train_config.json").read_text())
    assert saved["configs"]["CvConfig"] == {"folds": 2, "fold": 2, "fold_seed": 0}


def test_each_fold_equals_an_independent_evaluation_of_its_held_out_records(cv_run, quickdraw_28px):
    records = train_records(quickdraw_28px)
    report = json.loads((cv_run / "cv.json").read_text())
    for row in report["per_fold"]:
        folder = cv_run / row["run_folder"]
        held = [(label, image) for key, label, image in records if folds.fold_of(key, FOLDS, 0) == row["fold"] - 1]
        labels = np.array([label for label, _ in held])
        images = np.stack([image for _, image in held]).astype(np.float32)
        run, task = trainer.prepare_run(*trainer.resolve("", {"mode": "evaluate", "model_dir": str(folder)}))
        model, _ = trainer.load_weights_for(run, task)
        logits = np.asarray(model(images, training=False))
        ranks = np.argsort(-logits, axis=1)
        assert row["top1_accuracy"] == pytest.approx(np.mean(ranks[:, 0] == labels), abs=1e-9)
        assert row["top5_accuracy"] == pytest.approx(np.mean((ranks[:, :5] == labels[:, None]).any(1)), abs=1e-9)
        features = np.asarray(keras.Model(model.inputs, model.get_layer("features").output)([images], training=False))
        expected_map = retrieval_metrics.evaluate(features, labels, metric="l2", k=(1,))["map"]
        assert row["map"] == pytest.approx(expected_map, abs=1e-4)
        assert row["held_out_records"] == len(held)
        # The fold's folder is a normal run folder: -mode evaluate there gives the same figures.
        evaluated = run_api(mode="evaluate", model_dir=str(folder))
        assert evaluated["top1_accuracy"] == pytest.approx(row["top1_accuracy"])
        assert evaluated["num_examples"] == len(held) and evaluated["split"] == f"train[fold {row['fold']} of 2]"


class _InterruptAtStep2(keras.callbacks.Callback):
    """Ctrl-C pressed twice during the second step: the run stops without a checkpoint of that step."""

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= 2:
            raise KeyboardInterrupt


def test_a_finished_fold_is_kept_and_an_interrupted_one_resumes(cv_run, quickdraw_28px, tmp_path, monkeypatch,
                                                                capsys):
    model_dir = tmp_path / "resumed"
    shutil.copytree(cv_run / "fold_1of2", model_dir / "fold_1of2")
    before = file_states(model_dir / "fold_1of2")
    values = {"mode": "cv", "folds": FOLDS, "data_path": str(quickdraw_28px), "model_dir": str(model_dir), **RECIPE}
    with monkeypatch.context() as patch:
        patch.setattr(ClassificationTask, "callbacks", lambda self, run, model: [_InterruptAtStep2()])
        with pytest.raises(trainer.TrainingInterrupted):
            run_api(**dict(values))
    second = model_dir / "fold_2of2"
    assert json.loads((second / "checkpoints" / "state.json").read_text())["step"] == 1
    assert not (second / cross_validation.FOLD_FILE).exists() and not (model_dir / "cv.json").exists()
    capsys.readouterr()
    result = run_api(**dict(values))
    out = capsys.readouterr().out
    assert "fold 1 of 2: finished earlier" in out
    assert "resuming from ckpt-00000001" in out and "trained to step 2 of 2" in out
    assert file_states(model_dir / "fold_1of2") == before  # not retrained, not even rewritten
    original = json.loads((cv_run / "cv.json").read_text())
    assert result["per_fold"][0] == original["per_fold"][0]
    assert result["per_fold"][1]["final_step"] == 2
    assert json.loads((model_dir / "cv.json").read_text())["mean"] == result["mean"]


@pytest.mark.parametrize("values, message", [
    ({"folds": 1}, "at least 2 folds"),
    ({"folds": 30}, "-folds 30 is more than the 'train' split"),
    ({"ckpt": "x.keras"}, "-ckpt does not apply to -mode cv"),
    ({"fold": 1}, "-fold does not apply to -mode cv"),
    ({"model": "siamese"}, "Cross-validation trains classifiers"),
    ({"fold_seed": -1}, "Invalid value for -fold_seed"),
])
def test_bad_settings_are_refused_before_training(values, message, quickdraw_28px, tmp_path):
    with pytest.raises(trainer.ToolError, match=message.replace("(", r"\(")):
        run_api(mode="cv", data_path=str(quickdraw_28px), model_dir=str(tmp_path / "cv"), **values)
    assert not (tmp_path / "cv").exists()


def test_a_data_set_without_ids_is_a_one_line_error_with_exit_status_2(quickdraw_28px, tmp_path):
    data = tmp_path / "no_ids"
    shutil.copytree(quickdraw_28px, data)
    info = json.loads((data / "dataset_info.json").read_text())
    del info["features"]["key_id"]
    (data / "dataset_info.json").write_text(json.dumps(info))
    done = subprocess.run([sys.executable, str(TOOL), "-mode", "cv", "-folds", "3", "-data_path", str(data),
                           "-model_dir", str(tmp_path / "cv")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "needs an id in every record" in done.stderr
    assert not (tmp_path / "cv").exists()


def test_a_fold_run_keeps_its_fold(cv_run, quickdraw_28px):
    """Resuming a fold's folder as a plain run, or evaluating it on another fold, would mix folds: refused."""
    folder = str(cv_run / "fold_1of2")
    with pytest.raises(trainer.ToolError, match=r"-fold 0 \(the run has 1\)"):
        trainer.prepare_run(*trainer.resolve("smoke", {"mode": "train", "data_path": str(quickdraw_28px),
                                                        "model_dir": folder}))
    with pytest.raises(trainer.ToolError, match=r"-fold 2 \(the run has 1\)"):
        trainer.prepare_run(*trainer.resolve("", {"mode": "evaluate", "model_dir": folder, "fold": 2}))
