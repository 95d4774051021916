"""Every default of the toolkit, in one place, as typed dataclasses.

Override order: the defaults below, then absl flags on the command line. Each field
becomes a flag of the same name (`-image_size 64` or `--image_size=64`); its `help`
metadata is the flag's help. Modules read a config object, never a flag directly.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from absl import flags

DATA_PATH = "./data/quickdraw"


def field(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its flag help (and allowed values, for enums)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class RasterConfig:
    """How strokes become pixels. Defaults reproduce Google's numpy_bitmap files."""

    image_size: int = field(28, "Output image side in pixels (28, 64, 128, 224, 256, ...).")
    line_width: float = field(16.0, "Line diameter in units of the 256-pixel frame.")
    padding: float = field(16.0, "Border around the drawing in units of the 256-pixel frame.")
    frame: int = field(256, "Side of the reference frame that line_width and padding refer to.")
    time_channels: bool = field(
        False, "Render 3 channels: strokes, stroke order and point time (Kaggle trick)."
    )
    normalize: str = field(
        "auto",
        "auto: align top-left and scale to 0..frame-1 only drawings not already so placed "
        "(simplified data is drawn as given, raw data is fitted); always: fit every drawing; never: as given.",
        choices=("auto", "always", "never"),
    )


@dataclasses.dataclass(frozen=True)
class QuickDrawBuildConfig:
    """`python -m data_prep.quickdraw build`: from Google's files to sharded TFRecords."""

    source: str = field("", "Folder with the source files (one file per category).")
    format: str = field(
        "simplified", "Source format.", choices=("simplified", "raw", "bitmap", "sketchrnn")
    )
    categories: str = field(
        "all", "N (first N, seeded choice), name,name,... , @file.txt (one per line) or 'all'."
    )
    train_per_class: int = field(1000, "Training drawings per class (at most).")
    test_per_class: int = field(100, "Test drawings per class (at most).")
    out: str = field(DATA_PATH, "Output folder for shards and dataset_info.json.")
    shards: int = field(8, "Shards per split.")
    workers: int = field(2, "Worker processes.")
    seed: int = field(0, "Seed for the category choice and the train/test split.")
    recognized_only: bool = field(False, "Keep only drawings the game recognized.")
    strict: bool = field(False, "Stop at the first bad record instead of counting a skip.")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """tf.data input pipeline defaults."""

    batch_size: int = field(256, "Global batch size.")
    shuffle_buffer: int = field(10000, "Examples in the shuffle buffer (training only).")
    cycle_length: int = field(4, "Shards read in parallel by interleave.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network to build (models.build_model) and its shared hyper-parameters."""

    model: str = field("sknet", "Registered model name (models.model_names(): sknet, skresnet, sketch_a_net, ...).")
    image_size: int = field(28, "Input image side in pixels (sknet/skresnet >= 16, sketch_a_net >= 81).")
    channels: int = field(1, "Input channels (1 for plain strokes, 3 with time_channels).")
    bn_momentum: float = field(
        0.9, "Batch-norm moving-average momentum; Keras' 0.99 lags in short runs (test accuracy collapses)."
    )
    dropout: float = field(
        -1.0, "Dropout rate of the fully connected layers; negative keeps each model's default "
        "(0.5 for sketch_a_net as in the paper, none for sknet/skresnet)."
    )


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation (training/augment.py); rates suit line drawings on a 0 background."""

    aug_translate: float = field(0.1, "Largest shift, as a fraction of the image side (0 disables).")
    aug_zoom: float = field(0.1, "Largest zoom in or out, as a fraction of the image side (0 disables).")
    aug_rotation: float = field(10.0, "Largest rotation in degrees, either way (0 disables).")
    aug_shear: float = field(0.1, "Largest shear factor along x and y, either way (0 disables).")
    aug_flip: bool = field(True, "Random horizontal flips (a mirrored sketch keeps its class).")
    aug_salt_pepper: float = field(0.01, "Fraction of pixels set to 0 or 1 at random (0 disables).")
    aug_fill_value: float = field(0.0, "Value of pixels moved in from outside the image (the background).")
    aug_seed: int = field(-1, "Seed of the random transforms; negative draws a fresh one each run.")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`python evaluate_similarity_lookup.py`: retrieval metrics, plots, gallery index and lookup."""

    features: str = field("", "Feature file (.npz: features N x D, labels N, optional ids) of the queries.")
    gallery: str = field("", "Gallery feature file; empty: leave-one-out over --features.")
    metric: str = field("l2", "Distance: l2, cosine, or hamming (packed uint8 bit codes).",
                        choices=("l2", "cosine", "hamming"))
    k: str = field("1,10,100", "Cut-offs K for the @K metrics; for lookup, how many results (default 10).")
    report: str = field("", "Write the JSON report here.")
    plots: str = field("", "Write t-SNE, PCA, precision-recall and example-grid PNGs into this folder.")
    memory_budget: str = field(
        "3GiB", "Bound on the arrays held at once, inputs included (sets the query block size): "
        "N = 100,000 x 1,024 fits in 3GiB.")
    backend: str = field("auto", "numpy, tensorflow (GPU when present) or auto (tensorflow if an NVIDIA "
                         "GPU is present).", choices=("auto", "numpy", "tensorflow"))
    tsne_points: int = field(2000, "Items drawn (seeded) for the t-SNE and PCA scatters.")
    examples: int = field(8, "Example queries in the plot grid.")
    plot_seed: int = field(0, "Seed of the plot subsamples and example choice.")
    model: str = field("", "Exported model folder (training/export.py) for index and lookup.")
    index: str = field("", "Index folder; empty: <model>/index.")
    query: str = field("", "lookup: a sketch .png, or a .ndjson whose first drawing is rasterized.")
    grid: str = field("", "lookup: PNG grid of the query and its results; empty: <query stem>_lookup.png.")
    images: str = field("", "index: a folder of images, one sub-folder per class, to embed and index.")
    out: str = field("", "index: output folder; empty: <model>/index.")
    approximate: str = field("none", "index: exact (none) or approximate ivf / hnsw search.",
                             choices=("none", "ivf", "hnsw"))
    ivf_nlist: int = field(0, "index: IVF lists; 0 picks about 4 sqrt(N).")
    ivf_nprobe: int = field(8, "index: IVF lists probed per query.")
    hnsw_m: int = field(32, "index: HNSW links per node.")
    hnsw_ef_search: int = field(64, "index: HNSW search breadth.")
    thumbnail_size: int = field(64, "index: side of the thumbnails stored for result grids (0: none).")


@dataclasses.dataclass(frozen=True)
class SketchyBuildConfig:
    """`python -m data_prep.sketchy build`: the Sketchy photo and sketch trees to paired TFRecords."""

    source: str = field("", "Folder holding photo/ and sketch/ (with or without the tx_* level).")
    out: str = field("./data/sketchy", "Output folder for shards and dataset_info.json.")
    image_size: int = field(64, "Output image side in pixels (the source is 256, or 128 in the sample).")
    test_fraction: float = field(0.2, "Fraction of each seen category's photos (with all their sketches) held out for test.")
    unseen_classes: str = field(
        "", "Categories held out of training for zero-shot retrieval (split test_unseen): N (seeded "
        "choice), name,name,... or @file.txt; empty = none. The common protocol holds out 25 of 125.")
    photo_variant: str = field("tx_000000000000", "Augmentation folder of the photo tree, when it has one.")
    sketch_variant: str = field("tx_000000000000", "Augmentation folder of the sketch tree, when it has one.")
    encoding: str = field(
        "auto", "Image storage: raw (fastest to read), encoded (JPEG photos, PNG sketches: smallest) or "
        "auto (raw up to 128 px, encoded above; see BENCHMARKS.md).", choices=("auto", "raw", "encoded"))
    jpeg_quality: int = field(95, "JPEG quality of re-encoded photos (encoded storage).")
    shards: int = field(8, "Shards per split.")
    workers: int = field(2, "Worker processes.")
    seed: int = field(0, "Seed of the train/test split and of the unseen-class choice.")
    strict: bool = field(False, "Stop at the first bad file instead of counting a skip.")


@dataclasses.dataclass(frozen=True)
class ImageFolderBuildConfig:
    """`python -m data_prep.image_folder build`: a <root>/<category>/<image> tree to TFRecords."""

    source: str = field("", "Root folder with one sub-folder of images per category (TU-Berlin png/, ...).")
    out: str = field("./data/image_folder", "Output folder for shards and dataset_info.json.")
    image_size: int = field(64, "Output image side in pixels; non-square images are scaled to a square.")
    test_fraction: float = field(0.2, "Fraction of each category's images held out for test.")
    domain: str = field("sketch", "What the images are (the records' domain).", choices=("sketch", "photo"))
    grayscale: bool = field(False, "Store one channel instead of three.")
    encoding: str = field(
        "auto", "Image storage: raw, encoded (PNG sketches, JPEG photos) or auto (raw up to 128 px).",
        choices=("auto", "raw", "encoded"))
    jpeg_quality: int = field(95, "JPEG quality of re-encoded photos (encoded storage).")
    shards: int = field(8, "Shards per split.")
    workers: int = field(2, "Worker processes.")
    seed: int = field(0, "Seed of the train/test split.")
    strict: bool = field(False, "Stop at the first bad file instead of counting a skip.")


@dataclasses.dataclass(frozen=True)
class MetricPipelineConfig:
    """Metric-learning input pipelines (data_prep/metric_pipelines.py): P x K batches and pairs."""

    classes_per_batch: int = field(8, "P: distinct classes in each P x K batch.")
    per_class: int = field(4, "K: examples of each class in a P x K batch.")
    sketches_per_class: int = field(-1, "Of the K, how many are sketches (the rest photos); -1: any domain.")
    open_batches: int = field(
        4, "Batches' worth of class units (K records of one class) that may wait for a batch; bounds memory, "
        "more wastes fewer records.")
    chunk_size: int = field(1024, "Records grouped into class units and batches per step (vectorised).")
    max_lead: int = field(
        4, "With K split by domain: units' worth of one domain's records a class may hold while waiting for "
        "the other domain (the excess of the more frequent domain is dropped).")
    pair_mode: str = field("cross_domain", "Pairs: sketch with photo, or two of one domain.",
                           choices=("cross_domain", "same_domain"))
    pair_classes: int = field(8, "Classes drawn together to make pairs (each gives one positive, one negative).")
    shuffle_buffer: int = field(2000, "Records in the shuffle buffer of the training streams.")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """Metric-learning models (siamese, triplet, deephash; models/embedding.py) and their losses.

    P and K of the P x K batches are MetricPipelineConfig's classes_per_batch and per_class.
    """

    embedding_dim: int = field(128, "Embedding width of siamese and triplet (2..4096).")
    backbone: str = field("sknet", "Convolutional trunk: sknet/skresnet (>= 16 px) or siamese_cnn, the "
                          "Sketchy Siamese baseline net (>= 64 px; 100 in the original).",
                          choices=("sknet", "skresnet", "siamese_cnn"))
    l2_normalize: bool = field(True, "Scale siamese/triplet embeddings to unit L2 norm.")
    shared_weights: bool = field(True, "siamese: one network for both images; False: a sketch branch and "
                                 "a photo branch with their own weights (cross-domain).")
    loss: str = field("auto", "auto: siamese contrastive on pairs, triplet/deephash triplet loss; triplet "
                      "also takes the in-batch contrastive loss.", choices=("auto", "triplet", "contrastive"))
    miner: str = field("auto", "Triplet miner (auto = batch_hard, batch_all, semi_hard) or in-batch "
                       "contrastive pair miner (auto/none = all pairs, hard_negative).",
                       choices=("auto", "batch_hard", "batch_all", "semi_hard", "hard_negative", "none"))
    margin: float = field(-1.0, "Loss margin (> 0); -1 takes the loss's own: triplet 0.2, contrastive 1.0, deephash 0.5.")
    bits: int = field(64, "deephash code length in bits (16, 32, 64, 128).")
    quantization_weight: float = field(0.1, "deephash: weight lambda of the quantization loss ||sign(u) - u||^2.")
    margin_ramp_steps: int = field(0, "deephash: grow the margin linearly from margin_start over this many steps (0: no ramp).")
    margin_start: float = field(0.0, "deephash: margin at step 0 when margin_ramp_steps > 0 (0 <= margin_start <= margin).")


_DEFINERS = {
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
    str: flags.DEFINE_string,
}


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def define_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define one absl flag per field of dataclass `cls` (skips names already defined)."""
    for f in dataclasses.fields(cls):
        if f.name in flag_values:
            continue
        help_text = f.metadata.get("help", f.name)
        choices = f.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(f.name, f.default, list(choices), help_text, flag_values=flag_values)
        else:
            _DEFINERS[_field_type(cls, f)](f.name, f.default, help_text, flag_values=flag_values)


def from_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS, **overrides: Any):
    """An instance of `cls` whose fields take the parsed flag values."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(cls) if f.name in flag_values}
    values.update(overrides)
    return cls(**values)
