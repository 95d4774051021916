"""serving.batch: batch jobs on Apache Beam over every input kind, judged against direct calls of
the SavedModel on the same real drawings, an independent metric computation (scikit-learn and
loops), planted bad inputs counted by reason, and runner equivalence (1 and 2 workers)."""

from __future__ import annotations

import gzip
import json
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import orjson
import pytest
from PIL import Image

from serving import batch, classification_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
BITMAP_CLASSES = ["boomerang", "clock", "cloud", "smiley face", "train", "tree"]


@pytest.fixture(scope="module")
def bitmap_dir():
    path = ROOT.parent / "shared" / "data" / "quickdraw_bitmap"
    if not path.is_dir():
        pytest.fail(f"real bitmaps missing at {path}")
    return path


@pytest.fixture(scope="module")
def classifier_export(trained_bitmap_export):
    """The shared classifier trained on real numpy_bitmap drawings (tests/conftest.py)."""
    assert trained_bitmap_export.class_names == BITMAP_CLASSES
    return trained_bitmap_export.export_dir


@pytest.fixture(scope="module")
def model(classifier_export):
    from serving.model import load

    return load(classifier_export)


def render(strokes, size=28):
    from data_prep.raster import rasterize

    return rasterize(strokes, image_size=size)


def drawings_of(quickdraw_dir, name, fmt="simplified"):
    out = []
    for line in (quickdraw_dir / fmt / f"{name}.ndjson").read_bytes().splitlines():
        record = orjson.loads(line)
        out.append((str(record["key_id"]), [np.asarray(s[:2], np.float32).T for s in record["drawing"]]))
    return out


def run(*argv) -> int:
    return batch.main(["serving.batch", "--progress=false", *map(str, argv)])


def read_job(out):
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads((out / "report.json").read_text())


# --------------------------------------------------------------------------- inputs with planted faults


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, quickdraw_dir, bitmap_dir):
    """Every input kind, real drawings, with bad records planted; returns (paths, planted skips)."""
    from data_prep.quickdraw import stroke3_from_strokes

    root = tmp_path_factory.mktemp("batch_inputs")
    ndjson = root / "ndjson"
    ndjson.mkdir()
    for name in ("clock", "tree"):
        lines = (quickdraw_dir / "simplified" / f"{name}.ndjson").read_bytes().splitlines()[:10]
        (ndjson / f"{name}.ndjson").write_bytes(b"\n".join(lines) + b"\n{not json\n")
    cloud = (quickdraw_dir / "raw" / "cloud.ndjson").read_bytes().splitlines()[:8]
    bad = orjson.loads(cloud[0])
    bad["drawing"][0][0][0] = "NaN"
    nonfinite = orjson.dumps(bad).replace(b'"NaN"', b"NaN")
    with gzip.open(ndjson / "cloud.ndjson.gz", "wb") as f:
        f.write(b"\n".join(cloud + [nonfinite]) + b"\n")

    arrays = root / "arrays"
    arrays.mkdir()
    np.save(arrays / "smiley face.npy", np.load(bitmap_dir / "smiley face.npy")[1000 - 12:].copy())
    np.save(arrays / "boomerang.npy", np.zeros((3, 27), np.uint8))  # wrong shape: 3 skips
    strokes = [s for _, s in drawings_of(quickdraw_dir, "train")[:6]]
    sketches = np.empty(6, dtype=object)
    for i, s in enumerate(strokes):
        sketches[i] = stroke3_from_strokes([np.round(p) for p in s])
    np.savez(arrays / "train.npz", test=sketches)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(arrays / "evil.npz", "w") as z:
        with z.open("test.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1,)})
            f.write(pickle.dumps(np.array([Boom()], dtype=object), protocol=2))

    images = root / "images"
    for name in ("boomerang", "tree"):
        (images / name).mkdir(parents=True)
        for key, s in drawings_of(quickdraw_dir, name)[10:14]:
            Image.fromarray(255 - render(s, 64)).save(images / name / f"{key}.png")  # black on white
    good = sorted((images / "tree").glob("*.png"))[0].read_bytes()
    (images / "tree" / "empty.png").write_bytes(b"")
    (images / "tree" / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "tree" / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (images / "notes.txt").write_text("not a drawing")

    planted = {"malformed_json": 2, "non_finite_coordinates": 1, "bad_npy_shape": 3, "unsafe_pickle": 1,
               "empty_file": 1, "unreadable_image": 2, "unknown_format": 1}
    return {"ndjson": ndjson, "arrays": arrays, "images": images}, planted


def test_mixed_job_counts_every_record_and_matches_direct_calls(mixed_inputs, classifier_export, model,
                                                                 tmp_path, quickdraw_dir):
    paths, planted = mixed_inputs
    out = tmp_path / "job"
    spec = ",".join(str(p) for p in paths.values())
    assert run("--model", classifier_export, "--input", spec, "--out", out) == 0
    rows, report = read_job(out)
    counts = report["counts"]
    assert counts["skipped_by_reason"] == planted
    assert counts["skipped"] == sum(planted.values())
    expected_items = 10 + 10 + 8 + 12 + 6 + 8  # ndjson clock, tree, cloud; npy rows; npz drawings; images
    assert counts["predicted"] == len(rows) == expected_items
    assert counts["read"] == counts["predicted"] + counts["skipped"]
    assert "clock.ndjson:11" in counts["skip_examples"]["malformed_json"]
    assert [r["row"] for r in rows] == list(range(len(rows)))
    assert [r["source"] for r in rows] == sorted(r["source"] for r in rows)

    # Each ndjson item equals the SavedModel called directly on the drawing rendered here.
    by_id = {(r["source"], r["id"]): r for r in rows}
    for key, strokes in drawings_of(quickdraw_dir, "clock")[:10]:
        direct = model.loaded.classify_images(render(strokes)[None, :, :, None])
        row = by_id[("ndjson/clock.ndjson", key)]
        assert row["label"] == "clock"
        assert row["top_classes"] == [c.decode() for c in direct["top_classes"].numpy()[0]]
        np.testing.assert_allclose(row["top_probabilities"], direct["top_probabilities"].numpy()[0], atol=1e-6)
    # Black-on-white PNGs were inverted (polarity auto): the same class as the canonical rendering.
    for key, strokes in drawings_of(quickdraw_dir, "tree")[10:14]:
        canonical = model.loaded.classify_images(render(strokes)[None, :, :, None])["top_classes"].numpy()[0, 0]
        assert by_id[(f"images/tree/{key}.png", f"images/tree/{key}.png")]["top_classes"][0] == canonical.decode()

    # embeddings.npz is a feature file whose rows follow predictions.jsonl.
    from retrieval.features import load_features

    features = load_features(out / "embeddings.npz")
    assert features.features.shape == (len(rows), 64)
    assert list(features.ids) == [r["id"] for r in rows]
    assert [features.class_names[i] for i in features.labels] == [r["label"] for r in rows]
    clock = [i for i, r in enumerate(rows) if r["source"] == "ndjson/clock.ndjson"][:3]
    pixels = np.stack([render(s)[:, :, None] for _, s in drawings_of(quickdraw_dir, "clock")[:10]])
    direct = model.embed("images", pixels)
    order = [next(j for j, (k, _) in enumerate(drawings_of(quickdraw_dir, "clock")[:10]) if k == rows[i]["id"])
             for i in clock]
    np.testing.assert_allclose(features.features[clock], direct[order], rtol=1e-5, atol=1e-6)


def test_report_metrics_equal_an_independent_computation(mixed_inputs, classifier_export, tmp_path):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    paths, _ = mixed_inputs
    out = tmp_path / "job"
    assert run("--model", classifier_export, "--input", paths["ndjson"], "--out", out) == 0
    rows, report = read_job(out)
    metrics = report["classification"]
    truth = [BITMAP_CLASSES.index(r["label"]) for r in rows]
    top1 = [BITMAP_CLASSES.index(r["top_classes"][0]) for r in rows]
    assert metrics["evaluated"] == len(rows) == 28
    assert metrics["top1"] == pytest.approx(np.mean(np.equal(truth, top1)))
    assert metrics["top5"] == pytest.approx(np.mean([r["label"] in r["top_classes"][:5] for r in rows]))
    assert metrics["chance"] == {"top1": pytest.approx(1 / 6), "top5": pytest.approx(5 / 6)}
    matrix = confusion_matrix(truth, top1, labels=range(6))
    assert metrics["confusion_matrix"]["matrix"] == matrix.tolist()
    precision, recall, _, support = precision_recall_fscore_support(truth, top1, labels=range(6), zero_division=np.nan)
    for k, row in enumerate(metrics["per_class"]):
        assert row["support"] == support[k]
        for name, value in (("precision", precision[k]), ("recall", recall[k])):
            assert (row[name] is None) if np.isnan(value) else row[name] == pytest.approx(value)
    assert metrics["top1"] > 0.5  # a trained model on real drawings, chance 1/6
    csv_rows = (out / "confusion_matrix.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[1:] == BITMAP_CLASSES
    assert [int(v) for v in csv_rows[2].split(",")[1:]] == matrix[1].tolist()
    assert Image.open(out / "confusion_matrix.png").size[0] > 200


def test_confusion_pairs_and_accuracy_against_loops():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 200)
    top = np.stack([rng.permutation(5) for _ in range(200)])
    names = list("abcde")
    report = classification_metrics.classification_report(labels, top, names)
    counts = {}
    for t, p in zip(labels, top[:, 0]):
        if t != p:
            counts[(names[t], names[p])] = counts.get((names[t], names[p]), 0) + 1
    best = sorted(counts.items(), key=lambda kv: -kv[1])[0]
    assert report["most_confused"][0]["count"] == best[1]
    assert [(p["true"], p["predicted"]) for p in report["most_confused"]].count(best[0]) <= 1
    assert all(a["count"] >= b["count"] for a, b in zip(report["most_confused"], report["most_confused"][1:]))
    assert report["top5"] == 1.0 and report["top1"] == pytest.approx(np.mean(labels == top[:, 0]))


def test_data_set_split_and_rerun(classifier_export, quickdraw_dir, tmp_path, model):
    from configuration_sketch import QuickDrawBuildConfig, RasterConfig
    from data_prep import quickdraw_build
    from data_prep.pipeline import load_split

    data = tmp_path / "data"
    quickdraw_build.build(QuickDrawBuildConfig(source=str(quickdraw_dir / "simplified"), format="simplified",
                                               categories="clock,cloud,tree", train_per_class=15, test_per_class=10,
                                               out=str(data), shards=2, workers=1),
                          RasterConfig(image_size=28), progress=False)
    out = tmp_path / "job"
    assert run("--model", classifier_export, "--input", data, "--split", "test", "--out", out) == 0
    rows, report = read_job(out)
    images, labels, ids = [], [], []
    for x, y, k in load_split(data, "test", 64, with_key_ids=True):
        images.append(x.numpy())
        labels += y.numpy().tolist()
        ids += [i.decode() for i in k.numpy()]
    direct = model.run("images", np.concatenate(images))
    assert sorted(r["id"] for r in rows) == sorted(ids) and report["counts"]["read"] == len(ids)
    by_id = {r["id"]: r for r in rows}
    names = ["clock", "cloud", "tree"]
    for i, key in enumerate(ids):
        assert by_id[key]["label"] == names[labels[i]]
        assert by_id[key]["top_classes"][0] == direct["top_classes"][i, 0].decode()
    before = (out / "predictions.jsonl").read_bytes()
    assert run("--model", classifier_export, "--input", data, "--split", "test", "--out", out) == 0  # no-op
    assert (out / "predictions.jsonl").read_bytes() == before
    assert run("--model", classifier_export, "--input", data, "--split", "train", "--out", out) == 2  # another job
    assert run("--model", classifier_export, "--input", data, "--split", "valid", "--out", tmp_path / "x") == 2
    (data / "dataset_info.json").unlink()
    orphan = tmp_path / "orphan"
    assert run("--model", classifier_export, "--input", data, "--out", orphan) == 0
    _, report = read_job(orphan)
    assert report["counts"]["skipped_by_reason"] == {"missing_dataset_info": 4} and report["counts"]["predicted"] == 0


def test_strict_stops_at_the_first_bad_record(mixed_inputs, classifier_export, tmp_path, capfd):
    paths, _ = mixed_inputs
    assert run("--model", classifier_export, "--input", paths["ndjson"] / "clock.ndjson", "--out",
               tmp_path / "s", "--strict") == 1
    err = capfd.readouterr().err
    assert "--strict" in err and "clock.ndjson:11: malformed_json" in err and "Traceback" not in err


def test_bad_model_and_flags_are_one_line_errors(mixed_inputs, classifier_export, tmp_path, capfd):
    paths, _ = mixed_inputs
    spec = str(paths["ndjson"])
    cases = [
        (["--model", tmp_path, "--input", spec, "--out", tmp_path / "a"], "is not an exported model folder"),
        (["--model", classifier_export, "--input", tmp_path / "none*", "--out", tmp_path / "b"], "matches no file"),
        (["--model", classifier_export, "--input", spec, "--out", tmp_path / "c", "--no_such_flag", "1"],
         "unknown flag '--no_such_flag'"),
        (["--model", classifier_export, "--input", spec], "--out are required"),
        (["--model", classifier_export, "--input", spec, "--out", tmp_path / "d", "--polarity", "sideways"],
         "polarity"),
    ]
    for argv, message in cases:
        capfd.readouterr()
        assert run(*argv) == 2, argv
        err = capfd.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_embedding_and_hash_models(tmp_path, quickdraw_dir, capfd):
    import keras

    from serving.export import export_model

    keras.utils.set_random_seed(4)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 5, strides=4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(12, activation="tanh")(h))
    export_model(model, tmp_path / "hash", class_names=None, image_size=28, channels=1, kind="hash",
                 polarity="white_on_black")
    source = tmp_path / "in"
    source.mkdir()
    lines = (quickdraw_dir / "simplified" / "cat.ndjson").read_bytes().splitlines()[:7]
    (source / "cat.ndjson").write_bytes(b"\n".join(lines))
    capfd.readouterr()
    assert run("--model", tmp_path / "hash", "--input", source, "--out", tmp_path / "h", "--head", "classify") == 2
    assert "--head classify needs a classifier; the model is a hash model" in capfd.readouterr().err
    assert run("--model", tmp_path / "hash", "--input", source, "--out", tmp_path / "h") == 0
    rows, report = read_job(tmp_path / "h")
    assert "top_classes" not in rows[0] and "classification" not in report
    assert [r["id"] for r in rows] == [str(orjson.loads(line)["key_id"]) for line in lines]  # file order
    pixels = np.stack([render([np.asarray(s[:2], np.float32).T for s in orjson.loads(line)["drawing"]])
                       for line in lines])[..., None]
    direct = model.predict(pixels / 255.0, verbose=0)
    with np.load(tmp_path / "h" / "embeddings.npz") as e, np.load(tmp_path / "h" / "codes.npz") as c:
        np.testing.assert_allclose(e["features"], direct, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(c["features"], np.packbits(direct > 0, axis=1))


@pytest.mark.slow
def test_two_worker_processes_write_byte_identical_predictions(mixed_inputs, classifier_export, tmp_path):
    paths, _ = mixed_inputs
    spec = ",".join(str(p) for p in paths.values())
    assert run("--model", classifier_export, "--input", spec, "--out", tmp_path / "one") == 0
    done = subprocess.run([sys.executable, "-m", "serving.batch", "--model", str(classifier_export), "--input", spec,
                           "--out", str(tmp_path / "two"), "--runner", "DirectRunner", "--direct_num_workers", "2",
                           "--progress=false"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr and "oneDNN" not in done.stderr
    assert (tmp_path / "one" / "predictions.jsonl").read_bytes() == (tmp_path / "two" / "predictions.jsonl").read_bytes()
    one, two = read_job(tmp_path / "one")[1], read_job(tmp_path / "two")[1]
    assert one["counts"] == two["counts"] and one["classification"] == two["classification"]
    assert "read " in done.stdout and "items/s" in done.stdout


def test_an_item_the_graph_cannot_decode_is_a_counted_skip_or_a_strict_stop():
    from apache_beam.ml.inference.base import PredictionResult

    from serving.batch_inputs import StrictStop

    keys = [("images/a.png", 0, "images/a.png", "tree"), ("images/b.png", 0, "images/b.png", "tree")]
    out = {"embedding": np.zeros((1, 3))}
    scored = (keys, PredictionResult(("encoded", [b"x", b"y"]), (out, [1], [(0, "undecodable_image", "Invalid PNG data")])))
    (kind, skip), (rows, row_keys, row_out) = list(batch.rows_step(scored))
    assert kind == "skip" and (skip.reason, skip.count) == ("undecodable_image", 1)
    assert skip.example == "images/a.png item images/a.png: undecodable_image (Invalid PNG data)"
    assert rows == "rows" and row_keys == keys[1:] and row_out is out
    with pytest.raises(StrictStop, match="images/a.png item images/a.png: undecodable_image"):
        list(batch.rows_step(scored, strict=True))
    good = (keys[1:], PredictionResult(("encoded", [b"y"]), (out, [0], [])))
    assert [r[0] for r in batch.rows_step(good, strict=True)] == ["rows"]


def test_read_step_chunks_consecutive_items_of_one_spec(mixed_inputs):
    """Chunks hold at most chunk_size items of one source and input spec, in order; skips pass through."""
    from serving.batch_inputs import ReadSettings, discover

    paths, _ = mixed_inputs
    settings = ReadSettings(28, 1, {})
    for source in discover(str(paths["ndjson"])):
        records = list(batch.read_step(source, settings, 4))
        chunks = [r for r in records if r[0] == "chunk"]
        assert all(1 <= len(keys) <= 4 and data.shape == (len(keys), 28, 28, 1) for _, keys, (_, data) in chunks)
        assert all(len(keys) == 4 for _, keys, _ in chunks[:-1])
        ordinals = [key[1] for _, keys, _ in chunks for key in keys]
        assert ordinals == sorted(ordinals) and len(set(ordinals)) == len(ordinals)


def test_handler_scores_the_rest_of_a_batch_around_an_undecodable_item(classifier_export, model, quickdraw_dir):
    """Real PNGs and one PNG whose data TF rejects: the others equal direct calls, the bad one is a skip."""
    import io

    from serving.batch import Job
    from serving.batch_inputs import ReadSettings

    pngs = []
    for _, strokes in drawings_of(quickdraw_dir, "cloud")[:5]:
        buffer = io.BytesIO()
        Image.fromarray(render(strokes)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    broken = pngs[2][:40] + b"\x00" * 64 + pngs[2][104:]  # a valid header, then corrupt image data
    job = Job(str(classifier_export), "", "classify", "auto", 4, ReadSettings(28, 1, {}), tuple(BITMAP_CLASSES),
              "classifier", 64, "", 0.0)
    handler = batch._model_handler_class()(job)
    results = handler.run_inference([("encoded", pngs[:2]), ("encoded", [broken] + pngs[3:])], model)
    (first, kept_first, skips_first), (second, kept_second, skips_second) = [r.inference for r in results]
    assert kept_first == [0, 1] and skips_first == [] and kept_second == [1, 2]
    assert [(i, reason) for i, reason, _ in skips_second] == [(0, "undecodable_image")]
    direct = model.run("encoded", pngs[:2] + pngs[3:])
    got = np.concatenate([first["probabilities"], second["probabilities"]])
    np.testing.assert_allclose(got, direct["probabilities"], atol=1e-6)


def test_expected_counts_for_the_progress_bar(quickdraw_28px, quickdraw_dir, tmp_path):
    from data_prep import tfrecords
    from serving.batch_inputs import discover, expected_count

    info = tfrecords.read_dataset_info(quickdraw_28px)
    sources = discover(str(quickdraw_28px), "test")
    assert sum(expected_count(s) for s in sources) == info["splits"]["test"]["num_examples"]
    ndjson = discover(str(quickdraw_dir / "simplified" / "cat.ndjson"))
    assert expected_count(ndjson[0]) == len((quickdraw_dir / "simplified" / "cat.ndjson").read_bytes().splitlines())
