"""Two fixes to Keras 3 `Model.fit` under tf.distribute, written for and checked with Keras 3.15
(TF 2.21). They replace private Keras functions process-wide, so `apply()` refuses any other Keras
series (KerasVersionError): check both fixes against the new version's
keras/src/backend/tensorflow/trainer.py and tests/test_keras_fixes.py (each test also shows that
the Keras bug is still there), then update KERAS_SERIES, or drop a fix Keras no longer needs.

1. Model building consumes a batch from a throw-away iterator. `fit` calls `_maybe_symbolic_build`,
   which, for a model created under a strategy, creates an iterator over the training data, pulls
   one batch only to learn its shapes, and drops it; training then starts a second iterator. A
   shuffled, repeated dataset reshuffles each pass from a seed generator shared by its iterators,
   so how far the dropped iterator prefetched (a race) decides the second one's order: the same
   seed gave different batches from run to run (found by the 1-vs-2-device test). Under
   MultiWorkerMirroredStrategy the same code also averages that batch across workers, which
   fails outright: "Attempt to convert a value (PerReplica ...) with an unsupported type".
   Fixed: build from the dataset's element spec (shapes and dtypes are all it needs); no iterator.
   Upstream: we found no Keras issue for the consumed batch; the same PerReplica message under
   MultiWorkerMirroredStrategy and Keras 3 is reported in https://github.com/ray-project/ray/issues/47464
   (not traced to this code path there).
2. Under MultiWorkerMirroredStrategy `reduce_per_replica` averages the step's logs with
   `strategy.reduce("MEAN", v, axis=0)`, and the logs are scalars: "Invalid reduction dimension 0
   for input with 0 dimensions". Fixed: reduce scalars with axis=None (a mean across replicas);
   the logs are metric results whose variables are already summed across replicas.
   Upstream: https://github.com/tensorflow/tensorflow/issues/72388 (closed there as a Keras 3
   issue, unfixed in Keras 3.15).

`apply()` installs both (idempotent); other code paths are left as they were.
"""

from __future__ import annotations

import keras
import tensorflow as tf

KERAS_SERIES = "3.15"  # the Keras major.minor these fixes were written for and tested against

try:  # private modules: absent or moved in other Keras versions, which apply() then refuses
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer
except ImportError:  # pragma: no cover - only on another Keras
    tree = tf_trainer = None

_original_reduce_per_replica = getattr(tf_trainer, "reduce_per_replica", None)
_original_maybe_symbolic_build = getattr(getattr(tf_trainer, "TensorFlowTrainer", None), "_maybe_symbolic_build", None)


class KerasVersionError(RuntimeError):
    """The installed Keras is not the one the fixes were written for."""


def check_keras_version(version: str | None = None) -> None:
    """KerasVersionError unless `version` (default: the installed Keras) is of the KERAS_SERIES series
    and has the private functions the fixes replace."""
    version = keras.__version__ if version is None else version
    series = ".".join(version.split(".")[:2])
    missing = _original_reduce_per_replica is None or _original_maybe_symbolic_build is None
    if series != KERAS_SERIES or missing:
        raise KerasVersionError(
            f"training/keras_fixes.py replaces private functions of Keras {KERAS_SERIES}.x (distributed fit); "
            f"Keras {version} is installed{' and lacks them' if missing else ''}. Install keras=={KERAS_SERIES}.* "
            "(constraints.txt), or check the fixes against this version and update KERAS_SERIES.")


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


def _element_spec(iterator):
    adapter = getattr(iterator, "data_adapter", None)
    dataset = adapter.get_tf_dataset() if adapter is not None and hasattr(adapter, "get_tf_dataset") else None
    if not isinstance(dataset, tf.data.Dataset):
        return None
    spec = dataset.element_spec
    if not all(isinstance(s, tf.TensorSpec) for s in tree.flatten(spec)):
        return None
    return spec


def maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Keras' _maybe_symbolic_build, building from the dataset's element spec instead of a batch."""
    if self._distribute_strategy is not None and iterator is not None and data_batch is None:
        spec = _element_spec(iterator)
        if spec is not None:
            return _original_maybe_symbolic_build(self, iterator=None, data_batch=spec)
    return _original_maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)


def apply() -> None:
    """Install both fixes (idempotent); KerasVersionError on a Keras they were not written for."""
    check_keras_version()
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
