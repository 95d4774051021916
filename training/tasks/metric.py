"""Metric learning: `siamese`, `triplet` and `deephash` trained and judged as retrieval models.

What the data set is decides the protocol (`is_cross_domain`): Quick, Draw! (one domain, built by
`python -m data_prep.quickdraw build`) is sketch-to-sketch retrieval, judged leave-one-out over the
test split; Sketchy (`python -m data_prep.sketchy build`, records with `domain_id` and both
domains) is sketch-to-photo retrieval, the test split's sketches as queries against its photos.

- train: triplet and deephash on P x K batches (data_prep.metric_pipelines.pk_batches, P =
  classes_per_batch, K = per_class, a training batch is P * K images and -batch_size is not used
  for it); siamese on balanced pairs (pair_batches, -batch_size pairs: sketch with photo on Sketchy,
  two drawings on Quick, Draw!). Each epoch ends with the retrieval mAP of the test split
  (`val_map`, the monitored value, so best.keras is the best retrieval model). Augmentation
  (AugmentConfig) is made for strokes on a 0 background: all of it on Quick, Draw!, flips only on
  Sketchy, whose sketches are dark on white and whose photos fill the frame.
- test: features_test.npz (queries; features_test_gallery.npz holds the photos on Sketchy) and
  similarity.json: mAP (key `map`), precision@K, kNN accuracy, and on Sketchy instance accuracy@1
  and @10 (is the sketch's own photo first, in the top ten). deephash: the Hamming ranking of the
  packed sign(u) codes (`map`), the float L2 ranking of u it was trained from (`float_map`), and
  the search time of both on the same data in the same run (`search`). An unshared siamese embeds
  queries with its sketch branch and the gallery with its photo branch.
- evaluate: the training loss over one pass of the test split, the retrieval summary, kNN
  accuracy, code statistics for deephash, and a PCA figure of the test embeddings (t-SNE
  takes a minute on two cores).
- export: serving.export with kind 'embedding' (siamese, triplet) or 'hash' (deephash), from the
  sketch branch, with the polarity of the training images (white_on_black on Quick, Draw!, as_is on
  Sketchy) and -tflite's file; an unshared siamese also exports its photo branch to export/photo_branch.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

import models
from configuration_sketch import EmbeddingConfig, MetricPipelineConfig, TrainConfig
from data_prep import metric_pipelines
from models import embedding
from models.deephash import check_bits, codes_from_outputs
from models.registry import check_dimensions, check_fraction
from retrieval import metrics as retrieval_metrics
from retrieval.index import build_index
from retrieval.ranking import Ranker
from serving import export
from serving.features import save_features
from training import strategy
from training.augment import build_augmenter
from training.tasks import Run, Task, training_polarity

FEATURES_FILE = "features_{split}.npz"
GALLERY_FILE = "features_{split}_gallery.npz"
EMBEDDING_PNG = "embedding_{split}.png"
PHOTO_EXPORT = "photo_branch"
RETRIEVAL_K = (1, 10, 100)
SEARCH_K = 100
SEARCH_REPEATS = 5
SUMMARY_KEYS = ("map", "precision@10", "precision@100", "r_precision", "map@r", "knn_accuracy@1",
                "knn_accuracy@10", "instance_accuracy@1", "instance_accuracy@10")


# ---------------------------------------------------------------- data set kind and checks


def is_cross_domain(info: dict) -> bool:
    """True for sketch-to-photo data (records with `domain_id`, both domains present), like Sketchy."""
    return "domain_id" in info.get("features", {}) and set(metric_pipelines.DOMAINS) <= set(info.get("domains", []))


def planned_replicas(train: TrainConfig) -> int:
    """Replicas of the strategy `training.strategy.make_strategy` will build for `train`, found without
    starting TensorFlow's runtime (the CPU split must still be possible afterwards)."""
    cluster, _, _ = strategy.cluster_from_env()
    workers = strategy.cluster_size(cluster)
    gpus = len(tf.config.list_physical_devices("GPU"))
    name = strategy.choose_strategy(train.strategy, num_gpus=gpus, cpu_devices=train.cpu_devices, num_workers=workers)
    if name == "one_device":
        return 1
    if name == "multi_worker":
        return workers * max(gpus, 1)
    return gpus or (train.cpu_devices if train.cpu_devices >= 2 else 1)


def check_model_settings(run: Run) -> None:
    """The builder's argument checks (models/embedding.py, models/deephash.py), without building."""
    name, config = run.model.model, run.config(EmbeddingConfig)
    spec = embedding.check_backbone(name, config.backbone)
    check_dimensions(name, run.model.image_size, run.model.channels, len(run.class_names), spec.min_input_size,
                     spec.why)
    if name == "deephash":
        check_bits(name, config.bits)
    else:
        embedding.check_embedding_dim(name, embedding.embedding_dim(config, name))
    check_fraction(name, "bn_momentum", run.model.bn_momentum)
    if run.model.dropout >= 0:
        check_fraction(name, "dropout", run.model.dropout)
    if name == "siamese" and not config.shared_weights and not is_cross_domain(run.info):
        raise ValueError("Invalid value for -shared_weights: False. A sketch branch and a photo branch need a "
                         f"sketch/photo data set (Sketchy); the data set at {run.data_path!r} has one domain. "
                         "Keep -shared_weights for same-domain retrieval.")


def check_loss_settings(run: Run) -> None:
    """make_loss's checks of loss, miner, margin and the deephash schedule. The loss is built in a
    throwaway graph: its counter variable would otherwise start TensorFlow's runtime."""
    with tf.Graph().as_default():
        models.make_loss(run.config(EmbeddingConfig), run.model.model)


def pair_layout(run: Run) -> dict:
    """pair_batches' mode for this data set: MetricPipelineConfig.pair_mode on Sketchy, same-domain
    pairs of drawings on single-domain data."""
    mode = run.config(MetricPipelineConfig).pair_mode
    if not is_cross_domain(run.info):
        return {"mode": "same_domain"}
    if mode != "cross_domain":
        raise ValueError(f"Invalid value for -pair_mode: {mode!r}. On the sketch/photo data set at "
                         f"{run.data_path!r} same-domain pairs would train one domain only; use cross_domain.")
    return {"mode": "cross_domain"}


def check_batches(run: Run, split: str, replicas: int = 1) -> None:
    """ValueError when `split` cannot give the training batches: P x K (triplet, deephash) or the
    4-record class units that pairs are cut from (siamese), per replica too."""
    info, pipe = run.info, run.config(MetricPipelineConfig)
    has_domain = "domain_id" in info.get("features", {})
    if run.model.model == "siamese":
        cross = pair_layout(run)["mode"] == "cross_domain"
        if run.pipeline.batch_size % replicas:
            raise ValueError(f"Invalid value for -batch_size: {run.pipeline.batch_size} pairs. Expected a multiple of "
                             f"the {replicas} replicas.")
        records = "2 sketches + 2 photos" if cross else "one domain"
        flags = f"-pair_classes {pipe.pair_classes}: 4 records of each class, {records}"
        plan = (pipe.pair_classes, 4, 2 if cross else -1)
    else:
        embedding.check_pk(pipe.classes_per_batch, pipe.per_class, replicas)
        flags = (f"-classes_per_batch {pipe.classes_per_batch}, -per_class {pipe.per_class}, "
                 f"-sketches_per_class {pipe.sketches_per_class}")
        plan = (pipe.classes_per_batch, pipe.per_class, pipe.sketches_per_class)
    try:  # the pipeline's own rule, checked here without building it
        metric_pipelines._pk_plan(info, split, *plan, None, has_domain)
    except ValueError as e:
        raise ValueError(f"The {split!r} split of the data set at {run.data_path!r} cannot give the training "
                         f"batches ({flags}): {e}") from None


# ---------------------------------------------------------------- embedding a split


def _jit(run: Run) -> bool:
    return bool(run.train.jit_compile)


class InferenceSteps:
    """One compiled inference step per network, kept for reuse: `steps(network)` is a tf.function of
    images -> float32 outputs (training=False).

    A tf.function made anew for each pass traces anew: two traces per network and pass (the full
    batches, then the smaller last one), and TensorFlow's retracing warning from the second epoch's
    validation on. Reused, a network traces twice in all (reduce_retracing relaxes the batch size).
    """

    def __init__(self, jit_compile: bool = False):
        self.jit_compile = jit_compile
        self._steps: dict[int, tuple[keras.Model, tf.types.experimental.GenericFunction]] = {}

    def __call__(self, network: keras.Model) -> tf.types.experimental.GenericFunction:
        if id(network) not in self._steps:  # the network is kept with its step, so its id stays unique
            step = tf.function(lambda x: tf.cast(network(x, training=False), tf.float32),
                               jit_compile=self.jit_compile, reduce_retracing=True)
            self._steps[id(network)] = (network, step)
        return self._steps[id(network)][1]


def embed(network: keras.Model, dataset: tf.data.Dataset, jit_compile: bool = False,
          steps: InferenceSteps | None = None) -> tuple[np.ndarray, dict]:
    """`network`'s float32 outputs for every (images, meta dict) batch of `dataset`, in order, and the
    meta arrays concatenated (strings decoded). Pass the same `steps` to passes that repeat (each
    epoch's validation) so that they reuse the traced step."""
    step = (steps or InferenceSteps(jit_compile))(network)
    features, meta = [], {}
    for images, info in dataset:
        features.append(step(images).numpy())
        for key, value in info.items():
            meta.setdefault(key, []).append(value.numpy())
    if not features:
        raise ValueError("the split holds no image to embed.")
    arrays = {k: np.concatenate(v) for k, v in meta.items()}
    for key, value in arrays.items():
        if value.dtype == object:
            arrays[key] = np.array([x.decode("utf-8", "replace") for x in value])
    return np.concatenate(features), arrays


@dataclasses.dataclass
class Embedded:
    """The embeddings of one split: queries, and the gallery (None: leave-one-out over the queries)."""

    split: str
    queries: np.ndarray
    query_meta: dict
    gallery: np.ndarray | None = None
    gallery_meta: dict | None = None

    @property
    def query_ids(self) -> np.ndarray | None:
        return _ids(self.query_meta)

    @property
    def gallery_ids(self) -> np.ndarray | None:
        return None if self.gallery_meta is None else _ids(self.gallery_meta)


def _ids(meta: dict) -> np.ndarray | None:
    for key in ("item_id", "key_id"):
        if key in meta:
            return meta[key]
    return None


def embed_split(run: Run, model: keras.Model, split: str, steps: InferenceSteps | None = None) -> Embedded:
    """Sketchy: the split's sketches through the sketch branch, its photos through the photo branch.
    Single-domain data: every drawing of the split through the model's (sketch) network. `steps`:
    the compiled steps to reuse (see InferenceSteps); a fresh set when None."""
    kwargs = dict(image_size=run.model.image_size, channels=run.model.channels)
    batch = run.pipeline.batch_size
    steps = steps or InferenceSteps(_jit(run))
    if is_cross_domain(run.info):
        queries, gallery = metric_pipelines.query_gallery(run.data_path, split, batch, **kwargs)
        q, q_meta = embed(embedding.branch(model, "sketch"), queries, steps=steps)
        g, g_meta = embed(embedding.branch(model, "photo"), gallery, steps=steps)
        return Embedded(split, q, q_meta, g, g_meta)
    data = metric_pipelines.domain_dataset(run.data_path, split, None, batch, **kwargs)
    q, q_meta = embed(embedding.branch(model, "sketch"), data, steps=steps)
    return Embedded(split, q, q_meta)


def retrieval_report(embedded: Embedded, codes: bool = False, k: Sequence[int] = RETRIEVAL_K) -> dict:
    """retrieval.metrics.evaluate of the embeddings: L2, or Hamming over packed sign codes when `codes`.

    Sketch queries find their own photo by photo_id (instance accuracy)."""
    pack = codes_from_outputs if codes else (lambda x: x)
    metric = "hamming" if codes else "l2"
    if embedded.gallery is None:
        return retrieval_metrics.evaluate(pack(embedded.queries), embedded.query_meta["label"],
                                          query_ids=embedded.query_ids, metric=metric, k=k)
    photo_of = embedded.query_meta.get("photo_id")
    return retrieval_metrics.evaluate(pack(embedded.queries), embedded.query_meta["label"], pack(embedded.gallery),
                                      embedded.gallery_meta["label"], query_ids=photo_of,
                                      gallery_ids=embedded.gallery_meta.get("photo_id") if photo_of is not None
                                      else None, metric=metric, k=k)


def summary_of(report: dict) -> dict:
    """The headline numbers of a retrieval report."""
    return {key: report[key] for key in ("mode", "metric", "num_queries", "num_gallery", *SUMMARY_KEYS, "chance",
                                         "protocol") if key in report}


def _best_seconds(fn, repeats: int) -> float:
    """Best of `repeats` timed calls of `fn`, after one untimed call (thread pools, caches)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def search_times(embedded: Embedded, k: int = SEARCH_K, repeats: int = SEARCH_REPEATS,
                 max_pairs: int = 20_000_000) -> dict:
    """Seconds (best of `repeats`) to search the same gallery with the same queries two ways: packed
    sign codes under Hamming distance and the float outputs u under L2.

    `ranking`: the exact full ranking that the mAP comes from (retrieval.ranking.Ranker, NumPy: popcount
    of XOR and a radix sort against a matrix product and a float sort), in blocks of at most `max_pairs`
    query-gallery pairs. `top_k`: faiss exact search for the k nearest (IndexBinaryFlat, IndexFlatL2).
    """
    leave_one_out = embedded.gallery is None
    gallery = embedded.queries if leave_one_out else embedded.gallery
    q_labels = embedded.query_meta["label"]
    g_labels = q_labels if leave_one_out else embedded.gallery_meta["label"]
    k = min(k, len(gallery) - int(leave_one_out))
    rows = max(1, max_pairs // len(gallery))
    forms = {"hamming": (codes_from_outputs(embedded.queries), codes_from_outputs(gallery)),
             "l2": (np.ascontiguousarray(embedded.queries, np.float32), np.ascontiguousarray(gallery, np.float32))}
    seconds: dict[str, dict[str, float]] = {"ranking": {}, "top_k": {}}
    for name, (queries, items) in forms.items():
        ranker = Ranker(queries, q_labels, None if leave_one_out else items, None if leave_one_out else g_labels,
                        metric=name, backend="numpy")
        try:
            seconds["ranking"][name] = _best_seconds(
                lambda: [ranker.rank_block(np.arange(i, min(i + rows, len(queries))), k)
                         for i in range(0, len(queries), rows)], repeats)
        finally:
            ranker.close()
        index = build_index(items, g_labels, metric=name)
        seconds["top_k"][name] = _best_seconds(lambda: index.search(queries, k), repeats)
    bits = embedded.queries.shape[1]
    result = {"k": k, "queries": len(embedded.queries), "gallery": len(gallery), "repeats": repeats,
              "bytes_per_item": {"hamming": bits // 8, "l2": 4 * bits}}
    for what, times in seconds.items():
        result[what] = {"hamming_seconds": round(times["hamming"], 6), "l2_seconds": round(times["l2"], 6),
                        "l2_over_hamming": round(times["l2"] / max(times["hamming"], 1e-9), 3)}
    return result


def code_statistics(u: np.ndarray) -> dict:
    """How binary the tanh outputs are and how well the bits are used."""
    bits = u > 0
    packed = np.packbits(bits, axis=1)
    ones = bits.mean(axis=0)
    return {"bits": int(u.shape[1]), "quantization_error": float(np.mean(np.sum((np.where(u > 0, 1.0, -1.0) - u) ** 2,
                                                                                axis=1))),
            "mean_abs_output": float(np.mean(np.abs(u))),
            "bit_balance": {"mean_ones": float(ones.mean()), "min_ones": float(ones.min()),
                            "max_ones": float(ones.max())},
            "distinct_codes": int(len(np.unique(packed, axis=0))), "items": int(len(u))}


class RetrievalValidation(keras.callbacks.Callback):
    """Put the test split's retrieval mAP in the epoch logs as `val_map` (leave-one-out or sketch-to-photo;
    Hamming over codes for deephash), so history, curves and the best model follow retrieval quality.
    Every epoch reuses the same compiled inference steps (InferenceSteps)."""

    def __init__(self, run: Run, split: str, codes: bool):
        super().__init__()
        self.run, self.split, self.codes = run, split, codes
        self.steps = InferenceSteps(_jit(run))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        report = retrieval_report(embed_split(self.run, self.model, self.split, self.steps), self.codes, k=(1,))
        logs["val_map"] = report["map"]


# ---------------------------------------------------------------- the task


class MetricLearningTask(Task):
    name = "metric_learning"
    models = embedding.EMBEDDING_MODELS
    config_classes = (EmbeddingConfig, MetricPipelineConfig)
    monitor = ("val_map", "max")

    # -- checks and model

    def check(self, run: Run) -> None:
        check_model_settings(run)
        check_loss_settings(run)
        if run.train.mode == "train":
            try:
                replicas = planned_replicas(run.train)
            except strategy.StrategyError as e:
                raise ValueError(str(e)) from None
            check_batches(run, self.train_split, replicas)
        if run.num_examples(self.test_split) < 2 and run.train.mode != "export":
            raise ValueError(f"The {self.test_split!r} split of the data set at {run.data_path!r} has "
                             f"{run.num_examples(self.test_split)} images; retrieval needs at least 2.")

    def build_model(self, run: Run) -> keras.Model:
        kwargs = models.builder_kwargs(run.config(EmbeddingConfig), run.model.model)
        return models.build_from_config(run.model, len(run.class_names), **kwargs)

    def compile_args(self, run: Run) -> dict:
        return {"loss": models.make_loss(run.config(EmbeddingConfig), run.model.model)}

    def callbacks(self, run: Run, model: keras.Model) -> list[keras.callbacks.Callback]:
        validation = [RetrievalValidation(run, self.test_split, self._codes(run))] \
            if run.num_examples(self.test_split) >= 2 else []
        return [*models.loss_callbacks(model.loss), *validation]

    def batch_size(self, run: Run) -> int:
        pipe = run.config(MetricPipelineConfig)
        return run.pipeline.batch_size if run.model.model == "siamese" else pipe.classes_per_batch * pipe.per_class

    @staticmethod
    def _codes(run: Run) -> bool:
        return run.model.model == "deephash"

    # -- data

    def _stream(self, run: Run, split: str, seed: int | None, repeat: bool = True) -> tf.data.Dataset:
        """The training layout of `split`: P x K (images, labels) or ((sketch/a, photo/b), same) pairs."""
        pipe = run.config(MetricPipelineConfig)
        common = dict(image_size=run.model.image_size, channels=run.model.channels, seed=seed,
                      open_batches=pipe.open_batches, shuffle_buffer=pipe.shuffle_buffer,
                      cycle_length=run.pipeline.cycle_length, repeat=repeat)
        if run.model.model == "siamese":
            return metric_pipelines.pair_batches(run.data_path, split, run.pipeline.batch_size,
                                                 pair_classes=pipe.pair_classes, **pair_layout(run), **common)
        return metric_pipelines.pk_batches(run.data_path, split, pipe.classes_per_batch, pipe.per_class,
                                           sketches_per_class=pipe.sketches_per_class, chunk_size=pipe.chunk_size,
                                           max_lead=pipe.max_lead, **common)

    def _augmenter(self, run: Run) -> keras.Sequential | None:
        if not run.train.augment:
            return None
        config = run.augment
        if is_cross_domain(run.info) and run.info.get("photo_edges", "none") == "none":
            # flips only: colour photos fill the frame, where the affine fill and the noise would show;
            # with photos stored as edge maps every image is a drawing on white (-aug_fill_value 1)
            config = dataclasses.replace(config, aug_translate=0.0, aug_zoom=0.0, aug_rotation=0.0, aug_shear=0.0,
                                         aug_salt_pepper=0.0)
        return build_augmenter(config)

    def train_dataset(self, run: Run, seed: int) -> tf.data.Dataset:
        ds = self._stream(run, self.train_split, seed)
        augmenter = self._augmenter(run)
        if augmenter is not None:
            if run.model.model == "siamese":
                ds = ds.map(lambda x, y: ((augmenter(x[0], training=True), augmenter(x[1], training=True)), y),
                            num_parallel_calls=tf.data.AUTOTUNE)
            else:
                ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def calibration_dataset(self, run: Run, seed: int) -> tf.data.Dataset | None:
        return self._stream(run, self.train_split, seed)

    # -- modes

    def evaluate(self, run: Run, model: keras.Model) -> dict:
        split = self.test_split
        result: dict = {"split": split, "model": run.model.model, "num_examples": run.num_examples(split)}
        try:
            check_batches(run, split)
        except ValueError as e:
            result.update(loss=None, loss_note=f"no training batches from split {split!r}: {e}")
        else:
            loss = models.make_loss(run.config(EmbeddingConfig), run.model.model)
            step = tf.function(lambda x, y: loss(y, model(x, training=False)), reduce_retracing=True)
            values = [float(step(x, y)) for x, y in self._stream(run, split, seed=run.train.seed, repeat=False)]
            batches = len(values)
            result["loss"] = float(np.mean(values)) if batches else None
            result["loss_batches"] = batches
            result["loss_note"] = ("the training loss (with its miner) averaged over one pass of the split in "
                                   "training batches" if batches else "the split gave no complete batch")
        embedded = embed_split(run, model, split)
        codes = self._codes(run)
        report = retrieval_report(embedded, codes)
        result["retrieval"] = summary_of(report)
        if codes:
            result["float_retrieval"] = summary_of(retrieval_report(embedded, False))
            result["codes"] = code_statistics(embedded.queries if embedded.gallery is None
                                              else np.concatenate([embedded.queries, embedded.gallery]))
        from retrieval.plots import plot_embedding

        png = run.model_dir / EMBEDDING_PNG.format(split=split)
        features, labels = embedded.queries, embedded.query_meta["label"]
        if embedded.gallery is not None:
            features = np.concatenate([features, embedded.gallery])
            labels = np.concatenate([labels, embedded.gallery_meta["label"]])
        plot_embedding(codes_from_outputs(features) if codes else features, labels, png, method="pca",
                       class_names=run.class_names, max_points=2000, seed=run.train.seed,
                       title=f"{run.model.model}, {split} split: PCA of the {'codes' if codes else 'embeddings'}")
        result["embedding_png"] = png.name
        loss = "n/a" if result.get("loss") is None else f"{result['loss']:.4f}"
        result["summary"] = (f"evaluate ({split}, {result['num_examples']} images): loss {loss}, {report['metric']} "
                             f"mAP {report['map']:.4f}, 1-NN accuracy {report['knn_accuracy@1']:.4f}")
        return result

    def test(self, run: Run, model: keras.Model) -> dict:
        splits = [self.test_split] + (["test_unseen"] if run.num_examples("test_unseen") else [])
        codes = self._codes(run)
        report: dict = {}
        steps = InferenceSteps(_jit(run))
        for split in splits:
            embedded = embed_split(run, model, split, steps)
            part = retrieval_report(embedded, codes)
            files = self._write_features(run, embedded, codes)
            if codes:
                part["float_map"] = retrieval_report(embedded, False, k=(1,))["map"]
                part["float_metric"] = "l2 over the tanh outputs u the codes are sign(u) of"
                part["search"] = search_times(embedded)
            part.update(files)
            if split == self.test_split:
                report.update(part)
            else:
                report[split] = summary_of(part) | ({"float_map": part["float_map"]} if codes else {})
        report["model"] = run.model.model
        report["embedding"] = "hash" if codes else "float"
        if codes:
            report["bits"] = run.config(EmbeddingConfig).bits
        what = ("sketch-to-photo" if report["mode"] == "query_gallery" else "leave-one-out") + \
            (" Hamming" if codes else " L2")
        extra = (f" (float u: {report['float_map']:.4f}; exact Hamming ranking "
                 f"time: L2 / Hamming {report['search']['ranking']['l2_over_hamming']:.2f})") if codes else ""
        report["summary"] = (f"test: {what} over {report['num_queries']} queries: "
                             f"{retrieval_metrics.format_protocol(report['protocol'])}{extra}")
        if "test_unseen" in report:
            report["summary"] += (f"; unseen classes: "
                                  f"{retrieval_metrics.format_protocol(report['test_unseen']['protocol'])}")
        return report

    def _write_features(self, run: Run, embedded: Embedded, codes: bool) -> dict:
        """features_<split>.npz (queries) and, with a gallery, features_<split>_gallery.npz, in the
        evaluator's format: `features` are packed codes for deephash (the float u under `outputs`)."""
        def write(path: pathlib.Path, values: np.ndarray, meta: dict) -> None:
            extra = {key: meta[key] for key in ("photo_id", "domain_id") if key in meta}
            if codes:
                extra["outputs"] = values
            save_features(path, codes_from_outputs(values) if codes else values, meta["label"],
                          ids=_ids(meta), class_names=run.class_names, **extra)

        files = {"features_file": FEATURES_FILE.format(split=embedded.split)}
        write(run.model_dir / files["features_file"], embedded.queries, embedded.query_meta)
        if embedded.gallery is not None:
            files["gallery_file"] = GALLERY_FILE.format(split=embedded.split)
            write(run.model_dir / files["gallery_file"], embedded.gallery, embedded.gallery_meta)
        return files

    def export(self, run: Run, model: keras.Model, export_dir: pathlib.Path) -> dict:
        kind = "hash" if self._codes(run) else "embedding"
        common = dict(class_names=run.class_names, image_size=run.model.image_size, channels=run.model.channels,
                      kind=kind, polarity=training_polarity(self, run), raster=run.info.get("raster"),
                      tflite=run.tflite, photo_edges=run.info.get("photo_edges", "none"))
        sketch = embedding.branch(model, "sketch")
        meta = export.export_model(sketch, export_dir, **common)
        photo = embedding.branch(model, "photo")
        if photo is not sketch:
            export.export_model(photo, export_dir / PHOTO_EXPORT, **common)
            meta["photo_export_dir"] = str(export_dir / PHOTO_EXPORT)
        return meta
