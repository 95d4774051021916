"""Training checkpoints that survive kill -9: weights and optimizer state, written atomically.

Layout of <model_dir>/checkpoints/:

    ckpt-00000120.weights.h5   model and optimizer variables after optimizer step 120
    state.json                 {"step": 120, "epoch": 2, "file": "ckpt-00000120.weights.h5", ...}

A checkpoint file is written under a temporary name and renamed when complete; state.json is
replaced (also by rename) only after that, so at every instant state.json names a complete
file: a process killed while writing leaves the previous checkpoint in force. The newest
`keep` files are kept. The optimizer's step counter is part of the optimizer state, so a
restored run continues the step count (and the learning-rate schedule) where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import keras

STATE_FILE = "state.json"
PREFIX = "ckpt-"
SUFFIX = ".weights.h5"


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be used; the message names it and why."""


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """What state.json records about the latest checkpoint."""

    step: int
    epoch: int
    file: str
    saved_at: float
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _write_json_atomic(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_optimizer_built(model: keras.Model) -> None:
    """Create the optimizer's variables so that a checkpoint can be loaded into them."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)


class CheckpointStore:
    """Save, find and restore the checkpoints of one run."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointError(f"Invalid value for argument `keep`. Received: {keep!r}. Expected an integer >= 1.")
        self.directory = pathlib.Path(directory)
        self.keep = keep

    @property
    def state_path(self) -> pathlib.Path:
        return self.directory / STATE_FILE

    def latest(self) -> CheckpointState | None:
        """The state of the newest complete checkpoint, or None when there is none."""
        if not self.state_path.is_file():
            return None
        try:
            raw = json.loads(self.state_path.read_text())
            state = CheckpointState(int(raw["step"]), int(raw["epoch"]), str(raw["file"]),
                                    float(raw.get("saved_at", 0.0)), str(raw.get("reason", "")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{str(self.state_path)!r} is damaged ({e}); delete the checkpoints folder "
                                  "to start over, or fix the file.") from None
        if not (self.directory / state.file).is_file():
            raise CheckpointError(f"{str(self.state_path)!r} names {state.file!r}, which is missing from "
                                  f"{str(self.directory)!r}.")
        return state

    def save(self, model: keras.Model, *, epoch: int, reason: str = "") -> CheckpointState:
        """Write the model and optimizer state at the optimizer's current step; returns its state."""
        optimizer = getattr(model, "optimizer", None)
        step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{step:08d}{SUFFIX}"
        tmp = self.directory / f".tmp-{os.getpid()}-{name}"
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, self.directory / name)
        state = CheckpointState(step, int(epoch), name, time.time(), reason)
        _write_json_atomic(self.state_path, state.as_dict())
        self._prune(keep_file=name)
        return state

    def _prune(self, keep_file: str) -> None:
        files = sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"))
        stale = [f for f in files if f.name != keep_file][: max(0, len(files) - self.keep)]
        for f in stale:
            f.unlink(missing_ok=True)
        for f in self.directory.glob(".tmp-*"):
            if not _owned_by_live_process(f.name):
                f.unlink(missing_ok=True)

    def restore(self, model: keras.Model, state: CheckpointState | None = None) -> CheckpointState | None:
        """Load the latest (or the given) checkpoint into `model` and its optimizer; None if there is none."""
        state = state or self.latest()
        if state is None:
            return None
        ensure_optimizer_built(model)
        path = self.directory / state.file
        try:
            model.load_weights(path)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"Cannot load checkpoint {str(path)!r} into model {model.name!r}: {e}. "
                                  "Was it written by another model or configuration?") from None
        return state


def _owned_by_live_process(name: str) -> bool:
    """True when a '.tmp-<pid>-...' file belongs to a process that still runs (it may be writing it)."""
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
