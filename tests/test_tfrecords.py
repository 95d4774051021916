"""The generic TFRecord layer: sharded build driver, resume, dataset_info, verify, load_split."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from data_prep import builder, tfrecords, verify
from data_prep.atomic_files import write_json_atomic
from data_prep.pipeline import load_split

SIZE = 8
CLASSES = ["a", "b", "c"]
PER_UNIT = {"train": 7, "test": 3}
SPECS = {
    "image": tfrecords.FeatureSpec("bytes", "uint8", (SIZE, SIZE, 1), "raw", "test image"),
    "label": tfrecords.FeatureSpec("int64", "int64", (), "none", "label"),
    "key_id": tfrecords.FeatureSpec("bytes", "string", (), "utf-8", "id"),
}


def image_for(label: int, index: int) -> np.ndarray:
    """A deterministic image whose pixels encode (label, index)."""
    return np.full((SIZE, SIZE, 1), label * 40 + index, dtype=np.uint8)


def toy_unit(unit: dict, staging: dict) -> dict:
    """Writes PER_UNIT records per split for one class; fails on request (to test resume)."""
    marker = pathlib.Path(unit["calls_dir"]) / f"{unit['label']}-{len(list(pathlib.Path(unit['calls_dir']).iterdir()))}"
    marker.touch()
    if unit["label"] in unit.get("fail_on", []):
        raise RuntimeError(f"unit {unit['label']} failed on purpose")
    written = {}
    for split, n in PER_UNIT.items():
        offset = 0 if split == "train" else 100
        records = [tfrecords.serialize_example(
            {"image": image_for(unit["label"], offset + i), "label": unit["label"],
             "key_id": f"{unit['label']}/{offset + i}"}, SPECS) for i in range(n)]
        tfrecords.write_records(staging[split], records)
        written[split] = n
    return {"read": 12, "written": written, "per_class": {CLASSES[unit["label"]]: dict(written)},
            "skipped": {"bad": 2}, "skip_examples": {"bad": "x:1: bad"}, "over_quota": 0, "sources": []}


def build(out: pathlib.Path, calls: pathlib.Path, workers: int = 1, fail_on=(), shards: int = 4) -> dict:
    calls.mkdir(exist_ok=True)
    units = [{"label": i, "calls_dir": str(calls), "fail_on": list(fail_on)} for i in range(len(CLASSES))]
    info = {"name": "toy", "classes": CLASSES,
            "features": {name: spec.as_dict() for name, spec in SPECS.items()}}
    return builder.run_build(out, units=units, unit_fn=toy_unit, splits=["train", "test"], num_shards=shards,
                             workers=workers, build_args={"shards": shards}, info=info, progress=False)


def test_build_writes_mixed_shards_and_complete_info(tmp_path):
    info = build(tmp_path / "ds", tmp_path / "calls")
    out = tmp_path / "ds"
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [
        *(f"test-0000{i}-of-00004.tfrecord" for i in range(4)),
        *(f"train-0000{i}-of-00004.tfrecord" for i in range(4))]
    assert info["splits"]["train"]["num_examples"] == 21
    assert info["splits"]["test"]["num_examples"] == 9
    assert info["splits"]["train"]["per_class"] == {"a": 7, "b": 7, "c": 7}
    assert info["records"] == {"read": 36, "written": 30, "skipped": 6, "over_quota": 0}
    assert info["skipped"] == {"bad": 6}
    assert not (out / builder.STAGING_DIR).exists()
    assert json.loads((out / tfrecords.INFO_FILE).read_text()) == info
    # Round-robin dealing: the first shard holds every class.
    labels = [label for _, label in load_split(out, "train", 100).unbatch().as_numpy_iterator()]
    first_shard = info["splits"]["train"]["shards"][0]["num_examples"]
    assert set(labels[:first_shard]) == {0, 1, 2}


def test_verify_passes_then_names_each_kind_of_damage(tmp_path):
    out = tmp_path / "ds"
    info = build(out, tmp_path / "calls")
    assert verify.verify(out)["splits"] == {"train": 21, "test": 9}
    assert verify.main([str(out)]) == 0

    shard = out / info["splits"]["train"]["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(verify.VerificationError, match="sha256"):
        verify.verify(out)
    shard.unlink()
    with pytest.raises(verify.VerificationError, match="missing"):
        verify.verify(out)
    assert verify.main([str(out)]) == 1


def test_verify_catches_wrong_counts_and_leaks(tmp_path):
    out = tmp_path / "ds"
    info = build(out, tmp_path / "calls")
    tampered = json.loads(json.dumps(info))
    tampered["splits"]["test"]["per_class"]["a"] = 4
    (out / tfrecords.INFO_FILE).write_text(json.dumps(tampered))
    with pytest.raises(verify.VerificationError, match="class 'a'"):
        verify.verify(out)
    # Same key_id in train and test: a leak.
    leaky = json.loads(json.dumps(info))
    test_shard = out / leaky["splits"]["test"]["shards"][0]["file"]
    train_record = next(iter(_records(out / leaky["splits"]["train"]["shards"][0]["file"])))
    entry = tfrecords.write_records(test_shard, [train_record] + list(_records(test_shard))[1:])
    leaky["splits"]["test"]["shards"][0].update(entry)
    (out / tfrecords.INFO_FILE).write_text(json.dumps(leaky))
    with pytest.raises(verify.VerificationError, match="appears twice"):
        verify.verify(out)


def _records(path):
    import tensorflow as tf
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def test_resume_redoes_only_unfinished_units_and_refuses_other_builds(tmp_path):
    out, calls = tmp_path / "ds", tmp_path / "calls"
    with pytest.raises(RuntimeError, match="unit 2 failed"):
        build(out, calls, fail_on=[2])
    assert not (out / tfrecords.INFO_FILE).exists()
    before = {p.name.split("-")[0] for p in calls.iterdir()}
    assert "0" in before and "1" in before
    info = build(out, calls)
    per_unit = [len([p for p in calls.iterdir() if p.name.startswith(f"{i}-")]) for i in range(3)]
    assert per_unit == [1, 1, 2], "finished units must not be redone"
    assert verify.verify(out)["splits"] == {"train": 21, "test": 9}
    assert build(out, calls) == info, "a finished build is returned as is"
    with pytest.raises(builder.BuildError, match="different build"):
        build(out, calls, shards=2)


def test_resume_skips_shards_already_complete(tmp_path):
    out, calls = tmp_path / "ds", tmp_path / "calls"
    info = build(out, calls)
    # Simulate a stop after two train shards were written: re-stage and keep those two shards.
    kept = [out / s["file"] for s in info["splits"]["train"]["shards"][:2]]
    stamps = [p.stat().st_mtime_ns for p in kept]
    (out / tfrecords.INFO_FILE).unlink()  # an interrupted build has its state file, not the info
    write_json_atomic(out / builder.STATE_FILE, {"build": {"fingerprint": info["build"]["fingerprint"]}})
    for shard in info["splits"]["train"]["shards"][2:] + info["splits"]["test"]["shards"]:
        (out / shard["file"]).unlink()
    assert build(out, calls)["splits"] == info["splits"]
    assert [p.stat().st_mtime_ns for p in kept] == stamps


def test_parallel_workers_give_the_same_shards(tmp_path):
    one = build(tmp_path / "one", tmp_path / "calls1", workers=1)
    two = build(tmp_path / "two", tmp_path / "calls2", workers=2)
    assert one["splits"] == two["splits"]


def test_load_split_values_order_and_shuffle(tmp_path):
    out = tmp_path / "ds"
    build(out, tmp_path / "calls")
    batches = list(load_split(out, "test", 4, with_key_ids=True).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 1]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    keys = [k.decode() for b in batches for k in b[2]]
    assert images.shape == (9, SIZE, SIZE, 1) and images.dtype == np.float32
    for image, label, key in zip(images, labels, keys):
        cls, index = map(int, key.split("/"))
        assert cls == label
        np.testing.assert_allclose(image, image_for(cls, index) / 255.0, rtol=1e-6)
    again = [k.decode() for b in load_split(out, "test", 4, with_key_ids=True).as_numpy_iterator() for k in b[2]]
    assert again == keys, "evaluation order is deterministic"
    shuffled = [k.decode() for b in load_split(out, "train", 5, shuffle=True, seed=1, with_key_ids=True)
                .as_numpy_iterator() for k in b[2]]
    assert sorted(shuffled) == sorted(f"{c}/{i}" for c in range(3) for i in range(7))
    resized = next(iter(load_split(out, "train", 2, image_size=16, channels=3)))[0]
    assert resized.shape == (2, 16, 16, 3)


def test_load_split_errors_name_the_problem(tmp_path):
    with pytest.raises(tfrecords.DatasetInfoError, match="does not exist.*quickdraw build"):
        load_split(tmp_path / "nothing", "train", 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(tfrecords.DatasetInfoError, match="not a built data set"):
        load_split(tmp_path / "empty", "train", 4)
    out = tmp_path / "ds"
    build(out, tmp_path / "calls")
    with pytest.raises(tfrecords.DatasetInfoError, match="Unknown split 'valid'.*train, test"):
        load_split(out, "valid", 4)
    with pytest.raises(ValueError, match="batch_size"):
        load_split(out, "train", 0)


def test_json_files_are_written_whole_by_one_writer(tmp_path, monkeypatch):
    """Every state, report and meta file goes through data_prep.atomic_files: indented JSON with a final
    newline, and a failed write leaves the old file and no partial one."""
    import importlib
    import json
    import os

    from data_prep import atomic_files

    target = tmp_path / "state.json"
    atomic_files.write_json_atomic(target, {"a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "fsync", no_space)
    with pytest.raises(OSError, match=r"\.state\.json\.tmp-"):
        atomic_files.write_json_atomic(target, {"b": 3})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and sorted(os.listdir(tmp_path)) == ["state.json"]
    for module in ("data_prep.builder", "training.trainer", "training.checkpoints", "training.callbacks",
                   "serving.export"):
        source = importlib.import_module(module)
        assert source.write_json_atomic is atomic_files.write_json_atomic, module
        assert "os.replace(tmp, path)" not in open(source.__file__).read(), module
