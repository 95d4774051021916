"""Keras callbacks of a training run: checkpoints, NaN stop, history and curves, best model.

Under MultiWorkerMirroredStrategy every worker runs the same callbacks on the same (globally
reduced) logs; only the chief writes files (`is_chief=False` turns the writers into no-ops), so
workers never write the same path.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import threading
import time

import keras
import numpy as np

from data_prep.atomic_files import write_json_atomic
from training import plots
from training.checkpoints import CheckpointStore, record_checksum


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def optimizer_step(model: keras.Model) -> int:
    return int(model.optimizer.iterations.numpy())


def weights_finite(model: keras.Model) -> bool:
    """True when no weight of `model` is NaN or infinite (a diverged step can poison them silently)."""
    return all(np.isfinite(w).all() for w in model.get_weights())


def current_learning_rate(model: keras.Model) -> float:
    """The learning rate the optimizer applies at its current step (schedules included)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class NanGuard(keras.callbacks.Callback):
    """Stop at the first step whose loss is NaN or infinite, and remember which step it was.

    The trainer turns `bad_step` into a clear error after fit returns; PeriodicCheckpoint does not
    save non-finite states, so the last checkpoint on disk is the last good one.
    """

    def __init__(self):
        super().__init__()
        self.bad_step: int | None = None
        self.bad_value: float | None = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss) and self.bad_step is None:
            self.bad_step = optimizer_step(self.model)
            self.bad_value = float(loss)
            self.model.stop_training = True


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of `model`, nested sub-models included."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batch_norm(model: keras.Model, batches, num_batches: int) -> int:
    """Set every batch-norm layer's moving mean and variance to the plain mean of its batch statistics
    over `num_batches` batches of `batches` (an iterator of (images, ...)); returns the batches used.

    Moving averages lag: a short run (tens of steps) still carries the initial variance 1.0 and the
    statistics of older weights, so inference-mode outputs collapse (see ModelConfig.bn_momentum).
    A forward pass in training mode with momentum i / (i + 1) on batch i makes each moving statistic
    the running mean of the batch statistics of the current weights ("precise BN"); weights do not change.
    """
    layers = batch_norm_layers(model)
    if not layers or num_batches < 1:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for i in range(num_batches):
            try:
                batch = next(batches)
            except StopIteration:
                break
            for layer in layers:
                layer.momentum = i / (i + 1)
            model(batch[0], training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used


class BatchNormRecalibration(keras.callbacks.Callback):
    """Re-estimate batch-norm statistics (`recalibrate_batch_norm`) before each validation, or at the
    end of the epoch when there is no validation, so evaluations and checkpoints use current statistics."""

    def __init__(self, dataset, num_batches: int):
        super().__init__()
        self.dataset = dataset
        self.num_batches = num_batches
        self._iterator = None
        self._done_this_epoch = False

    def _recalibrate(self):
        if self._iterator is None:
            self._iterator = iter(self.dataset)
        recalibrate_batch_norm(self.model, self._iterator, self.num_batches)
        self._done_this_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        self._done_this_epoch = False

    def on_test_begin(self, logs=None):
        if not self._done_this_epoch:
            self._recalibrate()

    def on_epoch_end(self, epoch, logs=None):
        if not self._done_this_epoch:
            self._recalibrate()


class StopRequested(Exception):
    """Raised between two steps after SIGINT (Ctrl-C) or SIGTERM; the trainer checkpoints and exits."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class GracefulStop(keras.callbacks.Callback):
    """Turn Ctrl-C and SIGTERM into a clean stop at the end of the running step.

    A signal only sets a flag; the next `on_train_batch_end` raises StopRequested, outside any
    TensorFlow op, so the weights are those of a whole step. A second signal interrupts at once
    (KeyboardInterrupt). Use as a context manager around fit: it installs and restores the handlers
    (only in the main thread, where Python delivers signals).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        super().__init__()
        self.requested: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def on_train_batch_end(self, batch, logs=None):
        if self.requested is not None:
            raise StopRequested(self.requested)


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Checkpoint at the end of every epoch and every `every_steps` optimizer steps (0: epochs only).

    A state whose running loss is not finite is never saved. `steps_per_epoch` turns a step
    count into the epoch recorded in state.json.
    """

    def __init__(self, store: CheckpointStore, steps_per_epoch: int, every_steps: int = 0, is_chief: bool = True):
        super().__init__()
        if every_steps < 0:
            raise ValueError(f"Invalid value for argument `steps_per_checkpoint`. Received: {every_steps}. "
                             "Expected an integer >= 0.")
        self.store = store
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.is_chief = is_chief
        self.last_saved_step: int | None = None

    def save(self, reason: str) -> None:
        step = optimizer_step(self.model)
        if not self.is_chief or step == self.last_saved_step or not weights_finite(self.model):
            return
        self.store.save(self.model, epoch=step // self.steps_per_epoch, reason=reason)
        self.last_saved_step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and _finite((logs or {}).get("loss", 0.0)):
            step = optimizer_step(self.model)
            # The last step of an epoch is saved at the epoch's end, after validation and its history row.
            if step % self.every_steps == 0 and step % self.steps_per_epoch:
                self.save("steps")

    def on_epoch_end(self, epoch, logs=None):
        if _finite((logs or {}).get("loss", 0.0)):
            self.save("epoch")


TENSORBOARD_IMAGES = 8  # training images written to TensorBoard at the end of each epoch


class StepSummaries(keras.callbacks.Callback):
    """TensorBoard summaries beside Keras' per-epoch ones, in `log_dir` (the run's logs/train), at the
    optimizer step: after every step the step's loss and the learning rate it ran at; at the end of
    each epoch the first TENSORBOARD_IMAGES images of a fresh pass over `images` (the training
    dataset, augmented as training feeds it: a new pass reshuffles, so each epoch shows other images).

    Keras' logs give the running mean of the epoch's loss after each step; with equal batches the
    step's own loss is n * mean_n - (n - 1) * mean_(n-1). Both are written: `step/loss` (the step's
    own) and `step/loss_epoch_mean` (whose last value of an epoch is its `loss` in train_history.json).
    """

    def __init__(self, log_dir: str | os.PathLike, images=None, *, max_images: int = TENSORBOARD_IMAGES):
        super().__init__()
        self.log_dir = str(log_dir)
        self.images = images
        self.max_images = max_images
        self._writer = None
        self._previous_mean = 0.0

    def _summary(self):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return tf.summary, self._writer

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        mean = float(loss)
        own = mean if batch == 0 else (batch + 1) * mean - batch * self._previous_mean
        self._previous_mean = mean
        summary, writer = self._summary()
        step = optimizer_step(self.model)
        with writer.as_default():
            summary.scalar("step/loss", own, step=step)
            summary.scalar("step/loss_epoch_mean", mean, step=step)
            summary.scalar("step/learning_rate", current_learning_rate(self.model), step=step)

    def on_epoch_end(self, epoch, logs=None):
        if self.images is not None and self.max_images > 0 and _holds_images(self.images):
            from training.tasks import first_images

            images = first_images(self.images, self.max_images)
            pixels = np.round(np.clip(images.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
            if pixels.shape[-1] not in (1, 3, 4):  # e.g. stroke-order channels: the first one
                pixels = pixels[..., :1]
            summary, writer = self._summary()
            with writer.as_default():
                summary.image("training_images", pixels, step=optimizer_step(self.model),
                              max_outputs=self.max_images)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _holds_images(dataset) -> bool:
    """Whether a dataset's inputs are images [B, H, W, C] (a sequence model's [B, T, 3] are not drawn)."""
    inputs = dataset.element_spec[0]
    return all(spec.shape.rank == 4 for spec in (inputs if isinstance(inputs, (tuple, list)) else (inputs,)))


def load_history(path: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of a train_history.json ([] when absent)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("epochs", [])


class HistoryRecorder(keras.callbacks.Callback):
    """Append one row per epoch (logs, step, learning rate, seconds, images/s) to train_history.json
    and redraw the curves PNG; rows of epochs redone after a resume replace the old ones."""

    def __init__(self, json_path: str | os.PathLike, png_path: str | os.PathLike, *, batch_size: int,
                 title: str = "", is_chief: bool = True):
        super().__init__()
        self.json_path = pathlib.Path(json_path)
        self.png_path = pathlib.Path(png_path)
        self.batch_size = batch_size
        self.title = title
        self.is_chief = is_chief
        self.rows = load_history(self.json_path)
        self._start = time.perf_counter()
        self._start_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._start_step = optimizer_step(self.model)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        step = optimizer_step(self.model)
        row = {"epoch": epoch + 1, "step": step}
        row.update({k: (float(v) if _finite(v) else None) for k, v in (logs or {}).items()
                    if np.ndim(v) == 0 and k != "learning_rate"})
        row["learning_rate"] = current_learning_rate(self.model)
        row["seconds"] = round(seconds, 3)
        row["images_per_second"] = round((step - self._start_step) * self.batch_size / max(seconds, 1e-9), 1)
        self.rows = [r for r in self.rows if r["epoch"] < epoch + 1] + [row]
        if self.is_chief:
            write_json_atomic(self.json_path, {"epochs": self.rows})
            plots.plot_curves(self.rows, self.png_path, self.title)


def save_without_optimizer(model: keras.Model, path: str | os.PathLike) -> None:
    """Save `model` (a functional model) as a .keras file of architecture and weights, without the
    optimizer state (two thirds of the file under Adam; only resume checkpoints need it).

    Keras 3.15 ignores `include_optimizer=False` for .keras files, so an uncompiled functional view of
    the same layers (no copy of the weights) is saved instead; it loads like the model.
    """
    keras.Model(model.inputs, model.outputs, name=model.name).save(path)


class BestModelKeeper(keras.callbacks.Callback):
    """Save the model without its optimizer (`save_without_optimizer`) to `path` (.keras) when
    `monitor` improves on the best value seen so far.

    `best` carries the best value over from before a resume (see `best_in_history`).
    """

    def __init__(self, path: str | os.PathLike, monitor: str, mode: str, best: float | None = None,
                 is_chief: bool = True):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid value for argument `mode`. Received: {mode!r}. Expected 'min' or 'max'.")
        self.path = pathlib.Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best = best
        self.is_chief = is_chief

    def improved(self, value) -> bool:
        if not _finite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if self.improved(value) and _finite((logs or {}).get("loss", 0.0)):
            self.best = float(value)
            if self.is_chief:
                tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
                save_without_optimizer(self.model, tmp)
                os.replace(tmp, self.path)
                record_checksum(self.path)


def best_in_history(rows: list[dict], monitor: str, mode: str) -> float | None:
    """The best finite value of `monitor` among recorded epochs (None when there is none)."""
    values = [row[monitor] for row in rows if _finite(row.get(monitor))]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
