"""Folds of a split for k-fold cross-validation, by a stable keyed hash of each record's id.

A record's fold is SipHash-2-4 of its id's bytes, keyed by (fold_seed, FOLD_KEY), modulo the number
of folds. The same function runs in the tf.data filter (`tf.strings.to_hash_bucket_strong`, TensorFlow's
SipHash) and here in plain Python (`fold_of`), so a drawing's fold does not depend on the process, the
shard order or Python's salted hash(): a drawing is held out by exactly one fold and never leaks into
that fold's training stream. The assignment is not stratified: fold sizes and class balance vary by chance.

A fold run (CvConfig.fold = k of CvConfig.folds) trains on the other folds of the train split and
validates, evaluates and tests on fold k; `fold_info` gives its Run the per-fold record counts.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from configuration_sketch import CvConfig
from data_prep import tfrecords

# Second half of the SipHash key (the first is -fold_seed's value): fixed, so folds depend on the seed alone.
FOLD_KEY = 0x5EEDF01D
# The split whose records are divided into folds.
SOURCE_SPLIT = "train"
HASH_NAME = "SipHash-2-4 of the record id's bytes (UTF-8), key (fold_seed, 0x5EEDF01D), modulo folds"
_MASK = (1 << 64) - 1


class FoldError(ValueError):
    """Cross-validation settings or a data set that cannot be divided into folds (one line)."""


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(k0: int, k1: int, data: bytes) -> int:
    """SipHash-2-4 of `data` under the 128-bit key (k0, k1): the reference of TensorFlow's
    to_hash_bucket_strong, in plain Python."""
    v = (k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573)
    end = len(data) - len(data) % 8
    words = [struct.unpack_from("<Q", data, i)[0] for i in range(0, end, 8)]
    words.append(((len(data) & 0xFF) << 56) | int.from_bytes(data[end:], "little"))
    for m in words:
        v0, v1, v2, v3 = v
        v = _sip_round(*_sip_round(v0, v1, v2, v3 ^ m))
        v = (v[0] ^ m, *v[1:])
    v0, v1, v2, v3 = v
    v = (v0, v1, v2 ^ 0xFF, v3)
    for _ in range(4):
        v = _sip_round(*v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def id_bytes(record_id: Any) -> bytes:
    """The bytes a record id is hashed as: bytes as stored, text as UTF-8, an integer in decimal."""
    if isinstance(record_id, bytes):
        return record_id
    if isinstance(record_id, str):
        return record_id.encode()
    return str(int(record_id)).encode()


def fold_of(record_id: Any, folds: int, seed: int) -> int:
    """The fold (0 .. folds-1) of a record id: stable across processes and machines."""
    return siphash24(seed, FOLD_KEY, id_bytes(record_id)) % folds


def tf_fold_of(record_ids, folds: int, seed: int):
    """`fold_of` of a tensor of ids (string or integer) in TensorFlow: int64 folds, the same values."""
    import tensorflow as tf

    if record_ids.dtype != tf.string:
        record_ids = tf.strings.as_string(record_ids)
    return tf.strings.to_hash_bucket_strong(record_ids, folds, key=[seed, FOLD_KEY])


def record_filter(info: dict, folds: int, seed: int, fold: int, held_out: bool) -> Callable:
    """A tf.data predicate on serialized records: True for those in fold `fold` (0-based) when
    `held_out`, else for those in any other fold."""
    import tensorflow as tf

    specs = tfrecords.feature_specs(info)
    name = require_id_feature(info)
    spec = tfrecords.parse_spec(specs, [name])

    def keep(serialized):
        record_id = tf.reshape(tf.io.parse_single_example(serialized, spec)[name], [])
        in_fold = tf.equal(tf_fold_of(record_id, folds, seed), fold)
        return in_fold if held_out else tf.logical_not(in_fold)

    return keep


def require_id_feature(info: dict) -> str:
    """The name of the records' id feature; FoldError when the data set stores none."""
    name = tfrecords.id_feature(info, tfrecords.feature_specs(info))
    if not name or name not in info["features"]:
        raise FoldError("Cross-validation needs an id in every record to assign folds, and this data set stores "
                        "none (no key_id or id_feature in its dataset_info.json); rebuild it with this version of "
                        "data_prep.")
    return name


def _value(feature: Any) -> Any:
    """The single value of a tf.train.Feature (bytes or int64 list)."""
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else []
    if len(values) != 1:
        raise FoldError(f"A record holds {len(values)} values where its id or label should be one.")
    return values[0]


def split_ids_and_labels(data_path: str | os.PathLike, info: dict, split: str = SOURCE_SPLIT
                         ) -> Iterator[tuple[Any, int]]:
    """(id, label) of every record of `split`, read in plain Python (no TensorFlow runtime: the
    strategy may still have to split the CPU)."""
    from tensorflow.core.example import example_pb2

    name = require_id_feature(info)
    for path in tfrecords.shard_paths(data_path, info, split):
        for record in tfrecords.read_records(path):
            features = example_pb2.Example.FromString(record).features.feature
            if name not in features:
                raise FoldError(f"A record of {str(path)!r} has no {name!r}: cross-validation needs an id in "
                                "every record.")
            yield _value(features[name]), int(_value(features["label"]))


@dataclasses.dataclass(frozen=True)
class Assignment:
    """How a split divides into folds: records per fold, and per class and fold."""

    folds: int
    seed: int
    per_fold: tuple[int, ...]
    per_class: dict[int, tuple[int, ...]]

    @property
    def total(self) -> int:
        return sum(self.per_fold)

    def train_records(self, fold: int) -> int:
        """Records fold `fold` (0-based) trains on: those of every other fold."""
        return self.total - self.per_fold[fold]


def assign(records: Iterable[tuple[Any, int]], folds: int, seed: int) -> Assignment:
    """Count (id, label) records by fold and by class; FoldError for a repeated id: ids that do not
    identify one drawing each cannot be trusted to keep a drawing out of its own fold's training."""
    per_fold = [0] * folds
    per_class: dict[int, list[int]] = collections.defaultdict(lambda: [0] * folds)
    seen: set[bytes] = set()
    for record_id, label in records:
        key = id_bytes(record_id)
        if key in seen:
            raise FoldError(f"The record id {key.decode(errors='replace')!r} occurs twice in the split: the ids do "
                            "not identify the drawings, so folds could not keep them apart.")
        seen.add(key)
        k = fold_of(key, folds, seed)
        per_fold[k] += 1
        per_class[label][k] += 1
    return Assignment(folds, seed, tuple(per_fold), {c: tuple(v) for c, v in sorted(per_class.items())})


def check_settings(cv: CvConfig, need_fold: bool) -> None:
    """FoldError for -folds < 2, a negative -fold_seed, or (`need_fold`) a -fold outside 1..folds."""
    if cv.folds < 2:
        raise FoldError(f"Invalid value for -folds: {cv.folds}. Cross-validation needs at least 2 folds.")
    if not 0 <= cv.fold_seed < 2**63:
        raise FoldError(f"Invalid value for -fold_seed: {cv.fold_seed}. Expected an integer from 0 to 2**63 - 1.")
    if need_fold and not 1 <= cv.fold <= cv.folds:
        raise FoldError(f"Invalid value for -fold: {cv.fold}. Expected 1 to -folds ({cv.folds}).")


def check_data(assignment: Assignment, class_names: list[str], data_path: str) -> None:
    """FoldError when some class has fewer train records than folds, or a fold holds no record."""
    counts = {c: sum(assignment.per_class.get(c, ())) for c in range(len(class_names))}
    smallest = min(counts, key=counts.get)
    if counts[smallest] < assignment.folds:
        raise FoldError(f"-folds {assignment.folds} is more than the {SOURCE_SPLIT!r} split of {data_path!r} allows: "
                        f"class {class_names[smallest]!r} has {counts[smallest]} records, fewer than the folds; use "
                        "fewer folds or a larger data set.")
    empty = [k + 1 for k, n in enumerate(assignment.per_fold) if n == 0]
    if empty:
        raise FoldError(f"-folds {assignment.folds} -fold_seed {assignment.seed} leaves fold(s) {empty} of "
                        f"{data_path!r} without records to hold out; use fewer folds.")


def check_supported(info: dict, task_name: str) -> None:
    """FoldError for a task or data set cross-validation does not cover."""
    if task_name != "classification":
        raise FoldError(f"Cross-validation trains classifiers (sknet, skresnet, sketch_a_net); the {task_name} "
                        "models train on pairs or P x K batches of their own streams.")
    if "domain" in info["features"]:
        raise FoldError("Cross-validation covers single-domain data sets (Quick, Draw!, image folders); this one "
                        "pairs sketches with photos (Sketchy), whose protocol keeps its own test split.")


def fold_info(info: dict, data_path: str, cv: CvConfig, task_name: str) -> dict:
    """dataset_info of a fold run: the train split holds the records of the other folds, the test split
    those of fold cv.fold (both read from the train shards), and "fold" says which."""
    check_settings(cv, need_fold=True)
    check_supported(info, task_name)
    assignment = assign(split_ids_and_labels(data_path, info), cv.folds, cv.fold_seed)
    check_data(assignment, [str(c) for c in info["classes"]], data_path)
    source = info["splits"][SOURCE_SPLIT]
    held_out = assignment.per_fold[cv.fold - 1]
    out = copy.deepcopy(info)
    out["splits"] = {"train": {**copy.deepcopy(source), "num_examples": assignment.total - held_out},
                     "test": {**copy.deepcopy(source), "num_examples": held_out}}
    out["fold"] = {"fold": cv.fold, "folds": cv.folds, "fold_seed": cv.fold_seed, "of_split": SOURCE_SPLIT,
                   "train_records": assignment.total - held_out, "held_out_records": held_out, "hash": HASH_NAME}
    return out


def split_filter(info: dict, cv: CvConfig, split: str, test_split: str) -> tuple[str, Callable | None]:
    """(stored split, record predicate or None) a task reads for `split`: the split itself outside a
    fold run; in one, the train split filtered to fold cv.fold (the test split) or to the others."""
    if not cv.fold:
        return split, None
    held_out = split == test_split
    return SOURCE_SPLIT, record_filter(info, cv.folds, cv.fold_seed, cv.fold - 1, held_out)


def split_label(info: dict, split: str, test_split: str) -> str:
    """How reports name `split`: itself, or in a fold run 'train[fold 2 of 5]' (held out) or
    'train[not fold 2 of 5]' (trained on)."""
    fold = info.get("fold")
    if not fold:
        return split
    return f"{fold['of_split']}[{'' if split == test_split else 'not '}fold {fold['fold']} of {fold['folds']}]"
