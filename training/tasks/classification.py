"""Classification: skNet, skResNet and Sketch-a-Net trained with softmax cross-entropy on labelled images.

- evaluate: loss, top-1 and top-5 accuracy, per-class accuracy, the most confused pairs and a
  confusion-matrix PNG for the test split (and the train split with -evaluate_train).
- test: the `features` layer (penultimate, 1024 wide for skNet) of every test image to
  features_test.npz, and the leave-one-out retrieval metrics of retrieval.metrics.evaluate
  (L2; key `map`) for similarity.json, the original tool's meaning of "test". On a sketch/photo
  data set (Sketchy) also `sketch_to_photo`: sketch queries against the photo gallery, the metric
  task's protocol, so classifier features are the baseline the embedding models are judged by;
  there features_test.npz holds the test sketches, then the test photos, from that one pass.
- A fold run of cross-validation (CvConfig.fold > 0, training/folds.py) reads the train split only: it
  trains on the other folds, and its "test split" (validation, evaluate, test) is the held-out fold.
- export: serving.export.export_model, kind 'classifier' (classify and embed endpoints), with the
  polarity of the training images (white_on_black on Quick, Draw!) and -tflite's TensorFlow Lite file.
- A model registered with inputs="strokes" (stroke_rnn) reads (dx, dy, pen) sequences of the records'
  strokes (data_prep.stroke_sequences) instead of images, and exports strokes endpoints only
  (serving.sequence_export); everything else above is the same.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import models
from configuration_sketch import CvConfig, PipelineConfig, StrokeRnnConfig, TrainConfig
from data_prep import stroke_sequences, tfrecords
from data_prep.pipeline import load_split, render_plan
from models.losses import SmoothedSparseCrossentropy
from retrieval import metrics as retrieval_metrics
from serving import classification_metrics, export, sequence_export
from serving.features import save_features
from training import evaluation, folds, plots
from training.augment import augment_images, stroke_augmenter
from training.tasks import Run, Task, metric, training_polarity

FEATURES_LAYER = "features"
# The image classifiers' defaults where they differ from the dataclasses' (which the metric-learning
# models and stroke_rnn keep): twice the steps per epoch at twice the peak rate, with label smoothing.
# On the 8,000 real bitmaps and on the small simplified sample, over 3 seeds, it raised test top-1 and
# the leave-one-out mAP of `features` over the previous defaults (batch 256, 1e-3, no smoothing);
# smoothing alone did not (BENCHMARKS.md, classifier recipe study).
IMAGE_CLASSIFIER_RECIPE = {PipelineConfig: {"batch_size": 128},
                           TrainConfig: {"learning_rate": 2e-3, "label_smoothing": 0.1}}
RETRIEVAL_K = (1, 10, 100)


class ClassificationTask(Task):
    name = "classification"
    models = ("sknet", "skresnet", "sketch_a_net", "stroke_rnn")
    config_classes = (CvConfig, StrokeRnnConfig)
    monitor = ("val_accuracy", "max")

    def recipe(self, model: str) -> dict[type, dict[str, Any]]:
        return {} if model == "stroke_rnn" else IMAGE_CLASSIFIER_RECIPE

    def check(self, run: Run) -> None:
        SmoothedSparseCrossentropy(run.train.label_smoothing)  # its argument check, before any training
        if not reads_strokes(run):
            return
        stroke_sequences.check_strokes(run.info, run.data_path)
        if run.train.augment or run.augment.stroke_augment:
            raise ValueError(f"-augment and -stroke_augment transform the training images; -model {run.model.model} "
                             "reads stroke sequences: leave them out.")
        if run.config(StrokeRnnConfig).max_points < 1:
            raise ValueError(f"Invalid value for -max_points: {run.config(StrokeRnnConfig).max_points}. "
                             "Expected an integer >= 1.")

    def build_model(self, run: Run) -> keras.Model:
        if reads_strokes(run):
            return models.build_from_config(run.model, num_classes=len(run.class_names),
                                            **sequence_model_kwargs(run.config(StrokeRnnConfig)))
        return models.build_from_config(run.model, num_classes=len(run.class_names))

    def compile_args(self, run: Run) -> dict:
        top_k = min(5, len(run.class_names))
        return {
            "loss": SmoothedSparseCrossentropy(run.train.label_smoothing),
            "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                        keras.metrics.SparseTopKCategoricalAccuracy(k=top_k, name="top5_accuracy")],
        }

    def _split(self, run: Run, split: str, **kwargs) -> tf.data.Dataset:
        pipeline = run.pipeline
        stored, keep = folds.split_filter(run.info, run.config(CvConfig), split, self.test_split)
        if reads_strokes(run):
            return stroke_sequences.load_sequences(run.data_path, stored, pipeline.batch_size,
                                                   run.config(StrokeRnnConfig).max_points,
                                                   cycle_length=pipeline.cycle_length, record_filter=keep, **kwargs)
        return load_split(run.data_path, stored, pipeline.batch_size, image_size=run.model.image_size,
                          channels=run.model.channels, cycle_length=pipeline.cycle_length, record_filter=keep,
                          render=render_mode(run), time_channels=pipeline.time_channels, **kwargs)

    def train_dataset(self, run: Run, seed: int) -> tf.data.Dataset:
        augment = stroke_augment(run)
        ds = self._split(run, self.train_split, shuffle=True, repeat=True, seed=seed,
                         shuffle_buffer=run.pipeline.classifier_shuffle_buffer,
                         **({"stroke_augment": augment} if augment else {}))
        if run.train.augment:
            ds = augment_images(ds, run.augment)
        return ds.prefetch(tf.data.AUTOTUNE)

    def calibration_dataset(self, run: Run, seed: int) -> tf.data.Dataset | None:
        return self._split(run, self.train_split, shuffle=True, repeat=True, seed=seed,
                           shuffle_buffer=run.pipeline.classifier_shuffle_buffer)

    def validation_dataset(self, run: Run) -> tf.data.Dataset | None:
        if run.num_examples(self.test_split) == 0:
            return None
        # Repeated batches, `validation_steps` per epoch: one full pass each epoch (Keras keeps the
        # validation iterator across epochs when the step count is given).
        return self._split(run, self.test_split).repeat()

    def validation_steps(self, run: Run) -> int | None:
        return math.ceil(run.num_examples(self.test_split) / run.pipeline.batch_size) or None

    def _evaluate_split(self, run: Run, model: keras.Model, split: str) -> dict:
        out = evaluation.run_inference(model, self._split(run, split), ("output",), run.train.jit_compile)
        logits, labels = out["output"], out["labels"]
        names = run.class_names
        if logits.shape[1] != len(names):
            raise ValueError(f"the model has {logits.shape[1]} outputs but the data set at {run.data_path!r} "
                             f"has {len(names)} classes.")
        result = evaluation.classification_metrics(logits, labels, k=5)
        result["chance"] = {"top1_accuracy": 1 / len(names), "top5_accuracy": min(5, len(names)) / len(names)}
        matrix = classification_metrics.confusion_matrix(labels, np.argmax(logits, axis=1), len(names))
        png = run.model_dir / f"confusion_{split}.png"
        plots.plot_confusion(matrix, names, png, title=f"{run.model.model}, {split} split: top-1 "
                             f"{result['top1_accuracy']:.3f} on {len(labels)} images")
        np.savetxt(run.model_dir / f"confusion_{split}.csv", matrix, fmt="%d", delimiter=",",
                   header=",".join(names), comments="")
        result["per_class_accuracy"] = evaluation.per_class_accuracy(matrix, names)
        result["most_confused"] = classification_metrics.most_confused(matrix, names)
        result["confusion_matrix_png"] = png.name
        result["confusion_matrix_csv"] = f"confusion_{split}.csv"
        return result

    def evaluate(self, run: Run, model: keras.Model) -> dict:
        result = {"split": folds.split_label(run.info, self.test_split, self.test_split),
                  **self._evaluate_split(run, model, self.test_split)}
        if reads_strokes(run):
            stored, _ = folds.split_filter(run.info, run.config(CvConfig), self.test_split, self.test_split)
            result["points_cap"] = stroke_sequences.count_over_cap(run.data_path, stored,
                                                                   run.config(StrokeRnnConfig).max_points)
        if run.train.evaluate_train:
            result[self.train_split] = self._evaluate_split(run, model, self.train_split)
        return result

    def test(self, run: Run, model: keras.Model) -> dict:
        cross = None
        if metric.is_cross_domain(run.info):
            # One pass, sketches then photos: the leave-one-out set and the sketch-to-photo protocol.
            network = keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output, name="classifier_features")
            cross = metric.embed_split(run, network, self.test_split)
            features = np.concatenate([cross.queries, cross.gallery])
            labels = np.concatenate([cross.query_meta["label"], cross.gallery_meta["label"]])
            key_ids = np.concatenate([cross.query_ids, cross.gallery_ids])
        else:
            ds = self._split(run, self.test_split, with_key_ids=True)
            out = evaluation.run_inference(model, ds, (FEATURES_LAYER,), run.train.jit_compile)
            features, labels, key_ids = out[FEATURES_LAYER], out["labels"], out["key_ids"]
        path = run.model_dir / f"features_{self.test_split}.npz"
        save_features(path, features, labels, ids=key_ids, class_names=run.class_names, key_ids=key_ids)
        report = retrieval_metrics.evaluate(features, labels, query_ids=key_ids, metric="l2", k=RETRIEVAL_K)
        report["features_file"] = path.name
        report["features_layer"] = FEATURES_LAYER
        report["id_feature"] = tfrecords.id_feature(run.info, tfrecords.feature_specs(run.info))
        if cross is not None:
            # Sketch queries against the photos by L2 (the protocol: category mAP, P@K, instance acc@K),
            # and on the zero-shot classes the training never saw, when the data set holds some.
            report["sketch_to_photo"] = metric.summary_of(metric.retrieval_report(cross))
            if run.num_examples("test_unseen"):
                unseen = metric.embed_split(run, network, "test_unseen")
                report["test_unseen"] = {"sketch_to_photo": metric.summary_of(metric.retrieval_report(unseen))}
        return report

    def export(self, run: Run, model: keras.Model, export_dir: pathlib.Path) -> dict:
        if reads_strokes(run):
            return sequence_export.export_sequence_model(model, export_dir, class_names=run.class_names,
                                                         max_points=run.config(StrokeRnnConfig).max_points,
                                                         features_layer=FEATURES_LAYER)
        return export.export_model(model, export_dir, class_names=run.class_names,
                                   image_size=run.model.image_size, channels=run.model.channels,
                                   kind="classifier", polarity=training_polarity(self, run),
                                   raster=trained_raster(run), features_layer=FEATURES_LAYER,
                                   tflite=run.tflite, photo_edges=run.info.get("photo_edges", "none"))


def render_mode(run: Run) -> str:
    """'stored' or 'on_the_fly': where the run's images come from (data_prep.pipeline.render_plan)."""
    return render_plan(run.info, run.pipeline.render, run.pipeline.time_channels, run.augment.stroke_augment)


def stroke_augment(run: Run):
    """The stroke-space augmentation of training batches (-stroke_augment), or None."""
    if not run.augment.stroke_augment:
        return None
    raster = run.info["raster"]
    return stroke_augmenter(run.augment, raster["frame"], raster["normalize"])


def trained_raster(run: Run) -> dict | None:
    """The raster settings of the images the model was trained on, for serving to draw strokes alike:
    the build's, at the model's size and with -time_channels when drawn on the fly."""
    raster = run.info.get("raster")
    if raster is None or render_mode(run) == "stored":
        return raster
    return {**raster, "image_size": run.model.image_size, "time_channels": run.pipeline.time_channels}


def reads_strokes(run: Run) -> bool:
    """Whether the run's model reads stroke sequences rather than images (models.input_kind)."""
    return models.input_kind(run.model.model) == "strokes"


def sequence_model_kwargs(config: StrokeRnnConfig) -> dict:
    """The stroke_rnn builder's keyword arguments from its config (all fields but the input's max_points)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "max_points"}
