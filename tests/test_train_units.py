"""Pieces of the training tool without training: presets, strategy choice, resume arithmetic, metrics,
checkpoints, batch-norm recalibration, config checks, the task registry and the figures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import h5py
import keras
import numpy as np
import pytest

from configuration_sketch import AugmentConfig, EmbeddingConfig, ModelConfig, PipelineConfig, TrainConfig
from serving import classification_metrics
from training import callbacks as cb
from training import evaluation, plots, presets, strategy, tasks, trainer
from training.checkpoints import CheckpointError, CheckpointStore

CLASSES = (TrainConfig, ModelConfig, PipelineConfig, AugmentConfig)


# ---------------------------------------------------------------- presets


def test_override_order_is_defaults_then_preset_then_command_line():
    configs, explicit = presets.resolve_configs(CLASSES, "original", {"learning_rate": 3e-4, "epochs": 7})
    train, model, pipeline = configs[TrainConfig], configs[ModelConfig], configs[PipelineConfig]
    assert (train.optimizer, train.lr_schedule, train.augment) == ("adam", "constant", False)  # preset
    assert (pipeline.batch_size, model.image_size) == (10, 128)  # preset, across config classes
    assert (train.learning_rate, train.epochs) == (3e-4, 7)  # command line wins over the preset
    assert train.seed == TrainConfig().seed  # untouched default
    assert {"learning_rate", "epochs", "batch_size", "image_size"} <= explicit
    assert "seed" not in explicit


def test_default_preset_is_the_dataclass_defaults():
    configs, explicit = presets.resolve_configs(CLASSES, "default", {})
    assert all(configs[cls] == cls() for cls in CLASSES) and explicit == set()


def test_unknown_preset_and_unknown_field_are_named():
    with pytest.raises(presets.PresetError, match="Received: 'fast'.*original, default, demo, smoke"):
        presets.resolve_configs(CLASSES, "fast", {})
    with pytest.raises(presets.PresetError, match="no_such_field"):
        presets.resolve_configs(CLASSES, "", {"no_such_field": 1})


def test_every_preset_names_only_existing_fields():
    """Each preset's every value lands in the tool's configs (a misspelt field would raise), and every
    other field keeps its dataclass default."""
    for name, preset in presets.PRESETS.items():
        configs, explicit = trainer.resolve(name, {})
        assert explicit == set(preset), name
        for cls, config in configs.items():
            for f in dataclasses.fields(cls):
                expected = preset.get(f.name, getattr(cls(), f.name))
                assert getattr(config, f.name) == expected, (name, cls.__name__, f.name)


def test_each_pipeline_has_its_own_shuffle_buffer_flag():
    """-shuffle_buffer is the metric-learning streams' (2000 records), -classifier_shuffle_buffer the
    classifier's (10000 images): one flag used to set both, with the first config's default."""
    from absl import flags

    import configuration_sketch as cs

    flag_values = flags.FlagValues()
    for cls in trainer.config_classes():
        cs.define_flags(cls, flag_values)
    assert flag_values["shuffle_buffer"].default == 2000
    assert flag_values["classifier_shuffle_buffer"].default == 10000
    configs, _ = trainer.resolve("default", {"shuffle_buffer": 64})
    assert configs[cs.MetricPipelineConfig].shuffle_buffer == 64
    assert configs[PipelineConfig].classifier_shuffle_buffer == 10000


# ---------------------------------------------------------------- strategy


@pytest.mark.parametrize("requested, gpus, cpus, workers, expected", [
    ("auto", 0, 0, 0, "one_device"),
    ("auto", 1, 0, 0, "one_device"),
    ("auto", 4, 0, 0, "mirrored"),
    ("auto", 0, 2, 0, "mirrored"),
    ("auto", 1, 2, 0, "one_device"),  # a GPU wins over split CPUs
    ("auto", 0, 0, 2, "multi_worker"),
    ("auto", 2, 0, 3, "multi_worker"),
    ("mirrored", 0, 0, 1, "mirrored"),
    ("one_device", 8, 0, 0, "one_device"),
    ("multi_worker", 0, 0, 2, "multi_worker"),
])
def test_choose_strategy(requested, gpus, cpus, workers, expected):
    assert strategy.choose_strategy(requested, num_gpus=gpus, cpu_devices=cpus, num_workers=workers) == expected


def test_strategy_requests_that_cannot_be_met():
    with pytest.raises(strategy.StrategyError, match="needs TF_CONFIG"):
        strategy.choose_strategy("multi_worker", num_gpus=0, cpu_devices=0, num_workers=0)
    with pytest.raises(strategy.StrategyError, match="names 2 workers"):
        strategy.choose_strategy("mirrored", num_gpus=2, cpu_devices=0, num_workers=2)
    with pytest.raises(strategy.StrategyError, match="Received: 'tpu'"):
        strategy.choose_strategy("tpu", num_gpus=0, cpu_devices=0, num_workers=0)


def test_tf_config_and_chief():
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}})}
    cluster, task_type, index = strategy.cluster_from_env(env)
    assert (strategy.cluster_size(cluster), task_type, index) == (3, "worker", 2)
    assert not strategy.is_chief_task(cluster, task_type, index)
    assert strategy.is_chief_task(cluster, "worker", 0)
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert strategy.cluster_size(with_chief) == 2
    assert strategy.is_chief_task(with_chief, "chief", 0) and not strategy.is_chief_task(with_chief, "worker", 0)
    assert strategy.cluster_from_env({}) == ({}, None, 0)
    assert strategy.is_chief_task({}, None, 0)
    with pytest.raises(strategy.StrategyError, match="TF_CONFIG is not valid JSON"):
        strategy.cluster_from_env({"TF_CONFIG": "{cluster"})


# ---------------------------------------------------------------- resume arithmetic


@pytest.mark.parametrize("step, expected", [
    (0, [(0, 10)]),        # fresh run: all epochs in one fit
    (10, [(1, 10)]),       # stopped at an epoch boundary
    (13, [(1, 7), (2, 10)]),  # mid-epoch: finish epoch 2's 7 remaining steps, then the rest
    (27, [(2, 3)]),        # mid last epoch: only its remaining steps
    (30, []),              # done
    (45, []),
])
def test_fit_segments_continue_from_the_optimizer_step(step, expected):
    assert trainer._fit_segments(step, per_epoch=10, epochs=3) == expected
    # A partial first epoch runs alone; a whole one runs on to the last epoch. The steps add up.
    owed = sum(steps if steps != 10 else 10 * (3 - epoch) for epoch, steps in expected)
    assert owed == max(0, 30 - step)


# ---------------------------------------------------------------- metrics


def test_classification_metrics_against_loops():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 3
    labels = rng.integers(0, 7, 50)
    got = evaluation.classification_metrics(logits, labels, k=5)
    loss = np.mean([-(logits[i, labels[i]] - math.log(np.exp(logits[i]).sum())) for i in range(50)])
    top1 = np.mean([np.argmax(logits[i]) == labels[i] for i in range(50)])
    top5 = np.mean([labels[i] in np.argsort(-logits[i])[:5] for i in range(50)])
    assert got["loss"] == pytest.approx(loss, rel=1e-12)
    assert got["top1_accuracy"] == pytest.approx(top1) and got["top5_accuracy"] == pytest.approx(top5)
    assert (got["top_k"], got["num_examples"]) == (5, 50)


def test_top_k_caps_at_the_class_count_and_breaks_ties_low():
    logits = np.zeros((3, 3))
    got = evaluation.classification_metrics(logits, np.array([0, 1, 2]), k=5)
    assert got["top_k"] == 3 and got["top5_accuracy"] == 1.0
    assert got["top1_accuracy"] == pytest.approx(1 / 3)  # a constant prediction is class 0, right once
    assert got["loss"] == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="labels run from 0 to 3 but there are 3 classes"):
        evaluation.classification_metrics(logits, np.array([0, 1, 3]))


def test_confusion_per_class_and_most_confused():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    matrix = classification_metrics.confusion_matrix(labels, predicted, 4)
    assert matrix.tolist() == [[1, 2, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    names = ["a", "b", "c", "d"]
    assert evaluation.per_class_accuracy(matrix, names) == {"a": 1 / 3, "b": 0.5, "c": 1.0, "d": None}
    confused = classification_metrics.most_confused(matrix, names)
    assert confused == [{"true": "a", "predicted": "b", "count": 2, "fraction": 2 / 3},
                        {"true": "b", "predicted": "a", "count": 1, "fraction": 0.5}]


# ---------------------------------------------------------------- checkpoints


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit_steps(model: keras.Model, steps: int) -> None:
    rng = np.random.default_rng(1)
    model.fit(rng.normal(size=(8 * steps, 4)).astype("float32"), rng.integers(0, 3, 8 * steps),
              batch_size=8, epochs=1, verbose=0, shuffle=False)


def test_checkpoint_round_trip_restores_weights_and_optimizer_step(tmp_path):
    model = tiny_model()
    fit_steps(model, 5)
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    state = store.save(model, epoch=1, reason="epoch")
    assert (state.step, state.epoch, state.file) == (5, 1, "ckpt-00000005.weights.h5")
    fresh = tiny_model(seed=1)
    trainer.ensure_optimizer_built(fresh)
    assert int(fresh.optimizer.iterations.numpy()) == 0
    restored = store.restore(fresh)
    assert restored.step == 5 and int(fresh.optimizer.iterations.numpy()) == 5
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoints_are_pruned_and_state_names_a_complete_file(tmp_path):
    model = tiny_model()
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None
    dead = tmp_path / ".tmp-999999999-ckpt-00000099.weights.h5"  # left by a killed writer
    dead.write_bytes(b"partial")
    for _ in range(4):
        fit_steps(model, 1)
        store.save(model, epoch=0)
    files = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    assert files == ["ckpt-00000003.weights.h5", "ckpt-00000004.weights.h5"]
    assert store.latest().file == "ckpt-00000004.weights.h5" and not dead.exists()
    (tmp_path / "ckpt-00000004.weights.h5").unlink()
    assert store.latest().file == "ckpt-00000003.weights.h5"  # the one kept to fall back to
    (tmp_path / "ckpt-00000003.weights.h5").unlink()
    with pytest.raises(CheckpointError, match="No usable checkpoint .*ckpt-00000004.weights.h5 is missing"):
        store.latest()
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is damaged"):
        store.latest()


def flip_bytes(path, offset: int, count: int = 2) -> None:
    """Invert `count` bytes of a file in place at `offset` (bit rot that keeps the size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_checksums_catch_truncated_and_corrupt_checkpoints_and_fall_back(tmp_path):
    model = tiny_model()
    warnings = []
    store = CheckpointStore(tmp_path, keep=3, warn=warnings.append)
    weights = {}
    for _ in range(3):
        fit_steps(model, 1)
        state = store.save(model, epoch=0)
        weights[state.step] = model.get_weights()
    recorded = json.loads((tmp_path / "state.json").read_text())["checkpoints"]
    assert [r["step"] for r in recorded] == [1, 2, 3]
    for r in recorded:  # the checksum and size of the bytes on disk, computed here independently
        data = (tmp_path / r["file"]).read_bytes()
        assert (r["sha256"], r["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))

    third = tmp_path / "ckpt-00000003.weights.h5"
    third.write_bytes(third.read_bytes()[: third.stat().st_size // 2])  # truncated
    assert store.latest().step == 2
    assert len(warnings) == 1 and "ckpt-00000003.weights.h5 (step 3)" in warnings[0] and "truncated" in warnings[0]
    second = tmp_path / "ckpt-00000002.weights.h5"
    with h5py.File(second, "r") as f:  # two bytes of a kernel: the file still loads, with wrong weights
        offset = f["layers/dense/vars/0"].id.get_offset()
    flip_bytes(second, offset + 5)
    warnings.clear()
    fresh = tiny_model(seed=1)
    trainer.ensure_optimizer_built(fresh)
    assert store.restore(fresh).step == 1
    assert [("ckpt-00000003" in w, "ckpt-00000002" in w and "SHA-256" in w) for w in warnings] == \
        [(True, False), (False, True)]
    for a, b in zip(weights[1], fresh.get_weights()):
        np.testing.assert_array_equal(a, b)

    # Training goes on from step 1: the next save forgets the abandoned steps 2 and 3.
    fit_steps(fresh, 1)
    store.save(fresh, epoch=0)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000001.weights.h5", "ckpt-00000002.weights.h5"]
    warnings.clear()
    assert store.latest().step == 2 and warnings == []
    for name in ("ckpt-00000001.weights.h5", "ckpt-00000002.weights.h5"):
        flip_bytes(tmp_path / name, offset + 5)
    with pytest.raises(CheckpointError, match="No usable checkpoint .*Delete the checkpoints folder"):
        store.latest()


def test_checkpoint_of_another_model_is_refused_with_its_name(tmp_path):
    store = CheckpointStore(tmp_path)
    model = tiny_model()
    fit_steps(model, 1)
    store.save(model, epoch=0)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)], name="other")
    with pytest.raises(CheckpointError, match="into model 'other'"):
        store.restore(other)


def test_recalibrated_batch_norm_statistics_are_the_mean_of_batch_moments():
    model = tiny_model()
    rng = np.random.default_rng(2)
    batches = [rng.normal(2.0, 3.0, size=(16, 4)).astype("float32") for _ in range(5)]
    used = cb.recalibrate_batch_norm(model, iter([(b,) for b in batches]), num_batches=10)
    assert used == 5  # the iterator ran out
    kernel, bias = model.get_layer("hidden").get_weights()
    hidden = [b @ kernel + bias for b in batches]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([h.mean(0) for h in hidden], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([h.var(0) for h in hidden], 0), rtol=1e-4)
    assert bn.momentum == 0.9  # restored


def test_nan_guard_stops_at_the_first_non_finite_loss():
    model = tiny_model()
    trainer.ensure_optimizer_built(model)
    guard = cb.NanGuard()
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": 1.5})
    assert guard.bad_step is None and not model.stop_training
    guard.on_train_batch_end(1, {"loss": float("inf")})
    guard.on_train_batch_end(2, {"loss": float("nan")})
    assert guard.bad_step == 0 and guard.bad_value == float("inf") and model.stop_training


# ---------------------------------------------------------------- configuration checks


INFO = {"classes": ["a", "b"], "image": {"height": 28, "width": 28, "channels": 1},
        "splits": {"train": {"num_examples": 10}, "test": {"num_examples": 4}}}


def test_image_size_and_channels_come_from_the_data_unless_chosen():
    adapted = trainer.adapt_to_data(ModelConfig(image_size=64, channels=3), INFO, set(), "d")
    assert (adapted.image_size, adapted.channels) == (28, 1)
    with pytest.raises(trainer.ToolError, match="-image_size 64 does not match .* 28x28x1 images.*--image_size 64"):
        trainer.adapt_to_data(ModelConfig(image_size=64), INFO, {"image_size"}, "d")
    with pytest.raises(trainer.ToolError, match="-channels 3 does not match"):
        trainer.adapt_to_data(ModelConfig(channels=3), INFO, {"channels"}, "d")


def test_saved_run_settings_win_for_evaluation_and_are_enforced_on_resume():
    saved = {"ModelConfig": dataclasses.asdict(ModelConfig(model="skresnet", dropout=0.2)),
             "TrainConfig": dataclasses.asdict(TrainConfig(data_path="/data/a", epochs=3))}
    given = {TrainConfig: TrainConfig(mode="evaluate"), ModelConfig: ModelConfig()}
    merged = trainer.merge_saved(given, {"mode"}, saved, "evaluate")
    assert merged[ModelConfig].model == "skresnet" and merged[ModelConfig].dropout == 0.2
    assert (merged[TrainConfig].mode, merged[TrainConfig].data_path) == ("evaluate", "/data/a")
    with pytest.raises(trainer.ToolError, match="-model 'sknet' \\(the run has 'skresnet'\\)"):
        trainer.merge_saved(given, {"mode", "model"}, saved, "evaluate")
    with pytest.raises(trainer.ToolError, match="other model settings"):
        trainer.merge_saved({TrainConfig: TrainConfig(), ModelConfig: ModelConfig()}, set(), saved, "train")


def test_embedding_width_and_bits_are_run_settings_but_the_objective_may_change_on_resume():
    saved = {"ModelConfig": dataclasses.asdict(ModelConfig(model="deephash")),
             "EmbeddingConfig": dataclasses.asdict(EmbeddingConfig(embedding_dim=32, bits=16, miner="semi_hard"))}
    model = ModelConfig(model="deephash")
    with pytest.raises(trainer.ToolError, match=r"other model settings: -bits 64 \(the run has 16\)"):
        trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig(embedding_dim=32, bits=64)},
                            {"model", "bits"}, saved, "train")
    with pytest.raises(trainer.ToolError, match=r"-embedding_dim -1 \(the run has 32\)"):
        trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig(bits=16)}, {"model"}, saved, "train")
    resumed = trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig(
        embedding_dim=32, bits=16, miner="batch_all", margin=0.4)}, {"model", "miner", "margin"}, saved, "train")
    assert (resumed[EmbeddingConfig].miner, resumed[EmbeddingConfig].margin) == ("batch_all", 0.4)
    tested = trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig()}, {"mode"}, saved, "test")
    assert (tested[EmbeddingConfig].embedding_dim, tested[EmbeddingConfig].bits) == (32, 16)


def test_a_classifier_run_resumes_whatever_its_saved_embedding_settings():
    """Runs saved before -embedding_dim's default became -1 recorded 128; a classifier never used it."""
    saved = {"ModelConfig": dataclasses.asdict(ModelConfig(model="sknet")),
             "EmbeddingConfig": dataclasses.asdict(EmbeddingConfig(embedding_dim=128, bits=16))}
    merged = trainer.merge_saved({ModelConfig: ModelConfig(), EmbeddingConfig: EmbeddingConfig()}, set(), saved, "train")
    assert merged[EmbeddingConfig].embedding_dim == EmbeddingConfig().embedding_dim == -1
    embedding_run = {**saved, "ModelConfig": dataclasses.asdict(ModelConfig(model="siamese"))}
    with pytest.raises(trainer.ToolError, match=r"-embedding_dim -1 \(the run has 128\)"):
        trainer.merge_saved({ModelConfig: ModelConfig(model="siamese"), EmbeddingConfig: EmbeddingConfig()}, {"model"},
                            embedding_run, "train")


def test_a_triplet_run_saved_with_loss_auto_before_proxy_anchor_became_the_default_goes_on_with_the_triplet_loss():
    saved = {"ModelConfig": dataclasses.asdict(ModelConfig(model="triplet")),
             "EmbeddingConfig": dataclasses.asdict(EmbeddingConfig(embedding_dim=128))}  # loss "auto"
    model = ModelConfig(model="triplet")
    for mode, explicit in (("train", {"model", "embedding_dim"}), ("test", {"mode"}), ("export", {"mode"})):
        merged = trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig(embedding_dim=128)},
                                     explicit, saved, mode)
        assert merged[EmbeddingConfig].loss == "triplet", mode
    with pytest.raises(trainer.ToolError, match="trained with -loss triplet, without a layer of class proxies; "
                                                r"-loss auto \(proxy_anchor\) needs a model with one"):  # auto now means proxy-anchor
        trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig(embedding_dim=128)},
                            {"model", "embedding_dim", "loss"}, saved, "train")
    new_run = {**saved, "EmbeddingConfig": dataclasses.asdict(EmbeddingConfig(loss="proxy_anchor"))}
    merged = trainer.merge_saved({ModelConfig: model, EmbeddingConfig: EmbeddingConfig()}, {"mode"}, new_run, "test")
    assert merged[EmbeddingConfig].loss == "proxy_anchor"


def test_task_registry():
    assert tasks.task_for_model("sknet").name == "classification"
    assert {"sknet", "skresnet", "sketch_a_net"} <= set(tasks.trainable_models())
    with pytest.raises(ValueError, match="Unknown model 'resnet50'. Valid: .*sketch_a_net, sknet, skresnet"):
        tasks.task_for_model("resnet50")
    with pytest.raises(ValueError, match="already trained by task 'classification'"):
        tasks.register_task(type("Copy", (tasks.Task,), {"name": "copy", "models": ("sknet",)})())
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task(type("Again", (tasks.Task,), {"name": "classification", "models": ("x",)})())


def test_first_images_takes_both_sides_of_pairs_in_order_up_to_the_limit():
    import tensorflow as tf

    a = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2, 1)
    b = a + 1000
    pairs = tf.data.Dataset.from_tensor_slices(((a, b), np.zeros(10))).batch(3)
    expected = []
    for start in range(0, 10, 3):  # batch by batch: its first images, then their partners
        expected.extend(list(a[start:start + 3]) + list(b[start:start + 3]))
    np.testing.assert_array_equal(tasks.first_images(pairs, 7), np.stack(expected[:7]))
    singles = tf.data.Dataset.from_tensor_slices((a, np.zeros(10))).batch(4)
    np.testing.assert_array_equal(tasks.first_images(singles, 100), a)  # fewer than the limit: all of them


def test_optimizers_of_the_recipes():
    adamw = trainer.make_optimizer(TrainConfig(), total_steps=100)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.05)
    assert float(adamw.learning_rate) == pytest.approx(0.0)  # the default warm-up starts at 0
    no_warmup = trainer.make_optimizer(TrainConfig(warmup_steps=0), total_steps=100)
    assert float(no_warmup.learning_rate) == pytest.approx(1e-3)  # cosine at step 0
    original, _ = presets.resolve_configs(CLASSES, "original", {})
    adam = trainer.make_optimizer(original[TrainConfig], total_steps=100)
    assert type(adam) is keras.optimizers.Adam and float(adam.learning_rate) == pytest.approx(1e-4)
    sgd = trainer.make_optimizer(TrainConfig(optimizer="sgd", weight_decay=0.0), 10)
    assert sgd.nesterov and sgd.weight_decay is None


def test_warmup_rises_linearly_then_follows_the_schedule():
    """-warmup_steps: 0 at step 0, the peak at the end of the warm-up, then cosine to 0 (or held, constant)."""
    cosine = trainer.learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_steps=10), total_steps=110)
    constant = trainer.learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_steps=10, lr_schedule="constant"),
                                              110)
    rates = {step: (float(cosine(step)), float(constant(step))) for step in (0, 5, 10, 60, 110)}
    assert rates[0] == (pytest.approx(0.0), pytest.approx(0.0))
    assert rates[5] == (pytest.approx(5e-4), pytest.approx(5e-4))
    assert rates[10] == (pytest.approx(1e-3), pytest.approx(1e-3))
    assert rates[60][0] == pytest.approx(5e-4, rel=1e-3) and rates[60][1] == pytest.approx(1e-3)  # half-way down
    assert rates[110][0] == pytest.approx(0.0, abs=1e-9) and rates[110][1] == pytest.approx(1e-3)
    assert trainer.learning_rate_schedule(TrainConfig(lr_schedule="constant", learning_rate=3e-4, warmup_steps=0),
                                          50) == 3e-4
    auto = trainer.learning_rate_schedule(TrainConfig(learning_rate=1e-3), total_steps=200)  # -1: a tenth
    assert [float(auto(step)) for step in (0, 10, 20)] == [0.0, pytest.approx(5e-4), pytest.approx(1e-3)]
    assert trainer.warmup_steps(TrainConfig(), 6) == 0 and trainer.warmup_steps(TrainConfig(warmup_steps=3), 6) == 3


# ---------------------------------------------------------------- figures


def test_figures_are_written(tmp_path):
    rows = [{"epoch": 1, "step": 3, "loss": 2.0, "val_loss": 2.1, "accuracy": 0.3, "val_accuracy": None,
             "learning_rate": 1e-3, "seconds": 1.0, "images_per_second": 48.0},
            {"epoch": 2, "step": 6, "loss": 1.0, "val_loss": 1.5, "accuracy": 0.6, "val_accuracy": 0.5,
             "learning_rate": 5e-4, "seconds": 1.0, "images_per_second": 48.0}]
    assert plots.curve_names(rows) == ["loss", "accuracy"]
    curves = plots.plot_curves(rows, tmp_path / "curves.png", "title")
    confusion = plots.plot_confusion(np.array([[3, 1], [0, 0]]), ["a", "b"], tmp_path / "confusion.png")
    for path in (curves, confusion):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_start_weights_resume_wins_over_ckpt_which_warm_starts_a_fresh_run(tmp_path):
    source = tiny_model(seed=3)
    source.save(tmp_path / "start.keras")
    model = tiny_model(seed=4)
    trainer.ensure_optimizer_built(model)
    store = CheckpointStore(tmp_path / "checkpoints")
    note = trainer._start_weights(model, store, str(tmp_path / "start.keras"))
    assert note == f"starting from the weights of {tmp_path / 'start.keras'}"
    for a, b in zip(source.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    fit_steps(model, 2)
    store.save(model, epoch=0)
    again = tiny_model(seed=5)
    trainer.ensure_optimizer_built(again)
    note = trainer._start_weights(again, store, str(tmp_path / "start.keras"))
    assert note.startswith("resuming from ckpt-00000002.weights.h5 (step 2") and "ignored" in note
    assert int(again.optimizer.iterations.numpy()) == 2
    with pytest.raises(trainer.ToolError, match="-ckpt .* is not a file"):
        trainer._start_weights(tiny_model(), CheckpointStore(tmp_path / "none"), str(tmp_path / "missing.keras"))


def test_warm_start_and_evaluate_load_a_ckpt_file_alike(tmp_path):
    """-ckpt PATH: training's warm start and the loader of evaluate/test/export give the run's model the
    file's weights (.keras or .weights.h5) and refuse a missing or misfitting file with the same error."""
    from types import SimpleNamespace

    source = tiny_model(seed=3)
    source.save(tmp_path / "w.keras")
    source.save_weights(tmp_path / "w.weights.h5")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)]).save(tmp_path / "other.keras")

    def via_train(path):
        model = tiny_model(seed=4)
        trainer._start_weights(model, CheckpointStore(tmp_path / "none"), str(path))
        return model

    def via_evaluate(path):
        run = SimpleNamespace(train=SimpleNamespace(ckpt=str(path), mixed_precision=False), model_dir=tmp_path)
        model, where = trainer.load_weights_for(run, SimpleNamespace(build_model=lambda run: tiny_model(seed=4)))
        assert where == str(path)
        return model

    for load in (via_train, via_evaluate):
        for name in ("w.keras", "w.weights.h5"):
            loaded = load(tmp_path / name).get_weights()
            assert len(loaded) == len(source.get_weights())
            for expected, got in zip(source.get_weights(), loaded):
                np.testing.assert_array_equal(got, expected)
        with pytest.raises(trainer.ToolError, match=r"-ckpt '.*missing\.keras' is not a file"):
            load(tmp_path / "missing.keras")
        with pytest.raises(trainer.ToolError, match=r"-ckpt '.*other\.keras' does not fit the run's model"):
            load(tmp_path / "other.keras")


def test_test_summary_prints_chance_and_the_sketch_to_photo_figure():
    """-mode test's line gives chance beside mAP, and on Sketchy the sketch-to-photo protocol's mAP
    too (it was only in the JSON), each computed by retrieval.metrics from the labels."""
    import train_sketch_net
    from retrieval.metrics import evaluate

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 10)
    mixed = evaluate(rng.standard_normal((40, 8)).astype(np.float32), labels, k=(1, 10))
    cross = evaluate(rng.standard_normal((12, 8)).astype(np.float32), labels[::10].repeat(3),
                     rng.standard_normal((8, 8)).astype(np.float32), np.repeat([0, 1, 2, 3], 2), k=(1,))
    line = train_sketch_net.summarize("test", {**mixed, "sketch_to_photo": cross})
    assert f"mAP {mixed['map']:.4f} (chance {mixed['chance']['map']:.4f}) over 40 test images" in line
    assert f"sketch-to-photo mAP {cross['map']:.4f} (chance {cross['chance']['map']:.4f}) (12 sketches, 8 photos)" in line
    assert cross["chance"]["map"] > mixed["chance"]["map"]  # 2 of 8 photos relevant against 9 of 39 items


def test_label_smoothing_reaches_the_classifier_loss_and_a_bad_value_is_refused(quickdraw_28px, tmp_path):
    """-label_smoothing is checked before training and reaches the classifier's loss."""
    from models.losses import SmoothedSparseCrossentropy

    values = {"mode": "train", "data_path": str(quickdraw_28px), "model_dir": str(tmp_path / "run"), "model": "sknet"}
    run, task = trainer.prepare_run(*trainer.resolve("", {**values, "label_smoothing": 0.1}))
    loss = task.compile_args(run)["loss"]
    assert isinstance(loss, SmoothedSparseCrossentropy) and loss.label_smoothing == 0.1
    for bad in (-0.1, 1.0):
        with pytest.raises(trainer.ToolError, match=r"Invalid value for -label_smoothing: .*Expected a number in \[0, 1\)"):
            trainer.prepare_run(*trainer.resolve("", {**values, "model_dir": str(tmp_path / "bad"), "label_smoothing": bad}))


def test_image_classifiers_take_their_measured_recipe_and_flags_still_win(quickdraw_28px, tmp_path):
    """Task.recipe: batch 128, peak rate 2e-3 and label smoothing 0.1 for the CNN classifiers unless a flag
    or preset says otherwise; metric learning and stroke_rnn keep the dataclass defaults."""

    def settings(**values):
        run, _ = trainer.prepare_run(*trainer.resolve(values.pop("preset", ""), {
            "mode": "train", "data_path": str(quickdraw_28px), "model_dir": str(tmp_path / "run"), **values}))
        return run.pipeline.batch_size, run.train.learning_rate, run.train.label_smoothing

    assert settings(model="sknet") == (128, 2e-3, 0.1)
    assert settings(model="skresnet", learning_rate=5e-4) == (128, 5e-4, 0.1)
    assert settings(model="sknet", preset="smoke") == (16, 2e-3, 0.1)
    defaults = (PipelineConfig().batch_size, TrainConfig().learning_rate, TrainConfig().label_smoothing)
    assert defaults == (256, 1e-3, 0.0)
    assert settings(model="triplet") == defaults
    assert settings(model="stroke_rnn") == defaults
