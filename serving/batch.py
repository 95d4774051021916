"""Batch evaluation jobs on Apache Beam: score files and data sets with an exported model.

    python -m serving.batch --model runs/sknet/export --input data/quickdraw --split test --out jobs/eval1
    python -m serving.batch --model EXPORT --input 'drawings/*.ndjson.gz' --out jobs/j2 \\
        --runner DirectRunner --direct_num_workers 2
    python -m serving.batch --model EXPORT --input photos/ --out jobs/j3 --runner DataflowRunner --project ...

One pipeline for every runner: sources are read in parallel (serving.batch_inputs), scored by
Beam's RunInference with a ModelHandler that loads the export (serving.model, the one inference
loop), then gathered, sorted and written once: `predictions.jsonl`, `embeddings.npz` (the feature
file format of evaluate_similarity_lookup.py; `codes.npz` too for hash models), `report.json`
and, for labelled classifier jobs, `confusion_matrix.{csv,png}`; `job.json` last marks the job
done. Flags not listed in --help are Beam pipeline options, handed to the runner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import sys
import threading
import time
import uuid

import numpy as np

from configuration_sketch import BatchConfig
from serving import batch_inputs, classification_metrics
from serving.batch_inputs import ReadSettings, Skip, Source
from serving.features import save_features

OUTPUTS = ("predictions.jsonl", "embeddings.npz", "codes.npz", "report.json", "confusion_matrix.csv",
           "confusion_matrix.png", "job.json", "job.log")
JOB_FILE = "job.json"
NOTHING_TO_DO = -1  # run_job's return when --out already holds the finished job
PROGRESS_DIR = ".progress"
DECIMALS = 6  # probabilities in predictions.jsonl: rounded, so lines compare byte for byte


class BatchJobError(ValueError):
    """A job that cannot start: bad flags, model or output folder; the message says why."""


# --------------------------------------------------------------------------- the job


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything the pipeline's steps need, resolved in the main process before any work."""

    model: str
    out: str
    head: str
    polarity: str
    batch_size: int
    settings: ReadSettings
    class_names: tuple[str, ...] | None
    kind: str
    embedding_dim: int
    fingerprint: str
    started: float


def resolve_head(head: str, meta: dict) -> str:
    """'classify' or 'embed' for --head auto|classify|embed; classify needs a classifier."""
    if head == "auto":
        return "classify" if meta["kind"] == "classifier" else "embed"
    if head == "classify" and meta["kind"] != "classifier":
        raise BatchJobError(f"--head classify needs a classifier; the model is a {meta['kind']} model "
                            "(use --head embed or auto).")
    return head


def check_compatible(sources: list[Source], meta: dict) -> None:
    """Refuse inputs the model cannot take, before any work: time-channel rasters against grey data."""
    time_model = bool((meta.get("raster") or {}).get("time_channels"))
    for source in sources:
        if source.kind == "shard":
            raster = batch_inputs.tfrecords.read_dataset_info(source.dataset).get("raster") or {}
            if raster and bool(raster.get("time_channels")) != time_model:
                raise BatchJobError(f"the data set {source.dataset!r} was rendered with time_channels="
                                    f"{bool(raster.get('time_channels'))} but the model with {time_model}; "
                                    "rebuild the data set with the model's raster settings or give the strokes.")
        if source.kind == "bitmap" and time_model:
            raise BatchJobError(f"{source.path!r} holds grey bitmaps but the model takes time-channel "
                                "renderings (stroke order and time): give it strokes (ndjson or sketch-rnn).")


def fingerprint(model_dir: str, sources: list[Source], config: BatchConfig) -> str:
    """What decides the outputs: the model files, every input file (size and time) and the options."""
    digest = hashlib.sha256()
    model = pathlib.Path(model_dir)
    for name in ("model_meta.json", "saved_model/saved_model.pb"):
        path = model / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    for source in sources:
        stat = os.stat(source.path) if os.path.exists(source.path) else None
        digest.update(json.dumps([source.kind, os.path.abspath(source.path), source.split, source.label,
                                  stat and stat.st_size, stat and stat.st_mtime_ns]).encode())
    digest.update(json.dumps([config.split, config.polarity, config.head, config.strict]).encode())
    return digest.hexdigest()


def check_out(out: pathlib.Path, job_fingerprint: str) -> bool:
    """True when `out` already holds this very job, finished; BatchJobError when it holds another."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise BatchJobError(f"--out {str(out)!r} is a file; give a folder.")
    job_file = out / JOB_FILE
    if job_file.is_file():
        try:
            done = json.loads(job_file.read_text()).get("fingerprint")
        except ValueError:
            done = None
        if done == job_fingerprint:
            return True
        raise BatchJobError(f"--out {str(out)!r} holds another job (other model, inputs or options); "
                            "choose another folder or delete it.")
    strangers = [p.name for p in out.iterdir() if p.name not in OUTPUTS and p.name != PROGRESS_DIR
                 and not p.name.endswith(".tmp")]
    if strangers:
        raise BatchJobError(f"--out {str(out)!r} is not empty ({', '.join(sorted(strangers)[:3])}, ...) and holds "
                            "no batch job; choose an empty or new folder.")
    return False


# --------------------------------------------------------------------------- progress


class Progress:
    """Items scored so far, summed over worker processes through small files in --out/.progress."""

    def __init__(self, out: str):
        self.folder = pathlib.Path(out) / PROGRESS_DIR
        self.path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n
        self.flush()

    def flush(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(str(self.count))
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is a courtesy; the outputs do not depend on it

    @staticmethod
    def total(out: str) -> int:
        total = 0
        for path in (pathlib.Path(out) / PROGRESS_DIR).glob("*"):
            try:
                total += int(path.read_text() or 0)
            except (OSError, ValueError):
                pass
        return total


def watch_progress(out: str, expected: int | None, stop: threading.Event, terminal) -> None:
    """A terminal progress bar fed by the workers' progress files, until `stop` is set."""
    from tqdm import tqdm

    with tqdm(total=expected, unit=" items", desc="scoring", file=terminal, dynamic_ncols=True,
              mininterval=0.5) as bar:
        while not stop.wait(0.5):
            bar.update(Progress.total(out) - bar.n)
        bar.update(Progress.total(out) - bar.n)


# --------------------------------------------------------------------------- Beam steps


def _model_handler_class():
    """The ModelHandler subclass (defined lazily: Beam is imported only when a job runs)."""
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class ExportedModelHandler(ModelHandler):
        """Loads an export with serving.model and scores chunks of items (read_step: up to
        `batch_size` consecutive items of one source and input spec per Beam element).

        Beam batches chunks up to `batch_size` items (a chunk weighs its item count); the items of
        one spec are scored in calls of exactly `batch_size` rows (the last padded), so an item's
        outputs do not depend on how the runner grouped it: byte-identical results on any worker count.
        """

        def __init__(self, job: Job):
            super().__init__(min_batch_size=job.batch_size, max_batch_size=job.batch_size,
                             element_size_fn=lambda keyed: len(keyed[0]))
            self.job = job
            self.progress = None

        def load_model(self):
            from serving import model as serving_model

            self.progress = Progress(self.job.out) if "://" not in self.job.out else None
            return serving_model.load(self.job.model)

        def _score(self, model, source: str, data) -> dict:
            size, n = self.job.batch_size, len(data)
            if source == "encoded":
                batch = list(data) + [data[0]] * (size - n)
            else:
                batch = data if n == size else np.concatenate([data, np.repeat(data[:1], size - n, axis=0)])
            out = model.run(source, batch, head=self.job.head, polarity=self.job.polarity)
            return {k: v[:n] for k, v in out.items()}

        def _score_rows(self, model, source: str, data) -> tuple[dict, np.ndarray, dict]:
            """(outputs of the rows of `data` the graph takes, scored `batch_size` at a time; those
            rows' indices; {row: (reason, message)} of the others)."""
            import tensorflow as tf

            outs, kept, skipped = [], [], {}
            for start in range(0, len(data), self.job.batch_size):
                piece = data[start:start + self.job.batch_size]
                try:
                    outs.append(self._score(model, source, piece))
                    kept += range(start, start + len(piece))
                    continue
                except tf.errors.InvalidArgumentError:
                    pass
                for i in range(len(piece)):  # find the items the graph cannot decode; score the rest
                    try:
                        outs.append(self._score(model, source, piece[i:i + 1]))
                        kept.append(start + i)
                    except tf.errors.InvalidArgumentError as err:
                        message = err.message.splitlines()[0] if err.message else type(err).__name__
                        skipped[start + i] = ("undecodable_image", message)
            merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {}
            return merged, np.array(kept, np.int64), skipped

        def run_inference(self, batch, model, inference_args=None):
            groups: dict[tuple, list[int]] = {}
            for i, (kind, data) in enumerate(batch):
                key = ("encoded",) if kind == "encoded" else ("images", data.shape[1:], str(data.dtype))
                groups.setdefault(key, []).append(i)
            results: list = [None] * len(batch)
            for key, indices in groups.items():
                parts = [batch[i][1] for i in indices]
                data = [x for part in parts for x in part] if key[0] == "encoded" else np.concatenate(parts)
                out, kept, skipped = self._score_rows(model, key[0], data)
                start = 0
                for i, part in zip(indices, parts):
                    stop = start + len(part)
                    lo, hi = np.searchsorted(kept, [start, stop])
                    results[i] = ({k: v[lo:hi] for k, v in out.items()}, (kept[lo:hi] - start).tolist(),
                                  [(r - start, *skipped[r]) for r in range(start, stop) if r in skipped])
                    start = stop
            if self.progress is not None:
                self.progress.add(sum(len(data) for _, data in batch))
            return [PredictionResult(example, inference) for example, inference in zip(batch, results)]

        def get_metrics_namespace(self) -> str:
            return "sketch_batch"

    return ExportedModelHandler


def _chunk_spec(record) -> tuple:
    return ("encoded",) if record.kind == "encoded" else ("images", record.data.shape, str(record.data.dtype))


def read_step(source: Source, settings: ReadSettings, chunk_size: int):
    """Beam FlatMap: ('chunk', keys, (kind, data)) of up to `chunk_size` consecutive items of one
    source with the same input kind and shape (data stacked: one Beam element per model call, so
    Beam's per-element cost is paid once a chunk), and ('skip', Skip) records."""
    keys, data, spec = [], [], None

    def chunk():
        return ("chunk", keys, (spec[0], data if spec[0] == "encoded" else np.stack(data)))

    for record in batch_inputs.read_source(source, settings):
        if isinstance(record, Skip):
            yield ("skip", record)
            continue
        if keys and (_chunk_spec(record) != spec or len(keys) == chunk_size):
            yield chunk()
            keys, data = [], []
        spec = _chunk_spec(record)
        keys.append((record.source, record.ordinal, record.id, record.label))
        data.append(record.data)
    if keys:
        yield chunk()


def rows_step(scored, strict: bool = False):
    """Beam FlatMap: a scored (keys, PredictionResult) chunk to ('rows', keys, outputs) and a
    ('skip', Skip) per item the graph could not decode."""
    keys, result = scored
    out, kept, skips = result.inference
    for i, reason, message in skips:
        key = keys[i]
        example = f"{key[0]} item {key[2]}: {reason} ({message})"
        if strict:
            raise batch_inputs.StrictStop(example)
        yield ("skip", Skip(key[0], reason, 1, example))
    if kept:
        yield ("rows", [keys[i] for i in kept], out)


# --------------------------------------------------------------------------- outputs


def _write(path: str, data: bytes) -> None:
    """Write a whole file through Beam's file systems (local or any runner's storage)."""
    from apache_beam.io.filesystems import FileSystems

    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def _label_space(rows: list, job: Job) -> tuple[list[str], np.ndarray]:
    """Class names and each row's label index (-1 unlabelled): the model's classes first."""
    names = list(job.class_names or [])
    extra = sorted({key[3] for key, _ in rows if key[3] is not None} - set(names))
    names += extra
    position = {n: i for i, n in enumerate(names)}
    labels = np.array([position[key[3]] if key[3] is not None else -1 for key, _ in rows], np.int64)
    return names, labels


def prediction_line(key: tuple, out: dict, row: int) -> str:
    """One line of predictions.jsonl (stable key order, rounded probabilities)."""
    line = {"source": key[0], "id": key[2], "label": key[3], "row": row}
    if "top_classes" in out:
        line["top_classes"] = [c.decode() if isinstance(c, bytes) else str(c) for c in out["top_classes"]]
        line["top_probabilities"] = [round(float(p), DECIMALS) for p in out["top_probabilities"]]
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def summarize(rows: list, skips: list[Skip], job: Job) -> tuple[dict, dict[str, bytes]]:
    """(report.json dict, {file name: bytes} of every output) from the gathered results."""
    import io

    rows = sorted(rows, key=lambda r: (r[0][0], r[0][1]))
    names, labels = _label_space(rows, job)
    lines = [prediction_line(key, out, i) for i, (key, out) in enumerate(rows)]
    files = {"predictions.jsonl": ("\n".join(lines) + ("\n" if lines else "")).encode()}
    embeddings = (np.stack([out["embedding"] for _, out in rows]).astype(np.float32) if rows
                  else np.zeros((0, job.embedding_dim), np.float32))
    ids = [key[2] for key, _ in rows]
    class_names = names if labels.size and labels.min() >= 0 else None
    buffer = io.BytesIO()
    save_features(buffer, embeddings, labels, ids=ids, class_names=class_names)
    files["embeddings.npz"] = buffer.getvalue()
    if rows and "codes" in rows[0][1]:
        buffer = io.BytesIO()
        save_features(buffer, np.stack([out["codes"] for _, out in rows]), labels, ids=ids, class_names=class_names)
        files["codes.npz"] = buffer.getvalue()

    by_reason: dict[str, int] = {}
    examples: dict[str, str] = {}
    for skip in sorted(skips, key=lambda s: (s.source, s.reason, s.example)):
        by_reason[skip.reason] = by_reason.get(skip.reason, 0) + skip.count
        examples.setdefault(skip.reason, skip.example)
    skipped = sum(by_reason.values())
    seconds = time.time() - job.started
    report = {
        "counts": {"read": len(rows) + skipped, "predicted": len(rows), "skipped": skipped,
                   "skipped_by_reason": dict(sorted(by_reason.items())), "skip_examples": dict(sorted(examples.items()))},
        "model": {"path": job.model, "kind": job.kind, "head": job.head, "polarity": job.polarity,
                  "image_size": job.settings.image_size, "channels": job.settings.channels},
        "labels": {"labelled": int((labels >= 0).sum()), "unlabelled": int((labels < 0).sum()),
                   "classes": names},
        "outputs": sorted(files) + ["report.json"],
        "seconds": round(seconds, 3),
        "items_per_second": round(len(rows) / seconds, 1) if seconds > 0 else None,
    }
    if job.head == "classify" and rows:
        model_names = list(job.class_names)
        known = labels >= 0
        in_model = known & (labels < len(model_names))
        report["labels"]["not_in_model"] = int((known & ~in_model).sum())
        if in_model.any():
            index = {n: i for i, n in enumerate(model_names)}
            top = np.array([[index[c.decode() if isinstance(c, bytes) else c] for c in out["top_classes"]]
                            for _, out in rows])[in_model]
            metrics = classification_metrics.classification_report(labels[in_model], top, model_names)
            report["classification"] = metrics
            matrix = np.array(metrics["confusion_matrix"]["matrix"])
            files["confusion_matrix.csv"] = classification_metrics.confusion_csv(matrix, model_names).encode()
            files["confusion_matrix.png"] = classification_metrics.confusion_png(
                matrix, model_names, f"{metrics['evaluated']} items: top-1 {metrics['top1']:.3f}")
            report["outputs"] = sorted(files) + ["report.json"]
    return report, files


def write_step(records: list, job: Job) -> dict:
    """Beam Map over the one gathered list: write every output, then job.json."""
    rows = [(key, {k: v[i] for k, v in r[2].items()}) for r in records if r[0] == "rows"
            for i, key in enumerate(r[1])]
    skips = [r[1] for r in records if r[0] == "skip"]
    report, files = summarize(rows, skips, job)
    out = job.out.rstrip("/")
    for name, data in files.items():
        _write(f"{out}/{name}", data)
    _write(f"{out}/report.json", (json.dumps(report, indent=2) + "\n").encode())
    _write(f"{out}/{JOB_FILE}", (json.dumps({"fingerprint": job.fingerprint, "model": job.model}, indent=2)
                                 + "\n").encode())
    return report["counts"]


def build_pipeline(pipeline, sources: list[Source], job: Job):
    """Sources -> read -> RunInference -> gather -> write, on `pipeline`."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    handler = KeyedModelHandler(_model_handler_class()(job))
    records = (pipeline
               | "Sources" >> beam.Create(sources, reshuffle=False)
               | "Spread" >> beam.Reshuffle()
               | "Read" >> beam.FlatMap(read_step, job.settings, job.batch_size))
    items = (records | "Items" >> beam.Filter(lambda r: r[0] == "chunk")
             | "Key" >> beam.Map(lambda r: (r[1], r[2])))
    skips = records | "Skips" >> beam.Filter(lambda r: r[0] == "skip")
    scored = items | "Score" >> RunInference(handler) | "Rows" >> beam.FlatMap(rows_step, job.settings.strict)
    return ((scored, skips) | "Merge" >> beam.Flatten()
            | "Gather" >> beam.combiners.ToList()
            | "Write" >> beam.Map(write_step, job))


# --------------------------------------------------------------------------- CLI


def beam_options(argv: list[str], config: BatchConfig):
    """PipelineOptions from the flags Beam knows; an unknown flag is an error, not a silent drop."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    known = set(PipelineOptions([]).get_all_options(drop_default=False))
    for arg in argv:
        if arg.startswith("-") and arg.lstrip("-").split("=")[0] not in known:
            raise BatchJobError(f"unknown flag {arg.split('=')[0]!r}: not a flag of serving.batch (see --help) "
                                "nor a Beam pipeline option.")
    options = PipelineOptions(argv)
    direct = options.view_as(DirectOptions)
    if (direct.direct_num_workers or 1) > 1 and not any("direct_running_mode" in a for a in argv):
        direct.direct_running_mode = "multi_processing"
    return options


def run_job(config: BatchConfig, beam_argv: list[str], terminal=sys.stderr) -> int:
    """Check everything, run the pipeline, print the summary; 0 on success."""
    import apache_beam as beam

    from serving.export import read_meta, require_images

    if not config.model or not config.input or not config.out:
        raise BatchJobError("--model, --input and --out are required (see --help).")
    if config.batch_size < 1:
        raise BatchJobError(f"--batch_size must be at least 1; received {config.batch_size}.")
    meta = read_meta(config.model)
    require_images(meta, config.model)
    head = resolve_head(config.head, meta)
    sources = batch_inputs.discover(config.input, config.split)
    check_compatible(sources, meta)
    options = beam_options(beam_argv, config)
    job_fingerprint = fingerprint(config.model, sources, config)
    out = pathlib.Path(config.out)
    remote = "://" in config.out
    if not remote and check_out(out, job_fingerprint):
        print(f"serving.batch: {config.out} already holds this job, finished; nothing to do.")
        return NOTHING_TO_DO
    if not remote:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / PROGRESS_DIR).glob("*"):
            stale.unlink()
    settings = ReadSettings(meta["image_size"], meta["channels"], meta.get("raster") or {}, config.strict)
    job = Job(os.path.abspath(config.model) if not remote else config.model, config.out if remote else
              os.path.abspath(config.out), head, config.polarity, config.batch_size, settings,
              tuple(meta["class_names"]) if meta.get("class_names") else None, meta["kind"],
              int(meta["embedding_dim"]), job_fingerprint, time.time())
    counts = [batch_inputs.expected_count(s) for s in sources]
    expected = None if None in counts else sum(counts)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).resolve().parent.parent),
                                                os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"serving.batch: {len(sources)} sources"
          f"{f', {expected} items' if expected is not None else ''}; model {config.model} ({meta['kind']}, "
          f"{head}); runner {options.get_all_options()['runner'] or 'DirectRunner'}", file=terminal)
    stop = threading.Event()
    watcher = None
    if config.progress and not remote:
        watcher = threading.Thread(target=watch_progress, args=(job.out, expected, stop, terminal), daemon=True)
        watcher.start()
    try:
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, sources, job)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)
    if remote:
        print(f"serving.batch: done; outputs in {config.out}")
        return 0
    for stale in (out / PROGRESS_DIR).glob("*"):
        stale.unlink()
    if (out / PROGRESS_DIR).is_dir():
        (out / PROGRESS_DIR).rmdir()
    report = json.loads((out / "report.json").read_text())
    print(summary_line(report))
    print(f"outputs: {', '.join(str(out / name) for name in report['outputs'])}")
    return 0


def summary_line(report: dict) -> str:
    """read / predicted / skipped by reason, speed, and top-1 against chance when labelled."""
    counts = report["counts"]
    reasons = ", ".join(f"{k}={v}" for k, v in counts["skipped_by_reason"].items())
    line = (f"read {counts['read']}, predicted {counts['predicted']}, skipped {counts['skipped']}"
            f"{f' ({reasons})' if reasons else ''} in {report['seconds']:.1f} s")
    if report.get("items_per_second"):
        line += f" ({report['items_per_second']:.1f} items/s)"
    metrics = report.get("classification")
    if metrics:
        top = [k for k in metrics if k.startswith("top") and k != "top1"][0]
        line += (f"; top-1 {metrics['top1']:.4f} (chance {metrics['chance']['top1']:.4f}), "
                 f"{top} {metrics[top]:.4f} on {metrics['evaluated']} labelled items")
    return line


def main(argv: list[str] | None = None) -> int:
    """Parse our flags (the rest are Beam's), run, and turn every input problem into one line.

    Unless --verbose, TensorFlow's and Beam's log lines (workers' too) go to <out>/job.log.
    """
    import configuration_sketch as cs

    from serving.quiet import stderr_to_log

    argv = list(sys.argv if argv is None else argv)
    parsed = cs.parse_command(argv, [BatchConfig], "serving.batch", __doc__, known_only=True)
    if isinstance(parsed, int):
        return parsed
    rest, flag_values = parsed[0][1:], parsed[1]
    config = cs.from_flags(BatchConfig, flag_values)
    import tf_startup

    tf_startup.quiet("2" if config.verbose else "3")
    root = logging.getLogger()
    level = root.level
    if not config.verbose:
        root.setLevel(logging.ERROR)  # Beam's notices (apitools, worker start-up)
    try:
        with stderr_to_log(not config.verbose, prefix="serving-batch-") as (terminal, log):
            code, message = _run(config, rest, terminal)
            ran = code != NOTHING_TO_DO
            code = 0 if code == NOTHING_TO_DO else code
            if message:
                print(f"serving.batch: {message}", file=terminal)
    finally:
        root.setLevel(level)
    if log:
        done = pathlib.Path(config.out) / JOB_FILE
        if code == 0 and ran and done.is_file() and "://" not in config.out:
            os.replace(log, pathlib.Path(config.out) / "job.log")
        elif code == 3:
            print(f"serving.batch: the log of the failed run: {log}", file=sys.stderr)
        else:
            os.unlink(log)
    return 0 if code == 0 else code if code != 3 else 1


def _run(config: BatchConfig, rest: list[str], terminal) -> tuple[int, str | None]:
    """(exit code, one-line message or None): 2 for bad input, 1 for --strict, 3 for a failure."""
    from serving.export import ExportError

    try:
        return run_job(config, rest, terminal), None
    except batch_inputs.StrictStop as err:
        return 1, f"--strict: {err}"
    except (BatchJobError, ExportError, batch_inputs.BatchInputError, OSError) as err:
        return 2, str(err)
    except Exception as err:  # a failure inside the pipeline: Beam wraps the worker's exception
        strict = _strict_message(err)
        if strict:
            return 1, f"--strict: {strict}"
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        return 3, f"the pipeline failed: {type(err).__name__}: {first[:300]}"


def _strict_message(err: BaseException) -> str | None:
    """The StrictStop message inside a runner's wrapped exception, if that is what stopped it."""
    text = str(err)
    marker = "StrictStop: "
    if marker in text:
        return text.split(marker, 1)[1].splitlines()[0]
    cause = err.__cause__ or err.__context__
    return _strict_message(cause) if cause is not None else None


if __name__ == "__main__":
    sys.exit(main())
