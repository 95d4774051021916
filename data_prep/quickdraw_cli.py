"""`python -m data_prep.quickdraw download|build ...`: the command line of the Quick, Draw! tools.

Thin: parse the command's flags (the fields of QuickDrawDownloadConfig, or QuickDrawBuildConfig and
RasterConfig), call data_prep.download or data_prep.quickdraw_build, print one line. It lives apart from
the readers (data_prep.quickdraw) so that reading drawings imports nothing of the build;
data_prep.quickdraw's `__main__` block hands the command line to main() here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import configuration_sketch as cs

USAGE = """usage:
  python -m data_prep.quickdraw build --source DIR --format simplified|raw|bitmap|sketchrnn
      --categories N|name,name|@file.txt --train_per_class N --test_per_class N --image_size N --out DIR
      [--shards N] [--workers N] [--seed N] [--recognized_only] [--strict] [--store both|strokes]
  python -m data_prep.quickdraw download --categories name,name|@file.txt --format FORMAT --dest DIR
      [--base_url URL]
  python -m data_prep.quickdraw build|download --help   (every flag of the command)"""


def download_names(spec: str) -> list[str]:
    """The names of a download's --categories: 'a,b' or '@file.txt' (there is no listing to count from)."""
    from data_prep import categories

    names = categories.parse_list(spec, "--categories")
    if isinstance(names, int) or spec.strip() in ("", "all"):
        raise ValueError("download needs category names: --categories name,name or @categories.txt "
                         "(the official list is categories.txt in Google's quickdraw-dataset repository).")
    return names


def storage_note(info: dict) -> str:
    """'; strokes only: 412 bytes a record on disk, 52% less than with images (862)' for --store strokes."""
    storage = info.get("storage") or {}
    stored, full = storage.get("bytes_per_record", 0), storage.get("bytes_per_record_with_images", 0)
    if info.get("store") != "strokes" or not full:
        return ""
    return (f"; strokes only: {stored:.0f} bytes a record on disk, {100 * (1 - stored / full):.0f}% less than "
            f"with {info['image']['height']} px images ({full:.0f})")


def build(config: cs.QuickDrawBuildConfig, raster: cs.RasterConfig) -> int:
    from data_prep import builder, quickdraw_build, shortfalls, tfrecords
    from data_prep.safe_npz import UnsafePickleError
    from data_prep.skips import StrictModeError

    if not config.source:
        raise ValueError("--source is required: the folder holding one file per category.")
    try:
        info = quickdraw_build.build(config, raster)
    except (builder.BuildError, StrictModeError, tfrecords.DatasetInfoError, UnsafePickleError) as e:
        raise ValueError(str(e)) from None  # an unsafe pickle names the file, member and global
    splits = ", ".join(f"{s['num_examples']} {split}" for split, s in info["splits"].items())
    records = info["records"]
    skipped = ", ".join(f"{k}={v}" for k, v in info["skipped"].items())
    short = shortfalls.summary(info.get("shortfalls", []))
    print(f"built {splits} records of {len(info['classes'])} classes in {config.out}; "
          f"read {records['read']}, skipped {records['skipped']}" + (f" ({skipped})" if skipped else "")
          + f", over quota {records['over_quota']}" + (f"; {short}" if short else "") + storage_note(info))
    return 0


def download(config: cs.QuickDrawDownloadConfig) -> int:
    from data_prep.download import download_main

    return download_main(download_names(config.categories), config.format, config.dest, config.base_url or None)


# command: (its config classes, what runs it with their parsed instances)
COMMANDS = {
    "build": ((cs.QuickDrawBuildConfig, cs.RasterConfig), build),
    "download": ((cs.QuickDrawDownloadConfig,), download),
}


def main(argv: Sequence[str]) -> int:
    """Run the command named in argv (flags may come before or after it); 2 and one line on bad input."""
    command = next((arg for arg in argv[1:] if arg in COMMANDS), None)
    if command is None:
        wants_help = cs.help_requested(argv)
        print(USAGE, file=sys.stdout if wants_help else sys.stderr)
        return 0 if wants_help else 2
    classes, run = COMMANDS[command]
    parsed = cs.parse_command(argv, classes, "data_prep.quickdraw", USAGE)
    if isinstance(parsed, int):
        return parsed
    rest, flag_values = parsed
    extra = rest[1:]
    extra.remove(command)
    if extra:
        print(f"data_prep.quickdraw {command}: unexpected arguments {extra}; see --help", file=sys.stderr)
        return 2
    try:
        return run(*(cs.from_flags(cls, flag_values) for cls in classes))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
