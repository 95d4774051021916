"""`python -m data_prep.verify DIR`: re-read every shard and check it against dataset_info.json.

Checks, in order: the info file; that each shard's file lies inside the folder, its presence, size
and sha256; that every record parses with the declared features (raw images of the declared byte
length, encoded images that decode to the declared shape, labels within the classes, and the class
`classes[label]` equal to the one the record itself names: `word`, or the `<class>/` prefix of an
`item_id`); strokes that fit their lengths (`strokes/points` holds sum(`strokes/lengths`) x
`strokes/dims` values, dims 2 or 3) in data sets that store strokes, with or without images
(`--store strokes`); per-shard, per-split and per-class counts; and that no id (key_id, or the `id_feature`
the info names) appears twice, within or across splits, so no test example leaks into training. Exits non-zero naming the first problem.
"""

from __future__ import annotations

import collections
import os
import pathlib
import sys
from typing import Any

from data_prep import tfrecords


class VerificationError(RuntimeError):
    """The first problem found in a data set folder."""


def _check_shard_file(data_dir: pathlib.Path, shard: dict[str, Any]) -> pathlib.Path:
    name = shard["file"]
    path = data_dir / str(name)
    if not isinstance(name, str) or not path.resolve().is_relative_to(data_dir.resolve()):
        raise VerificationError(f"shard file {name!r} leaves the data set folder: shards must lie inside it")
    if not path.is_file():
        raise VerificationError(f"shard {shard['file']} is missing")
    size = path.stat().st_size
    if size != shard["num_bytes"]:
        raise VerificationError(f"shard {shard['file']}: {size} bytes, dataset_info.json says {shard['num_bytes']}")
    digest = tfrecords.sha256_file(path)
    if digest != shard["sha256"]:
        raise VerificationError(f"shard {shard['file']}: sha256 {digest} != {shard['sha256']} in dataset_info.json")
    return path


def damaged_shard(data_dir: str | os.PathLike, info: dict[str, Any],
                  first_split: str | None = None) -> str | None:
    """The first shard whose file is missing or differs from dataset_info.json (size, sha256), as
    verify would name it; `first_split` is checked first. None when every shard file matches.
    For a reader that met a corrupt record (tf.errors.DataLossError) and must say which shard."""
    data_dir = pathlib.Path(data_dir)
    splits = sorted(info["splits"], key=lambda split: split != first_split)
    for split in splits:
        for shard in info["splits"][split]["shards"]:
            try:
                _check_shard_file(data_dir, shard)
            except VerificationError as e:
                return str(e)
    return None


def _named_classes(parsed: dict[str, Any], specs: dict[str, tfrecords.FeatureSpec],
                   id_feature: str | None) -> list[str] | None:
    """The class each record of a parsed batch names itself: its `word` (Quick, Draw!), else the
    `<class>/` prefix of its `item_id` (Sketchy, image folders); None when records name none."""
    if "word" in specs:
        return [v.decode("utf-8") for v in parsed["word"].numpy()]
    if id_feature == "item_id" and "item_id" in specs:
        return [v.decode("utf-8").split("/", 1)[0] for v in parsed["item_id"].numpy()]
    return None


def _check_strokes(parsed: dict[str, Any], name: str, first: int) -> None:
    """Each record's strokes/points must hold sum(strokes/lengths) * strokes/dims values, dims 2 or 3."""
    import tensorflow as tf

    dims = parsed["strokes/dims"].numpy().reshape(-1)
    points = tf.RaggedTensor.from_sparse(parsed["strokes/points"]).row_lengths().numpy()
    lengths = tf.RaggedTensor.from_sparse(parsed["strokes/lengths"])
    expected = tf.reduce_sum(lengths, axis=1).numpy() * dims
    for i, (d, n, want) in enumerate(zip(dims, points, expected)):
        if d not in (2, 3) or n != want:
            raise VerificationError(f"{name}: record {first + i}: strokes/points holds {n} values, expected "
                                    f"{want} (sum of strokes/lengths x strokes/dims {d}, dims 2 or 3)")


def _scan_shard(path: pathlib.Path, specs: dict[str, tfrecords.FeatureSpec], classes: list[str],
                id_feature: str | None) -> tuple[int, collections.Counter, list[str]]:
    """Parse every record of a shard: returns (records, label counts, ids)."""
    num_classes = len(classes)
    import tensorflow as tf

    from data_prep.pipeline import decode_images

    image_names = [n for n, s in specs.items() if s.storage == "bytes" and s.encoding in tfrecords.IMAGE_ENCODINGS]
    names = list(specs)
    labels: collections.Counter = collections.Counter()
    ids: list[str] = []
    count = 0
    try:
        for batch in tf.data.TFRecordDataset(str(path)).batch(512):
            parsed = tf.io.parse_example(batch, tfrecords.parse_spec(specs, names))
            for name in image_names:
                spec = specs[name]
                if spec.encoding == "raw":
                    expected = 1
                    for dim in spec.shape:
                        expected *= dim
                    lengths = tf.strings.length(parsed[name]).numpy()
                    bad = [i for i, n in enumerate(lengths) if n != expected]
                    if bad:
                        raise VerificationError(f"{path.name}: record {count + bad[0]}: feature {name!r} holds "
                                                f"{lengths[bad[0]]} bytes, expected {expected} for {spec.shape}")
                else:
                    decode_images(parsed[name], spec)
            if {"strokes/points", "strokes/lengths", "strokes/dims"} <= set(specs):
                _check_strokes(parsed, path.name, count)
            if "label" in parsed:
                values = parsed["label"].numpy().reshape(-1)
                out_of_range = [v for v in values if not 0 <= v < num_classes]
                if out_of_range:
                    raise VerificationError(f"{path.name}: label {out_of_range[0]} outside 0..{num_classes - 1}")
                labels.update(int(v) for v in values)
                named = _named_classes(parsed, specs, id_feature)
                for i, (label, name) in enumerate(zip(values, named or [])):
                    if classes[label] != name:
                        raise VerificationError(
                            f"{path.name}: record {count + i} has label {label}, class {classes[label]!r} in "
                            f"dataset_info.json, but names its class {name!r} (classes swapped or reordered?)")
            if id_feature:
                ids.extend(v.decode("utf-8") for v in parsed[id_feature].numpy())
            count += int(batch.shape[0])
    except tf.errors.OpError as e:
        raise VerificationError(f"{path.name}: unreadable after {count} records: {e.message.splitlines()[0]}") from None
    return count, labels, ids


def verify(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Verify a data set folder; returns a summary dict or raises VerificationError."""
    data_dir = pathlib.Path(data_dir)
    try:
        info = tfrecords.read_dataset_info(data_dir)
    except tfrecords.DatasetInfoError as e:
        raise VerificationError(str(e)) from None
    specs = tfrecords.feature_specs(info)
    classes = info["classes"]
    if len(set(classes)) != len(classes):
        raise VerificationError("dataset_info.json lists a class twice")
    id_feature = tfrecords.id_feature(info, specs)
    seen_ids: dict[str, str] = {}
    summary: dict[str, Any] = {"splits": {}}
    for split, split_info in info["splits"].items():
        split_count = 0
        split_labels: collections.Counter = collections.Counter()
        for shard in split_info["shards"]:
            path = _check_shard_file(data_dir, shard)
            count, labels, ids = _scan_shard(path, specs, classes, id_feature)
            if count != shard["num_examples"]:
                raise VerificationError(f"shard {shard['file']}: {count} records, dataset_info.json says "
                                        f"{shard['num_examples']}")
            for item in ids:
                if item in seen_ids:
                    raise VerificationError(f"{id_feature} {item!r} appears twice ({seen_ids[item]} and {split})")
                seen_ids[item] = split
            split_count += count
            split_labels.update(labels)
        if split_count != split_info["num_examples"]:
            raise VerificationError(f"split {split}: {split_count} records, dataset_info.json says "
                                    f"{split_info['num_examples']}")
        per_class = split_info.get("per_class")
        if per_class is not None and "label" in specs:
            for label, name in enumerate(classes):
                if split_labels.get(label, 0) != per_class.get(name, 0):
                    raise VerificationError(f"split {split}, class {name!r}: {split_labels.get(label, 0)} records, "
                                            f"dataset_info.json says {per_class.get(name, 0)}")
        summary["splits"][split] = split_count
    records = info.get("records")
    if records is not None:
        written = sum(summary["splits"].values())
        if records["written"] != written:
            raise VerificationError(f"records.written is {records['written']} but the shards hold {written}")
        accounted = records["written"] + records["skipped"] + records.get("over_quota", 0)
        if records["read"] != accounted:
            raise VerificationError(f"records.read {records['read']} != written + skipped + over_quota ({accounted})")
    summary["classes"] = len(classes)
    return summary


def main(argv: list[str] | None = None) -> int:
    from configuration_sketch import help_requested

    argv = sys.argv[1:] if argv is None else argv
    if help_requested(["verify", *argv]):  # no flags: the usage and what is checked
        print(f"usage: python -m data_prep.verify DATA_DIR\n\n{__doc__.strip()}")
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m data_prep.verify DATA_DIR", file=sys.stderr)
        return 2
    try:
        summary = verify(argv[0])
    except VerificationError as e:
        print(f"FAILED {argv[0]}: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    print(f"OK {argv[0]}: {summary['classes']} classes; {splits} records verified")
    return 0


if __name__ == "__main__":
    import tf_startup

    tf_startup.quiet()
    sys.exit(main())
