"""Visual-semantic embedding (issue 14): DeViSE hinge and cosine regression losses against explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.losses import (CosineRegressionLoss, DeViSEHingeLoss, cosine_regression_loss, devise_hinge_loss)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hinge_by_loops(labels, embeddings, vectors, margin) -> float:
    total = 0.0
    for v, y in zip(embeddings.astype(np.float64), labels):
        true = sum(a * b for a, b in zip(vectors[y], v))
        for j, t in enumerate(vectors.astype(np.float64)):
            if j != y:
                total += max(0.0, margin - true + sum(a * b for a, b in zip(t, v)))
    return total / len(labels)


def cosine_by_loops(labels, embeddings, vectors) -> float:
    total = 0.0
    for v, y in zip(embeddings.astype(np.float64), labels):
        t = vectors[y].astype(np.float64)
        total += 1.0 - sum(a * b for a, b in zip(v, t)) / (math.sqrt(sum(a * a for a in v)) *
                                                            math.sqrt(sum(b * b for b in t)))
    return total / len(labels)


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng.normal(size=(6, 5))).astype(np.float32)
    embeddings = unit_rows(rng.normal(size=(9, 5))).astype(np.float32)
    labels = rng.integers(0, 6, size=9).astype(np.int32)
    return labels, embeddings, vectors


@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
def test_devise_hinge_matches_a_loop(batch, margin):
    labels, embeddings, vectors = batch
    expected = hinge_by_loops(labels, embeddings, vectors, margin)
    assert float(devise_hinge_loss(labels, embeddings, vectors, margin)) == pytest.approx(expected, rel=1e-5)
    assert float(DeViSEHingeLoss(vectors, margin=margin)(labels, embeddings)) == pytest.approx(expected, rel=1e-5)
    assert float(DeViSEHingeLoss(vectors, margin=margin)(labels[:, None], embeddings)) == pytest.approx(expected,
                                                                                                        rel=1e-5)


def test_devise_hinge_is_zero_when_every_class_is_beaten_by_the_margin():
    vectors = np.eye(3, dtype=np.float32)
    assert float(devise_hinge_loss([0, 1, 2], vectors, vectors, margin=0.1)) == 0.0  # 1 - 0 > 0.1
    # margin 1.5 > 1: each of the 2 other classes costs 1.5 - 1 = 0.5
    assert float(devise_hinge_loss([0, 1, 2], vectors, vectors, margin=1.5)) == pytest.approx(1.0)


def test_cosine_regression_matches_a_loop(batch):
    labels, embeddings, vectors = batch
    expected = cosine_by_loops(labels, 3.0 * embeddings, vectors)  # not unit: cos normalises
    assert float(cosine_regression_loss(labels, 3.0 * embeddings, vectors)) == pytest.approx(expected, rel=1e-5)
    assert float(CosineRegressionLoss(vectors)(labels, 3.0 * embeddings)) == pytest.approx(expected, rel=1e-5)
    assert float(cosine_regression_loss([1], vectors[1:2], vectors)) == pytest.approx(0.0, abs=1e-6)


def test_losses_have_gradients_and_round_trip_their_config(batch):
    import keras
    import tensorflow as tf

    labels, embeddings, vectors = batch
    for loss in (DeViSEHingeLoss(vectors, margin=0.3), CosineRegressionLoss(vectors)):
        x = tf.Variable(embeddings)
        with tf.GradientTape() as tape:
            value = loss(labels, x)
        assert np.isfinite(tape.gradient(value, x).numpy()).all()
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is type(loss)
        assert float(again(labels, embeddings)) == pytest.approx(float(value), rel=1e-6)


@pytest.mark.parametrize("margin", [0, -0.1, float("nan"), "0.1", True])
def test_bad_margin_is_one_line_in_the_house_style(margin):
    vectors = np.eye(3, dtype=np.float32)
    for make in (lambda: DeViSEHingeLoss(vectors, margin=margin),
                 lambda: devise_hinge_loss([0], vectors[:1], vectors, margin=margin)):
        with pytest.raises(ValueError, match=r"^Invalid value for argument `margin`\. Received: margin=.*Expected"):
            make()


def test_shape_errors_name_both_numbers():
    with pytest.raises(ValueError, match="embeddings .* have 4 but the class vectors have 3"):
        devise_hinge_loss([0], np.ones((1, 4), np.float32), np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="Invalid value for argument `class_vectors`"):
        CosineRegressionLoss(np.ones(3, np.float32))


# ---------------------------------------------------------------- -model vse end to end (issue 14 steps 2-4)

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
GLOVE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "wordvectors" / "glove.twitter.25d.subset.txt"
SEEN = ("airplane", "alarm_clock", "ant", "apple")
UNSEEN = ("bear", "sea_turtle")
# A synthetic 8-d vocabulary: every word of the classes above ("alarm_clock" whole, "sea turtle" averaged)
# and a few others; "apple" is left out by `without`.
VOCABULARY = ("the", "of", "airplane", "alarm_clock", "alarm", "clock", "ant", "apple", "bear", "sea", "turtle",
              "fish")


def write_vectors(path: pathlib.Path, without: tuple[str, ...] = (), seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    lines = [f"{w} " + " ".join(f"{x:.5f}" for x in rng.normal(size=8)) for w in VOCABULARY if w not in without]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_api(**values) -> dict:
    from training import trainer

    return trainer.run_mode(*trainer.resolve("", values))


@pytest.fixture(scope="module")
def sketchy_unseen(tmp_path_factory) -> pathlib.Path:
    """6 real Sketchy categories at 32 px (links to the sample), 2 of them unseen (test_unseen)."""
    from configuration_sketch import SketchyBuildConfig
    from data_prep import sketchy

    sample = ROOT.parent / "shared" / "data" / "sketchy"
    if not sample.is_dir():
        pytest.skip(f"real Sketchy sample missing at {sample}")
    source = tmp_path_factory.mktemp("vse_source")
    for tree in ("photo", "sketch"):
        (source / tree).mkdir()
        for category in SEEN + UNSEEN:
            (source / tree / category).symlink_to(sample / tree / category, target_is_directory=True)
    out = tmp_path_factory.mktemp("vse_sketchy_32px")
    sketchy.build(SketchyBuildConfig(source=str(source), out=str(out), image_size=32, shards=1, workers=1,
                                     unseen_classes=",".join(UNSEEN)), progress=False)
    return out


@pytest.fixture(scope="module")
def trained_vse(sketchy_unseen, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A vse run of 4 steps (the hinge loss, not the default cosine; batch 32) on the synthetic vocabulary."""
    vectors = write_vectors(tmp_path_factory.mktemp("vectors") / "vectors.txt")
    model_dir = tmp_path_factory.mktemp("vse_run") / "run"
    done = subprocess.run([sys.executable, str(ROOT / "train_sketch_net.py"), "-mode", "train", "-model", "vse",
                           "-data_path", str(sketchy_unseen), "-model_dir", str(model_dir), "-word_vectors",
                           str(vectors), "-epochs", "2", "-steps_per_epoch", "2", "-batch_size", "32",
                           "-vse_vocabulary", "3", "-vse_loss", "hinge", "-verbose", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "train: step 4 of 4" in done.stdout
    return model_dir, vectors


def test_vse_trains_on_seen_classes_and_saves_every_class_vector(trained_vse, sketchy_unseen):
    from data_prep import word_vectors

    model_dir, vectors = trained_vse
    rows = json.loads((model_dir / "train_history.json").read_text())["epochs"]
    assert all(np.isfinite(row["loss"]) and 0.0 <= row["val_accuracy"] <= 1.0 for row in rows)
    record = json.loads((model_dir / "train_config.json").read_text())
    assert record["task"] == "visual_semantic" and record["configs"]["SemanticConfig"]["vse_loss"] == "hinge"
    info = json.loads((sketchy_unseen / "dataset_info.json").read_text())
    saved = np.load(model_dir / "class_vectors.npz")
    assert list(saved["names"]) == info["classes"]  # all classes, seen and unseen
    assert list(saved["seen"]) == [c in SEEN for c in info["classes"]]
    expected, _ = word_vectors.class_vectors(info["classes"], str(vectors))
    np.testing.assert_allclose(saved["vectors"], expected, atol=1e-6)
    vocabulary = np.load(model_dir / "vocabulary.npz")
    # the first 3 words of the file, then every word a class name can use
    assert list(vocabulary["words"][:3]) == ["the", "of", "airplane"]
    assert {"alarm_clock", "sea", "turtle", "bear", "apple"} <= set(vocabulary["words"])
    assert "fish" not in set(vocabulary["words"])


def test_vse_test_mode_reports_every_figure_with_its_chance(trained_vse, sketchy_unseen):
    model_dir, _ = trained_vse
    report = run_api(mode="test", model_dir=str(model_dir))
    saved = json.loads((model_dir / "similarity.json").read_text())
    semantic = saved["semantic"]
    info = json.loads((sketchy_unseen / "dataset_info.json").read_text())
    assert semantic["seen"]["images"] == info["splits"]["test"]["num_examples"]
    assert semantic["seen"]["chance"] == {"top1_accuracy": 1 / 4, "top5_accuracy": 1.0}
    assert semantic["zero_shot"]["images"] == info["splits"]["test_unseen"]["num_examples"]
    assert semantic["zero_shot"]["chance"]["top1_accuracy"] == 1 / 2
    assert semantic["generalized"]["chance"]["harmonic_mean"] == 1 / 6
    for key in ("seen", "unseen"):
        figure = semantic["text_to_image"][key]
        assert 0 < figure["map"] <= 1 and 0 < figure["chance"]["map"] < 1
    # the report's figures against a loop over the saved features (seen top-1 by nearest class vector)
    features = np.load(model_dir / saved["features_file"])
    vectors = np.load(model_dir / "class_vectors.npz")["vectors"]
    seen_ids = [info["classes"].index(c) for c in SEEN]
    hits = [seen_ids[int(np.argmax([v @ vectors[c] for c in seen_ids]))] == y
            for v, y in zip(features["features"], features["labels"])]
    assert semantic["seen"]["top1_accuracy"] == pytest.approx(np.mean(hits))
    assert report["summary"].startswith("test (vse): seen top-1 ")
    assert "zero-shot top-1" in report["summary"] and "(chance 0.5000)" in report["summary"]


FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
texts = json.loads(sys.argv[2])
text = loaded.embed_text(tf.constant(texts))
signature = loaded.signatures["embed_text"](words=tf.constant(texts))
images = np.load(sys.argv[3])
labelled = loaded.label_images(images, tf.constant(["bear", "sea turtle", "zzqx"]))
by_signature = loaded.signatures["label_images"](images=images, class_names=tf.constant(["bear", "sea turtle"]))
embedded = loaded.embed_images(images)["embedding"]
print(json.dumps({"embedding": text["embedding"].numpy().tolist(), "known": text["known"].numpy().tolist(),
                  "match": [m.decode() for m in text["match"].numpy()],
                  "signature_known": signature["known"].numpy().tolist(),
                  "top_classes": [[c.decode() for c in row] for row in labelled["top_classes"].numpy()],
                  "scores": labelled["scores"].numpy().tolist(), "class_known": labelled["class_known"].numpy().tolist(),
                  "signature_top": [[c.decode() for c in row] for row in by_signature["top_classes"].numpy()],
                  "image_embedding": embedded.numpy().tolist(), "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def exported_vse(trained_vse) -> dict:
    return run_api(mode="export", model_dir=str(trained_vse[0]))


def test_vse_export_embeds_text_and_labels_images_in_a_fresh_process(trained_vse, exported_vse, tmp_path):
    from serving import vse_export

    model_dir, _ = trained_vse
    meta = exported_vse
    assert meta["kind"] == "embedding" and meta["embedding_dim"] == 8 and meta["text"]["dim"] == 8
    assert {"embed_text", "label_images", "embed_images"} <= set(meta["endpoints"])
    vocabulary = np.load(model_dir / "vocabulary.npz")
    texts = ["sea turtle", "Sea_Turtle", "alarm-clock", "ALARM clock", "the (bear)", "zzqx blorp", ""]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(model_dir / "export" / "saved_model"),
                           json.dumps(texts), str(tmp_path / "images.npy")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not any(name.split(".")[0] in ("training", "models", "serving", "data_prep") for name in out["modules"])
    assert out["known"] == [True, True, True, True, True, False, False] == out["signature_known"]
    assert out["match"] == ["average", "average", "whole", "whole", "average", "none", "none"]
    for text, row, known in zip(texts, out["embedding"], out["known"]):
        expected = vse_export.python_text_vector(text, vocabulary["words"], vocabulary["vectors"])
        if known:
            np.testing.assert_allclose(row, expected, atol=1e-5)
        else:
            assert expected is None and row == [0.0] * 8  # reported, never an arbitrary vector
    # the class names' vectors are the training class vectors
    saved = np.load(model_dir / "class_vectors.npz")
    turtle = list(saved["names"]).index("sea_turtle")
    np.testing.assert_allclose(out["embedding"][1], saved["vectors"][turtle], atol=1e-5)
    # label_images: cosines to the class names given at call time, unknown names at -inf
    image_embedding = np.array(out["image_embedding"])
    names = np.array(out["embedding"])[[4, 0]]  # "the (bear)" is not "bear"; recompute "bear" below
    bear = vse_export.python_text_vector("bear", vocabulary["words"], vocabulary["vectors"])
    names = np.stack([bear, names[1]])
    np.testing.assert_allclose(np.array(out["scores"])[:, :2], image_embedding @ names.T, atol=1e-5)
    assert all(row[2] == -np.inf for row in out["scores"]) and out["class_known"] == [True, True, False]
    for row, scores in zip(out["top_classes"], out["scores"]):
        assert row[:2] == (["bear", "sea turtle"] if scores[0] >= scores[1] else ["sea turtle", "bear"])
        assert row[2] == "zzqx"
    assert [row for row in out["signature_top"]] == [row[:2] for row in out["top_classes"]]


def test_text_embedder_matches_class_vectors_on_real_glove():
    """Every Sketchy name GloVe Twitter covers gets the same vector in the graph as data_prep.word_vectors."""
    from data_prep import word_vectors
    from serving import vse_export

    if not GLOVE.is_file():
        pytest.skip(f"GloVe subset missing at {GLOVE}")
    sketchy = ROOT.parent / "shared" / "data" / "sketchy" / "sketch"
    if not sketchy.is_dir():
        pytest.skip("real Sketchy sample missing")
    names = sorted(p.name for p in sketchy.iterdir())
    glove = word_vectors.load_word_vectors(GLOVE)
    matrix, info = word_vectors.class_vectors(names, glove, allow_missing=True)
    embedder = vse_export.make_text_embedder(glove.words, glove.vectors)
    out = embedder.embed(np.array(info["classes"]))
    assert all(out["known"].numpy())
    np.testing.assert_allclose(out["embedding"].numpy(), matrix, atol=1e-5)
    missing = embedder.embed(np.array(info["missing"]))
    assert not any(missing["known"].numpy()) and not missing["embedding"].numpy().any()


def test_lookup_text_searches_an_index_of_the_vse_export(trained_vse, exported_vse, sketchy_unseen, tmp_path):
    model_dir, _ = trained_vse
    tool = [sys.executable, str(ROOT / "evaluate_similarity_lookup.py")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    index_dir = tmp_path / "index"
    done = subprocess.run([*tool, "index", "--model", str(model_dir / "export"), "--data_path", str(sketchy_unseen),
                           "--split", "test_unseen", "--out", str(index_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([*tool, "lookup", "--index", str(index_dir), "--text", "sea turtle", "--k", "5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("text 'sea turtle': 5 nearest of 100 (l2, none)")
    # the ranking is the cosine ranking of the test_unseen features against the text's vector
    assert len([line for line in lines if line.strip()[:1].isdigit()]) == 5
    assert (index_dir / "lookups" / "text_sea_turtle_lookup.png").stat().st_size > 1000
    done = subprocess.run([*tool, "lookup", "--index", str(index_dir), "--text", "zzqx blorp"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("evaluate_similarity_lookup lookup: no word of 'zzqx blorp' is in "
                                                    "the model's vocabulary (11 words): nothing to search for.")


# ---------------------------------------------------------------- bad input: one line before training


def train_error(sketchy_unseen, tmp_path, **values) -> str:
    from training.trainer import ToolError

    with pytest.raises(ToolError) as caught:
        run_api(mode="train", model="vse", data_path=str(sketchy_unseen), model_dir=str(tmp_path / "run"), **values)
    message = str(caught.value)
    assert "\n" not in message and not (tmp_path / "run").exists()
    return message


def test_vse_without_word_vectors_is_one_line(sketchy_unseen, tmp_path):
    assert "-model vse needs -word_vectors PATH" in train_error(sketchy_unseen, tmp_path)


def test_a_malformed_vectors_file_is_one_line_naming_the_line(sketchy_unseen, tmp_path):
    path = write_vectors(tmp_path / "v.txt")
    path.write_text(path.read_text() + "fish 1.0 2.0\n")
    message = train_error(sketchy_unseen, tmp_path, word_vectors=str(path))
    assert f"{path}:line {len(VOCABULARY) + 1}:" in message and "has 2 values" in message
    assert "not a file" in train_error(sketchy_unseen, tmp_path, word_vectors=str(tmp_path / "none.txt"))


def test_classes_without_a_vector_are_refused_by_name_unless_allowed(sketchy_unseen, tmp_path):
    path = write_vectors(tmp_path / "v.txt", without=("apple",))
    message = train_error(sketchy_unseen, tmp_path, word_vectors=str(path))
    assert "1 of 6 class names have no word vector" in message and "'apple'" in message
    assert "-allow_missing_vectors" in message
    from training import trainer

    run, task = trainer.prepare_run(*trainer.resolve("", {
        "mode": "train", "model": "vse", "data_path": str(sketchy_unseen), "model_dir": str(tmp_path / "ok"),
        "word_vectors": str(path), "allow_missing_vectors": True}))
    space = task.space(run)
    assert [space.names[i] for i in space.train_classes] == ["airplane", "alarm_clock", "ant"]
    assert task._trained_count(run, "train") == sum(v for k, v in run.info["splits"]["train"]["per_class"].items()
                                                    if k != "apple")


@pytest.mark.parametrize("values, expected", [
    ({"vse_margin": 0.0}, "Invalid value for -vse_margin: 0.0. Expected a finite number > 0."),
    ({"vse_trunk": "stroke_rnn"}, "-vse_trunk: Invalid value for argument `trunk` of model 'vse'. Received: "
                                  "'stroke_rnn', which reads strokes."),
    ({"vse_vocabulary": 0}, "Invalid value for -vse_vocabulary: 0. Expected an integer >= 1."),
    ({"vse_head": "conse", "conse_top": 0}, "Invalid value for -conse_top: 0. Expected an integer >= 1."),
])
def test_bad_vse_settings_are_one_line(sketchy_unseen, tmp_path, values, expected):
    path = write_vectors(tmp_path / "v.txt")
    assert expected in train_error(sketchy_unseen, tmp_path, word_vectors=str(path), **values)


# ---------------------------------------------------------------- ConSE (-vse_head conse)


def conse_by_loops(logits, vectors, top) -> np.ndarray:
    out = []
    for row in logits.astype(np.float64):
        e = [math.exp(z - max(row)) for z in row]
        p = [x / sum(e) for x in e]
        chosen = sorted(range(len(p)), key=lambda i: -p[i])[:top]
        total = sum(p[i] for i in chosen)
        out.append([sum(p[i] / total * vectors[i][d] for i in chosen) for d in range(vectors.shape[1])])
    return np.array(out)


@pytest.mark.parametrize("top", [1, 3, 6, 10])
def test_convex_semantic_matches_a_loop(top):
    from models.vse import ConvexSemantic

    rng = np.random.default_rng(5)
    vectors = unit_rows(rng.normal(size=(6, 4))).astype(np.float32)
    logits = (3 * rng.normal(size=(7, 6))).astype(np.float32)
    got = np.asarray(ConvexSemantic(vectors, top)(logits))
    np.testing.assert_allclose(got, conse_by_loops(logits, vectors, top), atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_conse_cross_entropy_reads_the_logits_after_the_semantic_columns(smoothing):
    from models.losses import ConSECrossEntropy

    rng = np.random.default_rng(6)
    semantic, logits = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    expected = 0.0
    for z, y in zip(logits, labels):
        log_p = [v - math.log(sum(math.exp(u) for u in z)) for v in z]
        target = [smoothing / 3 + (1 - smoothing) * (j == y) for j in range(3)]
        expected -= sum(t * lp for t, lp in zip(target, log_p)) / len(labels)
    loss = ConSECrossEntropy(4, smoothing)
    got = float(loss(labels, np.concatenate([semantic, logits], axis=1).astype(np.float32)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert ConSECrossEntropy.from_config(loss.get_config()).semantic_dim == 4


def test_bad_conse_head_arguments_name_the_expected_shape():
    import models

    with pytest.raises(ValueError, match=r"Received: shape \(3, 8\). Expected \(4, 8\)"):
        models.build_model("vse", input_size=32, channels=1, num_classes=4, semantic_dim=8, head="conse",
                           class_vectors=np.zeros((3, 8)))
    with pytest.raises(ValueError, match="Expected one of projection, conse"):
        models.build_model("vse", input_size=32, channels=1, num_classes=4, semantic_dim=8, head="linear")


def test_conse_vse_trains_tests_and_exports_its_semantic_vectors(sketchy_unseen, tmp_path):
    """A conse run of 2 steps: every figure of -mode test, and an export whose embed_images is the unit
    `semantic` vector (not the logits beside it) that label_images ranks new class names by."""
    import tensorflow as tf

    vectors = write_vectors(tmp_path / "vectors.txt")
    model_dir = tmp_path / "run"
    run_api(mode="train", model="vse", data_path=str(sketchy_unseen), model_dir=str(model_dir),
            word_vectors=str(vectors), vse_head="conse", conse_top=2, epochs=1, steps_per_epoch=2, batch_size=16,
            verbose=0)
    report = run_api(mode="test", model_dir=str(model_dir))
    semantic = report["semantic"]
    assert semantic["zero_shot"]["chance"]["top1_accuracy"] == 1 / 2 and semantic["seen"]["images"] > 0
    features = np.load(model_dir / report["features_file"])["features"]
    assert features.shape[1] == 8
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    saved = np.load(model_dir / "class_vectors.npz")
    seen = saved["vectors"][saved["seen"]]
    # a convex combination of at most 2 seen class vectors: its residual on two of them is ~0 for some pair
    pairs = [(i, j) for i in range(len(seen)) for j in range(i + 1, len(seen))]
    for v in features[:5]:
        residuals = [np.linalg.lstsq(seen[[i, j]].T, v, rcond=None)[1] for i, j in pairs]
        assert min(float(r[0]) if len(r) else 0.0 for r in residuals) < 1e-8
    evaluated = run_api(mode="evaluate", model_dir=str(model_dir))
    assert np.isfinite(evaluated["loss"]) and evaluated["loss"] > 0
    exported = run_api(mode="export", model_dir=str(model_dir))
    assert exported["embedding_dim"] == 8
    loaded = tf.saved_model.load(str(model_dir / "export" / "saved_model"))
    images = np.zeros((2, 32, 32, 3), np.uint8) + 255
    embedded = loaded.embed_images(images)["embedding"].numpy()
    assert embedded.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    labelled = loaded.label_images(images, tf.constant(["bear", "sea turtle"]))
    assert labelled["scores"].numpy().shape == (2, 2)


def test_a_classifier_warm_starts_the_vse_trunk_and_leaves_the_projection_fresh():
    import models
    from training.warm_start import copy_matching_layers

    source = models.build_model("sknet", input_size=32, channels=3, num_classes=10)
    target = models.build_model("vse", input_size=32, channels=3, num_classes=4, semantic_dim=8)
    done = copy_matching_layers(source, target)
    assert done["kept_fresh"] == ["projection"]
    for name in done["copied"]:
        for a, b in zip(source.get_layer(name).get_weights(), target.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
