"""Train, evaluate, test and export sketch models.

    python train_sketch_net.py -mode train -data_path data/quickdraw -model_dir runs/sknet [-model sknet]
        [-preset original|default|demo|smoke] [-epochs 10] [-batch_size 256] [-learning_rate 1e-3]
        [-optimizer adamw] [-augment] [-mixed_precision] [-strategy auto] [-cpu_devices 2]
    python train_sketch_net.py -mode evaluate|test|export -model_dir runs/sknet [-ckpt last|best|PATH]
    python train_sketch_net.py -mode export -model_dir runs/sknet -tflite [float32|int8]
    python train_sketch_net.py -mode cv -folds 5 -data_path data/quickdraw -model_dir runs/cv [-fold_seed 0]

train resumes from <model_dir>/checkpoints when it finds a checkpoint (Ctrl-C saves one; so does
every epoch, and every -steps_per_checkpoint steps; the newest -keep_checkpoints are kept, and one whose
recorded SHA-256 no longer matches is skipped with a warning for the one before) and ends with the size
of the run folder. evaluate writes evaluate.json and the confusion
matrix; test writes features_test.npz and similarity.json (retrieval mAP of the `features` layer);
export writes <model_dir>/export (SavedModel with serving endpoints, model.keras, model_meta.json),
and with -tflite a TensorFlow Lite model beside them (model.tflite, or model_int8.tflite for -tflite int8;
-tflite alone means float32). cv trains one run folder per fold of the train split
(<model_dir>/fold_<k>of<K>, split by a stable hash of each record's id), evaluates each on its held-out
fold and writes the mean and standard deviation of top-1, top-5 and mAP to <model_dir>/cv.json; a rerun
keeps finished folds and resumes the others.

Flags are the fields of configuration_sketch's TrainConfig, ModelConfig, PipelineConfig and
AugmentConfig (and those of any training task's configs: CvConfig's -folds, -fold, -fold_seed).
Override order: the dataclass defaults, then -preset, then the flags given on the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

from absl import app, flags, logging  # noqa: E402

import configuration_sketch as cs  # noqa: E402
from data_prep.tfrecords import DatasetInfoError  # noqa: E402
from retrieval.features import FeatureFileError  # noqa: E402
from serving.export import ExportError  # noqa: E402
from training import trainer  # noqa: E402
from training.checkpoints import CheckpointError  # noqa: E402
from training.presets import PresetError  # noqa: E402
from training.strategy import StrategyError  # noqa: E402

FLAGS = flags.FLAGS
# Errors whose message is the whole story: printed without a traceback.
USER_ERRORS = (trainer.ToolError, StrategyError, PresetError, CheckpointError, DatasetInfoError, ExportError,
               FeatureFileError)
# Enum flags that may also be given bare (`-tflite`), with the value a bare flag means.
BARE_FLAGS = {"tflite": "float32"}


def define_flags() -> None:
    """One flag per config field; declared key flags so that `-help` lists them."""
    for cls in trainer.config_classes():
        cs.define_flags(cls)
        for field_name in cls.__dataclass_fields__:
            flags.declare_key_flag(field_name)


def expand_bare_flags(argv: Sequence[str], choices: dict[str, Sequence[str]]) -> list[str]:
    """argv with each bare BARE_FLAGS flag (`-tflite` not followed by one of its values) given its
    bare value (`-tflite=float32`): absl's enum flags always take a value."""
    out = []
    for i, arg in enumerate(argv):
        name = arg.lstrip("-")
        following = argv[i + 1] if i + 1 < len(argv) else None
        if i and arg.startswith("-") and name in BARE_FLAGS and following not in choices[name]:
            arg = f"-{name}={BARE_FLAGS[name]}"
        out.append(arg)
    return out


def command_line_values() -> dict:
    """The flags given on the command line (not their defaults), by name."""
    names = {name for cls in trainer.config_classes() for name in cls.__dataclass_fields__}
    return {name: FLAGS[name].value for name in names if FLAGS[name].present}


def summarize(mode: str, result: dict) -> str:
    if isinstance(result.get("summary"), str):  # a task's own one-line summary
        return result["summary"]
    if mode == "train":
        last = (result.get("history") or [{}])[-1]
        parts = [f"{k} {last[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                 if isinstance(last.get(k), float)]
        size = (result.get("run_folder_bytes") or {}).get("total")
        if size is not None:
            parts.append(f"run folder {size / 1e6:.1f} MB")
        return f"train: step {result['final_step']} of {result['total_steps']}" + (f"; {', '.join(parts)}" if parts else "")
    if mode == "evaluate":
        chance = result.get("chance") or {}
        return (f"evaluate ({result['split']}, {result['num_examples']} images): loss {result['loss']:.4f}, "
                f"top-1 {result['top1_accuracy']:.4f}, top-5 {result['top5_accuracy']:.4f}"
                + (f" (chance {chance['top1_accuracy']:.4f} and {chance['top5_accuracy']:.4f})" if chance else ""))
    if mode == "test":
        line = (f"test: leave-one-out L2 mAP {result['map']:.4f}{chance_of(result)} over {result['num_queries']} "
                "test images")
        cross = result.get("sketch_to_photo")
        if cross:  # Sketchy: the mixed-domain figure above, and the protocol's sketch queries against photos
            line += (f"; sketch-to-photo mAP {cross['map']:.4f}{chance_of(cross)} ({cross['num_queries']} sketches, "
                     f"{cross['num_gallery']} photos)")
        return line
    if mode == "cv":
        return summarize_cv(result)
    lite = result.get("tflite")
    return (f"export: {result['export_dir']} (trained on {result['polarity']} images"
            + (f"; TensorFlow Lite: {lite['file']}, {lite['quantization']})" if lite else ")"))


def summarize_cv(result: dict) -> str:
    """One line for -mode cv: mean ± sample standard deviation of each figure over the folds, and chance."""
    mean, std, chance = result["mean"], result["std"], result["chance"]
    figures = ", ".join(f"{label} {mean[key]:.4f} ± {std[key]:.4f} (chance {chance[key]:.4f})"
                        for label, key in (("top-1", "top1_accuracy"), ("top-5", "top5_accuracy"), ("mAP", "map")))
    return (f"cv: {result['folds']} folds of {result['records']['total']} {result['records']['split']} records: "
            f"{figures}; mean ± std (ddof {result['ddof']}) in {result['cv_file']}")


def chance_of(report: dict) -> str:
    """' (chance 0.0123)' from a retrieval report's `chance` map, or '' when it has none."""
    value = (report.get("chance") or {}).get("map")
    return "" if value is None else f" (chance {value:.4f})"


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        print(f"Unexpected arguments {list(argv[1:])}: every setting is a flag (-mode train, -model_dir DIR, ...); "
              "see -help.", file=sys.stderr)
        return trainer.EXIT_ERROR
    logging.set_verbosity(logging.WARNING)  # TensorFlow's Python INFO lines (strategy, export) are noise here
    try:
        configs, explicit = trainer.resolve(FLAGS.preset, command_line_values())
        result = trainer.run_mode(configs, explicit)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", trainer.EXIT_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return trainer.EXIT_INTERRUPTED
    print(summarize(FLAGS.mode, result), flush=True)
    return 0


if __name__ == "__main__":
    define_flags()
    if cs.help_requested(sys.argv):  # absl's own -help exits 1; help is no error
        print(cs.command_help(__doc__, FLAGS))
        sys.exit(0)
    app.run(main, argv=expand_bare_flags(sys.argv, {name: FLAGS[name].parser.enum_values for name in BARE_FLAGS}))
