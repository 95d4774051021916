"""Visual-semantic embedding: -model vse trained to put each image near its class name's word vector.

DeViSE (Frome et al. 2013) on sketches and photos: models/vse.py maps an image to a unit vector
`semantic` in the space of word vectors (-word_vectors, a GloVe / fastText / word2vec text file read by
data_prep.word_vectors). A class is represented by its name's unit word vector, so an image is labelled
by the nearest class vector, a class never trained on (zero-shot) included, and a text query finds
drawings by cosine.

- train (mode train only reads -word_vectors): the vectors of ALL the data set's classes (dataset_info.json
  `classes`, seen and unseen) are computed once and saved in the run folder as `class_vectors.npz`
  (names, unit vectors, which have one, which were trained on, the matching rule), with the vocabulary
  the exported `embed_text` needs, `vocabulary.npz` (the first -vse_vocabulary words plus every class
  name's words, raw vectors). Training reads the `train` split only: its classes (seen) with a vector,
  labels renumbered to rows of their vector matrix; the loss is -vse_loss (DeViSE's hinge rank loss with
  -vse_margin against every other seen class, or 1 - cos); with -vse_head conse (ConSE) a classifier of the
  seen classes trained by cross-entropy, whose top -conse_top classes' vectors, weighted by their
  probabilities, make `semantic`. A class name without a vector is refused
  by name, one line, unless -allow_missing_vectors, which leaves its records out (counted). Validation:
  the test split's images of those classes, `val_accuracy` = nearest seen class vector (the monitor).
- test: `semantic` of the test split to features_test.npz with its leave-one-out retrieval report, and
  `semantic` (similarity.json) with every figure beside its chance: seen-class labelling (top-1/top-5
  among the seen classes), zero-shot labelling of `test_unseen` (top-1/top-5 among the unseen classes;
  the split exists when the data set was built with --unseen_classes), generalised zero-shot top-1
  (among all classes) of seen and unseen test images and their harmonic mean, and text->image mAP (each
  class's word vector as a query against the split's images by cosine; relevant: images of the class).
- evaluate: the loss and the seen-class labelling of the test split.
- export: serving.vse_export: the embedding endpoints of every model, plus `embed_text` and
  `label_images` (class names given at call time) from the saved vocabulary, in the graph.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

import models
from configuration_sketch import SemanticConfig
from data_prep import tfrecords, word_vectors
from data_prep.pipeline import load_split
from models import vse as vse_model
from models.losses import ConSECrossEntropy, CosineRegressionLoss, DeViSEHingeLoss
from retrieval import metrics as retrieval_metrics
from serving.features import save_features
from training import evaluation
from training.augment import augment_images
from training.tasks import Run, Task, training_polarity
from training.tasks.classification import render_mode, trained_raster

CLASS_VECTORS_FILE = "class_vectors.npz"
VOCABULARY_FILE = "vocabulary.npz"
SEMANTIC_LAYER = vse_model.SEMANTIC_LAYER
UNSEEN_SPLIT = "test_unseen"
RETRIEVAL_K = (1, 10, 100)
TOP = 5


# ---------------------------------------------------------------- the class vectors of a run


@dataclasses.dataclass
class SemanticSpace:
    """The data set's classes in word-vector space: `vectors[i]` is the unit vector of `names[i]`
    (zeros where `has_vector[i]` is False); `seen[i]`: class i has training records. `words` and
    `word_vectors` (raw) are the vocabulary saved for embed_text."""

    names: list[str]
    vectors: np.ndarray
    has_vector: np.ndarray
    seen: np.ndarray
    rules: list[str]
    source: str
    words: list[str]
    word_vectors: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def train_classes(self) -> np.ndarray:
        """Indices (into `names`) of the classes trained on: seen, with a vector; row order of the loss."""
        return np.flatnonzero(self.seen & self.has_vector)

    @property
    def train_vectors(self) -> np.ndarray:
        return self.vectors[self.train_classes]

    def train_label_map(self) -> np.ndarray:
        """int32 [C]: the row of each class among `train_classes`, -1 for the classes left out."""
        rows = np.full(len(self.names), -1, np.int32)
        rows[self.train_classes] = np.arange(len(self.train_classes), dtype=np.int32)
        return rows


def seen_classes(info: dict) -> np.ndarray:
    """bool [C]: the classes with records in the `train` split (per_class), else the first num_seen_classes."""
    names = [str(c) for c in info["classes"]]
    per_class = info["splits"].get("train", {}).get("per_class")
    if per_class:
        return np.array([int(per_class.get(n, 0)) > 0 for n in names])
    seen = int(info.get("num_seen_classes", len(names)))
    return np.arange(len(names)) < seen


def wanted_words(names) -> set[str]:
    """Every vocabulary entry the class names can use (data_prep.word_vectors' rules)."""
    wanted: set[str] = set()
    for name in names:
        wanted.update(token for _, token in word_vectors.name_candidates(name))
        wanted.update(word_vectors.name_tokens(name))
    return wanted


def read_space(path: str, info: dict, vocabulary: int) -> SemanticSpace:
    """The SemanticSpace of the data set's classes from a word vector file (two streamed passes: the
    first `vocabulary` rows, then the class names' words anywhere in the file)."""
    names = [str(c) for c in info["classes"]]
    if not pathlib.Path(path).is_file():
        raise ValueError(f"Invalid value for -word_vectors: {path!r} is not a file. Expected a GloVe, fastText .vec "
                         "or word2vec text file (one word and its vector a line).")
    head = word_vectors.load_word_vectors(path, max_words=vocabulary)
    extra = word_vectors.load_word_vectors(path, wanted=wanted_words(names) - set(head.words))
    words = head.words + extra.words
    rows = np.concatenate([head.vectors, extra.vectors.reshape(-1, head.dim)]).astype(np.float32)
    merged = word_vectors.WordVectors(words, rows, {w: i for i, w in enumerate(words)}, path=path,
                                      rows_read=head.rows_read + extra.rows_read)
    matrix, found = word_vectors.class_vectors(names, merged, allow_missing=True)
    vectors = np.zeros((len(names), merged.dim), np.float32)
    has_vector = np.array([n not in set(found["missing"]) for n in names])
    vectors[has_vector] = matrix
    return SemanticSpace(names, vectors, has_vector, seen_classes(info), [found["rules"][n] for n in names],
                         path, words, rows)


def save_space(space: SemanticSpace, model_dir: pathlib.Path) -> None:
    """class_vectors.npz and vocabulary.npz in the run folder, each written whole and renamed."""
    for name, arrays in ((CLASS_VECTORS_FILE, {"names": np.array(space.names, str), "vectors": space.vectors,
                                               "has_vector": space.has_vector, "seen": space.seen,
                                               "rules": np.array(space.rules, str),
                                               "source": np.array(space.source)}),
                         (VOCABULARY_FILE, {"words": np.array(space.words, str), "vectors": space.word_vectors})):
        partial = model_dir / f".{name}.partial.npz"
        np.savez(partial, **arrays)
        partial.replace(model_dir / name)


def load_space(model_dir: pathlib.Path) -> SemanticSpace:
    """The SemanticSpace a vse run saved; ValueError (one line) when the run folder lacks it."""
    paths = [model_dir / CLASS_VECTORS_FILE, model_dir / VOCABULARY_FILE]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"The vse run in {str(model_dir)!r} has no {' or '.join(missing)}: they are written "
                         "when it trains (-mode train -word_vectors PATH).")
    with np.load(paths[0], allow_pickle=False) as c, np.load(paths[1], allow_pickle=False) as v:
        return SemanticSpace([str(n) for n in c["names"]], c["vectors"].astype(np.float32),
                             c["has_vector"].astype(bool), c["seen"].astype(bool), [str(r) for r in c["rules"]],
                             str(c["source"]), [str(w) for w in v["words"]], v["vectors"].astype(np.float32))


def _names(names) -> str:
    return ", ".join(repr(n) for n in names)


# ---------------------------------------------------------------- the accuracy metric


@keras.saving.register_keras_serializable(package="sketch")
class NearestVectorAccuracy(keras.metrics.Metric):
    """Share of images whose nearest class vector (largest v . t over the rows of `class_vectors`) is their label's."""

    def __init__(self, class_vectors, name: str = "accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.class_vectors = np.asarray(class_vectors, np.float32)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        semantic = tf.cast(y_pred, tf.float32)[:, :self.class_vectors.shape[1]]  # conse: logits follow
        scores = tf.matmul(semantic, tf.constant(self.class_vectors), transpose_b=True)
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
        hits = tf.cast(tf.equal(tf.argmax(scores, axis=1), labels), tf.float32)
        self.correct.assign_add(tf.reduce_sum(hits))
        self.count.assign_add(tf.cast(tf.size(hits), tf.float32))

    def result(self):
        return tf.math.divide_no_nan(self.correct, self.count)

    def get_config(self):
        return {**super().get_config(), "class_vectors": self.class_vectors.tolist()}


# ---------------------------------------------------------------- figures with their chance


def label_figures(embeddings: np.ndarray, labels: np.ndarray, vectors: np.ndarray, candidates: np.ndarray) -> dict:
    """Top-1 / top-5 of labelling each image by its nearest candidate class vector (cosine; the
    embeddings and vectors are unit rows), only images of candidate classes, with chance (1/n, min(5, n)/n)."""
    keep = np.isin(labels, candidates)
    n = len(candidates)
    top = min(TOP, n)
    result = {"images": int(keep.sum()), "classes": n}
    if not keep.any() or n == 0:
        return {**result, "top1_accuracy": None, "top5_accuracy": None,
                "chance": {"top1_accuracy": 1 / n if n else None, "top5_accuracy": top / n if n else None}}
    scores = embeddings[keep].astype(np.float64) @ vectors[candidates].astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    predicted = candidates[order]
    truth = labels[keep][:, None]
    return {**result, "top1_accuracy": float(np.mean(predicted[:, 0] == truth[:, 0])),
            "top5_accuracy": float(np.mean((predicted == truth).any(axis=1))),
            "chance": {"top1_accuracy": 1 / n, "top5_accuracy": top / n}}


def text_to_image(embeddings: np.ndarray, labels: np.ndarray, vectors: np.ndarray, candidates: np.ndarray) -> dict | None:
    """Each candidate class with images here as a query (its word vector) against the images by cosine;
    relevant: the images of its class. mAP, precision@10 with their chance (retrieval.metrics.evaluate)."""
    queries = np.array([c for c in candidates if np.any(labels == c)], np.int64)
    if len(queries) == 0:
        return None
    report = retrieval_metrics.evaluate(vectors[queries], queries, embeddings, labels, metric="cosine",
                                        k=RETRIEVAL_K)
    chance = report.get("chance", {})
    return {"map": report["map"], "precision@10": report.get("precision@10"), "queries": int(len(queries)),
            "gallery": int(len(labels)), "chance": {"map": chance.get("map"), "precision@10": chance.get("precision@10")}}


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _fmt(name: str, figure: dict | None, key: str) -> str | None:
    if not figure or figure.get(key) is None:
        return None
    return f"{name} {figure[key]:.4f} (chance {figure['chance'][key]:.4f})"


def summary_line(semantic: dict) -> str:
    parts = [_fmt("seen top-1", semantic.get("seen"), "top1_accuracy"),
             _fmt("seen top-5", semantic.get("seen"), "top5_accuracy"),
             _fmt("zero-shot top-1", semantic.get("zero_shot"), "top1_accuracy"),
             _fmt("zero-shot top-5", semantic.get("zero_shot"), "top5_accuracy"),
             _fmt("GZSL H", semantic.get("generalized"), "harmonic_mean"),
             _fmt("text->image mAP seen", (semantic.get("text_to_image") or {}).get("seen"), "map"),
             _fmt("text->image mAP unseen", (semantic.get("text_to_image") or {}).get("unseen"), "map")]
    return "test (vse): " + "; ".join(p for p in parts if p)


# ---------------------------------------------------------------- the task


class VisualSemanticTask(Task):
    name = "visual_semantic"
    models = ("vse",)
    config_classes = (SemanticConfig,)
    monitor = ("val_accuracy", "max")

    def __init__(self):
        self._spaces: dict[tuple, SemanticSpace] = {}

    def space(self, run: Run) -> SemanticSpace:
        """The run's class vectors: read from -word_vectors when training (cached), else from the run folder."""
        config = run.config(SemanticConfig)
        if run.train.mode == "train":
            key = ("file", config.word_vectors, config.vse_vocabulary, tuple(run.class_names), run.data_path)
            if key not in self._spaces:
                self._spaces[key] = read_space(config.word_vectors, run.info, config.vse_vocabulary)
            return self._spaces[key]
        space = load_space(run.model_dir)
        if space.names != run.class_names:
            raise ValueError(f"The vse run in {str(run.model_dir)!r} holds vectors of {len(space.names)} other classes "
                             f"than the {len(run.class_names)} of the data set at {run.data_path!r}.")
        return space

    def check(self, run: Run) -> None:
        config = run.config(SemanticConfig)
        margin = config.vse_margin
        if not (math.isfinite(margin) and margin > 0):
            raise ValueError(f"Invalid value for -vse_margin: {margin!r}. Expected a finite number > 0.")
        if config.vse_vocabulary < 1:
            raise ValueError(f"Invalid value for -vse_vocabulary: {config.vse_vocabulary}. Expected an integer >= 1.")
        if config.conse_top < 1:
            raise ValueError(f"Invalid value for -conse_top: {config.conse_top}. Expected an integer >= 1.")
        try:
            vse_model.check_trunk(config.vse_trunk)
        except ValueError as e:
            raise ValueError(f"-vse_trunk: {e}") from None
        if run.train.mode != "train":
            self.space(run)
            return
        if not config.word_vectors:
            raise ValueError("-model vse needs -word_vectors PATH: a GloVe, fastText .vec or word2vec text file "
                             "(one word and its vector a line) that gives each class name its vector.")
        space = self.space(run)
        missing = [n for n, has in zip(space.names, space.has_vector) if not has]
        if missing and not config.allow_missing_vectors:
            raise ValueError(f"{len(missing)} of {len(space.names)} class names have no word vector in "
                             f"{config.word_vectors!r}: {_names(missing)}; pass -allow_missing_vectors to leave "
                             "them out (their training records are dropped).")
        if len(space.train_classes) == 0:
            raise ValueError(f"No class of the 'train' split of the data set at {run.data_path!r} has a word vector "
                             f"in {config.word_vectors!r}: nothing to train on.")
        if missing:
            per_class = run.info["splits"]["train"].get("per_class", {})
            dropped = sum(int(per_class.get(n, 0)) for n in missing)
            print(f"vse: {len(missing)} of {len(space.names)} classes have no word vector in {config.word_vectors} "
                  f"and are left out ({_names(missing)}): {dropped} training records dropped", flush=True)

    def build_model(self, run: Run) -> keras.Model:
        space = self.space(run)
        if run.train.mode == "train":
            run.model_dir.mkdir(parents=True, exist_ok=True)
            save_space(space, run.model_dir)
        config = run.config(SemanticConfig)
        kwargs = {"dropout": run.model.dropout} if run.model.dropout >= 0 else {}
        if config.vse_head == "conse":
            kwargs.update(head="conse", class_vectors=space.train_vectors, conse_top=config.conse_top)
        return models.build_model("vse", input_size=run.model.image_size, channels=run.model.channels,
                                  num_classes=len(space.train_classes), semantic_dim=space.dim,
                                  trunk=config.vse_trunk, bn_momentum=run.model.bn_momentum, **kwargs)

    def make_loss(self, run: Run) -> keras.losses.Loss:
        config, vectors = run.config(SemanticConfig), self.space(run).train_vectors
        if config.vse_head == "conse":
            return ConSECrossEntropy(int(vectors.shape[1]), run.train.label_smoothing)
        if config.vse_loss == "cosine":
            return CosineRegressionLoss(vectors)
        return DeViSEHingeLoss(vectors, margin=config.vse_margin)

    def compile_args(self, run: Run) -> dict:
        return {"loss": self.make_loss(run), "metrics": [NearestVectorAccuracy(self.space(run).train_vectors)]}

    def _trained_split(self, run: Run, split: str, **kwargs) -> tf.data.Dataset:
        """(images, row among the trained classes) of `split`'s records of the trained classes."""
        rows = tf.constant(self.space(run).train_label_map())
        spec = tfrecords.parse_spec(tfrecords.feature_specs(run.info), ["label"])

        def keep(serialized):
            label = tf.reshape(tf.io.parse_single_example(serialized, spec)["label"], [])
            return tf.gather(rows, tf.cast(label, tf.int32)) >= 0

        ds = load_split(run.data_path, split, run.pipeline.batch_size, image_size=run.model.image_size,
                        channels=run.model.channels, cycle_length=run.pipeline.cycle_length, record_filter=keep,
                        render=render_mode(run), time_channels=run.pipeline.time_channels, **kwargs)
        return ds.map(lambda x, y: (x, tf.gather(rows, tf.cast(y, tf.int32))), num_parallel_calls=tf.data.AUTOTUNE)

    def _trained_count(self, run: Run, split: str) -> int:
        per_class = run.info["splits"].get(split, {}).get("per_class", {})
        space = self.space(run)
        return sum(int(per_class.get(space.names[i], 0)) for i in space.train_classes)

    def train_dataset(self, run: Run, seed: int) -> tf.data.Dataset:
        ds = self._trained_split(run, self.train_split, shuffle=True, repeat=True, seed=seed,
                                 shuffle_buffer=run.pipeline.classifier_shuffle_buffer)
        if run.train.augment:
            ds = augment_images(ds, run.augment)
        return ds.prefetch(tf.data.AUTOTUNE)

    def calibration_dataset(self, run: Run, seed: int) -> tf.data.Dataset | None:
        return self._trained_split(run, self.train_split, shuffle=True, repeat=True, seed=seed,
                                   shuffle_buffer=run.pipeline.classifier_shuffle_buffer)

    def validation_dataset(self, run: Run) -> tf.data.Dataset | None:
        if self._trained_count(run, self.test_split) == 0:
            return None
        return self._trained_split(run, self.test_split).repeat()

    def validation_steps(self, run: Run) -> int | None:
        return math.ceil(self._trained_count(run, self.test_split) / run.pipeline.batch_size) or None

    # ------------------------------------------------------------ judging

    def embed_split(self, run: Run, model: keras.Model, split: str) -> dict | None:
        """{'semantic': [N, D], 'labels': [N] (data set labels), 'key_ids'} of every image of `split` (and
        'logits' [N, C] of a conse model), or None."""
        if run.num_examples(split) == 0:
            return None
        ds = load_split(run.data_path, split, run.pipeline.batch_size, image_size=run.model.image_size,
                        channels=run.model.channels, cycle_length=run.pipeline.cycle_length, render=render_mode(run),
                        time_channels=run.pipeline.time_channels, with_key_ids=True)
        layers = (SEMANTIC_LAYER,) + ((vse_model.LOGITS_LAYER,) if vse_model.has_logits(model) else ())
        return evaluation.run_inference(model, ds, layers, run.train.jit_compile)

    def semantic_report(self, space: SemanticSpace, seen_split: dict | None, unseen_split: dict | None) -> dict:
        """Every labelling and text->image figure with its chance (see the module docstring)."""
        vectors = space.vectors
        seen = space.train_classes
        unseen = np.flatnonzero(~space.seen & space.has_vector)
        every = np.flatnonzero(space.has_vector)
        report = {"classes": {"seen": int(len(seen)), "unseen": int(len(unseen)), "with_vector": int(len(every)),
                              "without_vector": [n for n, h in zip(space.names, space.has_vector) if not h]},
                  "text_to_image": {}}
        if seen_split is not None:
            emb, labels = seen_split[SEMANTIC_LAYER], seen_split["labels"]
            report["seen"] = label_figures(emb, labels, vectors, seen)
            report["text_to_image"]["seen"] = text_to_image(emb, labels, vectors, seen)
        if unseen_split is not None and len(unseen):
            emb, labels = unseen_split[SEMANTIC_LAYER], unseen_split["labels"]
            report["zero_shot"] = label_figures(emb, labels, vectors, unseen)
            report["text_to_image"]["unseen"] = text_to_image(emb, labels, vectors, unseen)
            if seen_split is not None:
                gz_seen = label_figures(seen_split[SEMANTIC_LAYER], seen_split["labels"], vectors, every)
                gz_unseen = label_figures(emb, labels, vectors, every)
                s, u = gz_seen["top1_accuracy"], gz_unseen["top1_accuracy"]
                chance = 1 / len(every)
                report["generalized"] = {
                    "classes": int(len(every)), "seen_top1_accuracy": s, "unseen_top1_accuracy": u,
                    "harmonic_mean": harmonic_mean(s, u), "seen_images": gz_seen["images"],
                    "unseen_images": gz_unseen["images"],
                    "chance": {"seen_top1_accuracy": chance, "unseen_top1_accuracy": chance, "harmonic_mean": chance}}
        return report

    def test(self, run: Run, model: keras.Model) -> dict:
        space = self.space(run)
        start = time.perf_counter()
        seen_split = self.embed_split(run, model, self.test_split)
        unseen_split = self.embed_split(run, model, UNSEEN_SPLIT)
        if seen_split is None and unseen_split is None:
            raise ValueError(f"The data set at {run.data_path!r} has no {self.test_split!r} or {UNSEEN_SPLIT!r} "
                             "images to test on.")
        main = seen_split if seen_split is not None else unseen_split
        split = self.test_split if seen_split is not None else UNSEEN_SPLIT
        path = run.model_dir / f"features_{split}.npz"
        save_features(path, main[SEMANTIC_LAYER], main["labels"], ids=main["key_ids"], class_names=run.class_names,
                      key_ids=main["key_ids"])
        report = retrieval_metrics.evaluate(main[SEMANTIC_LAYER], main["labels"], query_ids=main["key_ids"],
                                            metric="l2", k=RETRIEVAL_K)
        report["features_file"] = path.name
        report["features_layer"] = SEMANTIC_LAYER
        report["id_feature"] = tfrecords.id_feature(run.info, tfrecords.feature_specs(run.info))
        report["semantic"] = self.semantic_report(space, seen_split, unseen_split)
        report["semantic"]["seconds"] = round(time.perf_counter() - start, 3)
        report["summary"] = summary_line(report["semantic"])
        return report

    def evaluate(self, run: Run, model: keras.Model) -> dict:
        space = self.space(run)
        data = self.embed_split(run, model, self.test_split)
        if data is None:
            raise ValueError(f"The {self.test_split!r} split of the data set at {run.data_path!r} is empty.")
        figures = label_figures(data[SEMANTIC_LAYER], data["labels"], space.vectors, space.train_classes)
        rows = space.train_label_map()[data["labels"]]
        kept = rows >= 0
        outputs = data[SEMANTIC_LAYER]
        if vse_model.LOGITS_LAYER in data:
            outputs = np.concatenate([outputs, data[vse_model.LOGITS_LAYER]], axis=1)
        loss = float(self.make_loss(run)(rows[kept], outputs[kept])) if kept.any() else None
        return {"split": self.test_split, "num_examples": figures["images"], "loss": loss, **figures}

    def export(self, run: Run, model: keras.Model, export_dir: pathlib.Path) -> dict:
        from serving import vse_export

        space = self.space(run)
        return vse_export.export_vse_model(vse_model.semantic_branch(model), export_dir, class_names=run.class_names,
                                           image_size=run.model.image_size, channels=run.model.channels,
                                           polarity=training_polarity(self, run), raster=trained_raster(run),
                                           words=space.words, word_vectors=space.word_vectors,
                                           tflite=run.tflite)
