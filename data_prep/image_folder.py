"""Labelled image folders (`<root>/<category>/<image>`) -> sharded TFRecords, and the image
record format that the Sketchy build (data_prep/sketchy.py) shares.

Every record is one image, a sketch or a photo, with its label, domain and ids, so one reader
serves single-domain trees (TU-Berlin's png/ layout) and the paired Sketchy data alike. Images
are stored raw or encoded (JPEG photos, PNG sketches; see `resolve_encoding` for the measured
trade-off) and always hold the channels of the spec; the model picks grey or colour at read
time (serving.preprocess.model_input). Usage:

    python -m data_prep.image_folder build --source ROOT --out DIR --image_size 64
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import pathlib
import random
import sys
from typing import Any, Iterable

import cv2
import numpy as np
from PIL import Image, ImageOps

from configuration_sketch import ImageFolderBuildConfig
from data_prep import builder, shortfalls, tfrecords
from data_prep.categories import NAME_RULE, is_safe_name
from data_prep.skips import BadRecord, SkipCounter, StrictModeError, path_problem

DOMAINS = ("sketch", "photo")  # a record's domain_id is the index here
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ENCODED = "png|jpeg"
# Raw pixels read about 2x (64 px) and 1.3-2.6x (128 px) faster than PNG/JPEG through load_split,
# for 5x and 11x the disk (bench.sketchy on the Sketchy sample, BENCHMARKS.md). Above 128 px the
# size wins: 196 KB an image raw at 256 px, 17 GB for the full Sketchy.
RAW_MAX_SIZE = 128
SPLITS = ["train", "test"]
# Larger images are a counted skip ('too_large'), read from the header: a 100 KB PNG of 10,000 x
# 10,000 pixels decodes to about 1 GB. The limit of serving.image_files, below Pillow's own
# decompression-bomb limit (89.5 million pixels warns, twice that raises).
MAX_IMAGE_PIXELS = 64_000_000
EXIF_ORIENTATION = 0x0112


def resolve_encoding(encoding: str, image_size: int) -> str:
    """'raw' or 'png|jpeg' (the FeatureSpec encoding) for --encoding auto|raw|encoded."""
    if encoding == "raw":
        return "raw"
    if encoding == "encoded":
        return ENCODED
    if encoding == "auto":
        return "raw" if image_size <= RAW_MAX_SIZE else ENCODED
    raise ValueError(f"Invalid value for --encoding: {encoding!r}. Expected 'auto', 'raw' or 'encoded'.")


def feature_specs(image_size: int, channels: int, encoding: str) -> dict[str, tfrecords.FeatureSpec]:
    """What each image record stores (`encoding` as resolve_encoding returns it)."""
    F = tfrecords.FeatureSpec
    how = ("uint8 pixels, C-order (height, width, channels)" if encoding == "raw"
           else "PNG (sketches) or JPEG (photos), decoding to (height, width, channels)")
    return {
        "image": F("bytes", "uint8", (image_size, image_size, channels), encoding,
                   f"The image, {how}; sketches dark on white as drawn."),
        "label": F("int64", "int64", (), "none", "Index into `classes`."),
        "domain": F("bytes", "string", (), "utf-8", "'sketch' or 'photo'."),
        "domain_id": F("int64", "int64", (), "none", "0 for a sketch, 1 for a photo."),
        "item_id": F("bytes", "string", (), "utf-8", "Unique id of this record: '<class>/<file stem or name>'."),
        "photo_id": F("bytes", "string", (), "utf-8",
                      "The photo: this record's item_id for a photo, the photo it was drawn from for a "
                      "sketch ('' when unknown)."),
        "sketch_id": F("bytes", "string", (), "utf-8", "This record's item_id for a sketch, '' for a photo."),
        "source": F("bytes", "string", (), "utf-8", "Path of the source file relative to --source."),
    }


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite a transparent image over white (sketches drawn on a transparent canvas)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba)
    return image


def to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grey (PIL modes I;16*, and I read from 16-bit files) to 8-bit "L" by round(v * 255 / 65535),
    the uint8 nearest to what serving's v / 65535 gives; other modes as they are (PIL already reads
    16-bit colour PNGs as 8-bit, by the high byte). A plain convert("L") would clip at 255."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _decode(data: bytes, channels: int) -> tuple[np.ndarray, str, str, bool]:
    """load_image, and whether the EXIF orientation turned the image."""
    if not data:
        raise BadRecord("unreadable_image", "an empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:  # checked from the header, before any pixel is decoded
            raise BadRecord("too_large", f"{width} x {height} pixels > {MAX_IMAGE_PIXELS:,}")
        image.load()
        mode, fmt = image.mode, image.format or ""
        turned = image.getexif().get(EXIF_ORIENTATION, 1) != 1
        image = ImageOps.exif_transpose(image)
        image = _flatten_alpha(to_8_bit(image)).convert("L" if channels == 1 else "RGB")
    except BadRecord:
        raise
    except Image.DecompressionBombError as e:
        raise BadRecord("too_large", str(e)) from None
    except Image.UnidentifiedImageError:
        raise BadRecord("unreadable_image", f"not in an image format Pillow reads ({len(data):,} bytes "
                                            f"starting {data[:8]!r}: corrupt, or not an image)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRecord("unreadable_image", f"{type(e).__name__}: {e}") from None
    pixels = np.asarray(image, dtype=np.uint8)
    return (pixels[..., None] if pixels.ndim == 2 else pixels), mode, fmt, turned


def load_image(data: bytes, channels: int) -> tuple[np.ndarray, str, str]:
    """Decode file bytes to uint8 (H, W, channels), upright; returns (pixels, PIL mode, format).

    The EXIF orientation is applied; 16-bit grey is scaled to 8 bits (`to_8_bit`); transparency
    is composited over white. Raises BadRecord('unreadable_image') for empty, truncated or
    non-image bytes and BadRecord('too_large') above MAX_IMAGE_PIXELS, before decoding.
    """
    pixels, mode, fmt, _ = _decode(data, channels)
    return pixels, mode, fmt


def file_problem(path: pathlib.Path) -> tuple[str, str] | None:
    """(skip reason, detail) for a folder entry that is not a readable image file, else None."""
    problem = path_problem(path)
    if problem and problem[0] == "not_a_file":
        return "not_an_image", problem[1]
    if problem is None and path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not_an_image", f"suffix {path.suffix!r}"
    return problem


def read_file(path: pathlib.Path) -> bytes:
    """The bytes of a file, or BadRecord('unreadable_file') naming the OS error (permission denied, ...)."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadRecord("unreadable_file", e.strerror or type(e).__name__) from None


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) -> (size, size, C): area averaging to shrink, bicubic to enlarge."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < max(height, width) else cv2.INTER_CUBIC
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized[..., None] if resized.ndim == 2 else resized


def encode_image(image: np.ndarray, domain: str, jpeg_quality: int) -> bytes:
    """JPEG for a photo (no chroma subsampling: small images lose too much colour with it);
    lossless PNG for a sketch, one channel when its channels are equal."""
    if domain == "photo":
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.shape[-1] == 3 else image
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    else:
        if image.shape[-1] == 3 and (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all():
            image = image[..., :1]
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.shape[-1] == 3 else image)
    if not ok:
        raise BadRecord("unencodable_image", f"OpenCV could not encode a {image.shape} image")
    return buf.tobytes()


def stored_image(data: bytes, domain: str, image_size: int, channels: int, encoding: str,
                 jpeg_quality: int, transform=None) -> bytes | np.ndarray:
    """What the `image` feature holds for one source file: raw pixels or encoded bytes.

    Encoded storage keeps the original bytes when they already are an upright PNG or JPEG of the
    right size and channels (no second JPEG compression); otherwise the pixels are re-encoded.
    `transform` (pixels -> pixels of the same channels, e.g. data_prep.edges) runs before the resize.
    """
    pixels, mode, fmt, turned = _decode(data, channels)
    if transform is not None:
        pixels = transform(pixels)
    resized = resize_square(pixels, image_size)
    if encoding == "raw":
        return np.ascontiguousarray(resized)
    wanted_modes = ("L",) if channels == 1 else ("RGB", "L")
    expected_format = "JPEG" if domain == "photo" else "PNG"
    if resized is pixels and fmt == expected_format and mode in wanted_modes and not turned:
        return data
    return encode_image(resized, domain, jpeg_quality)


def test_items(ids: Iterable[str], test_fraction: float, seed: int, salt: str) -> set[str]:
    """The ids held out for test: round(test_fraction * n) of them, a seeded shuffle per `salt`.

    Exact per group (a category, or its sketched photos) and independent of worker order.
    """
    order = sorted(ids)
    random.Random(f"{seed}:{salt}").shuffle(order)
    return set(order[:math.floor(test_fraction * len(order) + 0.5)])


def record_bytes(specs: dict[str, tfrecords.FeatureSpec], *, image: bytes | np.ndarray, label: int, domain: str,
                 item_id: str, photo_id: str, sketch_id: str, source: str) -> bytes:
    """One serialized image record."""
    return tfrecords.serialize_example(
        {"image": image, "label": label, "domain": domain, "domain_id": DOMAINS.index(domain),
         "item_id": item_id, "photo_id": photo_id, "sketch_id": sketch_id, "source": source}, specs)


class FolderDigest:
    """A source entry for one folder: file count, bytes and a sha256 over (name, sha256) lines."""

    def __init__(self, category: str, folder: str):
        self.category, self.folder = category, folder
        self.files = self.num_bytes = 0
        self._lines: list[str] = []

    def add(self, name: str, data: bytes) -> None:
        self.files += 1
        self.num_bytes += len(data)
        self._lines.append(f"{name}\t{hashlib.sha256(data).hexdigest()}\n")

    def as_dict(self) -> dict[str, Any]:
        digest = hashlib.sha256("".join(sorted(self._lines)).encode()).hexdigest()
        return {"category": self.category, "folder": self.folder, "files": self.files,
                "num_bytes": self.num_bytes, "sha256": digest}


@dataclasses.dataclass
class UnitRecords:
    """What one unit collects: records per split and the counts its result reports."""

    splits: list[str]
    records: dict[str, list[bytes]] = dataclasses.field(default_factory=dict)
    per_class_domain: dict[str, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.records = {split: [] for split in self.splits}

    def add(self, split: str, category: str, domain: str, record: bytes) -> None:
        self.records[split].append(record)
        self.counts(category)[split][domain] += 1

    def counts(self, category: str) -> dict[str, dict[str, int]]:
        """The counts of `category` (all 0 at first, so that a class with no record is still listed)."""
        return self.per_class_domain.setdefault(category, {s: {d: 0 for d in DOMAINS} for s in self.splits})

    def result(self, staging: dict[str, pathlib.Path], read: int, skips: SkipCounter,
               sources: list[dict], **extra: Any) -> dict[str, Any]:
        """Write the staged records of every split and return the builder's unit result."""
        for split, path in staging.items():
            tfrecords.write_records(path, self.records.get(split, []))
        per_class = {c: {s: sum(d.values()) for s, d in by_split.items()}
                     for c, by_split in self.per_class_domain.items()}
        return {"read": read, "written": {s: len(r) for s, r in self.records.items()},
                "per_class": per_class, "per_class_domain": self.per_class_domain,
                "skipped": skips.as_dict(), "skip_examples": dict(skips.examples), "over_quota": 0,
                "sources": sources, **extra}


def summarize_domains(results: list[dict], splits: list[str]) -> dict[str, Any]:
    """dataset_info keys: per-split counts by domain, and by class and domain."""
    per_domain = {s: {d: 0 for d in DOMAINS} for s in splits}
    per_class_domain: dict[str, dict[str, dict[str, int]]] = {s: {} for s in splits}
    for result in results:
        for category, by_split in result.get("per_class_domain", {}).items():
            for split, counts in by_split.items():
                merged = per_class_domain[split].setdefault(category, {d: 0 for d in DOMAINS})
                for domain, n in counts.items():
                    merged[domain] += n
                    per_domain[split][domain] += n
    return {"per_domain": per_domain, "per_class_domain": per_class_domain}


def skip_files_unit(unit: dict, staging: dict[str, pathlib.Path]) -> dict:
    """A unit of files that cannot be used at all (outside any category): each is a counted skip."""
    skips = SkipCounter(strict=unit["strict"])
    for path in unit["files"]:
        skips.skip(unit["reason"], path, unit.get("detail", ""))
    return UnitRecords(list(staging)).result(staging, len(unit["files"]), skips, [])


def list_categories(root: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[pathlib.Path], list[str]]:
    """({category: folder}, files lying outside any category folder, hidden folders ignored)."""
    if not root.is_dir():
        raise ValueError(f"Invalid value for --source: {str(root)!r} is not a folder.")
    categories, loose, hidden = {}, [], []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if entry.name.startswith("."):
                hidden.append(entry.name)
            else:
                categories[entry.name] = entry
        else:
            loose.append(entry)
    return categories, loose, hidden


def build_unit(unit: dict, staging: dict[str, pathlib.Path]) -> dict:
    """Read, split, resize and stage one category folder. Runs in a worker process."""
    if unit.get("reason"):
        return skip_files_unit(unit, staging)
    skips = SkipCounter(strict=unit["strict"])
    source, folder = pathlib.Path(unit["source"]), pathlib.Path(unit["folder"])
    category, domain = unit["category"], unit["domain"]
    specs = feature_specs(unit["image_size"], unit["channels"], unit["encoding"])
    out = UnitRecords(list(staging))
    out.counts(category)
    digest = FolderDigest(category, folder.relative_to(source).as_posix())
    entries = sorted(folder.iterdir())
    images = []
    for path in entries:
        problem = file_problem(path)
        if problem:
            skips.skip(problem[0], path.relative_to(source).as_posix(), problem[1])
        else:
            images.append(path)
    held_out = test_items([p.name for p in images], unit["test_fraction"], unit["seed"], category)
    for path in images:
        where = path.relative_to(source).as_posix()
        try:
            data = read_file(path)
            digest.add(path.name, data)
            image = stored_image(data, domain, unit["image_size"], unit["channels"], unit["encoding"],
                                 unit["jpeg_quality"])
        except BadRecord as e:
            skips.skip(e.reason, where, e.detail)
            continue
        item_id = f"{category}/{path.name}"
        split = "test" if path.name in held_out else "train"
        out.add(split, category, domain, record_bytes(
            specs, image=image, label=unit["label"], domain=domain, item_id=item_id,
            photo_id=item_id if domain == "photo" else "", sketch_id=item_id if domain == "sketch" else "",
            source=where))
    return out.result(staging, len(entries), skips, [digest.as_dict()])


def check_build_args(image_size: int, test_fraction: float, shards: int, workers: int, jpeg_quality: int) -> None:
    """Clear errors for out-of-range build arguments."""
    checks = [("image_size", image_size, 8 <= image_size <= 4096, "8..4096"),
              ("test_fraction", test_fraction, 0.0 <= test_fraction < 1.0, "0 <= x < 1"),
              ("shards", shards, shards >= 1, ">= 1"), ("workers", workers, workers >= 1, ">= 1"),
              ("jpeg_quality", jpeg_quality, 1 <= jpeg_quality <= 100, "1..100")]
    for name, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"Invalid value for --{name}: {value}. Expected {allowed}.")


def build(config: ImageFolderBuildConfig, progress: bool = True) -> dict[str, Any]:
    """Build (or resume) the sharded data set of an image-folder tree; returns dataset_info."""
    check_build_args(config.image_size, config.test_fraction, config.shards, config.workers, config.jpeg_quality)
    if config.domain not in DOMAINS:
        raise ValueError(f"Invalid value for --domain: {config.domain!r}. Expected 'sketch' or 'photo'.")
    source = pathlib.Path(config.source).resolve()
    folders, loose, hidden = list_categories(source)
    unsafe = {name: folders.pop(name) for name in list(folders) if not is_safe_name(name)}
    if not folders:
        raise ValueError(f"Invalid value for --source: {str(source)!r} holds no category folder "
                         "(expected <root>/<category>/<image>).")
    channels = 1 if config.grayscale else 3
    encoding = resolve_encoding(config.encoding, config.image_size)
    classes = sorted(folders)
    common = {"source": str(source), "domain": config.domain, "image_size": config.image_size,
              "channels": channels, "encoding": encoding, "jpeg_quality": config.jpeg_quality,
              "test_fraction": config.test_fraction, "seed": config.seed, "strict": config.strict}
    units = [{**common, "category": c, "label": i, "folder": str(folders[c])} for i, c in enumerate(classes)]
    if loose:
        units.append({"strict": config.strict, "reason": "outside_category_folder",
                      "files": [p.relative_to(source).as_posix() for p in loose]})
    for name, folder in unsafe.items():  # every file counted; an empty folder once
        files = [repr(p.relative_to(source).as_posix()) for p in sorted(folder.iterdir())] or [repr(f"{name}/")]
        units.append({"strict": config.strict, "reason": "bad_category_name", "files": files,
                      "detail": f"folder {name!r}: {NAME_RULE}"})
    build_args = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("workers", "out", "strict", "allow_empty_classes")}
    build_args["source"] = str(source)
    wanted = {c: {"train": 1, "test": int(config.test_fraction > 0)} for c in classes}
    info = {
        "name": "image_folder",
        "description": f"Labelled image folder {source.name}/ ({config.domain}s) at {config.image_size}x"
                       f"{config.image_size}x{channels}, {'raw uint8' if encoding == 'raw' else 'PNG/JPEG'}.",
        "classes": classes,
        "domains": [config.domain],
        "id_feature": "item_id",
        "image": {"height": config.image_size, "width": config.image_size, "channels": channels,
                  "encoding": encoding},
        "features": {n: s.as_dict() for n, s in feature_specs(config.image_size, channels, encoding).items()},
        "ignored_folders": hidden,
    }
    return builder.run_build(config.out, units=units, unit_fn=build_unit, splits=SPLITS,
                             num_shards=config.shards, workers=config.workers, build_args=build_args,
                             info=info, progress=progress,
                             summarize=shortfalls.summarizer(wanted, classes, SPLITS, config.allow_empty_classes,
                                                             lambda results: summarize_domains(results, SPLITS)))


def skip_report(info: dict[str, Any]) -> str:
    """'skipped 2 files: not_an_image=1 (cat/readme.txt: ...), unreadable_image=1 (...)'."""
    skipped = info.get("skipped", {})
    if not skipped:
        return "skipped 0 files"
    parts = [f"{reason}={n} (e.g. {info['skip_examples'].get(reason, '')})" for reason, n in skipped.items()]
    return f"skipped {sum(skipped.values())} files: " + "; ".join(parts)


def run_cli(argv: list[str], config_cls: type, build_fn, prog: str, report_fn=None) -> int:
    """`python -m <prog> build --flag value ...`: parse flags into `config_cls`, build, report (or print
    the usage and every flag for -h/-help/--help).

    `report_fn(info)` gives extra lines to print after the counts (reconciled names, ...).
    """
    from configuration_sketch import from_flags, parse_command

    usage = f"usage: python -m {prog} build --source DIR --out DIR [--flag value ...]"
    parsed = parse_command(argv, [config_cls], prog, usage)
    if isinstance(parsed, int):
        return parsed  # 0 after --help, 2 after a bad flag
    rest, flag_values = parsed
    if rest[1:] != ["build"]:
        print(f"{usage}\n(python -m {prog} --help lists every flag)", file=sys.stderr)
        return 2
    config = from_flags(config_cls, flag_values)
    try:
        info = build_fn(config)
    except (ValueError, OSError, StrictModeError, builder.BuildError, tfrecords.DatasetInfoError) as e:
        # OSError: an --out that is read-only, a file, on a full disk... (the message names the path)
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {v['num_examples']}" for s, v in info["splits"].items())
    short = shortfalls.summary(info.get("shortfalls", []))
    print(f"wrote {config.out}: {len(info['classes'])} classes; {counts}; {skip_report(info)}"
          + (f"; {short}" if short else ""))
    for line in report_fn(info) if report_fn else []:
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(sys.argv if argv is None else argv, ImageFolderBuildConfig, build, "data_prep.image_folder")


if __name__ == "__main__":
    import tf_startup

    tf_startup.quiet()
    sys.exit(main())
