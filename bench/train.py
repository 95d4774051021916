"""Training throughput: images/s per model and image size, and what the TFRecord input pipeline costs.

1. Images/s of a training step (forward, backward, AdamW update) of sknet, skresnet and sketch_a_net at
   28, 64 and 128 px, fed from real drawings held in memory (batches decoded once, then cycled), so
   only the model is timed. Sizes a model does not take are skipped (Sketch-a-Net needs >= 81 px).
   Real images, as training sees them.
2. skNet's step time fed by the real pipeline (the training stream of train_sketch_net.py: TFRecords of
   the Quick, Draw! sample read, shuffled, parsed and decoded by data_prep.pipeline.load_split) against
   the same drawings (one pass of the train split) in memory, in the same process, alternating, best
   (and median) of ROUNDS rounds; with and
   without the training augmentation; and the pipeline alone (images/s with no training), whose CPU
   time per batch bounds what it can take from a step. Goal: the pipeline costs under 5%.

Writes bench/results/train.json. Run: `python -m bench.train` (about 12 minutes on 2 cores).
"""

from __future__ import annotations

import gc
import json
import pathlib
import tempfile
import time

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from configuration_sketch import QuickDrawBuildConfig, RasterConfig, TrainConfig  # noqa: E402
from data_prep import quickdraw_build  # noqa: E402
from training import trainer  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw" / "simplified"
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
NUM_CLASSES = 40
MODELS = ("sknet", "skresnet", "sketch_a_net")
SIZES = (28, 64, 128)
# Batch and timed steps per size: enough work per measurement on 2 cores without taking all day.
BATCH = {28: 64, 64: 32, 128: 16}
STEPS = {28: 12, 64: 8, 128: 4}
# Alternating rounds per stream; the best counts (other processes' load only slows a round), and the
# median is recorded too.
ROUNDS = 6


def compiled(name: str, size: int, channels: int = 1) -> keras.Model | None:
    """The model with the default recipe's optimizer and loss; None when it does not take `size`."""
    keras.utils.set_random_seed(0)
    try:
        model = models.build_model(name, input_size=size, channels=channels, num_classes=NUM_CLASSES)
    except ValueError:
        return None
    model.compile(optimizer=trainer.make_optimizer(TrainConfig(), total_steps=1000),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def in_memory(stream: tf.data.Dataset, batches: int) -> tf.data.Dataset:
    """`batches` batches of `stream` decoded once and cycled from memory: no reading, parsing or shuffling.

    Batched again without a fixed batch size, like the pipeline's, so both feed the same traced step.
    """
    taken = [(x.numpy(), y.numpy()) for x, y in stream.take(batches)]
    images = np.concatenate([x for x, _ in taken])
    labels = np.concatenate([y for _, y in taken])
    batch = len(taken[0][1])
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).repeat()


def pipeline_images_per_second(stream: tf.data.Dataset, batches: int = 60) -> float:
    """The stream alone: images/s produced with nothing else running."""
    iterator = iter(stream)
    first = next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += int(next(iterator)[0].shape[0])
    del first
    return count / (time.perf_counter() - start)


class StepClock(keras.callbacks.Callback):
    """Wall-clock time at the end of every training step."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def seconds_per_step(model: keras.Model, dataset: tf.data.Dataset, steps: int, warmup: int = 3) -> float:
    """Wall time per step over `steps` training steps that follow `warmup` steps of the same fit call.

    One fit call, one iterator: the clock starts once the iterator is filled and the step traced;
    earlier calls' iterators are garbage-collected first, so their worker threads stop. Timing two
    separate fit calls gave bimodal figures (0.25 or 0.43 s a step at 28 px for the same stream,
    in-memory or TFRecord alike); a likely cause is those threads, which keep filling buffers after
    fit returns.
    """
    gc.collect()
    clock = StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, shuffle=False, callbacks=[clock])
    return (clock.ends[-1] - clock.ends[warmup - 1]) / steps


def epoch_batches(data_dir: pathlib.Path, batch: int) -> int:
    """Batches in one pass over the train split: the in-memory baseline holds the same drawings."""
    info = json.loads((data_dir / "dataset_info.json").read_text())
    return -(-info["splits"]["train"]["num_examples"] // batch)


def build_data(out: pathlib.Path, size: int) -> pathlib.Path:
    config = QuickDrawBuildConfig(source=str(SOURCE), format="simplified", categories=str(NUM_CLASSES),
                                  train_per_class=25, test_per_class=0, out=str(out / f"q{size}"), shards=4,
                                  workers=2, seed=0)
    quickdraw_build.build(config, RasterConfig(image_size=size), progress=False)
    return out / f"q{size}"


def pipeline_stream(data_dir: pathlib.Path, size: int, batch: int, augment: bool = False, **flags) -> tf.data.Dataset:
    """The training stream train_sketch_net.py feeds to fit (classification task), with any other flags."""
    values = {"mode": "train", "data_path": str(data_dir), "model_dir": str(data_dir / "unused"),
              "batch_size": batch, "augment": augment, "image_size": size, **flags}
    run, task = trainer.prepare_run(*trainer.resolve("", values))
    return task.train_dataset(run, seed=0)


def main() -> None:
    results: dict = {"machine": describe_machine(), "tensorflow": tf.__version__, "keras": keras.__version__,
                     "throughput": [], "pipeline": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = {size: build_data(pathlib.Path(tmp), size) for size in SIZES}
        for size in SIZES:
            batch = BATCH[size]
            memory = in_memory(pipeline_stream(data[size], size, batch, augment=False), 8)
            for name in MODELS:
                model = compiled(name, size)
                if model is None:
                    print(f"{name:13s} {size:4d} px  skipped (input too small for this model)", flush=True)
                    continue
                step = min(seconds_per_step(model, memory, STEPS[size]) for _ in range(ROUNDS // 2))
                row = {"model": name, "image_size": size, "batch": batch, "steps": STEPS[size],
                       "seconds_per_step": round(step, 4), "images_per_second": round(batch / step, 1)}
                results["throughput"].append(row)
                print(f"{name:13s} {size:4d} px  batch {batch:3d}: {row['images_per_second']:7.1f} images/s", flush=True)

        for size in SIZES:
            batch, steps = BATCH[size], STEPS[size]
            model = compiled("sknet", size)
            pipeline = pipeline_stream(data[size], size, batch, augment=False)
            augmented = pipeline_stream(data[size], size, batch, augment=True)
            streams = {"in_memory": in_memory(pipeline, epoch_batches(data[size], batch)), "pipeline": pipeline,
                       "pipeline_augmented": augmented}
            rounds: dict = {key: [] for key in streams}
            for _ in range(ROUNDS):  # alternate, keep the best round of each: other processes' load is noise
                for key, stream in streams.items():
                    rounds[key].append(seconds_per_step(model, stream, steps))
            best = {key: min(times) for key, times in rounds.items()}
            median = {key: float(np.median(times)) for key, times in rounds.items()}
            alone = {key: pipeline_images_per_second(streams[key]) for key in ("pipeline", "pipeline_augmented")}
            row = {"model": "sknet", "image_size": size, "batch": batch, "steps": steps, "rounds": ROUNDS,
                   **{f"{k}_seconds_per_step": round(v, 4) for k, v in best.items()},
                   **{f"{k}_median_seconds_per_step": round(v, 4) for k, v in median.items()},
                   "pipeline_cost": round(best["pipeline"] / best["in_memory"] - 1, 4),
                   "augmented_pipeline_cost": round(best["pipeline_augmented"] / best["in_memory"] - 1, 4),
                   "median_pipeline_cost": round(median["pipeline"] / median["in_memory"] - 1, 4),
                   "pipeline_alone_images_per_second": round(alone["pipeline"], 1),
                   "augmented_pipeline_alone_images_per_second": round(alone["pipeline_augmented"], 1),
                   "pipeline_cpu_share_bound": round(batch / alone["pipeline"] / best["in_memory"], 4),
                   "augmented_pipeline_cpu_share_bound": round(batch / alone["pipeline_augmented"] / best["in_memory"], 4)}
            results["pipeline"].append(row)
            print(f"sknet {size:4d} px: in memory {best['in_memory'] * 1000:.0f} ms/step, TFRecord pipeline "
                  f"{best['pipeline'] * 1000:.0f} ms ({row['pipeline_cost']:+.1%}), with augmentation "
                  f"{best['pipeline_augmented'] * 1000:.0f} ms ({row['augmented_pipeline_cost']:+.1%}); pipeline "
                  f"alone {alone['pipeline']:.0f} images/s ({alone['pipeline_augmented']:.0f} augmented)", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'train.json'}")


if __name__ == "__main__":
    main()
