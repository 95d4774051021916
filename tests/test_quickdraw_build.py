"""`python -m data_prep.quickdraw build`: real samples in every format to verified, sharded TFRecords."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import orjson
import pytest
import tensorflow as tf

from configuration_sketch import QuickDrawBuildConfig, RasterConfig
from data_prep import builder, quickdraw, quickdraw_build, raster, tfrecords, verify
from data_prep.pipeline import load_split, parse_batch
from tests.conftest import ROOT

CATEGORIES = "The Eiffel Tower,cat,airplane,bicycle,snowman"


def build(source, out, fmt="simplified", categories=CATEGORIES, image_size=28, **overrides):
    config = QuickDrawBuildConfig(source=str(source), format=fmt, categories=categories, train_per_class=15,
                                  test_per_class=5, out=str(out), shards=3, workers=1, seed=0)
    config = QuickDrawBuildConfig(**{**config.__dict__, **overrides})
    return quickdraw_build.build(config, RasterConfig(image_size=image_size), progress=False)


def all_records(data_dir):
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    out = {}
    for split in info["splits"]:
        files = [str(p) for p in tfrecords.shard_paths(data_dir, info, split)]
        for batch in tf.data.TFRecordDataset(files).batch(64):
            parsed = parse_batch(batch, specs, list(specs))
            for i in range(int(batch.shape[0])):
                out[parsed["key_id"][i].numpy().decode()] = {
                    "split": split, "label": int(parsed["label"][i]), "image": parsed["image"][i].numpy(),
                    "points": parsed["strokes/points"][i].numpy(), "lengths": parsed["strokes/lengths"][i].numpy(),
                    "dims": int(parsed["strokes/dims"][i]), "word": parsed["word"][i].numpy().decode()}
    return info, out


@pytest.fixture(scope="module")
def simplified_build(tmp_path_factory, quickdraw_dir):
    out = tmp_path_factory.mktemp("qd") / "simplified"
    return out, build(quickdraw_dir / "simplified", out)


def test_simplified_build_counts_labels_and_verifies(simplified_build, quickdraw_dir):
    out, info = simplified_build
    assert info["classes"] == CATEGORIES.split(",")
    # 25 drawings per category in the sample: quotas 15 + 5 leave the rest over quota or unread.
    for split, quota in (("train", 15), ("test", 5)):
        counts = info["splits"][split]["per_class"]
        assert all(n <= quota for n in counts.values())
        assert sum(counts.values()) == info["splits"][split]["num_examples"]
    assert info["splits"]["train"]["num_examples"] + info["splits"]["test"]["num_examples"] >= 90
    records = info["records"]
    assert records["read"] == records["written"] + records["skipped"] + records["over_quota"]
    assert [s["file"] for s in info["splits"]["train"]["shards"]] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    source = quickdraw_dir / "simplified" / "cat.ndjson"
    entry = next(s for s in info["sources"] if s["category"] == "cat")
    assert entry["sha256"] == tfrecords.sha256_file(source) and entry["num_bytes"] == source.stat().st_size
    assert info["features"]["image"]["shape"] == [28, 28, 1]
    assert verify.verify(out)["splits"] == {s: info["splits"][s]["num_examples"] for s in ("train", "test")}


def test_records_hold_the_source_drawing_and_its_rendering(simplified_build, quickdraw_dir):
    out, info = simplified_build
    _, records = all_records(out)
    source = {}
    for category in info["classes"]:
        path = quickdraw_dir / "simplified" / f"{category}.ndjson"
        for line in path.read_bytes().splitlines():
            d = orjson.loads(line)
            source[d["key_id"]] = d
    assert len(records) == info["records"]["written"]
    for key, record in records.items():
        original = source[key]
        assert info["classes"][record["label"]] == original["word"] == record["word"]
        strokes = np.split(record["points"].reshape(-1, record["dims"]), np.cumsum(record["lengths"])[:-1])
        assert [s[:, 0].tolist() for s in strokes] == [s[0] for s in original["drawing"]]
        assert [s[:, 1].tolist() for s in strokes] == [s[1] for s in original["drawing"]]
        np.testing.assert_array_equal(record["image"][..., 0], raster.rasterize(strokes, 28))
    # The split depends only on (seed, key_id).
    for key, record in records.items():
        expected = quickdraw_build.split_of(key, 0, 5 / 20)
        assert record["split"] == expected


def test_build_is_deterministic_and_seeded_choice_is_without_replacement(tmp_path, quickdraw_dir, simplified_build):
    _, first = simplified_build
    again = build(quickdraw_dir / "simplified", tmp_path / "again")
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in first["splits"]["train"]["shards"]]
    available = list(quickdraw.source_files(quickdraw_dir / "simplified", "simplified"))
    chosen = quickdraw_build.select_categories(available, "300", seed=3)
    assert len(chosen) == len(set(chosen)) == 300 and chosen == sorted(chosen)
    assert chosen == quickdraw_build.select_categories(available, "300", seed=3)
    assert chosen != quickdraw_build.select_categories(available, "300", seed=4)


def test_raw_format_keeps_time_and_renders_time_channels(tmp_path, quickdraw_dir):
    info = build(quickdraw_dir / "raw", tmp_path / "raw", fmt="raw", categories="cat,airplane",
                 image_size=64)
    _, records = all_records(tmp_path / "raw")
    assert {r["dims"] for r in records.values()} == {3}
    assert next(iter(records.values()))["image"].shape == (64, 64, 1)
    config = QuickDrawBuildConfig(source=str(quickdraw_dir / "raw"), format="raw", categories="cat",
                                  train_per_class=5, test_per_class=2, out=str(tmp_path / "tc"), shards=1, workers=1)
    info = quickdraw_build.build(config, RasterConfig(image_size=32, time_channels=True), progress=False)
    assert info["image"]["channels"] == 3
    image = next(iter(load_split(tmp_path / "tc", "train", 4)))[0]
    assert image.shape == (4, 32, 32, 3)


def test_bitmap_format_resizes_and_keys_by_index(tmp_path, quickdraw_dir):
    source = tmp_path / "bitmaps"
    source.mkdir()
    for category in ("cat", "airplane"):
        drawings = list(quickdraw.read_ndjson(quickdraw_dir / "simplified" / f"{category}.ndjson"))
        np.save(source / f"{category}.npy", raster.rasterize_many([d.strokes for d in drawings], 28)
                .reshape(len(drawings), 784))
    np.save(source / "broken.npy", np.zeros((3, 100), np.uint8))
    with pytest.raises(builder.BuildError, match=r"'broken' in train, 'broken' in test .*--allow_empty_classes"):
        build(source, tmp_path / "out", fmt="bitmap", categories="airplane,broken,cat", image_size=56)
    info = build(source, tmp_path / "out", fmt="bitmap", categories="airplane,broken,cat", image_size=56,
                 allow_empty_classes=True)
    assert info["skipped"].get("bad_npy_shape", 0) >= 1
    assert info["splits"]["train"]["per_class"]["broken"] == 0
    assert {"class": "broken", "split": "train", "examples": 0, "wanted": 15} in info["shortfalls"]
    _, records = all_records(tmp_path / "out")
    assert all(key.split("/")[0] in ("cat", "airplane") for key in records)
    assert next(iter(records.values()))["image"].shape == (56, 56, 1)
    assert verify.verify(tmp_path / "out")


def test_sketchrnn_keeps_its_own_splits(tmp_path, quickdraw_dir):
    source = tmp_path / "npz"
    source.mkdir()
    drawings = list(quickdraw.read_ndjson(quickdraw_dir / "simplified" / "cat.ndjson"))
    arrays = [quickdraw.stroke3_from_strokes(d.strokes) for d in drawings]

    def objects(items):
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out

    np.savez(source / "cat.npz", train=objects(arrays[:15]), valid=objects(arrays[15:20]), test=objects(arrays[20:]))
    info = build(source, tmp_path / "out", fmt="sketchrnn", categories="cat", train_per_class=100,
                 test_per_class=100)
    assert {s: info["splits"][s]["num_examples"] for s in ("train", "valid", "test")} == \
        {"train": 15, "valid": 5, "test": 5}
    assert verify.verify(tmp_path / "out")


def _bad_source(tmp_path, quickdraw_dir) -> pathlib.Path:
    source = tmp_path / "bad"
    source.mkdir()
    good = (quickdraw_dir / "simplified" / "cat.ndjson").read_bytes().splitlines()
    bad_lines = [b"{not json", b'{"word": "cat", "key_id": "1"}', b"\xff\xfe\x00",
                 b'{"word":"cat","countrycode":"US","timestamp":"x","recognized":true,"key_id":"2","drawing":[]}']
    (source / "cat.ndjson").write_bytes(b"\n".join(good[:10] + bad_lines + good[10:]) + b"\n")
    return source


def test_bad_lines_are_counted_skips_and_strict_names_file_and_line(tmp_path, quickdraw_dir):
    source = _bad_source(tmp_path, quickdraw_dir)
    info = build(source, tmp_path / "out", categories="cat", train_per_class=100, test_per_class=100)
    assert info["records"] == {"read": 29, "written": 25, "skipped": 4, "over_quota": 0}
    assert sum(info["skipped"].values()) == 4
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "data_prep.quickdraw", "build", "--source", str(source), "--format",
               "simplified", "--categories", "cat", "--out", str(tmp_path / "strict"), "--workers", "1", "--strict"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "cat.ndjson:11" in result.stderr and "Traceback" not in result.stderr


def test_a_duplicate_key_id_is_a_counted_skip_and_the_data_set_verifies(tmp_path, quickdraw_dir):
    lines = (quickdraw_dir / "simplified" / "cat.ndjson").read_bytes().splitlines()
    doubled = lines[:12] + [lines[3], lines[7]] + lines[12:] + [lines[3]]
    source = tmp_path / "source"
    source.mkdir()
    (source / "cat.ndjson").write_bytes(b"\n".join(doubled) + b"\n")
    keys = [orjson.loads(line)["key_id"] for line in doubled]
    assert len(keys) == 28 and len(set(keys)) == 25
    info = build(source, tmp_path / "out", categories="cat", train_per_class=100, test_per_class=100)
    assert info["skipped"] == {"duplicate_key": 3}
    assert str(source / "cat.ndjson") in info["skip_examples"]["duplicate_key"]
    assert [info["records"][k] for k in ("read", "written", "skipped", "over_quota")] == [28, 25, 3, 0]
    assert sum(verify.verify(tmp_path / "out")["splits"].values()) == 25


def test_a_key_id_in_two_source_files_is_written_once_and_counted(tmp_path, quickdraw_dir):
    cat = (quickdraw_dir / "simplified" / "cat.ndjson").read_bytes().splitlines()
    dog = (quickdraw_dir / "simplified" / "dog.ndjson").read_bytes().splitlines()
    source = tmp_path / "source"
    source.mkdir()
    (source / "cat.ndjson").write_bytes(b"\n".join(cat) + b"\n")
    (source / "dog.ndjson").write_bytes(b"\n".join(dog + [cat[2], cat[9]]) + b"\n")  # copied into the next file
    copied = {orjson.loads(cat[k])["key_id"] for k in (2, 9)}
    info = build(source, tmp_path / "out", categories="cat,dog", train_per_class=100, test_per_class=100)
    assert info["skipped"] == {"duplicate_key": 2}
    assert "dog.ndjson" in info["skip_examples"]["duplicate_key"]
    assert [info["records"][k] for k in ("read", "written", "skipped", "over_quota")] == [52, 50, 2, 0]
    per_class = {cls: sum(info["splits"][s]["per_class"][cls] for s in info["splits"]) for cls in ("cat", "dog")}
    assert per_class == {"cat": 25, "dog": 25}
    assert sum(verify.verify(tmp_path / "out")["splits"].values()) == 50
    labels_by_key = {}
    for split in info["splits"]:
        for path in sorted((tmp_path / "out").glob(f"{split}-*.tfrecord")):
            for record in tf.data.TFRecordDataset(str(path)):
                example = tf.train.Example.FromString(record.numpy())
                key = example.features.feature["key_id"].bytes_list.value[0].decode()
                labels_by_key[key] = example.features.feature["label"].int64_list.value[0]
    assert len(labels_by_key) == 50 and copied <= set(labels_by_key)
    assert {labels_by_key[k] for k in copied} == {info["classes"].index("cat")}  # the first file's copy is kept
    with pytest.raises(builder.BuildError, match=r"--strict: dog.ndjson: key_id"):
        build(source, tmp_path / "strict", categories="cat,dog", train_per_class=100, test_per_class=100,
              strict=True)


class _RunsACommand:
    """Pickles as a call of os.system: what a malicious sketch-rnn file could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_refuses_an_unsafe_pickle_in_one_line(tmp_path, quickdraw_dir):
    drawings = list(quickdraw.read_ndjson(quickdraw_dir / "simplified" / "cat.ndjson"))
    marker = tmp_path / "ran"
    items = [quickdraw.stroke3_from_strokes(d.strokes) for d in drawings[:5]] + [_RunsACommand(marker)]
    train = np.empty(len(items), dtype=object)
    train[:] = items
    source = tmp_path / "npz"
    source.mkdir()
    np.savez(source / "cat.npz", train=train)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "data_prep.quickdraw", "build", "--source", str(source), "--format",
               "sketchrnn", "--categories", "cat", "--out", str(tmp_path / "out"), "--workers", "2"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.replace("\r", "\n").splitlines()  # the progress bar redraws with \r
    error = [line for line in lines if "error:" in line]
    assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(source / "cat.npz") in error[0] and "train.npy" in error[0] and "system" in error[0]
    assert not marker.exists()


def test_cli_build_then_verify_and_clear_errors(tmp_path, quickdraw_dir):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "data_prep.quickdraw", "build", "-source", str(quickdraw_dir / "simplified"),
               "-format", "simplified", "-categories", "3", "-train_per_class", "10", "-test_per_class", "3",
               "-image_size", "32", "-out", str(out), "-shards", "2", "-workers", "2"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "built 30 train, 9 test records of 3 classes" in result.stdout
    check = subprocess.run([sys.executable, "-m", "data_prep.verify", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.startswith("OK"), check.stderr
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["image"] == {"height": 32, "width": 32, "channels": 1}
    for args, message in ((["--categories", "no such thing"], "No source file for categories: no such thing"),
                          (["--categories", "../etc"], "Invalid category name"),
                          (["--format", "bitmap"], "No bitmap files")):
        bad = [sys.executable, "-m", "data_prep.quickdraw", "build", "--source", str(quickdraw_dir / "simplified"),
               "--out", str(tmp_path / "x"), *args]
        result = subprocess.run(bad, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_short_and_empty_classes_and_entries_that_are_no_category(tmp_path, quickdraw_dir):
    """Quotas of 1000 + 100 on the 25-drawing real files fall short, a 0-byte file gives an empty class
    (refused unless --allow_empty_classes), and 'a:b.ndjson' or a folder named 'dog.ndjson' in --source
    are counted skips that do not stop the build."""
    import hashlib

    source = tmp_path / "src"
    source.mkdir()
    for name in ("airplane", "cat"):
        (source / f"{name}.ndjson").symlink_to(quickdraw_dir / "simplified" / f"{name}.ndjson")
    (source / "a:b.ndjson").symlink_to(quickdraw_dir / "simplified" / "bee.ndjson")
    (source / "dog.ndjson").mkdir()
    (source / "empty.ndjson").write_bytes(b"")
    args = dict(categories="airplane,cat,empty", train_per_class=1000, test_per_class=100)
    # Expected counts from the README's rule: test when blake2b-64("seed:key_id") / 2**64 < 100 / 1100.
    expected = {"airplane": {"train": 0, "test": 0}, "cat": {"train": 0, "test": 0}, "empty": {"train": 0, "test": 0}}
    for name in ("airplane", "cat"):
        for line in (quickdraw_dir / "simplified" / f"{name}.ndjson").read_bytes().splitlines():
            digest = hashlib.blake2b(f"0:{orjson.loads(line)['key_id']}".encode(), digest_size=8).digest()
            expected[name]["test" if int.from_bytes(digest, "big") / 2**64 < 100 / 1100 else "train"] += 1
    empty = [f"'{c}' in {s}" for c in expected for s in ("train", "test") if expected[c][s] == 0]
    assert "'airplane' in test" in empty, "the hash split leaves airplane (25 drawings) no test drawing"
    with pytest.raises(builder.BuildError, match=f"{len(empty)} class/split pair\\(s\\) have 0 examples: "
                                                 f"{', '.join(empty)} .*--allow_empty_classes"):
        build(source, tmp_path / "out", **args)
    info = build(source, tmp_path / "out", allow_empty_classes=True, **args)
    assert {c: {s: info["splits"][s]["per_class"][c] for s in ("train", "test")} for c in expected} == expected
    assert info["shortfalls"] == [{"class": c, "split": s, "examples": expected[c][s], "wanted": q}
                                  for c in ("airplane", "cat", "empty") for s, q in (("train", 1000), ("test", 100))]
    assert info["skipped"] == {"bad_category_name": 1, "not_a_file": 1}
    assert info["records"] == {"read": 50 + 2, "written": 50, "skipped": 2, "over_quota": 0}
    assert "a:b.ndjson" in info["skip_examples"]["bad_category_name"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "data_prep.quickdraw", "build", "--source", str(source), "--format", "simplified",
               "--categories", "airplane,cat,empty", "--out", str(tmp_path / "cli"), "--workers", "1",
               "--train_per_class", "1000", "--test_per_class", "100", "--allow_empty_classes"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (f"short: airplane train {expected['airplane']['train']}/1000, airplane test "
            f"{expected['airplane']['test']}/100, cat train") in result.stdout
    assert "and 1 more (dataset_info.json: shortfalls)" in result.stdout
    assert "skipped 2 (bad_category_name=1, not_a_file=1)" in result.stdout


def test_test_fraction_sets_the_hash_split_beside_the_quotas(tmp_path, quickdraw_dir):
    """Quotas of 1000 + 100 send 1/11 of a category to test, none of the real 25 airplane drawings;
    --test_fraction 0.3 sends each drawing whose blake2b-64("0:key_id") / 2**64 < 0.3 there."""
    import hashlib

    expected = {"train": 0, "test": 0}
    for line in (quickdraw_dir / "simplified" / "airplane.ndjson").read_bytes().splitlines():
        digest = hashlib.blake2b(f"0:{orjson.loads(line)['key_id']}".encode(), digest_size=8).digest()
        expected["test" if int.from_bytes(digest, "big") / 2**64 < 0.3 else "train"] += 1
    assert expected["test"] > 0
    info = build(quickdraw_dir / "simplified", tmp_path / "out", categories="airplane", train_per_class=1000,
                 test_per_class=100, test_fraction=0.3)
    assert {s: info["splits"][s]["per_class"]["airplane"] for s in ("train", "test")} == expected
    assert info["build"]["args"]["test_fraction"] == 0.3
    default = build(quickdraw_dir / "simplified", tmp_path / "default", categories="airplane", allow_empty_classes=True)
    assert "test_fraction" not in default["build"]["args"], "default builds keep their earlier fingerprint"
    with pytest.raises(ValueError, match=r"--test_fraction: 1.0. Expected 0 <= x < 1"):
        build(quickdraw_dir / "simplified", tmp_path / "bad", test_fraction=1.0)
