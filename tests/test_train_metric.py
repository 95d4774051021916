"""train_sketch_net.py with -model siamese|triplet|deephash on real data: each model trains a few steps
under MirroredStrategy over 2 logical CPUs (a subprocess of the tool), then -mode test and export, and
the export reloads in a fresh process with the embeddings of -mode test; bad input fails before training.

Run as a script (`python tests/test_train_metric.py EXPORT_DIR DATA_DIR SPLIT DOMAIN`) it is the fresh
process of the reload check: it prints the export's `embed_images` embeddings of the split's images as JSON
(serving.model, polarity auto).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

if __name__ == "__main__":  # reload worker: only TensorFlow and the data pipeline, no Keras model code
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tensorflow as tf

    from data_prep import metric_pipelines
    from serving import model

    export_dir, data_dir, split, domain = sys.argv[1:5]
    exported = model.load(export_dir)
    rows = []
    for images, _ in metric_pipelines.domain_dataset(data_dir, split, None if domain == "all" else domain, 64):
        pixels = tf.cast(tf.round(images * 255.0), tf.uint8).numpy()  # the stored uint8 images, exactly
        rows.append(exported.embed("images", pixels))
    print(json.dumps(np.concatenate(rows).tolist()))
    sys.exit(0)

import numpy as np
import pytest

from configuration_sketch import EmbeddingConfig, TrainConfig
from retrieval import metrics as retrieval_metrics
from training import trainer
from training.tasks import metric

TOOL = ROOT / "train_sketch_net.py"
SKETCHY_CATEGORIES = ("airplane", "alarm_clock", "ant", "ape", "apple", "armor", "axe", "banana")
SKETCHY_SIZE = 32


def run_tool(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def run_api(**values) -> dict:
    """One mode of the tool in this process (test and export start no strategy), from flag-like values."""
    return trainer.run_mode(*trainer.resolve("", values))


def reload_embeddings(export_dir: pathlib.Path, data_dir: pathlib.Path, split: str, domain: str) -> np.ndarray:
    done = subprocess.run([sys.executable, __file__, str(export_dir), str(data_dir), split, domain], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]), np.float32)


@pytest.fixture(scope="session")
def sketchy_32px(tmp_path_factory, sketchy_dir) -> pathlib.Path:
    """8 real Sketchy categories (200 photos, 200 sketches; links to the sample, not copies) at 32 px."""
    from configuration_sketch import SketchyBuildConfig
    from data_prep import sketchy

    source = tmp_path_factory.mktemp("sketchy_source")
    for tree in ("photo", "sketch"):
        (source / tree).mkdir()
        for category in SKETCHY_CATEGORIES:
            (source / tree / category).symlink_to(sketchy_dir / tree / category, target_is_directory=True)
    out = tmp_path_factory.mktemp("sketchy_32px")
    sketchy.build(SketchyBuildConfig(source=str(source), out=str(out), image_size=SKETCHY_SIZE, shards=2, workers=1),
                  progress=False)
    return out


def read_npz(path: pathlib.Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def train_in_subprocess(data_dir: pathlib.Path, model_dir: pathlib.Path, *flags: str) -> dict:
    """A few steps under MirroredStrategy on 2 logical CPUs; returns the run's train_history.json rows."""
    done = run_tool("-mode", "train", "-data_path", str(data_dir), "-model_dir", str(model_dir), "-epochs", "2",
                    "-steps_per_epoch", "2", "-cpu_devices", "2", "-strategy", "mirrored", "-verbose", "0",
                    "-bn_recalibration", "2", *flags)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "mirrored on /device:CPU:0, /device:CPU:1 (2 replicas)" in done.stdout
    assert "train: step 4 of 4" in done.stdout
    rows = json.loads((model_dir / "train_history.json").read_text())["epochs"]
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        assert np.isfinite(row["loss"]) and 0.0 < row["val_map"] <= 1.0  # the retrieval validation ran
    assert (model_dir / "best.keras").is_file()  # kept by val_map, the task's monitor
    return rows


def instance_accuracy(queries, query_ids, gallery, gallery_ids, ks=(1, 10)) -> dict[int, float]:
    """Instance accuracy@K by explicit loops: the fraction of queries whose own gallery item (the same
    id, or the id a Sketchy sketch id `<photo>-<n>` names) is among the K nearest by L2, ties to the
    lower gallery index."""
    gallery_ids = [str(x) for x in gallery_ids]
    ranks = []
    for q, qid in zip(np.asarray(queries, np.float64), query_ids):
        qid = str(qid)
        target = gallery_ids.index(qid if qid in gallery_ids else qid.rsplit("-", 1)[0])
        d = [math.sqrt(sum((a - b) ** 2 for a, b in zip(q, g))) for g in np.asarray(gallery, np.float64)]
        ranks.append(1 + sum(x < d[target] or (x == d[target] and j < target) for j, x in enumerate(d)))
    return {k: sum(r <= k for r in ranks) / len(ranks) for k in ks}


def mean_average_precision(queries, query_labels, gallery, gallery_labels) -> float:
    """mAP by explicit loops: for each query, the gallery sorted by L2 (ties to the lower index), AP =
    mean over its relevant items of (relevant so far) / rank; queries with no relevant item are left out."""
    aps = []
    for q, label in zip(np.asarray(queries, np.float64), query_labels):
        d = [math.sqrt(sum((a - b) ** 2 for a, b in zip(q, g))) for g in np.asarray(gallery, np.float64)]
        order = sorted(range(len(d)), key=lambda j: (d[j], j))
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if gallery_labels[j] == label:
                hits += 1
                precisions.append(hits / rank)
        if precisions:
            aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def check_report_matches_files(model_dir: pathlib.Path, report: dict, binary: bool) -> tuple[dict, dict | None]:
    """similarity.json agrees with an independent evaluation of the feature files it names."""
    saved = json.loads((model_dir / "similarity.json").read_text())
    assert saved["map"] == pytest.approx(report["map"]) and saved["features_file"] == "features_test.npz"
    queries = read_npz(model_dir / saved["features_file"])
    gallery = read_npz(model_dir / saved["gallery_file"]) if "gallery_file" in saved else None
    again = retrieval_metrics.evaluate(
        queries["features"], queries["labels"], None if gallery is None else gallery["features"],
        None if gallery is None else gallery["labels"], query_ids=queries.get("photo_id", queries["ids"]),
        gallery_ids=None if gallery is None else gallery["photo_id"], metric="hamming" if binary else "l2")
    for key in ("map", "precision@10", "knn_accuracy@1", "num_queries", "num_gallery"):
        assert saved[key] == pytest.approx(again[key]), key
    assert 0.0 < saved["map"] <= 1.0 and saved["checkpoint"].endswith(".weights.h5")
    return queries, gallery


@pytest.mark.slow
def test_triplet_on_quickdraw_trains_tests_and_exports(quickdraw_28px, tmp_path):
    model_dir = tmp_path / "triplet"
    rows = train_in_subprocess(quickdraw_28px, model_dir, "-model", "triplet", "-classes_per_batch", "4",
                               "-per_class", "4", "-embedding_dim", "32", "-miner", "batch_hard")
    assert all(row["num_invalid_batches"] == 0 for row in rows)  # every P x K batch had pairs to mine
    record = json.loads((model_dir / "train_config.json").read_text())
    assert record["task"] == "metric_learning" and record["configs"]["EmbeddingConfig"]["embedding_dim"] == 32

    report = run_api(mode="test", model_dir=str(model_dir))
    info = json.loads((quickdraw_28px / "dataset_info.json").read_text())
    assert report["mode"] == "leave_one_out" and report["metric"] == "l2" and report["embedding"] == "float"
    assert report["num_queries"] == info["splits"]["test"]["num_examples"]
    assert report["summary"].startswith(f"test: leave-one-out L2 over {report['num_queries']} queries: mAP@all "
                                        f"{report['map']:.4f} (chance {report['chance']['map']:.4f}")
    queries, _ = check_report_matches_files(model_dir, report, binary=False)
    assert queries["features"].shape == (report["num_queries"], 32)
    np.testing.assert_allclose(np.linalg.norm(queries["features"], axis=1), 1.0, atol=1e-5)  # l2_normalize

    evaluated = run_api(mode="evaluate", model_dir=str(model_dir))
    assert np.isfinite(evaluated["loss"]) and evaluated["loss_batches"] >= 1
    assert evaluated["retrieval"]["map"] == pytest.approx(report["map"])
    assert (model_dir / evaluated["embedding_png"]).stat().st_size > 1000

    meta = run_api(mode="export", model_dir=str(model_dir))
    assert meta["kind"] == "embedding" and meta["embedding_dim"] == 32 and meta["channels"] == 1
    assert meta["polarity"] == "white_on_black"  # Quick, Draw! training images
    assert meta["outputs_are_logits"] is None  # not a classifier: there are no logits
    assert json.loads((model_dir / "export" / "model_meta.json").read_text())["outputs_are_logits"] is None
    reloaded = reload_embeddings(model_dir / "export", quickdraw_28px, "test", "all")
    np.testing.assert_allclose(reloaded, queries["features"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["proxy_anchor", "normalized_softmax", "softmax_triplet"])
def test_triplet_with_a_proxy_loss_trains_tests_and_exports_its_features(quickdraw_28px, tmp_path, loss):
    """The proxies train beside the embedding (2 replicas); test, evaluate and export use `features`."""
    model_dir = tmp_path / loss
    rows = train_in_subprocess(quickdraw_28px, model_dir, "-model", "triplet", "-classes_per_batch", "4",
                               "-per_class", "4", "-embedding_dim", "32", "-loss", loss)
    # proxy-anchor counts empty batches like the mined losses; normalised softmax has nothing to count
    assert [row.get("num_invalid_batches") for row in rows] == [None if loss == "normalized_softmax" else 0] * 2
    info = json.loads((quickdraw_28px / "dataset_info.json").read_text())
    report = run_api(mode="test", model_dir=str(model_dir))
    assert report["num_queries"] == info["splits"]["test"]["num_examples"]
    queries, _ = check_report_matches_files(model_dir, report, binary=False)
    assert queries["features"].shape == (report["num_queries"], 32)  # the embedding, not the class cosines
    np.testing.assert_allclose(np.linalg.norm(queries["features"], axis=1), 1.0, atol=1e-5)

    import keras

    from models.proxies import CosineProxies

    model = keras.models.load_model(model_dir / "best.keras")  # the training model, proxies included
    proxies = model.get_layer("proxies")
    assert isinstance(proxies, CosineProxies) and tuple(proxies.proxies.shape) == (len(info["classes"]), 32)
    width = len(info["classes"]) + (32 if loss == "softmax_triplet" else 0)  # [features, cosines] side by side
    assert model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0).shape == (2, width)
    evaluated = run_api(mode="evaluate", model_dir=str(model_dir))
    assert np.isfinite(evaluated["loss"]) and evaluated["loss_batches"] >= 1
    assert evaluated["retrieval"]["map"] == pytest.approx(report["map"])

    resume = {"mode": "train", "data_path": str(quickdraw_28px), "model_dir": str(model_dir), "model": "triplet",
              "embedding_dim": 32}
    for other in ("triplet", "contrastive"):  # resuming with a loss of the other kind is one line, before any step
        with pytest.raises(trainer.ToolError, match=f"trained with -loss {loss}, with a layer of class proxies; "
                                                    f"-loss {other} needs a model without one"):
            trainer.prepare_run(*trainer.resolve("", {**resume, "loss": other}))
    assert json.loads((model_dir / "train_config.json").read_text())["configs"]["EmbeddingConfig"]["loss"] == loss
    run, _ = trainer.prepare_run(*trainer.resolve("", resume))  # resuming without -loss keeps the run's loss
    assert run.configs[EmbeddingConfig].loss == loss

    meta = run_api(mode="export", model_dir=str(model_dir))
    assert meta["kind"] == "embedding" and meta["embedding_dim"] == 32
    reloaded = reload_embeddings(model_dir / "export", quickdraw_28px, "test", "all")
    np.testing.assert_allclose(reloaded, queries["features"], atol=1e-5)


@pytest.mark.slow
def test_unshared_siamese_on_sketchy_embeds_sketches_and_photos_with_their_branches(sketchy_32px, tmp_path):
    model_dir = tmp_path / "siamese"
    train_in_subprocess(sketchy_32px, model_dir, "-model", "siamese", "-shared_weights=false", "-batch_size", "8",
                        "-pair_classes", "4", "-embedding_dim", "16")
    report = run_api(mode="test", model_dir=str(model_dir))
    per_domain = json.loads((sketchy_32px / "dataset_info.json").read_text())["per_domain"]["test"]
    assert report["mode"] == "query_gallery" and report["summary"].startswith("test: sketch-to-photo L2 over")
    assert report["protocol"]["acc@10"]["chance"] == pytest.approx(10 / report["num_gallery"])
    assert (report["num_queries"], report["num_gallery"]) == (per_domain["sketch"], per_domain["photo"])
    assert report["instance_queries"] == per_domain["sketch"] and report["instance_excluded"] == 0
    queries, gallery = check_report_matches_files(model_dir, report, binary=False)
    expected = instance_accuracy(queries["features"], queries["photo_id"], gallery["features"], gallery["photo_id"])
    for k in (1, 10):
        assert report[f"instance_accuracy@{k}"] == pytest.approx(expected[k]), k
    assert set(queries["domain_id"]) == {0} and set(gallery["domain_id"]) == {1}

    meta = run_api(mode="export", model_dir=str(model_dir))
    assert meta["kind"] == "embedding" and meta["photo_export_dir"].endswith("photo_branch")
    assert meta["polarity"] == "as_is" and meta["outputs_are_logits"] is None  # sketches with photos
    photo_meta = json.loads((model_dir / "export" / "photo_branch" / "model_meta.json").read_text())
    assert photo_meta["polarity"] == "as_is" and photo_meta["outputs_are_logits"] is None
    sketch_side = reload_embeddings(model_dir / "export", sketchy_32px, "test", "sketch")
    photo_side = reload_embeddings(model_dir / "export" / "photo_branch", sketchy_32px, "test", "photo")
    np.testing.assert_allclose(sketch_side, queries["features"], atol=1e-5)
    np.testing.assert_allclose(photo_side, gallery["features"], atol=1e-5)
    photos_through_sketch_branch = reload_embeddings(model_dir / "export", sketchy_32px, "test", "photo")
    assert np.abs(photos_through_sketch_branch - gallery["features"]).max() > 1e-3  # two networks, not one


@pytest.mark.slow
def test_deephash_on_sketchy_reports_hamming_and_float_retrieval(sketchy_32px, tmp_path):
    model_dir = tmp_path / "deephash"
    train_in_subprocess(sketchy_32px, model_dir, "-model", "deephash", "-bits", "16", "-classes_per_batch", "4",
                        "-per_class", "4", "-sketches_per_class", "2", "-margin_ramp_steps", "3")
    report = run_api(mode="test", model_dir=str(model_dir))
    assert report["metric"] == "hamming" and report["bits"] == 16 and report["dimensions"] == 16
    queries, gallery = check_report_matches_files(model_dir, report, binary=True)
    for part in (queries, gallery):
        assert part["features"].dtype == np.uint8 and part["features"].shape[1] == 2  # 16 bits packed
        # tanh outputs u: float32 tanh rounds to exactly +-1 past |x| ~ 9, so the bound is inclusive; they
        # are real-valued, not the signs.
        assert np.all(np.abs(part["outputs"]) <= 1.0) and np.any(np.abs(part["outputs"]) < 0.99)
        np.testing.assert_array_equal(part["features"], np.packbits(part["outputs"] > 0, axis=1))
    float_map = retrieval_metrics.evaluate(queries["outputs"], queries["labels"], gallery["outputs"],
                                           gallery["labels"], k=(1,))["map"]
    assert report["float_map"] == pytest.approx(float_map)
    search = report["search"]
    assert search["queries"] == report["num_queries"] and search["gallery"] == report["num_gallery"]
    assert min(search["ranking"]["hamming_seconds"], search["top_k"]["l2_seconds"]) > 0
    assert search["bytes_per_item"] == {"hamming": 2, "l2": 64}

    evaluated = run_api(mode="evaluate", model_dir=str(model_dir))
    codes = evaluated["codes"]
    assert codes["bits"] == 16 and codes["items"] == report["num_queries"] + report["num_gallery"]
    outputs = np.concatenate([queries["outputs"], gallery["outputs"]])  # the test split, embedded by -mode test
    distinct = {tuple(row) for row in (outputs > 0).tolist()}
    ones_per_bit = [sum(row[b] > 0 for row in outputs.tolist()) / len(outputs) for b in range(16)]
    assert codes["distinct_codes"] == len(distinct)
    assert codes["bit_balance"]["min_ones"] == pytest.approx(min(ones_per_bit), abs=1e-6)
    assert codes["bit_balance"]["max_ones"] == pytest.approx(max(ones_per_bit), abs=1e-6)

    meta = run_api(mode="export", model_dir=str(model_dir))
    assert meta["kind"] == "hash" and meta["embedding_dim"] == 16 and meta["bits"] == 16
    assert meta["polarity"] == "as_is" and meta["outputs_are_logits"] is None
    reloaded = reload_embeddings(model_dir / "export", sketchy_32px, "test", "sketch")
    np.testing.assert_allclose(reloaded, queries["outputs"], atol=1e-5)
    np.testing.assert_array_equal(np.packbits(reloaded > 0, axis=1), queries["features"])


# ---------------------------------------------------------------- bad input


def test_bad_margin_is_a_clear_error_at_the_cli(quickdraw_28px, tmp_path):
    model_dir = tmp_path / "never"
    done = run_tool("-mode", "train", "-model", "triplet", "-margin", "0", "-data_path", str(quickdraw_28px),
                    "-model_dir", str(model_dir), "-cpu_devices", "2")
    assert done.returncode == 2
    assert "error: Invalid value for EmbeddingConfig field `margin`. Received: 0.0" in done.stderr
    assert "Traceback" not in done.stderr and not model_dir.exists()  # refused before anything was written


BAD_QUICKDRAW = [
    ({"model": "triplet", "classes_per_batch": 9}, "Only 8 classes of split 'train' have enough records for K=4"),
    ({"model": "triplet", "per_class": 40}, "Only 0 classes of split 'train' have enough records for K=40"),
    ({"model": "deephash", "per_class": 1}, r"`per_class \(K\)`. Received: 1. Expected an integer >= 2"),
    ({"model": "triplet", "classes_per_batch": 3, "cpu_devices": 2}, "Received: 3 with 2 replicas"),
    ({"model": "siamese", "pair_classes": 1}, "-pair_classes 1"),
    ({"model": "triplet", "embedding_dim": 1}, r"`embedding_dim` of model 'triplet'. Received: 1. Expected an "
                                               r"integer in \[2, 4096\]"),
    ({"model": "siamese", "embedding_dim": 5000}, "Received: 5000"),
    ({"model": "deephash", "bits": 24}, "`bits` of model 'deephash'. Received: 24. Expected one of: 16, 32, 64, 128"),
    ({"model": "siamese", "margin": -0.5}, "`margin`. Received: -0.5. Expected a finite number > 0"),
    ({"model": "deephash", "margin": 0.5, "margin_ramp_steps": 10, "margin_start": 0.9}, "`margin_start`"),
    ({"model": "siamese", "miner": "batch_hard"}, "`miner`. Received: 'batch_hard'"),
    ({"model": "siamese", "shared_weights": False}, "sketch branch and a photo branch need a sketch/photo data set"),
    ({"model": "triplet", "sketches_per_class": 2}, "no `domain_id` feature"),
    ({"model": "triplet", "backbone": "siamese_cnn"}, "need 64 px"),
    ({"model": "deephash", "loss": "proxy_anchor"}, "`loss`. Received: 'proxy_anchor'"),
    ({"model": "siamese", "loss": "normalized_softmax"}, "`loss`. Received: 'normalized_softmax'"),
    ({"model": "triplet", "loss": "proxy_anchor", "miner": "batch_hard"}, "nothing to mine"),
    ({"model": "triplet", "loss": "normalized_softmax", "margin": 0.3}, "takes no margin"),
    ({"model": "triplet", "loss": "proxy_anchor", "proxy_alpha": 0.0}, "`alpha`. Received: alpha=0.0"),
    ({"model": "triplet", "loss": "normalized_softmax", "temperature": -1.0}, "`temperature`"),
]


@pytest.mark.parametrize("values, message", BAD_QUICKDRAW, ids=[str(v) for v, _ in BAD_QUICKDRAW])
def test_bad_settings_are_refused_before_training(quickdraw_28px, tmp_path, values, message):
    with pytest.raises(trainer.ToolError, match=message):
        trainer.prepare_run(*trainer.resolve("", {"mode": "train", "data_path": str(quickdraw_28px),
                                                  "model_dir": str(tmp_path / "run"), **values}))
    assert not (tmp_path / "run").exists()


def test_sketchy_settings_are_refused_before_training(sketchy_32px, tmp_path):
    base = {"mode": "train", "data_path": str(sketchy_32px), "model_dir": str(tmp_path / "run")}
    with pytest.raises(trainer.ToolError, match="same-domain pairs would train one domain only"):
        trainer.prepare_run(*trainer.resolve("", {**base, "model": "siamese", "pair_mode": "same_domain"}))
    with pytest.raises(trainer.ToolError, match=r"-sketches_per_class 9.*Expected -1 \(any domain\) or 0..per_class"):
        trainer.prepare_run(*trainer.resolve("", {**base, "model": "triplet", "per_class": 6,
                                                  "sketches_per_class": 9}))
    run, task = trainer.prepare_run(*trainer.resolve("", {**base, "model": "triplet", "classes_per_batch": 8,
                                                          "per_class": 6, "sketches_per_class": 5}))
    assert task.batch_size(run) == 48  # P x K images, whatever -batch_size says


def test_retrieval_validation_traces_its_inference_step_in_the_first_epoch_only(sketchy_32px, tmp_path, caplog):
    """Issue item 20: triplet training on Sketchy logged "triggered tf.function retracing" from the second
    epoch's validation on (a new tf.function per pass and branch, each traced anew). The model's Python
    `call` runs once per trace, so counting its calls counts the traces."""
    run, task = trainer.prepare_run(*trainer.resolve("", {
        "mode": "train", "data_path": str(sketchy_32px), "model_dir": str(tmp_path / "run"), "model": "triplet",
        "loss": "triplet", "classes_per_batch": 4, "per_class": 4, "embedding_dim": 16}))
    model = task.build_model(run)
    traces = []
    call = model.call
    model.call = lambda *args, **kwargs: traces.append(1) or call(*args, **kwargs)
    validation = next(c for c in task.callbacks(run, model) if isinstance(c, metric.RetrievalValidation))
    validation.set_model(model)
    per_epoch = []
    with caplog.at_level("WARNING"):
        for epoch in range(3):
            logs = {}
            before = len(traces)
            validation.on_epoch_end(epoch, logs)
            per_epoch.append(len(traces) - before)
            assert 0.0 < logs["val_map"] <= 1.0
    assert 1 <= per_epoch[0] <= 2 and per_epoch[1:] == [0, 0], per_epoch  # full batches, then the last one
    assert "retracing" not in caplog.text


@pytest.mark.slow
def test_classifier_on_sketchy_tests_with_item_ids_and_sketch_to_photo(sketchy_32px, tmp_path):
    """skNet trained on Sketchy's sketches and photos: -mode test identifies records by the data set's
    id feature (item_id; Sketchy has no key_id) and adds the sketch-to-photo protocol."""
    model_dir = tmp_path / "sknet"
    done = run_tool("-mode", "train", "-preset", "smoke", "-model", "sknet", "-data_path", str(sketchy_32px),
                    "-model_dir", str(model_dir), "-bn_recalibration", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = run_api(mode="test", model_dir=str(model_dir))
    info = json.loads((sketchy_32px / "dataset_info.json").read_text())
    per_domain = info["per_domain"]["test"]
    assert report["id_feature"] == "item_id"
    assert report["num_queries"] == per_domain["sketch"] + per_domain["photo"]  # leave-one-out over all images
    saved = read_npz(model_dir / "features_test.npz")
    assert saved["features"].shape == (report["num_queries"], 1024)
    ids = [key.decode() if isinstance(key, bytes) else str(key) for key in saved["key_ids"].tolist()]
    assert len(set(ids)) == report["num_queries"]  # every item_id once
    names = info["classes"]
    assert [key.split("/")[0] for key in ids] == [names[label] for label in saved["labels"]]  # "<category>/<stem>"

    cross = report["sketch_to_photo"]
    assert cross["mode"] == "query_gallery" and cross["metric"] == "l2"
    assert (cross["num_queries"], cross["num_gallery"]) == (per_domain["sketch"], per_domain["photo"])
    sketches = per_domain["sketch"]  # the file holds the test sketches, then the test photos
    expected = instance_accuracy(saved["features"][:sketches], ids[:sketches], saved["features"][sketches:],
                                 ids[sketches:])
    for k in (1, 10):
        assert cross[f"instance_accuracy@{k}"] == pytest.approx(expected[k]), k
    assert cross["map"] == pytest.approx(mean_average_precision(
        saved["features"][:sketches], saved["labels"][:sketches], saved["features"][sketches:],
        saved["labels"][sketches:]))
    saved_cross = json.loads((model_dir / "similarity.json").read_text())["sketch_to_photo"]
    assert saved_cross.pop("chance") == pytest.approx(cross["chance"])  # approx takes one level of dict
    for name, figure in saved_cross.pop("protocol").items():
        assert figure == pytest.approx(cross["protocol"][name])
    assert saved_cross == pytest.approx({key: value for key, value in cross.items() if key not in ("chance", "protocol")})


# ---------------------------------------------------------------- helpers


def test_data_set_kind_comes_from_dataset_info(quickdraw_28px, sketchy_32px):
    quickdraw = json.loads((quickdraw_28px / "dataset_info.json").read_text())
    sketchy = json.loads((sketchy_32px / "dataset_info.json").read_text())
    assert not metric.is_cross_domain(quickdraw) and metric.is_cross_domain(sketchy)
    assert not metric.is_cross_domain({**sketchy, "domains": ["sketch"]})  # an image-folder set of sketches


@pytest.mark.parametrize("strategy, cpu_devices, replicas", [("auto", 0, 1), ("auto", 2, 2), ("auto", 4, 4),
                                                              ("one_device", 2, 1), ("mirrored", 0, 1)])
def test_planned_replicas_match_the_strategy_choice(strategy, cpu_devices, replicas, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(metric.tf.config, "list_physical_devices", lambda kind=None: [])
    assert metric.planned_replicas(TrainConfig(strategy=strategy, cpu_devices=cpu_devices)) == replicas


def test_code_statistics_of_known_outputs():
    u = np.array([[0.9, -0.8, 0.5, -1.0], [0.9, -0.8, 0.5, -1.0], [-0.2, 0.1, 0.7, 0.3]], np.float32)
    stats = metric.code_statistics(u)
    expected_error = np.mean([0.01 + 0.04 + 0.25 + 0.0, 0.01 + 0.04 + 0.25 + 0.0, 0.64 + 0.81 + 0.09 + 0.49])
    assert stats["quantization_error"] == pytest.approx(expected_error, rel=1e-5)
    assert stats["distinct_codes"] == 2 and stats["items"] == 3 and stats["bits"] == 4
    assert stats["bit_balance"] == pytest.approx({"mean_ones": 7 / 12, "min_ones": 1 / 3, "max_ones": 1.0})


def test_search_times_rank_the_same_data_both_ways(monkeypatch):
    """The clock is scripted (microsecond timings of a loaded machine made the ratio check flaky): each
    search runs once for real and reports a set duration, so every figure of the report is known."""
    rng = np.random.default_rng(0)
    u = np.tanh(rng.normal(size=(300, 64))).astype(np.float32)
    embedded = metric.Embedded("test", u, {"label": rng.integers(0, 5, 300)})
    durations = iter([0.004, 0.0005, 0.012, 0.0025])  # ranking then top-k, Hamming first, then L2
    results = []

    def scripted(fn, repeats):
        results.append(fn())
        return next(durations)

    monkeypatch.setattr(metric, "_best_seconds", scripted)
    search = metric.search_times(embedded, k=10, repeats=2)
    assert (search["queries"], search["gallery"], search["k"]) == (300, 300, 10)
    assert search["bytes_per_item"] == {"hamming": 8, "l2": 256}
    assert search["ranking"] == {"hamming_seconds": 0.004, "l2_seconds": 0.012, "l2_over_hamming": 3.0}
    assert search["top_k"] == {"hamming_seconds": 0.0005, "l2_seconds": 0.0025, "l2_over_hamming": 5.0}
    # Both top-k searches ran over the whole gallery: 10 neighbours for each of the 300 queries.
    assert results[1][1].shape == results[3][1].shape == (300, 10)


@pytest.mark.slow
def test_classifier_on_edge_maps_reports_the_protocol_on_seen_and_unseen_classes(sketchy_dir, tmp_path):
    """A Sketchy build with canny photo edge maps and 2 unseen classes: the classifier trains on the seen
    ones and -mode test reports the sketch-to-photo protocol on test and on test_unseen, chance from the
    unseen gallery's class counts (every unseen photo is in the gallery: 25 a class)."""
    from configuration_sketch import SketchyBuildConfig
    from data_prep import sketchy
    from retrieval.metrics import expected_random_ap

    source = tmp_path / "source"
    for tree in ("photo", "sketch"):
        (source / tree).mkdir(parents=True)
        for category in SKETCHY_CATEGORIES[:6]:
            (source / tree / category).symlink_to(sketchy_dir / tree / category, target_is_directory=True)
    data = tmp_path / "edges"
    unseen = SKETCHY_CATEGORIES[4:6]
    sketchy.build(SketchyBuildConfig(source=str(source), out=str(data), image_size=SKETCHY_SIZE, shards=1,
                                     workers=1, photo_edges="canny", unseen_classes=",".join(unseen)), progress=False)
    model_dir = tmp_path / "sknet"
    done = run_tool("-mode", "train", "-preset", "smoke", "-model", "sknet", "-data_path", str(data),
                    "-model_dir", str(model_dir), "-bn_recalibration", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = run_api(mode="test", model_dir=str(model_dir))
    seen, zero_shot = report["sketch_to_photo"]["protocol"], report["test_unseen"]["sketch_to_photo"]
    assert set(seen) == {"mAP@all", "acc@1", "acc@10"}  # a gallery of fewer than 100 photos: no @100 / @200
    counts = json.loads((data / "dataset_info.json").read_text())["per_domain"]["test_unseen"]
    assert counts == {"sketch": counts["sketch"], "photo": 50}
    assert zero_shot["num_gallery"] == 50 and zero_shot["protocol"]["acc@10"]["chance"] == pytest.approx(10 / 50)
    assert zero_shot["protocol"]["mAP@all"]["chance"] == pytest.approx(float(expected_random_ap(np.array([25]), 50)[0]))
    meta = run_api(mode="export", model_dir=str(model_dir))
    assert meta["photo_edges"] == "canny"  # so that a photo gallery indexed later is drawn alike


def test_cross_domain_augmentation_is_flips_only_unless_photos_are_edge_maps(tmp_path):
    """Colour photos fill the frame, so -augment on a sketch/photo set flips only; with the photos stored
    as edge maps every image is a drawing on white and the affine transforms apply too."""
    from configuration_sketch import AugmentConfig, ModelConfig, PipelineConfig, TrainConfig
    from training.tasks import Run
    from training.tasks.metric import MetricLearningTask

    configs = {TrainConfig: TrainConfig(augment=True), ModelConfig: ModelConfig(), PipelineConfig: PipelineConfig(),
               AugmentConfig: AugmentConfig(aug_fill_value=1.0)}
    names = {}
    for look in ("none", "canny"):
        info = {"domains": ["sketch", "photo"], "features": {"domain_id": {}}, "photo_edges": look}
        augmenter = MetricLearningTask()._augmenter(Run(configs, info, tmp_path))
        names[look] = [layer.name for layer in augmenter.layers]
    assert names["none"] == ["flip"]
    assert {"flip", "rotate", "shear", "zoom", "translate"} <= set(names["canny"])
