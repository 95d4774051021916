"""training.keras_fixes: the version guard, and each fix against the private Keras function it replaces.

Each fix's test also shows the Keras bug it works around on the installed Keras: when that part fails
after a Keras upgrade, Keras has fixed the bug and the fix can go. The fixes under real distributed
training: tests/test_train_distributed.py (two logical CPUs, two workers)."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer

from training import keras_fixes, strategy


def test_installed_keras_is_the_series_the_fixes_were_written_for():
    keras_fixes.check_keras_version()  # constraints.txt pins it
    for version in ("3.15.0", "3.15.1", "3.15.7"):
        keras_fixes.check_keras_version(version)


@pytest.mark.parametrize("version", ["3.16.0", "3.14.2", "4.0.0", "3.1.5"])
def test_another_keras_is_refused_loudly_and_nothing_is_patched(version, monkeypatch):
    with pytest.raises(keras_fixes.KerasVersionError, match=re.escape(f"Keras {version} is installed")):
        keras_fixes.check_keras_version(version)
    monkeypatch.setattr(keras, "__version__", version)
    monkeypatch.setattr(tf_trainer, "reduce_per_replica", keras_fixes._original_reduce_per_replica)
    with pytest.raises(keras_fixes.KerasVersionError, match="replaces private functions of Keras 3.15.x"):
        keras_fixes.apply()
    assert tf_trainer.reduce_per_replica is keras_fixes._original_reduce_per_replica  # left alone
    # The training tool turns it into a one-line error (StrategyError is printed without a traceback).
    with pytest.raises(strategy.StrategyError, match=re.escape(f"Keras {version} is installed")):
        strategy._make_strategy("one_device", 0, {})


def test_apply_installs_both_fixes_idempotently():
    keras_fixes.apply()
    keras_fixes.apply()
    assert tf_trainer.reduce_per_replica is keras_fixes.reduce_per_replica
    assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is keras_fixes.maybe_symbolic_build


def test_scalar_logs_are_averaged_across_workers_without_an_axis(monkeypatch):
    """Fix 2 (tensorflow/tensorflow#72388). The multi-worker branch is taken as under two workers;
    the default strategy's reduce() does what a collective does for one replica."""
    monkeypatch.setattr(tf_trainer, "_collective_all_reduce_multi_worker", lambda s: True)
    default = tf.distribute.get_strategy()
    logs = {"loss": tf.constant(0.25), "per_class": tf.constant([1.0, 3.0])}
    with pytest.raises(ValueError, match="Invalid reduction dimension 0 for input with 0 dimensions"):
        keras_fixes._original_reduce_per_replica(logs, default, "auto")  # Keras 3.15 itself
    reduced = keras_fixes.reduce_per_replica(logs, default, "auto")
    assert float(reduced["loss"]) == 0.25
    assert float(reduced["per_class"]) == 2.0  # non-scalars keep Keras' axis 0: (1 + 3) / 2


def counted_dataset(pulled: list) -> tf.data.Dataset:
    """Batches of 2 from a generator that records every element it yields."""
    def generate():
        for i in range(8):
            pulled.append(i)
            yield np.full((4,), i, np.float32), np.int32(i % 3)

    signature = (tf.TensorSpec((4,), tf.float32), tf.TensorSpec((), tf.int32))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).batch(2)


def strategy_model(device_strategy) -> keras.Model:
    with device_strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_model_is_built_from_the_element_spec_without_drawing_a_batch():
    """Fix 1: Keras 3.15 draws a batch from a throw-away iterator to build a model made under a strategy
    (which changes what a shuffled dataset's next iterator yields); the fix builds from the spec."""
    device = tf.distribute.OneDeviceStrategy("/cpu:0")
    pulled: list[int] = []
    model = strategy_model(device)
    iterator = tf_trainer.TFEpochIterator(x=counted_dataset(pulled), steps_per_epoch=2, distribute_strategy=device)
    keras_fixes.maybe_symbolic_build(model, iterator=iterator)
    assert pulled == [] and model.optimizer.built  # built, and the data untouched
    keras_pulled: list[int] = []
    reference = strategy_model(device)
    iterator = tf_trainer.TFEpochIterator(x=counted_dataset(keras_pulled), steps_per_epoch=2,
                                          distribute_strategy=device)
    keras_fixes._original_maybe_symbolic_build(reference, iterator=iterator)  # Keras 3.15 itself
    assert keras_pulled[:2] == [0, 1] and reference.optimizer.built
