"""Training tasks: what a family of models trains on, with which loss and metrics, and how it is judged.

`train_sketch_net.py` knows no model family: it asks `task_for_model(name)` for the Task that
trains model `name` and calls its methods. A Task provides

    config_classes   extra config dataclasses whose fields become flags (beyond Train/Model/Pipeline/Augment)
    check            input checks before anything is built (clear errors)
    build_model      the Keras model for the run (built under the strategy scope by the trainer)
    compile_args     loss and metrics for model.compile
    callbacks        extra fit callbacks (e.g. a loss's margin schedule); they run before the history,
                     checkpoint and best-model callbacks, so values they add to the epoch logs are kept
    batch_size       images (or pairs) in one global training step: -batch_size, or P x K
    train_dataset    the repeating, shuffled (augmented) training stream
    calibration_dataset  the same images without augmentation, for batch-norm recalibration
    validation_dataset   what fit validates on each epoch (the test split, repeated), or None
    validation_steps     its batches per pass: fit validates on exactly one pass each epoch
    monitor          the log key and direction that picks the best model
    evaluate         -mode evaluate: metrics dict for evaluate.json (and its figures)
    test             -mode test: features file and the retrieval metrics dict for similarity.json
    export           -mode export: the serving SavedModel and .keras file (serving.export), with the
                     polarity `training_polarity` measures on the run's training images

Adding a family (issue 5: siamese, triplet, deephash) is one new module with a Task subclass
registered here with `register_task`; the tool and the trainer do not change.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from configuration_sketch import AugmentConfig, ModelConfig, PipelineConfig, TrainConfig
from serving import export

# Training images whose borders decide the polarity recorded at export (serving.export.training_polarity).
POLARITY_IMAGES = 512


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a task needs about a run: its configs (by class), the data set's info, its folder."""

    configs: Mapping[type, Any]
    info: dict
    model_dir: pathlib.Path

    def config(self, cls: type):
        try:
            return self.configs[cls]
        except KeyError:
            raise KeyError(f"this run has no {cls.__name__}; the task must list it in config_classes") from None

    @property
    def train(self) -> TrainConfig:
        return self.configs[TrainConfig]

    @property
    def model(self) -> ModelConfig:
        return self.configs[ModelConfig]

    @property
    def pipeline(self) -> PipelineConfig:
        return self.configs[PipelineConfig]

    @property
    def augment(self) -> AugmentConfig:
        return self.configs[AugmentConfig]

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.info["classes"]]

    @property
    def data_path(self) -> str:
        return self.train.data_path

    @property
    def tflite(self) -> str | None:
        """-tflite as serving.export.export_model takes it: None, 'float32' or 'int8'."""
        return None if self.train.tflite == "none" else self.train.tflite

    def num_examples(self, split: str) -> int:
        return int(self.info["splits"].get(split, {}).get("num_examples", 0))


class Task:
    """Base of the training tasks; subclasses set the class attributes and implement the methods."""

    name: str = ""
    models: tuple[str, ...] = ()
    config_classes: tuple[type, ...] = ()
    monitor: tuple[str, str] = ("val_loss", "min")
    train_split: str = "train"
    test_split: str = "test"

    def recipe(self, model: str) -> dict[type, dict[str, Any]]:
        """Training defaults of `model` under this task that differ from the dataclass defaults, by
        config class; a preset or a flag still wins (trainer.apply_recipe)."""
        return {}

    def check(self, run: Run) -> None:
        """Raise ValueError with a clear message for settings this task cannot train with."""

    def build_model(self, run: Run) -> keras.Model:
        raise NotImplementedError

    def compile_args(self, run: Run) -> dict:
        raise NotImplementedError

    def callbacks(self, run: Run, model: keras.Model) -> list[keras.callbacks.Callback]:
        return []

    def batch_size(self, run: Run) -> int:
        """Global batch of one training step (steps per epoch and images/s follow it)."""
        return run.pipeline.batch_size

    def train_dataset(self, run: Run, seed: int) -> tf.data.Dataset:
        raise NotImplementedError

    def calibration_dataset(self, run: Run, seed: int) -> tf.data.Dataset | None:
        """Repeating training batches without augmentation for batch-norm recalibration (None: skip it)."""
        return None

    def validation_dataset(self, run: Run) -> tf.data.Dataset | None:
        return None

    def validation_steps(self, run: Run) -> int | None:
        """Batches in one pass over the (repeating) validation dataset."""
        return None

    def evaluate(self, run: Run, model: keras.Model) -> dict:
        raise NotImplementedError

    def test(self, run: Run, model: keras.Model) -> dict:
        raise NotImplementedError

    def export(self, run: Run, model: keras.Model, export_dir: pathlib.Path) -> dict:
        raise NotImplementedError


def first_images(dataset: tf.data.Dataset, limit: int) -> np.ndarray:
    """Up to `limit` images, in order, from batches (images, labels) or ((images_a, images_b), labels)
    (the pairs of siamese training: both sides count)."""
    taken: list[np.ndarray] = []
    count = 0
    for inputs, _ in dataset:
        for part in inputs if isinstance(inputs, (tuple, list)) else (inputs,):
            taken.append(part.numpy()[:limit - count])
            count += len(taken[-1])
        if count >= limit:
            break
    return np.concatenate(taken) if taken else np.zeros((0, 1, 1, 1), np.float32)


def training_polarity(task: Task, run: Run, limit: int = POLARITY_IMAGES) -> str:
    """What the run's model was trained on (serving.preprocess.TRAINED_POLARITIES), from up to `limit`
    images of its train split as training feeds them, without augmentation (the task's calibration
    stream): white_on_black for Quick, Draw!, as_is for sketches with photos (Sketchy). ExportError
    (one line) when the split gives none."""
    available = run.num_examples(task.train_split)
    dataset = task.calibration_dataset(run, seed=run.train.seed)
    if available == 0 or dataset is None:
        raise export.ExportError(f"Cannot tell which polarity the model was trained on: the {task.train_split!r} "
                                 f"split of the data set at {run.data_path!r} gives no training images; export "
                                 "needs the run's data set (-data_path).")
    return export.training_polarity(first_images(dataset, min(limit, available)))


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register `task` under its name; a name or a model claimed twice is an error."""
    if not task.name or not task.models:
        raise ValueError(f"Task {type(task).__name__} needs a name and at least one model name.")
    if task.name in _TASKS:
        raise ValueError(f"Task name {task.name!r} is already registered by {type(_TASKS[task.name]).__name__}.")
    for other in _TASKS.values():
        shared = set(other.models) & set(task.models)
        if shared:
            raise ValueError(f"Models {sorted(shared)} are already trained by task {other.name!r}.")
    _TASKS[task.name] = task
    return task


def tasks() -> list[Task]:
    return list(_TASKS.values())


def trainable_models() -> list[str]:
    """Model names some registered task trains, sorted."""
    return sorted(m for task in _TASKS.values() for m in task.models)


def task_for_model(model: str) -> Task:
    """The task that trains `model`; ValueError listing the models that can be trained."""
    for task in _TASKS.values():
        if model in task.models:
            return task
    import models as model_registry

    registered = model_registry.model_names()
    if model in registered:
        raise ValueError(f"Model {model!r} is registered, but no training task trains it yet. "
                         f"Trainable models: {', '.join(trainable_models())}.")
    raise ValueError(f"Unknown model {model!r}. Valid: {', '.join(trainable_models())}.")


def _register_builtin() -> None:
    from training.tasks.classification import ClassificationTask

    register_task(ClassificationTask())
    from training.tasks.metric import MetricLearningTask

    register_task(MetricLearningTask())
    from training.tasks.vse import VisualSemanticTask

    register_task(VisualSemanticTask())


_register_builtin()
