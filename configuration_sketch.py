"""Every default of the toolkit, in one place, as typed dataclasses.

Override order: the defaults below, then absl flags on the command line. Each field
becomes a flag of the same name (`-image_size 64` or `--image_size=64`); its `help`
metadata is the flag's help. Modules read a config object, never a flag directly.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Sequence
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
    test_fraction: float = field(
        0.0, "Share of each category's drawings the hash split sends to test, before the quotas apply "
        "(sketch-rnn files keep their own split); 0: test_per_class / (train_per_class + test_per_class).")
    out: str = field(DATA_PATH, "Output folder for shards and dataset_info.json.")
    shards: int = field(8, "Shards per split.")
    workers: int = field(2, "Worker processes.")
    seed: int = field(0, "Seed for the category choice and the train/test split.")
    recognized_only: bool = field(False, "Keep only drawings the game recognized.")
    strict: bool = field(False, "Stop at the first bad record instead of counting a skip.")
    allow_empty_classes: bool = field(
        False, "Build even when a class has 0 examples in a split it should have (listed in shortfalls).")
    store: str = field(
        "both", "What each record keeps: both (the rendered image and the strokes) or strokes (no image bytes: "
        "smaller; the training pipeline renders the strokes on the fly at any -image_size).",
        choices=("both", "strokes"))


@dataclasses.dataclass(frozen=True)
class QuickDrawDownloadConfig:
    """`python -m data_prep.quickdraw download`: Google's files for named categories."""

    categories: str = field("", "name,name,... or @file.txt (one per line): download needs names.")
    format: str = field(
        "simplified", "Source format.", choices=("simplified", "raw", "bitmap", "sketchrnn")
    )
    dest: str = field("data/source", "Folder for the downloaded files.")
    base_url: str = field("", "Base URL (empty: $QUICKDRAW_BASE_URL, else Google's bucket).")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """tf.data input pipeline defaults."""

    batch_size: int = field(256, "Global batch size (image classifiers: 128 unless given; BENCHMARKS.md).")
    classifier_shuffle_buffer: int = field(
        10000, "Examples in the shuffle buffer of a classifier's training images; -shuffle_buffer is the "
        "metric-learning streams'.")
    cycle_length: int = field(4, "Shards read in parallel by interleave.")
    render: str = field(
        "auto", "Where a classifier's images come from: stored (the records' images), on_the_fly (the records' "
        "strokes drawn in tf.data with the data set's raster settings at -image_size), auto (stored images "
        "when they serve, else on the fly: strokes-only data, -time_channels or -stroke_augment).",
        choices=("auto", "stored", "on_the_fly"))
    time_channels: bool = field(
        False, "Draw stroke order and point time in channels 2 and 3 (3 channels; on-the-fly rendering).")


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
class StrokeRnnConfig:
    """-model stroke_rnn (models/stroke_rnn.py): (dx, dy, pen) sequences of a data set's strokes
    (data_prep/stroke_sequences.py) through Conv1D and bidirectional LSTM layers. Defaults are the
    TensorFlow Quick, Draw! tutorial's; the dropout rate is ModelConfig's -dropout (default 0.3)."""

    max_points: int = field(256, "stroke_rnn: drawings longer than this many points are truncated to their first "
                            "max_points points, in training, evaluation and the strokes endpoints (evaluate.json "
                            "counts them).")
    conv_filters: str = field("48,64,96", "stroke_rnn: filters of each Conv1D layer, comma-separated.")
    conv_kernels: str = field("5,5,3", "stroke_rnn: kernel length of each Conv1D layer (one per filter count).")
    conv_batch_norm: bool = field(False, "stroke_rnn: batch-norm (over real rows only) after each Conv1D layer.")
    rnn_layers: int = field(3, "stroke_rnn: bidirectional LSTM layers.")
    rnn_units: int = field(128, "stroke_rnn: units of each LSTM direction.")
    features_dim: int = field(256, "stroke_rnn: width of the `features` layer (embeddings for -mode test, export "
                              "and retrieval).")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation (training/augment.py); rates suit line drawings on a 0 background.

    Used with -augment. Mild rates, chosen on real Quick, Draw! drawings (skNet, 28 px, 20 classes):
    at 312 steps flips with 5% shift/zoom/shear and 5 degrees gave 0.598 test top-1, against 0.573
    with twice these rates plus 1% salt-and-pepper and 0.512 without augmentation. At 104 steps the
    stronger rates held training accuracy at 0.25 (BENCHMARKS.md).
    """

    aug_translate: float = field(0.05, "Largest shift, as a fraction of the image side (0 disables).")
    aug_zoom: float = field(0.05, "Largest zoom in or out, as a fraction of the image side (0 disables).")
    aug_rotation: float = field(5.0, "Largest rotation in degrees, either way (0 disables).")
    aug_shear: float = field(0.05, "Largest shear factor along x and y, either way (0 disables).")
    aug_flip: bool = field(True, "Random horizontal flips (a mirrored sketch keeps its class).")
    aug_salt_pepper: float = field(0.0, "Fraction of pixels set to 0 or 1 at random (0 disables).")
    aug_fill_value: float = field(0.0, "Value of pixels moved in from outside the image (the background).")
    aug_seed: int = field(-1, "Seed of the random transforms; negative draws a fresh one each run.")
    stroke_augment: bool = field(
        False, "Augment training drawings in stroke space before on-the-fly rendering (the stroke_* rates); "
        "never at evaluation.")
    stroke_scale: float = field(0.1, "Largest scale change of a drawing's points, either way (0 disables).")
    stroke_shear: float = field(0.1, "Largest shear factor of the points along x and y, either way (0 disables).")
    stroke_rotation: float = field(10.0, "Largest rotation of the points in degrees, either way (0 disables).")
    stroke_translate: float = field(0.05, "Largest shift of the points, as a fraction of the frame (0 disables).")
    stroke_jitter: float = field(1.0, "Standard deviation of the noise added to each point, in frame units "
                                      "(of 256; 0 disables).")
    stroke_dropout: float = field(0.1, "Chance of dropping each stroke but the first (0 disables).")
    stroke_partial: float = field(0.1, "Share of drawings cut to their first k strokes, k uniform (0 disables).")


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
    model: str = field("", "Exported model folder (train_sketch_net.py -mode export) for index, lookup and features.")
    index: str = field("", "Index folder; empty: beside the export (<run>/index for <run>/export, else <model>_index).")
    query: str = field("", "lookup: a sketch .png, or a .ndjson whose first drawing is rasterized.")
    text: str = field("", "lookup: a text query (e.g. \"sea turtle\") instead of --query, for an index of a -model vse "
                          "export (its embed_text endpoint).")
    grid: str = field("", "lookup: PNG grid of the query and its results; empty: <index>/lookups/<query stem>_lookup.png.")
    images: str = field("", "index: a folder of images, one sub-folder per class, to embed and index.")
    photo_edges: str = field(
        "auto", "index --images: embed the images as line drawings, as the model's training photos were "
        "(data_prep.edges): auto takes the export's model_meta photo_edges; none, canny or gradient. Pass "
        "none for a folder of sketches.", choices=("auto", "none", "canny", "gradient"))
    data_path: str = field("", "index: a data set folder (TFRecords and dataset_info.json) whose --split "
                               "records are embedded and indexed with thumbnails; evaluate --plots: the data "
                               "set whose records give the example grid's drawings by id when the feature "
                               "files hold none.")
    split: str = field("train", "index --data_path: the split to index.")
    out: str = field("", "index: output folder; empty: beside the export (<run>/index for <run>/export, else "
                         "<model>_index).")
    approximate: str = field("none", "index: exact (none) or approximate ivf / hnsw search.",
                             choices=("none", "ivf", "hnsw"))
    ivf_nlist: int = field(0, "index: IVF lists; 0 picks about 4 sqrt(N).")
    ivf_nprobe: int = field(8, "index: IVF lists probed per query.")
    hnsw_m: int = field(32, "index: HNSW links per node.")
    hnsw_ef_search: int = field(64, "index: HNSW search breadth.")
    thumbnail_size: int = field(64, "index: side of the thumbnails stored for result grids (0: none).")
    polarity: str = field(
        "auto", "index, lookup, features: polarity policy of the model's endpoints: auto inverts an image drawn "
        "the other way round from the model's training images (judged by its border), as_is never, invert always.",
        choices=("auto", "as_is", "invert"))


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """`python -m serving.batch`: score files or a data set with an exported model on Apache Beam."""

    model: str = field("", "Exported model folder (train_sketch_net.py -mode export).")
    input: str = field("", "Comma-separated files, folders or globs: a data set folder, .ndjson[.gz], .npy, "
                           ".npz, image files or folders (class sub-folders give labels).")
    split: str = field("all", "Split of a data set input ('all' reads every split).")
    out: str = field("", "Output folder: predictions.jsonl, embeddings.npz, report.json, confusion matrix.")
    head: str = field("auto", "classify (classifiers only) or embed; auto picks classify for classifiers.",
                      choices=("auto", "classify", "embed"))
    polarity: str = field("auto", "auto inverts images whose polarity differs from the model's training data; "
                                  "as_is; invert.", choices=("auto", "as_is", "invert"))
    batch_size: int = field(64, "Items per model call (every call gets this many: short batches are padded).")
    strict: bool = field(False, "Stop at the first bad record, naming file and line, instead of counting it.")
    progress: bool = field(True, "Show a progress bar on the terminal.")
    verbose: bool = field(False, "Show Beam's and TensorFlow's log lines.")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """`python -m webapp` (`make serve`): the drawing page and its JSON API over an exported model."""

    model: str = field("", "Exported model folder (train_sketch_net.py -mode export).")
    index: str = field("", "Gallery index folder (evaluate_similarity_lookup.py index); empty: the index "
                           "beside the export (<run>/index) when it exists, else no search.")
    host: str = field("127.0.0.1", "Address to listen on. 127.0.0.1 serves this machine only; 0.0.0.0 exposes "
                                   "the server to the network (put it behind a proxy that adds TLS).")
    port: int = field(8000, "Port to listen on.")
    k: int = field(12, "Gallery items a search returns unless the request asks for k.")
    polarity: str = field("auto", "Polarity policy for image inputs (strokes are drawn as the training data).",
                          choices=("auto", "as_is", "invert"))
    max_body_bytes: int = field(2_000_000, "Largest request body; larger ones get 413.")
    max_strokes: int = field(1_000, "Most strokes in one drawing.")
    max_points: int = field(20_000, "Most points in one drawing (real raw drawings hold up to about 1,200).")
    max_image_pixels: int = field(16_000_000, "Largest image (width x height), checked before decoding.")
    max_concurrency: int = field(32, "Connections served at once; more get 503 at once instead of waiting.")
    verbose: bool = field(False, "Show the access log and TensorFlow's start-up lines.")


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
    photo_edges: str = field(
        "none", "Store photos as line drawings, so one sketch encoder sees both domains alike: canny (OpenCV "
        "Canny on a smoothed grey image), gradient (Sobel magnitude thinned by non-maximum suppression) or "
        "none (colour photos). See data_prep/edges.py and BENCHMARKS.md.", choices=("none", "canny", "gradient"))
    shards: int = field(8, "Shards per split.")
    workers: int = field(2, "Worker processes.")
    seed: int = field(0, "Seed of the train/test split and of the unseen-class choice.")
    strict: bool = field(False, "Stop at the first bad file instead of counting a skip.")
    allow_empty_classes: bool = field(
        False, "Build even when a class has 0 examples in a split it should have (listed in shortfalls).")


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
    allow_empty_classes: bool = field(
        False, "Build even when a class has 0 examples in a split it should have (listed in shortfalls).")


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
    shuffle_buffer: int = field(2000, "Records in the shuffle buffer of the metric-learning training streams "
                                "(P x K batches, pairs); -classifier_shuffle_buffer is the classifiers'.")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """Metric-learning models (siamese, triplet, deephash; models/embedding.py) and their losses.

    P and K of the P x K batches are MetricPipelineConfig's classes_per_batch and per_class.
    """

    embedding_dim: int = field(-1, "Embedding width of siamese and triplet (2..4096); -1 takes the loss's own: "
                               "512 for the proxy losses (the authors' width: proxy-anchor at 512 beat the classifier's "
                               "features by 0.04-0.07 mAP on every seed on real drawings, at 128 by 0.02-0.04; "
                               "BENCHMARKS.md), 128 otherwise.")
    backbone: str = field("sknet", "Convolutional trunk: sknet/skresnet (>= 16 px) or siamese_cnn, the "
                          "Sketchy Siamese baseline net (>= 64 px; 100 in the original).",
                          choices=("sknet", "skresnet", "siamese_cnn"))
    l2_normalize: bool = field(True, "Scale siamese/triplet embeddings to unit L2 norm.")
    shared_weights: bool = field(True, "siamese: one network for both images; False: a sketch branch and "
                                 "a photo branch with their own weights (cross-domain).")
    loss: str = field("auto", "auto: siamese contrastive on pairs, deephash triplet loss, triplet proxy_anchor "
                      "(the best embedding on Quick, Draw! and Sketchy's seen classes, BENCHMARKS.md; the triplet "
                      "loss instead when -miner or -margin is given); triplet takes the triplet loss, "
                      "the in-batch contrastive loss and the proxy losses, which train one learned "
                      "proxy per class beside the embedding and see every class at every step: proxy_anchor "
                      "(Kim et al. 2020), normalized_softmax (a cosine classifier) and softmax_triplet (that "
                      "cosine classifier plus the triplet loss on the same embedding).",
                      choices=("auto", "triplet", "contrastive", "proxy_anchor", "normalized_softmax",
                               "softmax_triplet"))
    miner: str = field("auto", "Triplet miner (auto = semi_hard; batch_hard, batch_all) or in-batch "
                       "contrastive pair miner (auto/none = all pairs, hard_negative).",
                       choices=("auto", "batch_hard", "batch_all", "semi_hard", "hard_negative", "none"))
    margin: float = field(-1.0, "Loss margin (> 0); -1 takes the loss's own: triplet 0.2, contrastive 1.0, deephash 0.5.")
    proxy_alpha: float = field(32.0, "proxy_anchor: scale alpha of the cosines (> 0; the authors' 32).")
    proxy_delta: float = field(0.1, "proxy_anchor: margin delta on the cosines (>= 0; the authors' 0.1).")
    temperature: float = field(0.05, "normalized_softmax, softmax_triplet: temperature of softmax(cos / temperature) (> 0).")
    proxy_lr_multiplier: float = field(-1.0, "Proxy losses: the class proxies learn this many times faster than "
                                       "the network (> 0); -1 takes the loss's own, measured on real drawings "
                                       "(BENCHMARKS.md): proxy_anchor 100 (the authors' value), normalized_softmax 1.")
    bits: int = field(64, "deephash code length in bits (16, 32, 64, 128).")
    quantization_weight: float = field(0.03, "deephash: weight lambda of the quantization loss ||sign(u) - u||^2 "
                                       "(a sum over bits: 0.1 outweighed the triplet term at 128 bits and cost "
                                       "0.09 mAP on real drawings; 0.03 kept 64-bit Hamming mAP within 0.014 of "
                                       "the float mAP on 3 seeds, where 0.01 left a gap of 0.021, at equal Hamming "
                                       "mAP; BENCHMARKS.md).")
    margin_ramp_steps: int = field(0, "deephash: grow the margin linearly from margin_start over this many steps "
                                   "(0: no ramp). A ramp from 0 over the first third of a 300-step run collapsed "
                                   "128-bit codes (BENCHMARKS.md); the default warm-up of -warmup_steps is the "
                                   "measured remedy.")
    margin_start: float = field(0.0, "deephash: margin at step 0 when margin_ramp_steps > 0 (0 <= margin_start <= margin).")


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
    """-model vse (models/vse.py, training/tasks/vse.py): a visual-semantic embedding in the DeViSE way
    (Frome et al. 2013): an image trunk's `features`, projected linearly to the word vectors' dimension
    and L2-normalised (`semantic`), trained towards its class name's word vector."""

    word_vectors: str = field("", "vse: GloVe / fastText .vec / word2vec text file (plain or gzip) giving each class "
                              "name its vector (data_prep/word_vectors.py); required to train vse.")
    vse_trunk: str = field("sknet", "vse: the registered image model whose `features` layer is the trunk "
                           "(sknet, skresnet, sketch_a_net, ...).")
    vse_loss: str = field("cosine", "vse: cosine (1 - cos to the class's vector) or hinge (DeViSE's hinge rank loss "
                          "against every other seen class). On real Sketchy (32 px, 25 unseen classes, GloVe 25-d, "
                          "300 steps, 1 seed; python -m bench.vse --losses hinge,cosine) cosine gave text->image mAP "
                          "0.076/0.076 seen/unseen against hinge's 0.048/0.061 and a generalised zero-shot H of 0.046 "
                          "against 0.011, zero-shot top-1 alike (0.087, 0.085; chance 0.059); hinge labels seen "
                          "classes better (0.118 against 0.057).", choices=("hinge", "cosine"))
    vse_margin: float = field(0.1, "vse: margin of the hinge rank loss (> 0; DeViSE's 0.1).")
    vse_head: str = field("projection", "vse: projection (DeViSE: a linear map of the trunk's features to the word "
                          "vectors, trained by -vse_loss) or conse (ConSE, Norouzi et al. 2014: a classifier of the seen "
                          "classes trained by cross-entropy with -label_smoothing; an image's vector is the convex "
                          "combination of the -conse_top most probable seen classes' word vectors). On real Sketchy (32 px, GloVe "
                          "25-d, 600 steps, 3 seeds; BENCHMARKS.md) conse labelled seen classes 0.173 against 0.103 and "
                          "zero-shot 0.086 against 0.082 (chance 0.059), but its generalised zero-shot H was at chance "
                          "(0.012 against 0.026): projection stays the default for labelling old and new classes together.",
                          choices=("projection", "conse"))
    conse_top: int = field(5, "vse -vse_head conse: how many of the most probable seen classes' word vectors make an "
                           "image's vector (>= 1).")
    allow_missing_vectors: bool = field(False, "vse: drop the classes whose name has no word vector (their training "
                                        "records are left out, with a count) instead of refusing to train.")
    vse_vocabulary: int = field(50000, "vse: the first N words of -word_vectors saved with the run (with every class "
                                "name's words) for the exported embed_text endpoint.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`python train_sketch_net.py`: what to run, on which data set, into which folder, with which recipe.

    The model is ModelConfig's (`-model`, `-image_size`, `-channels`, ...), the global batch size
    PipelineConfig's `-batch_size`, augmentation AugmentConfig's. Override order: these defaults,
    then the `-preset` (training/presets.py), then flags given on the command line.
    """

    mode: str = field("train", "train: fit (resumes from <model_dir>/checkpoints); evaluate: loss, top-1/top-5, "
                      "confusion matrix; test: features and retrieval mAP; export: SavedModel and .keras; cv: "
                      "k-fold cross-validation (-folds) of the train split, mean and spread in <model_dir>/cv.json.",
                      choices=("train", "evaluate", "test", "export", "cv"))
    preset: str = field("", "Named recipe (training/presets.py: original, default, demo, smoke) applied over "
                        "these defaults; command-line flags still win. Empty: no preset.")
    data_path: str = field(DATA_PATH, "Built data set (dataset_info.json and shards), from `python -m "
                           "data_prep.quickdraw build` or `make demo`.")
    model_dir: str = field("./runs/sketch", "Folder of the run: train_config.json, checkpoints/, logs/ "
                           "(TensorBoard), train_history.json, curves, best.keras, evaluate.json, export/.")
    epochs: int = field(10, "Training epochs (an epoch is `steps_per_epoch` optimizer steps).")
    steps_per_epoch: int = field(0, "Optimizer steps per epoch; 0: one pass over the train split, "
                                 "ceil(examples / batch_size).")
    learning_rate: float = field(1e-3, "Peak learning rate (image classifiers: 2e-3 unless given; BENCHMARKS.md).")
    lr_schedule: str = field("cosine", "constant, or cosine decay to 0 over all epochs (follows the optimizer "
                             "step, so a resumed run continues the curve).", choices=("constant", "cosine"))
    warmup_steps: int = field(-1, "Raise the learning rate linearly from 0 to -learning_rate over this many "
                              "first steps, then follow -lr_schedule over the rest. -1: a tenth of the run's "
                              "steps (on real drawings it raised the classifier's retrieval mAP on every seed "
                              "and steadied 128-bit hashing; BENCHMARKS.md); 0: none.")
    optimizer: str = field("adamw", "adam, adamw (decoupled weight decay) or sgd (momentum 0.9, Nesterov).",
                           choices=("adam", "adamw", "sgd"))
    weight_decay: float = field(0.05, "Decoupled weight decay of adamw and sgd: each step scales weights by "
                                "(1 - learning_rate * weight_decay); batch-norm and bias weights are exempt. "
                                "0 disables; adam ignores it.")
    label_smoothing: float = field(0.0, "Classifiers: label smoothing s of the cross-entropy (the label's target "
                                   "1 - s + s / classes, every other class s / classes); 0 <= s < 1. Image "
                                   "classifiers: 0.1 unless given (BENCHMARKS.md).")
    augment: bool = field(False, "Augment training images (AugmentConfig: flips, affine, salt-and-pepper); "
                          "never at evaluation. Off by default: on real Quick, Draw! drawings it cost test accuracy "
                          "at 104 steps and retrieval mAP at 312 (BENCHMARKS.md); worth trying for long runs on "
                          "small data sets.")
    mixed_precision: bool = field(False, "Compute in 16-bit floats, keep weights in float32: mixed_float16 "
                                  "on GPU, mixed_bfloat16 on CPU.")
    jit_compile: bool = field(False, "Compile the train and inference steps with XLA.")
    strategy: str = field("auto", "auto: MultiWorkerMirroredStrategy when TF_CONFIG names several workers, "
                          "else MirroredStrategy over all local GPUs (or over -cpu_devices logical CPUs), "
                          "else one device; or force one of mirrored, one_device, multi_worker.",
                          choices=("auto", "mirrored", "one_device", "multi_worker"))
    cpu_devices: int = field(0, "Split the CPU into this many logical devices before TensorFlow starts "
                             "(>= 2 lets MirroredStrategy run on a CPU-only machine); 0 or 1: leave it whole.")
    ckpt: str = field("", "Weights to use. train: empty resumes from the latest checkpoint in "
                      "<model_dir>/checkpoints if any; a .keras or .weights.h5 path starts from those weights "
                      "instead. evaluate/test/export: empty or 'last' (latest checkpoint), 'best' "
                      "(<model_dir>/best.keras), or a path.")
    init_from: str = field("", "train, fresh runs only: start every layer the new model shares with another "
                           "model (same name and weight shapes; a classifier's `features` fills an embedding "
                           "network's `fc`) from a run folder of this tool (its latest checkpoint) or a .keras "
                           "file, e.g. a Quick, Draw! classifier for a Sketchy embedding; the head keeps fresh "
                           "weights where it differs. Another trunk or image size is refused.")
    bn_recalibration: int = field(20, "Batches of training images (not augmented) over which batch-norm "
                                  "moving statistics are re-estimated before each validation and checkpoint "
                                  "(precise BN); 0 keeps Keras' moving averages, which lag in short runs.")
    steps_per_checkpoint: int = field(0, "Also checkpoint every this many optimizer steps (0: at the end of "
                                      "each epoch only).")
    keep_checkpoints: int = field(2, "Checkpoints kept in <model_dir>/checkpoints (older ones are deleted), each "
                                  "a full resume point with the optimizer state: 2 keeps one to fall back to when "
                                  "the latest is corrupt. best.keras and the export hold no optimizer state.")
    evaluate_train: bool = field(False, "evaluate: the train split too (in inference mode, no augmentation).")
    seed: int = field(0, "Seed of the initial weights, the shuffling and the augmentation.")
    deterministic: bool = field(False, "Reproduce a run exactly for a given seed "
                                "(tf.config.experimental.enable_op_determinism: the input pipeline keeps its "
                                "order, random augmentation runs serially; slower).")
    verbose: int = field(1, "fit output: 0 silent, 1 progress bar, 2 one line per epoch.")
    tflite: str = field("none", "export: also write a TensorFlow Lite model of the classify_images (classifiers) "
                        "or embed_images endpoint at the model's size, polarity auto: float32 (model.tflite) or "
                        "int8 (dynamic-range quantized weights, model_int8.tflite); described under 'tflite' in "
                        "model_meta.json. -tflite alone means float32.", choices=("none", "float32", "int8"))


@dataclasses.dataclass(frozen=True)
class CvConfig:
    """k-fold cross-validation of a classifier (`-mode cv`, training/cross_validation.py).

    The train split is divided into `folds` by a stable hash of each record's id (training/folds.py);
    fold run k trains on the other folds and evaluates on fold k, in <model_dir>/fold_<k>of<folds>.
    """

    folds: int = field(5, "-mode cv: number of folds K (>= 2, at most the train records of the smallest class); "
                       "trains K models into <model_dir>/fold_<k>of<K>/ and writes cv.json.")
    fold: int = field(0, "The fold a run holds out (1..folds): it trains on the other folds of the train split and "
                      "validates, evaluates and tests on this one. Set by -mode cv for each fold run (and kept in its "
                      "train_config.json); 0: a normal run on the whole splits.")
    fold_seed: int = field(0, "Seed of the fold assignment (the key of the id hash): the same seed gives every "
                           "drawing the same fold in any process.")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """`python -m data_prep.synthetic`: procedural doodles written as Quick, Draw! raw and simplified ndjson."""

    out: str = field("./data/synthetic", "Output folder; files go to <out>/raw/ and <out>/simplified/.")
    classes: str = field("", "Comma-separated shape names (see data_prep.synthetic.SHAPES); empty = all.")
    per_class: int = field(600, "Drawings per class.")
    seed: int = field(0, "Seed: the same seed writes the same bytes.")
    workers: int = field(1, "Worker processes (one class each at a time); the bytes do not depend on it.")


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


HELP_ARGS = ("-h", "-help", "--help", "--helpfull")


def help_requested(argv: Sequence[str]) -> bool:
    """Whether a command line (argv[0] is the program) asks for help: -h, -help, --help or --helpfull."""
    return any(arg in HELP_ARGS for arg in argv[1:])


def command_help(usage: str, flag_values: flags.FlagValues) -> str:
    """What a command prints for --help: its usage text, then each of its flags (those defined from the
    dataclasses here) with help and default."""
    return f"{usage.strip()}\n\nflags:{flag_values.module_help(__name__)}"


def parse_command(argv: Sequence[str], classes: Sequence[type], prog: str, usage: str,
                  flag_values: flags.FlagValues | None = None,
                  known_only: bool = False) -> tuple[list[str], flags.FlagValues] | int:
    """Parse one command's flags, the fields of `classes`: (the positional arguments with argv[0], the
    parsed flags), or an exit code: 0 after printing the help for -h/-help/--help, 2 after a one-line
    error for an unknown flag or a bad value.

    A fresh FlagValues per command (the default) holds only that command's flags, so that its help lists
    exactly them and a flag of another command is an error. known_only leaves unknown flags among the
    returned arguments instead (a command that hands them on, as serving.batch does to Beam).
    """
    flag_values = flags.FlagValues() if flag_values is None else flag_values
    for cls in classes:
        define_flags(cls, flag_values)
    if help_requested(argv):
        print(command_help(usage, flag_values))
        return 0
    try:
        return flag_values(list(argv), known_only=known_only), flag_values
    except flags.Error as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
