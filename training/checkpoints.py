"""Training checkpoints that survive kill -9 and bit rot: weights and optimizer state, written
atomically, with a checksum checked on load.

Layout of <model_dir>/checkpoints/:

    ckpt-00000120.weights.h5   model and optimizer variables after optimizer step 120
    state.json                 the latest checkpoint {"step": 120, "epoch": 2, "file": ..., "sha256": ...,
                               "bytes": ...} and, under "checkpoints", every kept one (oldest first)

A checkpoint file is written under a temporary name, hashed (SHA-256 of the bytes on disk) and
renamed when complete; state.json is replaced (also by rename) only after that, so at every instant
state.json names complete files: a process killed while writing leaves the previous checkpoint in
force. The newest `keep` checkpoints are kept, each a full resume point (optimizer included).

Loading checks the size and SHA-256 recorded when the file was written. A latest checkpoint that is
missing, truncated or corrupt (a flipped bit loads without error and gives garbage weights) is
skipped with a warning for the newest good one before it; the next save forgets the skipped one.
The optimizer's step counter is part of the optimizer state, so a restored run continues the step
count (and the learning-rate schedule) where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable

import keras

from data_prep.atomic_files import write_json_atomic

STATE_FILE = "state.json"
PREFIX = "ckpt-"
SUFFIX = ".weights.h5"


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be used; the message names it and why."""


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """What state.json records about one checkpoint (sha256 and bytes are None in folders written
    before checksums were recorded: such a file is loaded unchecked)."""

    step: int
    epoch: int
    file: str
    saved_at: float
    reason: str
    sha256: str | None = None
    bytes: int | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> CheckpointState:
        return cls(int(raw["step"]), int(raw["epoch"]), str(raw["file"]), float(raw.get("saved_at", 0.0)),
                   str(raw.get("reason", "")), None if raw.get("sha256") is None else str(raw["sha256"]),
                   None if raw.get("bytes") is None else int(raw["bytes"]))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHECKSUM_SUFFIX = ".sha256.json"


def record_checksum(path: str | os.PathLike) -> None:
    """Write <path>.sha256.json ({"sha256", "bytes"}) beside a file saved outside a store (best.keras), so
    that loading it can be checked as a checkpoint is."""
    path = pathlib.Path(path)
    write_json_atomic(path.with_name(path.name + CHECKSUM_SUFFIX),
                      {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size})


def recorded_problem(path: str | os.PathLike) -> str | None:
    """Why the weights file `path` does not match what was recorded when it was written (its
    .sha256.json, or the state.json of the checkpoints folder holding it); None when it matches or
    nothing was recorded (a file from elsewhere)."""
    path = pathlib.Path(path)
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if sidecar.is_file():
        try:
            raw = json.loads(sidecar.read_text())
            state = CheckpointState(0, 0, path.name, 0.0, "", str(raw["sha256"]), int(raw["bytes"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            return f"has a damaged checksum file {str(sidecar)!r} ({e})"
        return CheckpointStore(path.parent).problem(state)
    store = CheckpointStore(path.parent)
    try:
        records = [r for r in store.records() if r.file == path.name]
    except CheckpointError:
        return None
    return store.problem(records[-1]) if records else None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def ensure_optimizer_built(model: keras.Model) -> None:
    """Create the optimizer's variables so that a checkpoint can be loaded into them."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)


class CheckpointStore:
    """Save, find, check and restore the checkpoints of one run; `warn` receives the fallback warnings."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2, warn: Callable[[str], None] = _warn):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointError(f"Invalid value for argument `keep`. Received: {keep!r}. Expected an integer >= 1.")
        self.directory = pathlib.Path(directory)
        self.keep = keep
        self.warn = warn

    @property
    def state_path(self) -> pathlib.Path:
        return self.directory / STATE_FILE

    def records(self) -> list[CheckpointState]:
        """Every checkpoint state.json records, oldest first ([] when there is none); unchecked."""
        if not self.state_path.is_file():
            return []
        try:
            raw = json.loads(self.state_path.read_text())
            newest = CheckpointState.from_dict(raw)
            kept = [CheckpointState.from_dict(r) for r in raw.get("checkpoints", [])]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{str(self.state_path)!r} is damaged ({e}); delete the checkpoints folder "
                                  "to start over, or fix the file.") from None
        return [r for r in kept if r.step < newest.step] + [newest]

    def problem(self, state: CheckpointState) -> str | None:
        """Why the checkpoint file of `state` cannot be trusted (missing, truncated, corrupt), or None."""
        path = self.directory / state.file
        if not path.is_file():
            return "is missing"
        size = path.stat().st_size
        if state.bytes is not None and size != state.bytes:
            return f"has {size} bytes, not the {state.bytes} written (truncated or overwritten)"
        if state.sha256 is not None and file_sha256(path) != state.sha256:
            return "does not match the SHA-256 recorded when it was written (corrupt)"
        return None

    def latest(self) -> CheckpointState | None:
        """The newest checkpoint whose file is intact, or None when there is none.

        A newer one that is missing, truncated or corrupt is skipped with a warning; CheckpointError
        when checkpoints are recorded and none is intact."""
        records = self.records()
        skipped = []
        for state in reversed(records):
            problem = self.problem(state)
            if problem is None:
                for bad, why in skipped:
                    self.warn(f"checkpoint {bad.file} (step {bad.step}) in {str(self.directory)!r} {why}; "
                              f"using {state.file} (step {state.step}) instead.")
                return state
            skipped.append((state, problem))
        if skipped:
            raise CheckpointError(f"No usable checkpoint in {str(self.directory)!r}: "
                                  + "; ".join(f"{s.file} {why}" for s, why in skipped)
                                  + ". Delete the checkpoints folder to start over.")
        return None

    def save(self, model: keras.Model, *, epoch: int, reason: str = "") -> CheckpointState:
        """Write the model and optimizer state at the optimizer's current step; returns its state."""
        optimizer = getattr(model, "optimizer", None)
        step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{step:08d}{SUFFIX}"
        tmp = self.directory / f".tmp-{os.getpid()}-{name}"
        model.save_weights(tmp, overwrite=True)
        state = CheckpointState(step, int(epoch), name, time.time(), reason, file_sha256(tmp), tmp.stat().st_size)
        os.replace(tmp, self.directory / name)
        try:
            earlier = [r for r in self.records() if r.step < step]
        except CheckpointError:
            earlier = []  # a damaged state.json is replaced by this save
        kept = (earlier + [state])[-self.keep:]
        write_json_atomic(self.state_path, {**state.as_dict(), "checkpoints": [r.as_dict() for r in kept]})
        self._prune({r.file for r in kept})
        return state

    def _prune(self, kept: set[str]) -> None:
        """Delete checkpoint files state.json no longer records (older ones, and newer ones of an
        abandoned future after a fallback), and temporary files of dead writers."""
        for f in self.directory.glob(f"{PREFIX}*{SUFFIX}"):
            if f.name not in kept:
                f.unlink(missing_ok=True)
        for f in self.directory.glob(".tmp-*"):
            if not _owned_by_live_process(f.name):
                f.unlink(missing_ok=True)

    def restore(self, model: keras.Model, state: CheckpointState | None = None) -> CheckpointState | None:
        """Load the latest intact (or the given) checkpoint into `model` and its optimizer; None if there is none."""
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
