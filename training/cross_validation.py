"""-mode cv: k-fold cross-validation of a classifier on the train split (the Sketch-a-Net study's protocol).

Fold k of K (training/folds.py: a stable hash of each record's id) is a normal run folder,
<model_dir>/fold_<k>of<K>/, trained on the other folds and then evaluated and tested (-mode evaluate and
-mode test) on fold k, which it also validates on; `-mode evaluate|test|export -model_dir` that folder works
as for any run. A fold ends by writing its figures to cv_fold.json: a rerun keeps a fold that has it
(its folder untouched) and resumes any other from its checkpoints, as -mode train does. cv.json in
<model_dir> then holds each fold's figures and their mean and sample standard deviation (ddof 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from configuration_sketch import CvConfig, ModelConfig, TrainConfig
from data_prep import tfrecords
from data_prep.atomic_files import write_json_atomic
from training import folds, tasks, trainer
from training.strategy import make_strategy

CV_FILE = "cv.json"
FOLD_FILE = "cv_fold.json"
METRICS = ("top1_accuracy", "top5_accuracy", "map")
DDOF = 1
# Flags -mode cv refuses: it sets them per fold itself, or no fold run could use them.
REFUSED_FLAGS = {
    "fold": "-mode cv trains every fold; to train one fold alone use -mode train -fold k -folds K",
    "ckpt": "each fold starts fresh or resumes from its own checkpoints",
    "tflite": "export a fold's run folder with -mode export -model_dir <model_dir>/fold_<k>of<K>",
}
# Config fields a finished fold may differ in from a rerun without being stale.
IGNORED_FIELDS = ("mode", "model_dir", "verbose")


def fold_dir(model_dir: str | pathlib.Path, fold: int, total: int) -> pathlib.Path:
    """The run folder of fold `fold` (1-based) of `total`."""
    return pathlib.Path(model_dir) / f"fold_{fold}of{total}"


def fold_configs(configs: Mapping[type, Any], fold: int) -> dict[type, Any]:
    """The configs of fold run `fold`: -mode train into its own folder, holding out that fold."""
    train, cv = configs[TrainConfig], configs[CvConfig]
    out = dict(configs)
    out[TrainConfig] = dataclasses.replace(train, mode="train", model_dir=str(fold_dir(train.model_dir, fold,
                                                                                      cv.folds)))
    out[CvConfig] = dataclasses.replace(cv, fold=fold)
    return out


def config_record(configs: Mapping[type, Any]) -> dict[str, dict]:
    """Configs as JSON (by class name), without the fields a rerun may change freely."""
    record = {cls.__name__: dataclasses.asdict(config) for cls, config in configs.items()}
    for values in record.values():
        for name in IGNORED_FIELDS:
            values.pop(name, None)
    return record


def mean_and_std(rows: list[dict], names: tuple[str, ...] = METRICS) -> tuple[dict, dict]:
    """Mean and sample standard deviation (ddof DDOF) over the folds of each figure in `names`."""
    values = {name: np.array([row[name] for row in rows], dtype=np.float64) for name in names}
    return ({name: float(v.mean()) for name, v in values.items()},
            {name: float(v.std(ddof=DDOF)) for name, v in values.items()})


def check(configs: Mapping[type, Any], explicit: set[str]) -> None:
    """ToolError for flags -mode cv cannot honour and for settings no fold can train with."""
    for name, why in REFUSED_FLAGS.items():
        if name in explicit:
            raise trainer.ToolError(f"-{name} does not apply to -mode cv: {why}.")
    try:
        folds.check_settings(configs[CvConfig], need_fold=False)
    except folds.FoldError as e:
        raise trainer.ToolError(str(e)) from None


def plan(configs: Mapping[type, Any]) -> tuple[dict, folds.Assignment]:
    """The data set's info and its fold assignment, refused (ToolError) for a model, data set or
    number of folds cross-validation cannot use. Plain Python: the TensorFlow runtime stays unstarted."""
    train, cv = configs[TrainConfig], configs[CvConfig]
    info = trainer.read_info(train.data_path)
    try:
        task = tasks.task_for_model(configs[ModelConfig].model)
        folds.check_supported(info, task.name)
        assignment = folds.assign(folds.split_ids_and_labels(train.data_path, info), cv.folds, cv.fold_seed)
        folds.check_data(assignment, [str(c) for c in info["classes"]], train.data_path)
    except (ValueError, tfrecords.DatasetInfoError) as e:
        raise trainer.ToolError(str(e)) from None
    return info, assignment


def finished_fold(folder: pathlib.Path, configs: Mapping[type, Any]) -> dict | None:
    """The figures of a fold finished by an earlier run (None when it is not); ToolError when it was
    trained with other settings than `configs`."""
    path = folder / FOLD_FILE
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise trainer.ToolError(f"{str(path)!r} is damaged ({e}); delete it to evaluate that fold again.") from None
    wanted = config_record(configs)
    had = done.get("config") or {}
    changed = sorted(f"-{name}" for cls, values in wanted.items() for name, value in values.items()
                     if (had.get(cls) or {}).get(name, value) != value)
    if changed:
        raise trainer.ToolError(f"{str(folder)!r} was cross-validated with other values of {', '.join(changed)}; "
                                "use another -model_dir for these settings, or the earlier ones to finish the run.")
    return done


def run_fold(configs: Mapping[type, Any], explicit: set[str], fold: int, strategy) -> dict:
    """Train fold `fold` (resuming from its checkpoints), evaluate and test it on its held-out records,
    and write its figures to its cv_fold.json (on the chief); returns them."""
    configs = fold_configs(configs, fold)
    run, task = trainer.prepare_run(configs, explicit | {"fold"})
    trained = trainer.train(run, task, strategy)
    evaluated = trainer.evaluate(run, task)
    tested = trainer.test(run, task)
    result = {
        "fold": fold,
        "run_folder": run.model_dir.name,
        "train_records": run.num_examples(task.train_split),
        "held_out_records": run.num_examples(task.test_split),
        "final_step": trained["final_step"],
        "loss": evaluated["loss"],
        **{name: (tested if name == "map" else evaluated)[name] for name in METRICS},
        "chance": {**evaluated["chance"], "map": tested["chance"]["map"]},
        "checkpoint": os.path.relpath(evaluated["checkpoint"], run.model_dir),  # valid where the folder moves
        "config": config_record(configs),
    }
    if strategy.is_chief:
        write_json_atomic(run.model_dir / FOLD_FILE, result)
    return result


def summary(configs: Mapping[type, Any], assignment: folds.Assignment, info: dict, rows: list[dict]) -> dict:
    """The content of cv.json: per-fold figures, their mean and spread, chance, counts, seeds, config."""
    train, cv = configs[TrainConfig], configs[CvConfig]
    mean, std = mean_and_std(rows)
    chance, _ = mean_and_std([row["chance"] for row in rows])
    return {
        "folds": cv.folds,
        "mean": mean,
        "std": std,
        "ddof": DDOF,
        "chance": chance,
        "per_fold": [{k: v for k, v in row.items() if k != "config"} for row in rows],
        "records": {"split": folds.SOURCE_SPLIT, "total": assignment.total, "per_fold": list(assignment.per_fold),
                    "train_per_fold": [assignment.train_records(k) for k in range(cv.folds)]},
        "classes": len(info["classes"]),
        "assignment": folds.HASH_NAME,
        "seeds": {"seed": train.seed, "fold_seed": cv.fold_seed},
        "data_path": train.data_path,
        "config": {cls.__name__: dataclasses.asdict(config) for cls, config in configs.items()},
    }


def run(configs: Mapping[type, Any], explicit: set[str]) -> dict:
    """-mode cv: every fold in turn (finished ones kept), then cv.json in -model_dir; returns its content."""
    check(configs, explicit)
    info, assignment = plan(configs)
    train, cv = configs[TrainConfig], configs[CvConfig]
    strategy = make_strategy(train.strategy, train.cpu_devices)  # before the runtime starts
    rows = []
    for fold in range(1, cv.folds + 1):
        folder = fold_dir(train.model_dir, fold, cv.folds)
        done = finished_fold(folder, fold_configs(configs, fold))
        if done is not None:
            print(f"fold {fold} of {cv.folds}: finished earlier ({FOLD_FILE} in {folder}), kept", flush=True)
            rows.append(done)
            continue
        print(f"fold {fold} of {cv.folds}: training on {assignment.train_records(fold - 1)} records, holding out "
              f"{assignment.per_fold[fold - 1]}, in {folder}", flush=True)
        try:
            rows.append(run_fold(configs, explicit, fold, strategy))
        except tf.errors.DataLossError as e:
            raise trainer.ToolError(trainer.data_loss_message(train.data_path, info, folds.SOURCE_SPLIT, e)) from None
        keras.backend.clear_session()
    result = summary(configs, assignment, info, rows)
    if strategy.is_chief:
        write_json_atomic(pathlib.Path(train.model_dir) / CV_FILE, result)
    result["cv_file"] = str(pathlib.Path(train.model_dir) / CV_FILE)
    return result
