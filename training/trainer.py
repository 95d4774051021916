"""The four modes of train_sketch_net.py: train, evaluate, test, export (-mode cv: training/cross_validation.py).

`prepare_run` turns configs into a checked Run (data set found and matching, model trainable),
`train` fits under the chosen strategy with checkpoints and automatic resume, `evaluate`, `test`
and `export` load the run's weights and hand them to the model's Task. Every failure a user can
cause raises a ToolError subclass (or a ValueError) whose message says what to do; the CLI prints
it without a traceback.

Resume: the optimizer's step counter, saved in every checkpoint, is the position of the run.
After a restart at step s with S steps per epoch, training finishes epoch s // S with the
S - s % S steps it still owed, then runs the remaining epochs, so an interruption (Ctrl-C,
SIGTERM, kill -9, a crash) costs at most the steps since the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from configuration_sketch import (AugmentConfig, CvConfig, EmbeddingConfig, ModelConfig, PipelineConfig,
                                  StrokeRnnConfig, TrainConfig)
from data_prep import tfrecords, verify
from data_prep.atomic_files import write_json_atomic
from models.embedding import EMBEDDING_MODELS, LEGACY_AUTO_LOSS, PROXY_LOSSES, resolve_loss, resolved
from serving import tflite
from training import callbacks as cb
from training import folds, presets, tasks, warm_start
from training.checkpoints import CheckpointError, CheckpointStore, ensure_optimizer_built, recorded_problem
from training.strategy import StrategyInfo, make_strategy

BASE_CONFIGS = (TrainConfig, ModelConfig, PipelineConfig, AugmentConfig)
RUN_CONFIG_FILE = "train_config.json"
HISTORY_FILE = "train_history.json"
CURVES_FILE = "training_curves.png"
BEST_FILE = "best.keras"
EVALUATE_FILE = "evaluate.json"
SIMILARITY_FILE = "similarity.json"
EXPORT_DIR = "export"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
# Fields a run's weights depend on (None: every field of the class): taken from the saved run by
# evaluate/test/export, and refused when a resumed training asks for other values. Loss, miner and
# margin are not among them: a resumed run may continue with another objective (of the same kind:
# a proxy loss trains a layer the others lack, `_check_proxy_head`).
SHAPING_FIELDS: dict[type, tuple[str, ...] | None] = {
    ModelConfig: None,
    EmbeddingConfig: ("embedding_dim", "backbone", "l2_normalize", "shared_weights", "bits"),
    CvConfig: ("folds", "fold", "fold_seed"),  # which records a fold run trains on and holds out
    StrokeRnnConfig: ("conv_filters", "conv_kernels", "conv_batch_norm", "rnn_layers", "rnn_units", "features_dim"),
}
# Exit statuses of the CLI.
EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class ToolError(Exception):
    """A failure with a message for the user; `exit_code` is the CLI's status."""

    exit_code = EXIT_ERROR


class TrainingDiverged(ToolError):
    exit_code = EXIT_DIVERGED


class TrainingInterrupted(ToolError):
    exit_code = EXIT_INTERRUPTED


def config_classes() -> tuple[type, ...]:
    """Every config class whose fields are flags of the tool: the base ones, then each task's."""
    classes = list(BASE_CONFIGS)
    for task in tasks.tasks():
        classes.extend(c for c in task.config_classes if c not in classes)
    return tuple(classes)


def _log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- configuration


def saved_configs(model_dir: str | os.PathLike) -> dict[str, dict] | None:
    """The configs saved by a previous training in `model_dir` (by class name), or None."""
    path = pathlib.Path(model_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["configs"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ToolError(f"{str(path)!r} is damaged ({e}); it records the run's configuration.") from None


def _differences(current: dict, saved: dict) -> list[str]:
    return [f"-{k} {current[k]!r} (the run has {saved[k]!r})" for k in current if k in saved and current[k] != saved[k]]


def _check_proxy_head(saved_loss: str, loss: str, given: str) -> None:
    """A proxy loss trains a layer of class proxies the other losses lack: the two do not share weights.
    `given` is the -loss the user passed, which resolved to `loss`."""
    before, after = saved_loss in PROXY_LOSSES, loss in PROXY_LOSSES
    if before != after:
        asked = loss if given == loss else f"{given} ({loss})"
        raise ToolError(f"The run in this model_dir was trained with -loss {saved_loss}, {'with' if before else 'without'} "
                        f"a layer of class proxies; -loss {asked} needs a model {'without' if before else 'with'} one. "
                        f"Pass -loss {saved_loss} (or another loss of its kind) to go on, or use another -model_dir.")


def _saved_loss(config: EmbeddingConfig, stored: dict, saved: dict[str, dict], explicit: set[str], mode: str
                ) -> tuple[EmbeddingConfig, dict]:
    """The current and the saved run's embedding configs with their losses resolved (-loss auto made concrete;
    a run saved before proxy-anchor became the triplet model's default recorded auto for the triplet loss).
    Resuming without -loss keeps the run's loss."""
    model = (saved.get(ModelConfig.__name__) or {}).get("model", "")
    if model not in EMBEDDING_MODELS:
        return config, {**stored, "loss": stored.get("loss", "auto")}
    loss = stored.get("loss", "auto")
    if loss == "auto" and model == "triplet":
        loss = LEGACY_AUTO_LOSS
    stored = {**stored, "loss": resolve_loss(EmbeddingConfig(**{**stored, "loss": loss}), model)}
    if mode == "train" and "loss" not in explicit:
        config = dataclasses.replace(config, loss=stored["loss"])
    return resolved(config, model), stored


def merge_saved(configs: Mapping[type, Any], explicit: set[str], saved: dict[str, dict], mode: str
                ) -> dict[type, Any]:
    """Configs for a run already in model_dir.

    train (resume): the given configs, refused when a weight-shaping field differs from the saved run.
    evaluate/test/export: the saved run's configs, with the fields given on the command line on top;
    a weight-shaping field given with another value is refused.
    """
    merged = {}
    saved_model = (saved.get(ModelConfig.__name__) or {}).get("model", "")
    for cls, config in configs.items():
        stored = saved.get(cls.__name__)
        if stored is None:
            merged[cls] = config
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        stored = {k: v for k, v in stored.items() if k in names}
        current = dataclasses.asdict(config)
        # The embedding fields shape only the embedding models' weights (a classifier ignores them).
        if cls in SHAPING_FIELDS and (cls is not EmbeddingConfig or saved_model in EMBEDDING_MODELS):
            shaping = SHAPING_FIELDS[cls] or tuple(current)
            asked = {k: v for k, v in current.items() if k in shaping and (mode == "train" or k in explicit)}
            if mode == "train":
                asked = {k: v for k, v in asked.items() if k in explicit or k not in ("image_size", "channels")}
            wrong = _differences(asked, stored)
            if wrong:
                raise ToolError(f"The run in this model_dir was trained with other model settings: {'; '.join(wrong)}. "
                                "Use another -model_dir for a new model, or drop these flags.")
        if cls is EmbeddingConfig:
            given = config.loss
            config, stored = _saved_loss(config, stored, saved, explicit, mode)
            current = dataclasses.asdict(config)
            if mode == "train" or "loss" in explicit:
                _check_proxy_head(stored["loss"], current["loss"], given)
        if mode == "train":
            merged[cls] = config
        else:
            values = {**stored, **{k: v for k, v in current.items() if k in explicit}}
            merged[cls] = cls(**values)
    return merged


def adapt_to_data(model_config: ModelConfig, info: dict, explicit: set[str], data_path: str,
                  plan: str = "stored", time_channels: bool = False) -> ModelConfig:
    """Take image size and channels from the data set unless chosen; refuse a chosen value that differs.

    Drawn on the fly (plan 'on_the_fly') any size serves (default: the build's) and the channels follow
    -time_channels."""
    image = info.get("image") or {}
    height, width, channels = image.get("height"), image.get("width"), image.get("channels")
    if height is None or channels is None:
        raise ToolError(f"dataset_info.json of {data_path!r} does not describe its images (key 'image').")
    if height != width:
        raise ToolError(f"The data set at {data_path!r} holds {height}x{width} images; the models take square ones.")
    if plan == "on_the_fly":
        drawn = 3 if time_channels else 1
        if "channels" in explicit and model_config.channels != drawn:
            raise ToolError(f"-channels {model_config.channels} does not match the {drawn}-channel images drawn on "
                            f"the fly ({'with' if time_channels else 'without'} -time_channels); leave -channels out.")
        size = model_config.image_size if "image_size" in explicit else height
        return dataclasses.replace(model_config, image_size=size, channels=drawn)
    values = {}
    for name, stored, hint in (
        ("image_size", height, f"build one at that size (`python -m data_prep.quickdraw build ... "
                               f"--image_size {model_config.image_size}`)"),
        ("channels", channels, "build one with the matching channels (--time_channels gives 3)"),
    ):
        asked = getattr(model_config, name)
        if name in explicit and asked != stored:
            raise ToolError(f"-{name} {asked} does not match the data set at {data_path!r}, which holds "
                            f"{height}x{width}x{channels} images: pass -{name} {stored} (or leave it out), or "
                            f"{hint}.")
        values[name] = stored
    return dataclasses.replace(model_config, **values)


def render_plan_of(configs: Mapping[type, Any], info: dict, data_path: str, task: tasks.Task) -> str:
    """'stored' or 'on_the_fly' images for this run (data_prep.pipeline.render_plan); a one-line
    ToolError before training when the data cannot serve the run (no strokes, no images)."""
    from data_prep.pipeline import render_plan

    pipeline = configs[PipelineConfig]
    try:
        plan = render_plan(info, pipeline.render, pipeline.time_channels, configs[AugmentConfig].stroke_augment,
                           f"the data set at {data_path!r}")
    except tfrecords.DatasetInfoError as e:
        raise ToolError(str(e)) from None
    if plan == "on_the_fly" and task.name != "classification":
        raise ToolError(f"The {task.name} models read stored images and the data set at {data_path!r} has none to "
                        "serve this run; rebuild it with --store both (without -time_channels / -stroke_augment).")
    return plan


def read_info(data_path: str) -> dict:
    """dataset_info.json of `data_path`, refused when missing or with an empty train split."""
    try:
        info = tfrecords.read_dataset_info(data_path)
    except tfrecords.DatasetInfoError as e:
        hint = "" if "Build one" in str(e) else (
            " Build one with `python -m data_prep.quickdraw build --source DIR --out DIR` (README: Quick, Draw! "
            "data preparation), or run `make demo` for the embedded data set.")
        raise ToolError(f"-data_path {data_path!r}: {e}{hint}") from None
    if not info.get("classes"):
        raise ToolError(f"The data set at {data_path!r} has no classes; rebuild it with at least one category.")
    return info


def apply_recipe(configs: Mapping[type, Any], recipe: Mapping[type, Mapping[str, Any]], explicit: set[str]
                 ) -> dict[type, Any]:
    """The configs with a task's own defaults (Task.recipe) for every field the preset and the command
    line left at its dataclass default."""
    configs = dict(configs)
    for cls, values in recipe.items():
        chosen = {name: value for name, value in values.items() if name not in explicit}
        if cls in configs and chosen:
            configs[cls] = dataclasses.replace(configs[cls], **chosen)
    return configs


def prepare_run(configs: Mapping[type, Any], explicit: set[str]) -> tuple[tasks.Run, tasks.Task]:
    """Check the configs against model_dir and the data set; returns the Run and its Task."""
    train = configs[TrainConfig]
    model_dir = pathlib.Path(train.model_dir)
    saved = saved_configs(model_dir)
    if train.mode != "train" and saved is None:
        raise ToolError(f"-model_dir {str(model_dir)!r} holds no trained run ({RUN_CONFIG_FILE} missing): "
                        "train first with -mode train, or point -model_dir at a run folder.")
    configs = merge_saved(configs, explicit, saved, train.mode) if saved else dict(configs)
    train = configs[TrainConfig]
    try:
        task = tasks.task_for_model(configs[ModelConfig].model)
    except ValueError as e:
        raise ToolError(f"-model: {e}") from None
    model_name = configs[ModelConfig].model
    if EmbeddingConfig in configs and model_name in EMBEDDING_MODELS:  # the run records the loss it trains
        configs[EmbeddingConfig] = resolved(configs[EmbeddingConfig], model_name)
    if train.mode in ("train", "cv"):
        configs = apply_recipe(configs, task.recipe(configs[ModelConfig].model), explicit)
        train = configs[TrainConfig]
    info = read_info(train.data_path)
    cv = configs.get(CvConfig)
    if cv is not None and cv.fold:  # a cross-validation fold run: its splits are parts of the train split
        try:
            info = folds.fold_info(info, train.data_path, cv, task.name)
        except (folds.FoldError, tfrecords.DatasetInfoError) as e:
            raise ToolError(str(e)) from None
    if train.mode == "train" and int(info["splits"].get(task.train_split, {}).get("num_examples", 0)) == 0:
        raise ToolError(f"The {task.train_split!r} split of the data set at {train.data_path!r} is empty; "
                        "rebuild it with --train_per_class > 0.")
    # A saved run's image size and channels are fixed: the data must match them.
    fixed = explicit if train.mode == "train" else {"image_size", "channels"}
    plan = render_plan_of(configs, info, train.data_path, task)
    configs[ModelConfig] = adapt_to_data(configs[ModelConfig], info, fixed, train.data_path, plan,
                                         configs[PipelineConfig].time_channels)
    for name, value in (("epochs", train.epochs), ("batch_size", configs[PipelineConfig].batch_size),
                        ("keep_checkpoints", train.keep_checkpoints)):
        if value < 1:
            raise ToolError(f"Invalid value for -{name}: {value}. Expected an integer >= 1.")
    for name in ("steps_per_epoch", "steps_per_checkpoint", "bn_recalibration"):
        if getattr(train, name) < 0:
            raise ToolError(f"Invalid value for -{name}: {getattr(train, name)}. Expected an integer >= 0.")
    if train.warmup_steps < -1:
        raise ToolError(f"Invalid value for -warmup_steps: {train.warmup_steps}. Expected an integer >= 0, "
                        "or -1 for a tenth of the run's steps.")
    if train.tflite != "none" and train.mode != "export":
        raise ToolError(f"-tflite {train.tflite} applies to -mode export (a TensorFlow Lite file beside the "
                        f"SavedModel), not to -mode {train.mode}.")
    if not (train.learning_rate > 0 and math.isfinite(train.learning_rate)):
        raise ToolError(f"Invalid value for -learning_rate: {train.learning_rate}. Expected a finite number > 0.")
    run = tasks.Run(configs=configs, info=info, model_dir=model_dir)
    try:
        task.check(run)
    except ValueError as e:
        raise ToolError(str(e)) from None
    per_epoch = steps_per_epoch(run, task)
    if train.mode == "train" and train.warmup_steps >= train.epochs * per_epoch:
        raise ToolError(f"-warmup_steps {train.warmup_steps} leaves no step of the run's {train.epochs * per_epoch} "
                        f"({train.epochs} epochs x {per_epoch} steps) after the warm-up; lower it.")
    if saved and train.mode == "train":
        saved_classes = (json.loads((model_dir / RUN_CONFIG_FILE).read_text()).get("dataset") or {}).get("classes")
        if saved_classes is not None and saved_classes != run.class_names:
            raise ToolError(f"The run in {str(model_dir)!r} was trained on {len(saved_classes)} other classes than the "
                            f"{len(run.class_names)} of {train.data_path!r}; use another -model_dir.")
    return run, task


def save_run_config(run: tasks.Run, task: tasks.Task, strategy: StrategyInfo) -> None:
    record = {
        "configs": {cls.__name__: dataclasses.asdict(config) for cls, config in run.configs.items()},
        "task": task.name,
        "dataset": {"path": str(run.data_path), "classes": run.class_names, "image": run.info.get("image"),
                    "splits": {k: v.get("num_examples") for k, v in run.info["splits"].items()}},
        "strategy": strategy.describe(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    write_json_atomic(run.model_dir / RUN_CONFIG_FILE, record)


# ---------------------------------------------------------------- training


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy: mixed_float16 on GPU, mixed_bfloat16 on CPU, else float32."""
    if not mixed:
        policy = "float32"
    else:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def warmup_steps(train: TrainConfig, total_steps: int) -> int:
    """Steps of the linear learning-rate warm-up: -warmup_steps, or a tenth of the run when it is -1."""
    return total_steps // 10 if train.warmup_steps == -1 else train.warmup_steps


def learning_rate_schedule(train: TrainConfig, total_steps: int) -> Any:
    """The recipe's learning rate: a number (constant) or a schedule of the optimizer step over `total_steps`."""
    warmup = warmup_steps(train, total_steps)
    if train.lr_schedule == "constant" and not warmup:
        return train.learning_rate
    # alpha=1 holds the peak after the warm-up: the constant schedule with a warm-up.
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else train.learning_rate, decay_steps=max(1, total_steps - warmup),
        alpha=0.0 if train.lr_schedule == "cosine" else 1.0,
        warmup_target=train.learning_rate if warmup else None, warmup_steps=warmup)


def make_optimizer(train: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer of the recipe, with its learning-rate schedule over `total_steps`."""
    rate = learning_rate_schedule(train, total_steps)
    decay = train.weight_decay if train.weight_decay > 0 else None
    if train.optimizer == "adam":
        optimizer = keras.optimizers.Adam(rate)
    elif train.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=decay or 0.0)
    elif train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=decay)
    else:
        raise ToolError(f"Invalid value for -optimizer: {train.optimizer!r}. Expected adam, adamw or sgd.")
    if decay and train.optimizer != "adam":
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def steps_per_epoch(run: tasks.Run, task: tasks.Task) -> int:
    if run.train.steps_per_epoch:
        return run.train.steps_per_epoch
    return max(1, math.ceil(run.num_examples(task.train_split) / task.batch_size(run)))


def folder_sizes(model_dir: pathlib.Path) -> dict[str, int]:
    """Bytes of the files under `model_dir`: "total", and the checkpoints folder, best.keras, the
    TensorBoard logs and the export by name (those present)."""
    def size(path: pathlib.Path) -> int:
        total = 0
        for f in [path] if path.is_file() else path.rglob("*"):
            try:
                total += f.stat().st_size if f.is_file() else 0
            except OSError:  # removed meanwhile (another process's temporary file)
                pass
        return total

    sizes = {"total": size(model_dir)}
    for name in (CHECKPOINT_DIR, BEST_FILE, LOG_DIR, EXPORT_DIR):
        if (model_dir / name).exists():
            sizes[name] = size(model_dir / name)
    return sizes


def _report_size(model_dir: pathlib.Path, summary: dict, is_chief: bool) -> None:
    """Logs and records the run folder's size, on the chief only: the other workers share the folder
    while the chief is still writing it, so their reading would be a race."""
    if not is_chief:
        return
    sizes = folder_sizes(model_dir)
    parts = ", ".join(f"{name} {value / 1e6:.1f} MB" for name, value in sizes.items() if name != "total")
    _log(f"run folder {model_dir}: {sizes['total'] / 1e6:.1f} MB" + (f" ({parts})" if parts else ""))
    summary["run_folder_bytes"] = sizes


def _fit_segments(step: int, per_epoch: int, epochs: int) -> list[tuple[int, int]]:
    """(initial_epoch, steps in the first epoch) of the fit calls that finish a run now at `step`."""
    epoch, done = divmod(step, per_epoch)
    if epoch >= epochs:
        return []
    if done:
        segments = [(epoch, per_epoch - done)]
        if epoch + 1 < epochs:
            segments.append((epoch + 1, per_epoch))
        return segments
    return [(epoch, per_epoch)]


def load_weights_file(model: keras.Model, ckpt: str) -> None:
    """Load the weights of the -ckpt file `ckpt` into `model`, the run's own architecture: a .keras model
    file (its weights only) or a .weights.h5 file. ToolError naming the file when it is missing or does not
    fit. Training's warm start and evaluate/test/export's -ckpt PATH both load through here."""
    path = pathlib.Path(ckpt)
    if not path.is_file():
        raise ToolError(f"-ckpt {ckpt!r} is not a file (expected a .keras or .weights.h5 file; evaluate, test "
                        "and export also take 'last' or 'best').")
    _check_recorded(path, f"-ckpt {ckpt!r}")
    try:
        if path.name.endswith(".keras"):
            model.set_weights(keras.models.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    except (OSError, ValueError) as e:
        raise ToolError(f"-ckpt {ckpt!r} does not fit the run's model: {e}") from None


def _check_recorded(path: pathlib.Path, what: str) -> None:
    """ToolError when a weights file of a run no longer matches the checksum recorded when it was written."""
    problem = recorded_problem(path)
    if problem:
        raise ToolError(f"{what}: {str(path)!r} {problem}; use another checkpoint (-ckpt last, or a file in "
                        "the checkpoints folder).")


def load_source_model(init_from: str) -> tuple[keras.Model, str]:
    """The model -init_from names: a run folder's model with its latest checkpoint, or a .keras file."""
    path = pathlib.Path(init_from)
    if path.is_dir():
        if not (path / RUN_CONFIG_FILE).is_file():
            raise ToolError(f"-init_from {init_from!r} is a folder without {RUN_CONFIG_FILE}: expected a run folder "
                            "of train_sketch_net.py or a .keras file.")
        try:
            run, task = prepare_run(*resolve("", {"mode": "test", "model_dir": str(path)}))
            model, source = load_weights_for(run, task)
        except ToolError as e:
            raise ToolError(f"-init_from {init_from!r}: {e}") from None
        return model, f"run {init_from!r} ({run.model.model}, {pathlib.Path(source).name})"
    if path.is_file() and path.name.endswith(".keras"):
        _check_recorded(path, f"-init_from {init_from!r}")
        try:
            return keras.models.load_model(path, compile=False), repr(init_from)
        except (OSError, ValueError, TypeError) as e:
            raise ToolError(f"-init_from {init_from!r} cannot be read as a Keras model: {e}") from None
    raise ToolError(f"-init_from {init_from!r} is neither a run folder nor a .keras file.")


def _start_weights(model: keras.Model, store: CheckpointStore, ckpt: str, init_from: str = "") -> str:
    """Resume from the latest checkpoint, else load -ckpt weights or -init_from layers, else keep the
    fresh ones."""
    state = store.latest()
    if state is not None:
        store.restore(model, state)
        note = f"resuming from {state.file} (step {state.step}, epoch {state.epoch})"
        ignored = [f"-{name} {value!r}" for name, value in (("ckpt", ckpt), ("init_from", init_from)) if value]
        return note + (f"; {' and '.join(ignored)} ignored: the run already has checkpoints" if ignored else "")
    if ckpt and init_from:
        raise ToolError("-ckpt and -init_from both name starting weights: give one (-ckpt for the same model, "
                        "-init_from for the layers shared with another).")
    if ckpt:
        load_weights_file(model, ckpt)
        return f"starting from the weights of {ckpt}"
    if init_from:
        source, name = load_source_model(init_from)
        try:
            done = warm_start.copy_matching_layers(source, model, name)
        except warm_start.WarmStartError as e:
            raise ToolError(str(e)) from None
        fresh = f"; fresh: {', '.join(done['kept_fresh'])}" if done["kept_fresh"] else ""
        return f"starting from {len(done['copied'])} layers of {name}{fresh}"
    return "starting from fresh weights"


def train(run: tasks.Run, task: tasks.Task, strategy: StrategyInfo) -> dict:
    """Fit the run's model (resuming when it has checkpoints); returns a summary dict.

    Steps: seed and record the run (_prepare), build the model from its last checkpoint (_build),
    log the plan, make the callbacks and data (_fit_inputs), fit epoch segments until done or
    stopped (_fit), then refuse a diverged run (_check_diverged) and summarise."""
    config = run.train
    policy = _prepare(run, task, strategy)
    per_epoch = steps_per_epoch(run, task)
    total = config.epochs * per_epoch
    warmup = warmup_steps(config, total)
    store = CheckpointStore(run.model_dir / CHECKPOINT_DIR, keep=config.keep_checkpoints)
    model, start_note = _build(run, task, strategy, store, total)
    step = cb.optimizer_step(model)
    batch = task.batch_size(run)
    _log(f"strategy: {strategy.describe()}; precision: {policy}")
    _log(f"data: {run.num_examples(task.train_split)} train / {run.num_examples(task.test_split)} test images of "
         f"{run.model.image_size}x{run.model.image_size}x{run.model.channels}, {len(run.class_names)} classes "
         f"({run.data_path})")
    _log(f"model: {run.model.model}, {model.count_params():,} parameters; global batch {batch} "
         f"({batch / strategy.replicas:g} per replica), {per_epoch} steps per epoch, {config.epochs} epochs, "
         f"learning rate {config.learning_rate:g} ({config.lr_schedule}, {warmup} warm-up steps); {start_note}")
    segments = _fit_segments(step, per_epoch, config.epochs)
    if segments and segments[0][1] != per_epoch:
        _log(f"finishing epoch {segments[0][0] + 1}: {segments[0][1]} of its {per_epoch} steps left")
    summary = {"model_dir": str(run.model_dir), "steps_per_epoch": per_epoch, "total_steps": total,
               "warmup_steps": warmup,
               "start_step": step, "strategy": strategy.describe(), "precision": policy}
    if not segments:
        _log(f"training already complete: step {step} of {total}")
        summary.update(final_step=step, history=cb.load_history(run.model_dir / HISTORY_FILE))
        _report_size(run.model_dir, summary, strategy.is_chief)
        return summary

    inputs = _fit_inputs(run, task, strategy, model, store, per_epoch, step)
    started = time.perf_counter()
    _fit(run, task, strategy, model, store, inputs, segments, per_epoch)
    _check_diverged(inputs.nan_guard, store, config)
    final_step = cb.optimizer_step(model)
    history_path = run.model_dir / HISTORY_FILE
    written = f"history in {history_path}" if strategy.is_chief else "files written by the chief"
    _log(f"trained to step {final_step} of {total} in {time.perf_counter() - started:.1f} s; {written}")
    summary.update(final_step=final_step, history=inputs.recorder.rows)
    _report_size(run.model_dir, summary, strategy.is_chief)
    return summary


def _prepare(run: tasks.Run, task: tasks.Task, strategy: StrategyInfo) -> str:
    """Seed, determinism and precision of the run, its folder and (on the chief) its saved configs;
    returns the precision policy's name."""
    config = run.train
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = set_precision(config.mixed_precision)
    run.model_dir.mkdir(parents=True, exist_ok=True)
    if strategy.is_chief:
        save_run_config(run, task, strategy)
    return policy


def _build(run: tasks.Run, task: tasks.Task, strategy: StrategyInfo, store: CheckpointStore,
           total: int) -> tuple[keras.Model, str]:
    """The compiled model under the strategy's scope, with the weights -ckpt starts from, and a note
    saying which; a damaged or foreign checkpoint is a ToolError."""
    config = run.train
    with strategy.strategy.scope():
        model = task.build_model(run)
        model.compile(optimizer=make_optimizer(config, total), jit_compile=config.jit_compile, **task.compile_args(run))
        ensure_optimizer_built(model)
        try:
            start_note = _start_weights(model, store, config.ckpt, config.init_from)
        except CheckpointError as e:
            raise ToolError(str(e)) from None
    return model, start_note


@dataclasses.dataclass
class _FitInputs:
    """What model.fit is given (callbacks, data) and the callbacks train() reads afterwards."""

    callbacks: list
    train_data: tf.data.Dataset
    validation: tf.data.Dataset | None
    stopper: cb.GracefulStop
    nan_guard: cb.NanGuard
    recorder: cb.HistoryRecorder


def _fit_inputs(run: tasks.Run, task: tasks.Task, strategy: StrategyInfo, model: keras.Model,
                store: CheckpointStore, per_epoch: int, step: int) -> _FitInputs:
    """The callbacks in their order, the training stream seeded by the step it resumes at, and the
    validation data (read whole by every worker under multi-worker training)."""
    config = run.train
    monitor, mode = task.monitor
    history_path = run.model_dir / HISTORY_FILE
    nan_guard = cb.NanGuard()
    checkpointer = cb.PeriodicCheckpoint(store, per_epoch, config.steps_per_checkpoint, strategy.is_chief)
    recorder = cb.HistoryRecorder(history_path, run.model_dir / CURVES_FILE, batch_size=task.batch_size(run),
                                  title=f"{run.model.model} on {pathlib.Path(run.data_path).name}",
                                  is_chief=strategy.is_chief)
    keeper = cb.BestModelKeeper(run.model_dir / BEST_FILE, monitor, mode,
                                best=cb.best_in_history(recorder.rows, monitor, mode), is_chief=strategy.is_chief)
    stopper = cb.GracefulStop()
    # The epoch's history row and best model are written before its checkpoint: a run killed in between
    # redoes the end of the epoch and rewrites the row, instead of resuming past an epoch it never recorded.
    callbacks = [stopper, nan_guard, *task.callbacks(run, model), recorder, keeper, checkpointer]
    calibration = task.calibration_dataset(run, seed=config.seed + step + 1)
    if config.bn_recalibration and calibration is not None and cb.batch_norm_layers(model):
        # First, so that validation, checkpoints and the best model all see recalibrated statistics.
        callbacks.insert(0, cb.BatchNormRecalibration(calibration, config.bn_recalibration))
    train_data = task.train_dataset(run, seed=config.seed + step)
    if strategy.is_chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.model_dir / LOG_DIR), update_freq="epoch",
                                                     write_graph=False, profile_batch=0))
        callbacks.append(cb.StepSummaries(run.model_dir / LOG_DIR / "train", train_data))
    validation = task.validation_dataset(run)
    if validation is not None and strategy.num_workers > 1:
        # Every worker reads the whole split and keeps its share of each batch: the same number of
        # steps on every worker (file sharding could give them different counts).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        validation = validation.with_options(options)
    return _FitInputs(callbacks, train_data, validation, stopper, nan_guard, recorder)


def _fit(run: tasks.Run, task: tasks.Task, strategy: StrategyInfo, model: keras.Model, store: CheckpointStore,
         inputs: _FitInputs, segments: list[tuple[int, int]], per_epoch: int) -> None:
    """model.fit over the epoch segments, stopping at the first non-finite loss; a signal saves a
    checkpoint (on the chief, when the weights are finite) and is a TrainingInterrupted, as is a
    second Ctrl-C (at once, without a checkpoint)."""
    config = run.train
    try:
        with inputs.stopper:
            for initial_epoch, steps in segments:
                model.fit(inputs.train_data, epochs=initial_epoch + 1 if steps != per_epoch else config.epochs,
                          initial_epoch=initial_epoch, steps_per_epoch=steps, validation_data=inputs.validation,
                          validation_steps=task.validation_steps(run) if inputs.validation is not None else None,
                          callbacks=inputs.callbacks, verbose=config.verbose, shuffle=False)
                if inputs.nan_guard.bad_step is not None:
                    break
    except cb.StopRequested as stop:
        step = cb.optimizer_step(model)
        saved = strategy.is_chief and cb.weights_finite(model)
        if saved:
            store.save(model, epoch=step // per_epoch, reason=stop.signal_name)
        last = store.latest()
        where = f"checkpoint saved in {store.directory}" if saved else (
            f"last checkpoint: {last.file} (step {last.step})" if last else "no checkpoint")
        raise TrainingInterrupted(
            f"Stopped by {stop.signal_name} at step {step} (epoch {step // per_epoch + 1} of {config.epochs}); "
            f"{where}. Run the same command again to resume.") from None
    except KeyboardInterrupt:
        last = store.latest()
        raise TrainingInterrupted(
            "Interrupted twice: stopped at once without a new checkpoint; "
            + (f"the last one is {last.file} (step {last.step}). " if last else "there is none yet. ")
            + "Run the same command again to resume.") from None


def _check_diverged(nan_guard: cb.NanGuard, store: CheckpointStore, config: TrainConfig) -> None:
    """A TrainingDiverged naming the step, the value and the last good checkpoint when the loss
    became non-finite."""
    if nan_guard.bad_step is not None:
        last = store.latest()
        kept = f"the last good checkpoint is {last.file} (step {last.step})" if last else "no checkpoint was written"
        raise TrainingDiverged(
            f"The loss became {nan_guard.bad_value} at step {nan_guard.bad_step}; training stopped and {kept} in "
            f"{store.directory}. Lower -learning_rate (now {config.learning_rate}), or check the data.")


# ---------------------------------------------------------------- evaluate, test, export


def load_weights_for(run: tasks.Run, task: tasks.Task) -> tuple[keras.Model, str]:
    """The run's model with the weights -ckpt names ('' or 'last', 'best', or a path)."""
    ckpt = run.train.ckpt or "last"
    set_precision(run.train.mixed_precision)
    if ckpt == "best":
        path = run.model_dir / BEST_FILE
        if not path.is_file():
            raise ToolError(f"-ckpt best: {str(path)!r} does not exist (it is written when validation improves).")
        _check_recorded(path, "-ckpt best")
        return keras.models.load_model(path, compile=False), str(path)
    model = task.build_model(run)
    if ckpt == "last":
        store = CheckpointStore(run.model_dir / CHECKPOINT_DIR)
        try:
            state = store.restore(model)
        except CheckpointError as e:
            raise ToolError(str(e)) from None
        if state is None:
            raise ToolError(f"No checkpoint in {str(store.directory)!r}: train first (-mode train), or pass "
                            "-ckpt best or -ckpt PATH.")
        return model, str(store.directory / state.file)
    load_weights_file(model, ckpt)  # a .keras file too goes into the run's own model
    return model, ckpt


def evaluate(run: tasks.Run, task: tasks.Task) -> dict:
    """-mode evaluate: the task's metrics, written to <model_dir>/evaluate.json."""
    model, source = load_weights_for(run, task)
    result = {**task.evaluate(run, model), "checkpoint": source, "data_path": run.data_path}
    write_json_atomic(run.model_dir / EVALUATE_FILE, result)
    return result


def test(run: tasks.Run, task: tasks.Task) -> dict:
    """-mode test: features and retrieval metrics, written to <model_dir>/similarity.json, and the
    features in TensorBoard's embedding projector (training/projector.py, <model_dir>/logs/projector)."""
    from training import projector

    model, source = load_weights_for(run, task)
    result = {**task.test(run, model), "checkpoint": source, "data_path": run.data_path}
    if result.get("features_file"):
        shown = projector.write_test_projector(run.model_dir / LOG_DIR / projector.PROJECTOR_DIR,
                                               run.model_dir / result["features_file"], run.data_path,
                                               task.test_split)
        result["projector"] = shown
        _log(f"embedding projector: {shown['points']} of {shown['of']} points (at most "
             f"{projector.PROJECTOR_POINTS}), {'with' if shown['sprite'] else 'without'} drawings, in "
             f"{shown['dir']} (tensorboard --logdir {run.model_dir / LOG_DIR})")
    write_json_atomic(run.model_dir / SIMILARITY_FILE, result)
    return result


def export(run: tasks.Run, task: tasks.Task) -> dict:
    """-mode export: SavedModel, .keras file and model_meta.json in <model_dir>/export (and the
    TensorFlow Lite file of -tflite)."""
    model, source = load_weights_for(run, task)
    export_dir = run.model_dir / EXPORT_DIR
    remove_tflite_files(export_dir)
    meta = task.export(run, model, export_dir)
    return {**meta, "checkpoint": source, "export_dir": str(export_dir)}


def remove_tflite_files(export_dir: pathlib.Path) -> list[pathlib.Path]:
    """Delete the TensorFlow Lite files of an earlier export in `export_dir` (photo branch included):
    a re-export without -tflite, or with the other quantization, must not leave a .tflite of older
    weights beside the new SavedModel. Returns the files removed."""
    stale = [path for name in sorted(set(tflite.FILES.values())) for path in export_dir.rglob(name)]
    for path in stale:
        path.unlink()
    return stale


MODES = {"evaluate": evaluate, "test": test, "export": export}


def run_mode(configs: Mapping[type, Any], explicit: set[str]) -> dict:
    """Run the mode of TrainConfig: check everything, build the strategy (train), run; -mode cv is
    training/cross_validation.py's."""
    if configs[TrainConfig].mode == "cv":
        from training import cross_validation

        return cross_validation.run(configs, explicit)
    run, task = prepare_run(configs, explicit)  # reads JSON only: TensorFlow's runtime has not started
    try:
        if run.train.mode == "train":
            # Logical CPU devices must be set before the runtime starts, so the strategy comes first.
            return train(run, task, make_strategy(run.train.strategy, run.train.cpu_devices))
        return MODES[run.train.mode](run, task)
    except tf.errors.DataLossError as e:  # a corrupt record, met mid-fit or mid-evaluation
        raise ToolError(data_loss_message(run.data_path, run.info, task.train_split, e)) from None


def data_loss_message(data_path: str, info: dict, first_split: str, error: Exception) -> str:
    """One line for a DataLossError: the damaged shard (checked against dataset_info.json) and what to do."""
    lines = (getattr(error, "message", "") or str(error)).splitlines() or [type(error).__name__]
    # Graph-mode messages open with "Graph execution error:" and the node; the cause is the first plain line.
    tf_message = next((line for line in lines if line.strip() and not line[0].isspace() and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces"))), lines[0])
    damaged = verify.damaged_shard(data_path, info, first_split)
    where = damaged or "every shard file matches dataset_info.json, so the damage is elsewhere (a checkpoint?)"
    return (f"TensorFlow met corrupt data ({tf_message}) in -data_path {data_path!r}: {where}. Run "
            f"`python -m data_prep.verify {data_path}` to check the whole data set, then rebuild it.")


def resolve(preset: str, command_line: Mapping[str, Any]) -> tuple[dict[type, Any], set[str]]:
    """Configs of the tool from a preset name and the flags given on the command line."""
    try:
        return presets.resolve_configs(config_classes(), preset, command_line)
    except (presets.PresetError, TypeError, ValueError) as e:
        raise ToolError(str(e)) from None
