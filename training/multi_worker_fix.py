"""Make Keras 3 `Model.fit` work under MultiWorkerMirroredStrategy (checked with Keras 3.15, TF 2.21).

Two places in keras/src/backend/tensorflow/trainer.py fail as soon as there are several workers
(tensorflow/tensorflow#72388; the multi-worker test in tests/test_train_distributed.py shows both):

1. `_maybe_symbolic_build` averages the first *data* batch across workers with
   `strategy.reduce("MEAN", batch)` only to learn its shapes; the collective strategy cannot
   reduce a nested (images, labels) structure: "Attempt to convert a value (PerReplica ...)".
   Fixed: take this worker's local batch instead, which has the same shapes.
2. `reduce_per_replica` averages the step's logs with `strategy.reduce("MEAN", v, axis=0)`, and
   the logs are scalars: "Invalid reduction dimension 0 for input with 0 dimensions".
   Fixed: reduce scalars with axis=None (a mean across replicas). The logs are metric results
   whose variables are already summed across replicas, so every replica holds the same value.

`apply()` patches both once; single-worker strategies take the original code paths unchanged.
"""

from __future__ import annotations

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_original_reduce_per_replica = tf_trainer.reduce_per_replica
_original_maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build


def _multi_worker(strategy) -> bool:
    return strategy is not None and tf_trainer._collective_all_reduce_multi_worker(strategy)


def _rank(value) -> int | None:
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    return getattr(value, "shape", tf.TensorShape(None)).rank


def reduce_per_replica(values, strategy, reduction):
    """Keras' reduce_per_replica, with scalars averaged across workers without an axis."""
    if _multi_worker(strategy) and reduction in ("auto", "mean"):
        return tree.map_structure(
            lambda v: strategy.reduce("MEAN", v, axis=0 if _rank(v) else None), values)
    return _original_reduce_per_replica(values, strategy, reduction)


def _local(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Keras' _maybe_symbolic_build, building from this worker's local batch under multi-worker."""
    strategy = self._distribute_strategy
    if iterator is not None and _multi_worker(strategy):
        for _, _, batches in iterator:
            data_batch = tree.map_structure(lambda v: _local(strategy, v), next(batches))
            break
        iterator = None
    return _original_maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)


def apply() -> None:
    """Install both fixes (idempotent)."""
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
