"""Choose and build the tf.distribute strategy of a run; split the CPU into logical devices.

`choose_strategy` is the pure decision (tested without TensorFlow state):

    multi_worker  when TF_CONFIG names more than one task (workers and chief),
    mirrored      over all local GPUs when there are two or more, or over N logical CPUs when
                  the CPU was split into N >= 2 (`split_cpu`, the -cpu_devices flag),
    one_device    otherwise: the one GPU, or the CPU.

`make_strategy` builds it. Logical CPU devices must be configured before TensorFlow initialises
its runtime, which is why `split_cpu` is the first thing the tool does.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from training import keras_fixes

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")


class StrategyError(ValueError):
    """A strategy request that cannot be met here; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
    """The strategy of a run, what it runs on, and whether this process writes the run's files."""

    strategy: tf.distribute.Strategy
    name: str
    devices: tuple[str, ...]
    num_workers: int
    is_chief: bool
    worker_index: int

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> str:
        where = f"{self.num_workers} workers x " if self.num_workers > 1 else ""
        return f"{self.name} on {where}{', '.join(self.devices)} ({self.replicas} replicas)"


def split_cpu(count: int) -> list[str]:
    """Make `count` logical CPU devices of the physical CPU; returns their names. 0 or 1: no change ([]).

    Raises StrategyError when TensorFlow's runtime already started (the split must come first).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise StrategyError(f"Invalid value for argument `cpu_devices`. Received: {count!r}. "
                            "Expected an integer >= 0.")
    if count <= 1:
        return []
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        existing = tf.config.get_logical_device_configuration(cpus[0]) or []
        if len(existing) != count:
            raise StrategyError(
                f"cpu_devices={count}: TensorFlow already started with {max(1, len(existing))} CPU device(s); "
                "logical devices must be set before anything runs on TensorFlow (run a fresh process)."
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def cluster_from_env(environ=os.environ) -> tuple[dict, str | None, int]:
    """(cluster spec, task type, task index) from TF_CONFIG; ({}, None, 0) when unset."""
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}, None, 0
    try:
        config = json.loads(raw)
        cluster = config.get("cluster", {}) or {}
        task = config.get("task", {}) or {}
        return cluster, task.get("type"), int(task.get("index", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON of the form {{'cluster': {{'worker': [...]}}, "
                            f"'task': {{'type': 'worker', 'index': 0}}}}: {e}") from None


def cluster_size(cluster: dict) -> int:
    """Tasks that train (chief and workers) in a TF_CONFIG cluster spec."""
    return sum(len(cluster.get(kind, []) or []) for kind in ("chief", "worker"))


def is_chief_task(cluster: dict, task_type: str | None, task_index: int) -> bool:
    """The chief writes checkpoints and logs: task 'chief', or worker 0 when the cluster has no chief."""
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_index == 0 and not cluster.get("chief")


def choose_strategy(requested: str, *, num_gpus: int, cpu_devices: int, num_workers: int) -> str:
    """The strategy name for a request ('auto' or a name) on this machine and cluster."""
    if requested not in STRATEGIES:
        raise StrategyError(f"Invalid value for argument `strategy`. Received: {requested!r}. "
                            f"Expected one of: {', '.join(STRATEGIES)}.")
    if requested == "multi_worker" and num_workers < 2:
        raise StrategyError("strategy='multi_worker' needs TF_CONFIG naming two or more workers, e.g. "
                            "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                            "\"task\": {\"type\": \"worker\", \"index\": 0}}' on each worker.")
    if requested != "auto":
        if num_workers > 1 and requested != "multi_worker":
            raise StrategyError(f"strategy={requested!r} but TF_CONFIG names {num_workers} workers: use "
                                "strategy 'multi_worker' or 'auto', or unset TF_CONFIG.")
        return requested
    if num_workers > 1:
        return "multi_worker"
    if num_gpus >= 2 or (num_gpus == 0 and cpu_devices >= 2):
        return "mirrored"
    return "one_device"


def local_devices(cpu_devices: int) -> list[str]:
    """The devices a local strategy runs on: all GPUs, else the logical CPUs (at least CPU:0)."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
        return gpus
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return cpus[:max(1, cpu_devices)] if cpu_devices >= 2 else cpus[:1]


_MADE: dict[tuple, StrategyInfo] = {}


def make_strategy(requested: str = "auto", cpu_devices: int = 0, environ=os.environ) -> StrategyInfo:
    """Split the CPU if asked, then build the strategy `choose_strategy` picks.

    One strategy per request and process: a second MirroredStrategy over the same devices would reuse
    the first one's collective keys with other tensor shapes, so later runs in a process share it.
    """
    key = (requested, cpu_devices, environ.get("TF_CONFIG", ""))
    if key not in _MADE:
        _MADE[key] = _make_strategy(requested, cpu_devices, environ)
    return _MADE[key]


def _make_strategy(requested: str, cpu_devices: int, environ) -> StrategyInfo:
    cluster, task_type, task_index = cluster_from_env(environ)
    workers = cluster_size(cluster)
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    name = choose_strategy(requested, num_gpus=num_gpus, cpu_devices=cpu_devices, num_workers=workers)
    try:
        keras_fixes.apply()
    except keras_fixes.KerasVersionError as e:
        raise StrategyError(str(e)) from None
    if name == "multi_worker":
        # Created before anything else touches the runtime: collective ops are configured at startup.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        devices = tuple("/" + d.split("/")[-1] for d in strategy.extended.worker_devices)
        return StrategyInfo(strategy, name, devices, workers, is_chief_task(cluster, task_type, task_index),
                            task_index)
    split_cpu(cpu_devices)
    devices = local_devices(cpu_devices)
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        devices = devices[:1]
        strategy = tf.distribute.OneDeviceStrategy(devices[0])
    return StrategyInfo(strategy, name, tuple(devices), 1, True, 0)
