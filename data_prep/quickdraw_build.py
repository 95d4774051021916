"""Quick, Draw! source files -> sharded TFRecords (the `build` command's work).

One unit of work is one category file: its drawings are read in file order, each is given to
train or test by a hash of (seed, key_id) so the split is deterministic per drawing and
disjoint by key_id, and each split takes drawings until its per-class quota is full.
Sketch-rnn files keep their own train/valid/test split. Every record keeps the label, the key_id
and the source strokes, so a data set can be re-rendered without the sources; with `--store both`
(the default) it also keeps the rendered image, with `--store strokes` it does not (the pipeline
renders on the fly, data_prep.pipeline). Either way each drawing is rendered once, so both stores
keep the same drawings, and the summary's `storage` compares the two on-disk sizes record by record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import random
from typing import Any

import cv2
import numpy as np

from configuration_sketch import QuickDrawBuildConfig, RasterConfig
from data_prep import builder, quickdraw, raster, shortfalls, tfrecords
from data_prep.categories import NAME_RULE, is_safe_name, parse_list
from data_prep.drawing import Drawing
from data_prep.skips import BadRecord, SkipCounter

TFRECORD_FRAMING = 16  # bytes around each record in a TFRecord file: length, its CRC, the data's CRC

SPLITS_BY_FORMAT = {
    "simplified": ["train", "test"],
    "raw": ["train", "test"],
    "bitmap": ["train", "test"],
    "sketchrnn": ["train", "valid", "test"],
}


def split_of(key_id: str, seed: int, test_fraction: float) -> str:
    """'test' or 'train' for a drawing, from a hash of (seed, key_id): stable across runs."""
    digest = hashlib.blake2b(f"{seed}:{key_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    return "test" if u < test_fraction else "train"


def select_categories(available: list[str], spec: str, seed: int) -> list[str]:
    """The categories to build, in label order.

    spec: 'all'; 'N' (N distinct categories chosen without replacement, seeded, then sorted);
    'name,name,...' (that order); '@file.txt' (one name a line, that order).
    """
    if spec.strip() == "all":
        return sorted(available)
    names = parse_list(spec, "--categories")
    if isinstance(names, int):
        n = names
        if not 1 <= n <= len(available):
            raise ValueError(f"Invalid value for --categories: {n}. Expected 1..{len(available)} "
                             "(the number of category files in --source).")
        return sorted(random.Random(seed).sample(sorted(available), n))
    for name in names:
        if not is_safe_name(name):
            raise ValueError(f"Invalid category name {name!r}: {NAME_RULE}.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Categories listed twice: {', '.join(duplicates)}.")
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"No source file for categories: {', '.join(missing)}.")
    if not names:
        raise ValueError("--categories selects no category.")
    return names


def feature_specs(image_size: int, channels: int, store: str = "both") -> dict[str, tfrecords.FeatureSpec]:
    """What each Quick, Draw! record stores: every feature, less `image` when store is 'strokes'."""
    F = tfrecords.FeatureSpec
    specs = {
        "image": F("bytes", "uint8", (image_size, image_size, channels), "raw",
                   "Rendered drawing, white on black, C-order (height, width, channels)."),
        "label": F("int64", "int64", (), "none", "Index into `classes`."),
        "key_id": F("bytes", "string", (), "utf-8", "Quick, Draw! key_id, or '<category>/<index>'."),
        "word": F("bytes", "string", (), "utf-8", "Category name."),
        "countrycode": F("bytes", "string", (), "utf-8", "Two-letter country code ('' if unknown)."),
        "recognized": F("int64", "int64", (), "none", "1 if the game recognized the drawing."),
        "strokes/points": F("float", "float32", (-1,), "none",
                            "All stroke points concatenated, row-major (points, strokes/dims)."),
        "strokes/lengths": F("int64", "int64", (-1,), "none", "Points in each stroke."),
        "strokes/dims": F("int64", "int64", (), "none", "2 for x, y; 3 for x, y, t (raw data)."),
    }
    if store == "strokes":
        del specs["image"]
    return specs


def storage_summary(results: list[dict]) -> dict[str, Any]:
    """dataset_info's `storage`: on-disk bytes per record as stored, and as they would be with images."""
    records = sum(r.get("record_bytes", {}).get("records", 0) for r in results)
    stored = sum(r.get("record_bytes", {}).get("stored", 0) for r in results)
    with_images = sum(r.get("record_bytes", {}).get("with_images", 0) for r in results)
    return {"storage": {"records_measured": records,
                        "bytes_per_record": round(stored / records, 1) if records else 0.0,
                        "bytes_per_record_with_images": round(with_images / records, 1) if records else 0.0}}


def render(drawing: Drawing, settings: RasterConfig) -> np.ndarray:
    """The (H, W, C) uint8 image of a drawing: rasterized strokes, or a resized bitmap."""
    if drawing.image is not None:
        image = drawing.image
        if image.shape[0] != settings.image_size:
            interpolation = cv2.INTER_AREA if image.shape[0] > settings.image_size else cv2.INTER_LINEAR
            image = cv2.resize(np.asarray(image), (settings.image_size, settings.image_size),
                               interpolation=interpolation)
        return np.asarray(image, dtype=np.uint8)[..., None]
    image = raster.rasterize_with(drawing.strokes, settings)
    return image if image.ndim == 3 else image[..., None]


def _record_values(drawing: Drawing, image: np.ndarray, label: int) -> dict[str, Any]:
    dims = drawing.strokes[0].shape[1] if drawing.strokes else 2
    points = (np.concatenate(drawing.strokes).astype(np.float32) if drawing.strokes
              else np.zeros((0, dims), np.float32))
    return {
        "image": np.ascontiguousarray(image),
        "label": label,
        "key_id": drawing.key_id,
        "word": drawing.word,
        "countrycode": drawing.countrycode or "",
        "recognized": int(bool(drawing.recognized)),
        "strokes/points": points,
        "strokes/lengths": [len(s) for s in drawing.strokes],
        "strokes/dims": dims,
    }


def skipped_entries_unit(unit: dict, staging: dict[str, pathlib.Path]) -> dict:
    """The source entries that are no category (unsafe names, folders, broken links): counted skips."""
    for path_out in staging.values():
        tfrecords.write_records(path_out, [])
    return {"read": sum(unit["skipped"].values()), "written": {split: 0 for split in staging}, "per_class": {},
            "skipped": unit["skipped"], "skip_examples": unit["skip_examples"], "over_quota": 0, "sources": []}


def build_unit(unit: dict, staging: dict[str, pathlib.Path]) -> dict:
    """Read, select, render and stage one category. Runs in a worker process."""
    if "skip_examples" in unit:
        return skipped_entries_unit(unit, staging)
    settings = RasterConfig(**unit["raster"])
    channels = 3 if settings.time_channels else 1
    specs = feature_specs(settings.image_size, channels, unit["store"])
    full_specs = feature_specs(settings.image_size, channels)
    sizes = {"records": 0, "stored": 0, "with_images": 0}
    skips = SkipCounter(strict=unit["strict"])
    quotas = dict(unit["quotas"])
    own_split = unit["format"] == "sketchrnn"
    test_fraction = unit["test_fraction"] or quotas["test"] / max(1, quotas["train"] + quotas["test"])
    records: dict[str, list[bytes]] = {split: [] for split in quotas}
    ids: dict[str, list[str]] = {split: [] for split in quotas}
    read = over_quota = 0
    seen_keys: set[str] = set()
    path = pathlib.Path(unit["path"])
    for drawing in quickdraw.read_drawings(path, unit["format"], skips, unit["recognized_only"]):
        read += 1
        if drawing.key_id in seen_keys:  # two records with one key_id: verify would refuse the data set
            skips.skip("duplicate_key", f"{path}:{drawing.key_id}", "key_id already read from this file")
            continue
        seen_keys.add(drawing.key_id)
        split = drawing.split if own_split else split_of(drawing.key_id, unit["seed"], test_fraction)
        if len(records[split]) >= quotas[split]:
            over_quota += 1
            if all(len(records[s]) >= quotas[s] for s in quotas):
                break
            continue
        try:
            image = render(drawing, settings)
        except (ValueError, BadRecord) as e:
            skips.skip("unrenderable", f"{path}:{drawing.key_id}", str(e))
            continue
        values = _record_values(drawing, image, unit["label"])
        record = tfrecords.serialize_example(values, specs)
        full = record if specs is full_specs else tfrecords.serialize_example(values, full_specs)
        sizes["records"] += 1
        sizes["stored"] += len(record) + TFRECORD_FRAMING
        sizes["with_images"] += len(full) + TFRECORD_FRAMING
        records[split].append(record)
        ids[split].append(drawing.key_id)
    read += skips.total - skips.counts["unrenderable"] - skips.counts["duplicate_key"]  # the reader's skips
    for split, path_out in staging.items():
        tfrecords.write_records(path_out, records.get(split, []))
    return {
        "read": read,
        "written": {split: len(r) for split, r in records.items()},
        "per_class": {unit["category"]: {split: len(r) for split, r in records.items()}},
        "skipped": skips.as_dict(),
        "skip_examples": dict(skips.examples),
        "over_quota": over_quota,
        "record_bytes": sizes,
        "ids": ids,  # the builder leaves out a key_id another category's file already gave
        "sources": [{"category": unit["category"], "file": path.name,
                     "num_bytes": path.stat().st_size, "sha256": tfrecords.sha256_file(path)}],
    }


def build(config: QuickDrawBuildConfig, settings: RasterConfig, progress: bool = True) -> dict[str, Any]:
    """Build (or resume) the sharded data set that `config` describes; returns dataset_info."""
    if config.format == "bitmap" and settings.time_channels:
        raise ValueError("--time_channels needs strokes; the bitmap format has none.")
    if config.format == "bitmap" and config.store == "strokes":
        raise ValueError("--store strokes needs strokes; the bitmap format has none (use --store both).")
    for name in ("train_per_class", "test_per_class", "shards", "workers"):
        if getattr(config, name) < (1 if name in ("shards", "workers") else 0):
            raise ValueError(f"Invalid value for --{name}: {getattr(config, name)}.")
    if not 0.0 <= config.test_fraction < 1.0:
        raise ValueError(f"Invalid value for --test_fraction: {config.test_fraction}. Expected 0 <= x < 1 "
                         "(0: the ratio of the quotas).")
    source_skips = SkipCounter(strict=config.strict)
    files = quickdraw.source_files(config.source, config.format, source_skips)
    categories = select_categories(list(files), config.categories, config.seed)
    splits = SPLITS_BY_FORMAT[config.format]
    quotas = {"train": config.train_per_class, "test": config.test_per_class}
    quotas.setdefault("valid", config.test_per_class)
    quotas = {split: quotas[split] for split in splits}
    raster_settings = dataclasses.asdict(settings)
    units = [{"category": c, "label": i, "path": str(files[c]), "format": config.format,
              "quotas": quotas, "test_fraction": config.test_fraction, "seed": config.seed,
              "recognized_only": config.recognized_only,
              "strict": config.strict, "raster": raster_settings, "store": config.store}
             for i, c in enumerate(categories)]
    if source_skips.total:
        units.append({"skipped": source_skips.as_dict(), "skip_examples": dict(source_skips.examples)})
    build_args = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("workers", "out", "strict", "allow_empty_classes")}
    if not config.test_fraction:
        del build_args["test_fraction"]  # the default: builds made before the flag keep their fingerprint
    if config.store == "both":
        del build_args["store"]  # likewise
    build_args["source"] = str(pathlib.Path(config.source).resolve())
    build_args["raster"] = raster_settings
    channels = 3 if settings.time_channels else 1
    stored = (f"rendered to {settings.image_size}x{settings.image_size}x{channels} uint8, white strokes on black"
              if config.store == "both" else "strokes only (no images: render them on the fly with `raster`)")
    info = {
        "name": "quickdraw",
        "description": f"Quick, Draw! ({config.format}) {stored}.",
        "classes": categories,
        "image": {"height": settings.image_size, "width": settings.image_size, "channels": channels},
        "features": {name: spec.as_dict()
                     for name, spec in feature_specs(settings.image_size, channels, config.store).items()},
        "raster": raster_settings,
        "store": config.store,
        "source_format": config.format,
    }
    wanted = {c: dict(quotas) for c in categories}
    return builder.run_build(config.out, units=units, unit_fn=build_unit, splits=splits,
                             num_shards=config.shards, workers=config.workers, build_args=build_args,
                             info=info, progress=progress,
                             summarize=shortfalls.summarizer(wanted, categories, splits, config.allow_empty_classes,
                                                             extra=storage_summary))
