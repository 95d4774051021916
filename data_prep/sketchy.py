"""The Sketchy database (photo and sketch trees) -> paired, sharded TFRecords.

Reads `<source>/photo[/<variant>]/<category>/<wnid>_<n>.jpg` and
`<source>/sketch[/<variant>]/<category>/<wnid>_<n>-<k>.png`, where `<variant>` is an
augmentation folder such as tx_000000000000. Sketch `<wnid>_<n>-<k>` was drawn from photo
`<wnid>_<n>`: every record keeps that link (photo_id, sketch_id, domain, label).

One unit of work is one category. Its photos are split into train and test, sketched and
unsketched photos separately so every category gets its share of both, and each sketch goes
where its photo goes: no photo, and no sketch of it, is in two splits. `--unseen_classes`
moves whole categories into the split `test_unseen` for zero-shot retrieval; their labels come
after the seen ones, so a classifier over the seen classes uses labels 0..S-1. Category names
that differ between the two trees only by case, spaces, hyphens or underscores, or by a known
typo, are reconciled and reported; a category found in one tree only is reported and its files
counted as skipped. Usage:

    python -m data_prep.sketchy build --source DIR --out DIR --image_size 64 [--unseen_classes 25]
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import random
import re
import sys
from typing import Any

from configuration_sketch import SketchyBuildConfig
from data_prep import builder, edges, image_folder, shortfalls
from data_prep.categories import NAME_RULE, is_safe_name, parse_list
from data_prep.image_folder import (FolderDigest, UnitRecords, feature_specs, file_problem, read_file,
                                    record_bytes, stored_image, test_items)
from data_prep.skips import BadRecord, SkipCounter

TREES = ("photo", "sketch")
SKETCH_NAME = re.compile(r"^(?P<photo>.+)-(?P<k>\d+)$")
VARIANT_NAME = re.compile(r"^tx_\d+$")
# Spellings known to differ between a photo tree and its sketch tree, as match keys.
# effiel_tower: the photo folder of the Sketchy-style QuickDraw-Extended set (doodle2search issue #2).
KNOWN_ALIASES = {"effiel_tower": "eiffel_tower"}


def _spelling_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower()).strip("_")


def match_key(name: str) -> str:
    """The spelling-insensitive key of a category name: 'Car (sedan)' -> 'car_(sedan)'."""
    key = _spelling_key(name)
    return KNOWN_ALIASES.get(key, key)


def _is_clean(name: str) -> bool:
    return name == name.lower() and not re.search(r"\s", name)


@dataclasses.dataclass
class Categories:
    """The categories of the two trees, matched: folders per class and what did not match."""

    folders: dict[str, dict[str, str]]  # class -> {'photo': folder name, 'sketch': folder name}
    reconciled: list[dict[str, str]]    # classes whose two folder names differ
    photo_only: list[str]
    sketch_only: list[str]


def reconcile_categories(photo_names: list[str], sketch_names: list[str]) -> Categories:
    """Match the category folders of the photo and sketch trees by `match_key`.

    The class takes the photo folder's name when it is clean (lower case, no spaces, not a
    known typo), else the sketch folder's when that one is, else the key. Two folders of one
    tree with the same key are an error: which one is meant cannot be known.
    """
    by_key: dict[str, dict[str, str]] = {}
    for tree, names in (("photo", photo_names), ("sketch", sketch_names)):
        for name in names:
            key = match_key(name)
            entry = by_key.setdefault(key, {})
            if tree in entry:
                raise ValueError(f"Ambiguous categories in the {tree} tree: {entry[tree]!r} and {name!r} "
                                 "are the same name spelt two ways; rename or remove one.")
            entry[tree] = name
    folders, reconciled, photo_only, sketch_only = {}, [], [], []
    for key, entry in sorted(by_key.items()):
        if "sketch" not in entry:
            photo_only.append(entry["photo"])
            continue
        if "photo" not in entry:
            sketch_only.append(entry["sketch"])
            continue
        photo, sketch = entry["photo"], entry["sketch"]
        clean = [n for n in (photo, sketch) if _is_clean(n) and _spelling_key(n) == key]
        name = clean[0] if clean else key
        folders[name] = {"photo": photo, "sketch": sketch}
        if photo != sketch:
            how = "case/separators" if _spelling_key(photo) == _spelling_key(sketch) else "known alias"
            reconciled.append({"class": name, "photo": photo, "sketch": sketch, "rule": how})
    return Categories(folders, reconciled, photo_only, sketch_only)


def tree_root(source: pathlib.Path, tree: str, variant: str) -> tuple[pathlib.Path, str | None]:
    """The folder holding the categories of `tree` ('photo' or 'sketch'), and the variant used.

    With an augmentation level (every sub-folder named tx_<digits>), `variant` picks one.
    """
    root = source / tree
    if not root.is_dir():
        hint = ""
        nested = [p for p in source.glob("*/") if (p / "photo").is_dir() and (p / "sketch").is_dir()]
        if nested:
            hint = f" Did you mean --source {nested[0]}?"
        raise ValueError(f"Invalid value for --source: {str(source)!r} has no {tree}/ folder (expected "
                         f"photo/ and sketch/, with or without a tx_* level).{hint}")
    subdirs = [p.name for p in root.iterdir() if p.is_dir()]
    if subdirs and all(VARIANT_NAME.match(name) for name in subdirs):
        if variant not in subdirs:
            raise ValueError(f"Invalid value for --{tree}_variant: {variant!r}. {str(root)!r} holds "
                             f"{', '.join(sorted(subdirs))}.")
        return root / variant, variant
    return root, None


def select_unseen(spec: str, classes: list[str], seed: int) -> list[str]:
    """The classes held out as unseen: '' (none), 'N' (seeded choice), 'name,...' or '@file.txt'."""
    if not spec.strip():
        return []
    names = parse_list(spec, "--unseen_classes")
    if isinstance(names, int):
        n = names
        if not 1 <= n < len(classes):
            raise ValueError(f"Invalid value for --unseen_classes: {n}. Expected 1..{len(classes) - 1} "
                             "(at least one class must stay seen).")
        return sorted(random.Random(seed).sample(sorted(classes), n))
    by_key = {match_key(c): c for c in classes}
    unknown = [n for n in names if match_key(n) not in by_key]
    if unknown:
        raise ValueError(f"Invalid value for --unseen_classes: unknown categories {', '.join(unknown)}.")
    chosen = sorted({by_key[match_key(n)] for n in names})
    if len(chosen) != len(names):
        raise ValueError("Invalid value for --unseen_classes: a category is listed twice.")
    if len(chosen) >= len(classes):
        raise ValueError("Invalid value for --unseen_classes: every category is unseen; keep at least one seen.")
    return chosen


def photo_splits(photo_ids: list[str], sketched: set[str], test_fraction: float, seed: int,
                 category: str) -> dict[str, str]:
    """'train' or 'test' for each photo: sketched and unsketched photos are split separately."""
    held_out = (test_items([p for p in photo_ids if p in sketched], test_fraction, seed, f"{category}/sketched")
                | test_items([p for p in photo_ids if p not in sketched], test_fraction, seed,
                             f"{category}/unsketched"))
    return {p: "test" if p in held_out else "train" for p in photo_ids}


def _scan_photos(folder: pathlib.Path, source: pathlib.Path, skips: SkipCounter) -> tuple[dict, int]:
    """{photo stem: path} of a category's photo folder, and the entries read."""
    photos: dict[str, pathlib.Path] = {}
    entries = sorted(folder.iterdir())
    for path in entries:
        where = path.relative_to(source).as_posix()
        problem = file_problem(path)
        if problem:
            skips.skip(problem[0], where, problem[1])
        elif path.stem in photos:
            skips.skip("duplicate_photo", where, f"{photos[path.stem].name} has the same stem")
        else:
            photos[path.stem] = path
    return photos, len(entries)


def _scan_sketches(folder: pathlib.Path, source: pathlib.Path, photos: dict, skips: SkipCounter
                   ) -> tuple[list[tuple[pathlib.Path, str]], int]:
    """[(sketch path, photo stem)] of a category's sketch folder, and the entries read."""
    sketches = []
    entries = sorted(folder.iterdir())
    for path in entries:
        where = path.relative_to(source).as_posix()
        match = SKETCH_NAME.match(path.stem)
        problem = file_problem(path)
        if problem:
            skips.skip(problem[0], where, problem[1])
        elif not match:
            skips.skip("unparsable_sketch_name", where, "expected <photo>-<k>.<ext>")
        elif match["photo"] not in photos:
            skips.skip("photo_missing", where, f"no photo {match['photo']!r} in this category")
        else:
            sketches.append((path, match["photo"]))
    return sketches, len(entries)


def build_unit(unit: dict, staging: dict[str, pathlib.Path]) -> dict:
    """Read, split, resize and stage one category's photos and sketches. Runs in a worker process."""
    if unit.get("reason"):
        return image_folder.skip_files_unit(unit, staging)
    skips = SkipCounter(strict=unit["strict"])
    source, category = pathlib.Path(unit["source"]), unit["category"]
    photo_dir, sketch_dir = pathlib.Path(unit["photo_dir"]), pathlib.Path(unit["sketch_dir"])
    specs = feature_specs(unit["image_size"], 3, unit["encoding"])
    out = UnitRecords(list(staging))
    out.counts(category)
    photos, photos_read = _scan_photos(photo_dir, source, skips)
    sketches, sketches_read = _scan_sketches(sketch_dir, source, photos, skips)
    sketched = {stem for _, stem in sketches}
    if unit["unseen"]:
        split_of = {stem: "test_unseen" for stem in photos}
    else:
        split_of = photo_splits(sorted(photos), sketched, unit["test_fraction"], unit["seed"], category)
    digests = {tree: FolderDigest(category, d.relative_to(source).as_posix())
               for tree, d in (("photo", photo_dir), ("sketch", sketch_dir))}

    method = unit.get("photo_edges", "none")
    edge_transform = None if method == "none" else functools.partial(edges.edge_map, method=method)

    def image_of(path: pathlib.Path, domain: str):
        try:
            data = read_file(path)
            digests[domain].add(path.name, data)
            return stored_image(data, domain, unit["image_size"], 3, unit["encoding"], unit["jpeg_quality"],
                                transform=edge_transform if domain == "photo" else None)
        except BadRecord as e:
            skips.skip(e.reason, path.relative_to(source).as_posix(), e.detail)
            return None

    written_photos = set()
    for stem, path in sorted(photos.items()):
        image = image_of(path, "photo")
        if image is None:
            continue
        written_photos.add(stem)
        photo_id = f"{category}/{stem}"
        out.add(split_of[stem], category, "photo", record_bytes(
            specs, image=image, label=unit["label"], domain="photo", item_id=photo_id, photo_id=photo_id,
            sketch_id="", source=path.relative_to(source).as_posix()))
    sketched_written: dict[str, set] = {split: set() for split in staging}
    for path, stem in sketches:
        if stem not in written_photos:
            try:
                digests["sketch"].add(path.name, read_file(path))
            except BadRecord:
                pass  # counted below as photo_unreadable
            skips.skip("photo_unreadable", path.relative_to(source).as_posix(),
                       f"its photo {stem!r} was skipped")
            continue
        image = image_of(path, "sketch")
        if image is None:
            continue
        sketch_id = f"{category}/{path.stem}"
        out.add(split_of[stem], category, "sketch", record_bytes(
            specs, image=image, label=unit["label"], domain="sketch", item_id=sketch_id,
            photo_id=f"{category}/{stem}", sketch_id=sketch_id, source=path.relative_to(source).as_posix()))
        sketched_written[split_of[stem]].add(stem)
    return out.result(staging, photos_read + sketches_read, skips, [d.as_dict() for d in digests.values()],
                      sketched_photos={split: len(s) for split, s in sketched_written.items()})


def summarize(results: list[dict], splits: list[str]) -> dict[str, Any]:
    """Per-domain counts, and the photos with at least one sketch, per split."""
    extra = image_folder.summarize_domains(results, splits)
    extra["sketched_photos"] = {split: sum(r.get("sketched_photos", {}).get(split, 0) for r in results)
                                for split in splits}
    return extra


def _loose_files(root: pathlib.Path, source: pathlib.Path) -> list[str]:
    return [p.relative_to(source).as_posix() for p in sorted(root.iterdir()) if not p.is_dir()]


def build(config: SketchyBuildConfig, progress: bool = True) -> dict[str, Any]:
    """Build (or resume) the sharded Sketchy data set that `config` describes; returns dataset_info."""
    image_folder.check_build_args(config.image_size, config.test_fraction, config.shards, config.workers,
                                  config.jpeg_quality)
    source = pathlib.Path(config.source).resolve()
    roots, variants = {}, {}
    for tree in TREES:
        roots[tree], variants[tree] = tree_root(source, tree, getattr(config, f"{tree}_variant"))
    names = {tree: sorted(p.name for p in roots[tree].iterdir() if p.is_dir() and not p.name.startswith("."))
             for tree in TREES}
    unsafe = {tree: [n for n in names[tree] if not is_safe_name(match_key(n))] for tree in TREES}
    names = {tree: [n for n in names[tree] if n not in unsafe[tree]] for tree in TREES}
    categories = reconcile_categories(names["photo"], names["sketch"])
    if not categories.folders:
        raise ValueError(f"Invalid value for --source: no category of {str(source)!r} has both photos and "
                         f"sketches (photo tree: {len(names['photo'])}, sketch tree: {len(names['sketch'])}).")
    unseen = select_unseen(config.unseen_classes, list(categories.folders), config.seed)
    classes = sorted(set(categories.folders) - set(unseen)) + unseen
    splits = ["train", "test"] + (["test_unseen"] if unseen else [])
    encoding = image_folder.resolve_encoding(config.encoding, config.image_size)
    common = {"source": str(source), "image_size": config.image_size, "encoding": encoding,
              "photo_edges": edges.check_method(config.photo_edges),
              "jpeg_quality": config.jpeg_quality, "test_fraction": config.test_fraction,
              "seed": config.seed, "strict": config.strict}
    units = [{**common, "category": c, "label": i, "unseen": c in unseen,
              "photo_dir": str(roots["photo"] / categories.folders[c]["photo"]),
              "sketch_dir": str(roots["sketch"] / categories.folders[c]["sketch"])}
             for i, c in enumerate(classes)]
    for tree, only in (("photo", categories.photo_only), ("sketch", categories.sketch_only)):
        for folder in only:
            units.append({"strict": config.strict, "reason": f"category_only_in_{tree}_tree",
                          "files": _loose_files(roots[tree] / folder, source)})
        for folder in unsafe[tree]:  # every file counted; an empty folder once
            files = [repr(f) for f in _loose_files(roots[tree] / folder, source)]
            units.append({"strict": config.strict, "reason": "bad_category_name",
                          "files": files or [repr((roots[tree] / folder).relative_to(source).as_posix() + "/")],
                          "detail": f"folder {folder!r}, spelling key {match_key(folder)!r}: {NAME_RULE}"})
        loose = _loose_files(roots[tree], source)
        if loose:
            units.append({"strict": config.strict, "reason": "outside_category_folder", "files": loose})
    photo_look = "colour" if config.photo_edges == "none" else f"as {config.photo_edges} edge maps"
    build_args = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("workers", "out", "strict", "allow_empty_classes")}
    build_args["source"] = str(source)
    build_args["variants"] = variants
    wanted = {c: ({"test_unseen": 1} if c in unseen else {"train": 1, "test": int(config.test_fraction > 0)})
              for c in classes}
    info = {
        "name": "sketchy",
        "description": f"The Sketchy database: photos ({photo_look}) and the sketches drawn from them, "
                       f"{config.image_size}x{config.image_size}x3, {'raw uint8' if encoding == 'raw' else 'JPEG/PNG'}.",
        "photo_edges": config.photo_edges,
        "classes": classes,
        "num_seen_classes": len(classes) - len(unseen),
        "unseen_classes": unseen,
        "domains": ["sketch", "photo"],
        "id_feature": "item_id",
        "image": {"height": config.image_size, "width": config.image_size, "channels": 3, "encoding": encoding},
        "features": {n: s.as_dict() for n, s in feature_specs(config.image_size, 3, encoding).items()},
        "variants": variants,
        "categories": {"folders": categories.folders, "reconciled": categories.reconciled,
                       "photo_only": categories.photo_only, "sketch_only": categories.sketch_only},
        "split_protocol": "Per category, sketched and unsketched photos are each split test_fraction to test "
                          "(seeded shuffle); every sketch goes to its photo's split. Unseen classes: all of "
                          "their photos and sketches in test_unseen, labels after the seen classes.",
    }
    return builder.run_build(config.out, units=units, unit_fn=build_unit, splits=splits,
                             num_shards=config.shards, workers=config.workers, build_args=build_args,
                             info=info, progress=progress,
                             summarize=shortfalls.summarizer(wanted, classes, splits, config.allow_empty_classes,
                                                             lambda r: summarize(r, splits)))


def report_lines(info: dict[str, Any]) -> list[str]:
    """What a build reconciled or left out, and the split counts per domain."""
    lines = []
    cats = info.get("categories", {})
    for r in cats.get("reconciled", []):
        lines.append(f"reconciled ({r['rule']}): photo {r['photo']!r} + sketch {r['sketch']!r} -> class {r['class']!r}")
    for tree in TREES:
        for folder in cats.get(f"{tree}_only", []):
            lines.append(f"category only in the {tree} tree, left out (files counted as skipped): {folder!r}")
    for split, counts in info.get("per_domain", {}).items():
        lines.append(f"{split}: {counts['photo']} photos ({info['sketched_photos'][split]} sketched), "
                     f"{counts['sketch']} sketches")
    if info.get("unseen_classes"):
        lines.append(f"unseen classes ({len(info['unseen_classes'])}): {', '.join(info['unseen_classes'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    return image_folder.run_cli(sys.argv if argv is None else argv, SketchyBuildConfig, build, "data_prep.sketchy",
                                report_fn=report_lines)


if __name__ == "__main__":
    import tf_startup

    tf_startup.quiet()
    sys.exit(main())
