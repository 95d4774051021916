"""tf.data input pipelines for metric learning, streamed from the sharded TFRecords.

- `pk_batches`: class-balanced P x K batches (P distinct classes, K records each) for online
  triplet mining; for Sketchy, K can be split between sketches and photos.
- `pair_batches`: balanced same-class / different-class pairs for a contrastive (Siamese)
  loss, sketch with photo (cross-domain) or within one domain.
- `query_gallery`: the retrieval evaluation sets of a split: sketches as queries, photos as
  the gallery, in a fixed order.

P x K without loading the data set and without shards sorted by class: one shuffled,
repeated stream of serialized records over every shard of the split, cut into chunks of
`chunk_size`; for each chunk, one batched parse of the labels (and domains), then a `scan`
whose state carries the records and class units still waiting: `form_units` groups the
records into class units (K records of one class, or Ks sketches + Kp photos) with sorts and
gathers, and `form_batches` puts units of distinct classes together, P to a batch. Only the
finished batches' images are parsed and decoded. Everything is vectorised per chunk, so the
cost per record stays close to plain reading; memory is bounded by classes x K x max_lead
carried records plus open_batches x P x K pending ones. The obvious alternatives cost more:
a per-class filter over every shard reads the split once per class, and group_by_window
builds a dataset per window (BENCHMARKS.md has the numbers).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import tensorflow as tf

from configuration_sketch import MetricPipelineConfig
from data_prep import tfrecords
from data_prep.pipeline import AUTOTUNE, parse_batch, record_dataset
from serving.preprocess import model_input

_DEFAULTS = MetricPipelineConfig()
DOMAINS = ("sketch", "photo")  # domain_id is the index (data_prep.image_folder.DOMAINS)


def split_files(data_dir: str | os.PathLike, info: dict[str, Any], splits: str | Sequence[str]) -> list[pathlib.Path]:
    """The shards of one split or several; missing shard files are an error."""
    names = [splits] if isinstance(splits, str) else list(splits)
    files = [f for split in names for f in tfrecords.shard_paths(data_dir, info, split)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise tfrecords.DatasetInfoError(f"Shards listed in dataset_info.json are missing: {missing[:3]}")
    return files


def class_domain_counts(info: dict[str, Any], splits: str | Sequence[str]) -> dict[str, dict[str, int]]:
    """{class: {'sketch': n, 'photo': n}} summed over `splits`; single-domain data sets without
    per-domain counts (Quick, Draw!) count everything as sketches."""
    names = [splits] if isinstance(splits, str) else list(splits)
    counts = {c: {d: 0 for d in DOMAINS} for c in info["classes"]}
    for split in names:
        by_domain = info.get("per_class_domain", {}).get(split)
        for c in info["classes"]:
            if by_domain is not None:
                for d in DOMAINS:
                    counts[c][d] += by_domain.get(c, {}).get(d, 0)
            else:
                counts[c]["sketch"] += info["splits"][split].get("per_class", {}).get(c, 0)
    return counts


def _domain_id(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"Invalid value for argument `domain`: {domain!r}. Expected 'sketch', 'photo' or None.")
    return DOMAINS.index(domain)


def _ranks(keys: tf.Tensor, num_keys: int) -> tf.Tensor:
    """For each element, how many earlier elements share its key (0 for the first)."""
    order = tf.argsort(keys, stable=True)
    sorted_keys = tf.gather(keys, order)
    starts = tf.cumsum(tf.math.bincount(keys, minlength=num_keys, maxlength=num_keys, dtype=tf.int64),
                       exclusive=True)
    sorted_ranks = tf.range(tf.size(keys, out_type=tf.int64)) - tf.gather(starts, sorted_keys)
    return tf.gather(sorted_ranks, tf.argsort(order))


def form_units(carry_keys, carry_records, keys, records, *, sizes: Sequence[int], num_classes: int,
               max_lead: int):
    """Class units from the carried records followed by a new chunk.

    A key is label * parts + part, part 0 sketches and 1 photos when K is split (parts = 2),
    else 0. A unit is one class's sizes[0] (+ sizes[1]) records, sketches first; each class
    gives as many units as its scarcest part allows, oldest records first. Leftovers are
    carried to the next chunk, at most `max_lead` units' worth per key (the excess of a part
    that outnumbers the other is dropped). Returns ((carry keys, carry records),
    (unit keys [U, K], unit records [U, K])).
    """
    parts, total = len(sizes), sum(sizes)
    sizes_t = tf.constant(sizes, tf.int64)
    offsets_t = tf.constant([0, sizes[0]][:parts], tf.int64)
    keys = tf.concat([carry_keys, keys], 0)
    records = tf.concat([carry_records, records], 0)
    counts = tf.math.bincount(keys, minlength=num_classes * parts, maxlength=num_classes * parts, dtype=tf.int64)
    units = tf.reduce_min(tf.reshape(counts, [num_classes, parts]) // sizes_t[None, :], axis=1)
    label, part = keys // parts, keys % parts
    size = tf.gather(sizes_t, part)
    rank = _ranks(keys, num_classes * parts)
    used_per_key = tf.gather(units, label) * size
    used = rank < used_per_key
    keep = tf.logical_not(used) & (rank - used_per_key < max_lead * size)
    target = ((tf.gather(tf.cumsum(units, exclusive=True), label) + rank // size) * total
              + tf.gather(offsets_t, part) + rank % size)
    used_index = tf.where(used)[:, 0]
    order = tf.gather(used_index, tf.argsort(tf.gather(target, used_index)))
    unit_keys = tf.reshape(tf.gather(keys, order), [-1, total])
    unit_records = tf.reshape(tf.gather(records, order), [-1, total])
    return (tf.boolean_mask(keys, keep), tf.boolean_mask(records, keep)), (unit_keys, unit_records)


def form_batches(pending_keys, pending_records, unit_keys, unit_records, *, classes_per_batch: int,
                 num_classes: int, parts: int, max_pending: int):
    """P x K batches of distinct classes from the pending units followed by new ones.

    Each unit gets a level: how many units of its class come before it in the list. Units of
    one level are of distinct classes; every level contributes floor(n / P) batches of P of its
    units, in list order, and the rest wait (lowest levels first, at most `max_pending`
    units; beyond that the units of the most frequent classes are dropped). Returns
    ((pending keys, pending records), (batch keys [B, P*K], batch records [B, P*K])).
    """
    keys = tf.concat([pending_keys, unit_keys], 0)
    records = tf.concat([pending_records, unit_records], 0)
    n = tf.shape(keys, out_type=tf.int64)[0]
    level = _ranks(keys[:, 0] // parts, num_classes)
    order = tf.argsort(level * (n + 1) + tf.range(n), stable=True)
    sorted_level = tf.gather(level, order)
    level_counts = tf.math.bincount(level, dtype=tf.int64)
    position = tf.range(n) - tf.gather(tf.cumsum(level_counts, exclusive=True), sorted_level)
    full = position < tf.gather(level_counts // classes_per_batch * classes_per_batch, sorted_level)
    emit, wait = tf.boolean_mask(order, full), tf.boolean_mask(order, tf.logical_not(full))[:max_pending]
    width = classes_per_batch * tf.shape(keys, out_type=tf.int64)[1]
    batches = (tf.reshape(tf.gather(keys, emit), [-1, width]), tf.reshape(tf.gather(records, emit), [-1, width]))
    return (tf.gather(keys, wait), tf.gather(records, wait)), batches


def _pk_plan(info: dict[str, Any], splits, classes_per_batch: int, per_class: int, sketches_per_class: int,
             domain: str | None, has_domain: bool) -> tuple[list[int], int | None, list[bool]]:
    """(unit sizes per part, domain kept or None, eligible classes) after checking arguments."""
    if classes_per_batch < 2:
        raise ValueError(f"Invalid value for argument `classes_per_batch`: {classes_per_batch}. Expected >= 2.")
    if per_class < 1:
        raise ValueError(f"Invalid value for argument `per_class`: {per_class}. Expected >= 1.")
    if not -1 <= sketches_per_class <= per_class:
        raise ValueError(f"Invalid value for argument `sketches_per_class`: {sketches_per_class}. "
                         f"Expected -1 (any domain) or 0..per_class ({per_class}).")
    if sketches_per_class >= 0 and domain is not None:
        raise ValueError("Pass either `sketches_per_class` or `domain`, not both.")
    keep = None if domain is None else _domain_id(domain)
    if sketches_per_class in (0, per_class):
        keep = 0 if sketches_per_class == per_class else 1
    split_k = 0 < sketches_per_class < per_class
    if (split_k or keep is not None) and not has_domain:
        raise ValueError("This data set has no `domain_id` feature: a sketch/photo split of K or a domain "
                         "filter needs Sketchy-style records.")
    sizes = [sketches_per_class, per_class - sketches_per_class] if split_k else [per_class]
    counts = class_domain_counts(info, splits)
    eligible = []
    for c in info["classes"]:
        n = counts[c]
        if split_k:
            eligible.append(n["sketch"] >= sizes[0] and n["photo"] >= sizes[1])
        else:
            eligible.append((n[DOMAINS[keep]] if keep is not None else n["sketch"] + n["photo"]) >= per_class)
    if sum(eligible) < classes_per_batch:
        raise ValueError(f"Only {sum(eligible)} classes of split {splits!r} have enough records for K={per_class}"
                         f"{f' ({sizes[0]} sketches + {sizes[1]} photos)' if split_k else ''}, "
                         f"but P (classes_per_batch) is {classes_per_batch}.")
    return sizes, keep, eligible


def pk_serialized(data_dir: str | os.PathLike, split: str | Sequence[str] = "train",
                  classes_per_batch: int = _DEFAULTS.classes_per_batch, per_class: int = _DEFAULTS.per_class, *,
                  sketches_per_class: int = _DEFAULTS.sketches_per_class, domain: str | None = None,
                  seed: int | None = None, open_batches: int = _DEFAULTS.open_batches,
                  chunk_size: int = _DEFAULTS.chunk_size, max_lead: int = _DEFAULTS.max_lead,
                  shuffle_buffer: int = _DEFAULTS.shuffle_buffer, cycle_length: int = 4,
                  repeat: bool = True) -> tf.data.Dataset:
    """P x K batches of serialized records: (keys [P*K], records [P*K]), sorted by key.

    key = label * parts + part (part 0 sketches, 1 photos when K is split), so each class
    block holds its sketches first. Classes with fewer than K records in the split are left
    out. With `repeat=False` the stream ends after one pass over the records (what is still
    carried or pending at the end is dropped).
    """
    for name, value in (("open_batches", open_batches), ("chunk_size", chunk_size), ("max_lead", max_lead)):
        if value < 1:
            raise ValueError(f"Invalid value for argument `{name}`: {value}. Expected >= 1.")
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    has_domain = "domain_id" in specs
    files = split_files(data_dir, info, split)
    sizes, keep, eligible = _pk_plan(info, split, classes_per_batch, per_class, sketches_per_class, domain,
                                     has_domain)
    parts, num_classes = len(sizes), len(info["classes"])
    eligible_t = tf.constant(eligible, tf.bool)
    key_spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    if has_domain:
        key_spec["domain_id"] = tf.io.FixedLenFeature([], tf.int64)

    def chunk_keys(records):
        f = tf.io.parse_example(records, key_spec)
        label, dom = f["label"], f.get("domain_id", tf.zeros_like(f["label"]))
        wanted = tf.gather(eligible_t, label) & (True if keep is None else tf.equal(dom, keep))
        key = label * parts + (dom if parts == 2 else 0)
        return tf.boolean_mask(key, wanted), tf.boolean_mask(records, wanted)

    seed_t = tf.constant(0 if seed is None else seed, tf.int64)
    empty = (tf.zeros([0], tf.int64), tf.zeros([0], tf.string))
    state = (empty, (tf.zeros([0, per_class], tf.int64), tf.zeros([0, per_class], tf.string)),
             tf.constant(0, tf.int64))

    def step(state, chunk):
        """form_units and form_batches move int64 indices into one pool of the step's records;
        the (large) serialized records are gathered once for the batches and once for what waits."""
        (carry_keys, carry_records), (pending_keys, pending_records), counter = state
        chunk_keys, chunk_records = chunk
        pool = tf.concat([tf.reshape(pending_records, [-1]), carry_records, chunk_records], 0)
        n_pending, n_carry = tf.size(pending_keys, out_type=tf.int64), tf.size(carry_keys, out_type=tf.int64)
        pending_index = tf.reshape(tf.range(n_pending), tf.shape(pending_keys, out_type=tf.int64))
        carry_index = n_pending + tf.range(n_carry)
        chunk_index = n_pending + n_carry + tf.range(tf.size(chunk_keys, out_type=tf.int64))
        (carry_keys, carry_index), (unit_keys, unit_index) = form_units(
            carry_keys, carry_index, chunk_keys, chunk_index, sizes=sizes, num_classes=num_classes, max_lead=max_lead)
        mix = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(unit_keys)[0]), seed=[seed_t, counter])
        (pending_keys, pending_index), (batch_keys, batch_index) = form_batches(
            pending_keys, pending_index, tf.gather(unit_keys, mix), tf.gather(unit_index, mix),
            classes_per_batch=classes_per_batch, num_classes=num_classes, parts=parts,
            max_pending=open_batches * classes_per_batch)
        order = tf.argsort(batch_keys, axis=1, stable=True)  # class blocks, sketches first
        batch_keys = tf.gather(batch_keys, order, batch_dims=1)
        batch_index = tf.gather(batch_index, order, batch_dims=1)
        state = ((carry_keys, tf.gather(pool, carry_index)), (pending_keys, tf.gather(pool, pending_index)),
                 counter + 1)
        return state, (batch_keys, tf.gather(pool, batch_index))

    ds = record_dataset(files, shuffle=True, seed=seed, cycle_length=cycle_length, shuffle_buffer=shuffle_buffer,
                        repeat=repeat)
    ds = ds.batch(chunk_size).map(chunk_keys, num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    return ds.scan(state, step).unbatch()


def _ids_of(features: dict[str, tf.Tensor], id_names: list[str]) -> dict[str, tf.Tensor]:
    return {name: features[name] for name in id_names}


def _id_names(info: dict[str, Any], specs: dict[str, tfrecords.FeatureSpec]) -> list[str]:
    return [n for n in dict.fromkeys([tfrecords.id_feature(info, specs), "photo_id", "domain_id"]) if n in specs]


def pk_batches(data_dir: str | os.PathLike, split: str | Sequence[str] = "train",
               classes_per_batch: int = _DEFAULTS.classes_per_batch, per_class: int = _DEFAULTS.per_class, *,
               sketches_per_class: int = _DEFAULTS.sketches_per_class, domain: str | None = None,
               image_size: int | None = None, channels: int | None = None, seed: int | None = None,
               open_batches: int = _DEFAULTS.open_batches, chunk_size: int = _DEFAULTS.chunk_size,
               max_lead: int = _DEFAULTS.max_lead, shuffle_buffer: int = _DEFAULTS.shuffle_buffer,
               cycle_length: int = 4, repeat: bool = True, with_ids: bool = False) -> tf.data.Dataset:
    """Class-balanced batches (image float32 [P*K, H, W, C] in [0, 1], label int32 [P*K]).

    Each batch holds P = `classes_per_batch` distinct classes with K = `per_class` records
    each, class blocks in label order; `sketches_per_class` (0..K) makes that many of the K
    sketches and the rest photos (-1: any domain); `domain` keeps one domain only. With
    `with_ids=True` a third element maps the id feature, photo_id and domain_id to [P*K].
    """
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    id_names = _id_names(info, specs) if with_ids else []
    ds = pk_serialized(data_dir, split, classes_per_batch, per_class, sketches_per_class=sketches_per_class,
                       domain=domain, seed=seed, open_batches=open_batches, chunk_size=chunk_size,
                       max_lead=max_lead, shuffle_buffer=shuffle_buffer, cycle_length=cycle_length,
                       repeat=repeat)

    def parse(keys, records):
        features = parse_batch(records, specs, ["image", "label", *id_names])
        image = model_input(features["image"], image_size, channels)
        label = tf.cast(features["label"], tf.int32)
        return (image, label, _ids_of(features, id_names)) if with_ids else (image, label)

    return ds.map(parse, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def pair_batches(data_dir: str | os.PathLike, split: str | Sequence[str] = "train", batch_size: int = 64, *,
                 mode: str = _DEFAULTS.pair_mode, domain: str | None = None,
                 pair_classes: int = _DEFAULTS.pair_classes, image_size: int | None = None,
                 channels: int | None = None, seed: int | None = None, open_batches: int = _DEFAULTS.open_batches,
                 shuffle_buffer: int = _DEFAULTS.shuffle_buffer, cycle_length: int = 4, repeat: bool = True,
                 with_labels: bool = False) -> tf.data.Dataset:
    """Batches of ((image_a, image_b), same float32 [B]) for a contrastive loss; same = 1.0 when
    the two images share a class.

    Pairs come from P x K batches of `pair_classes` classes and K = 4: per class one positive
    pair and one negative pair with the next class, so exactly half of all pairs are positive
    and each record is used once. mode 'cross_domain': a is a sketch, b a photo (2 + 2 per
    class); 'same_domain': a and b from one domain (`domain`, needed when the data set has two).
    Pairs are shuffled (on the serialized records) before batching. With `with_labels=True`
    elements are dicts: a, b, same, label_a, label_b, domain_a, domain_b.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid value for argument `batch_size`: {batch_size}. Expected >= 1.")
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    has_domain = "domain_id" in specs
    if mode == "cross_domain":
        if domain is not None:
            raise ValueError("`domain` applies to mode='same_domain' only.")
        layout = {"sketches_per_class": 2, "domain": None}
    elif mode == "same_domain":
        if domain is None and has_domain and len(info.get("domains", DOMAINS)) > 1:
            raise ValueError("mode='same_domain' on a data set with sketches and photos needs `domain` "
                             "('sketch' or 'photo').")
        layout = {"sketches_per_class": -1, "domain": domain}
    else:
        raise ValueError(f"Invalid value for argument `mode`: {mode!r}. Expected 'cross_domain' or 'same_domain'.")
    ds = pk_serialized(data_dir, split, pair_classes, 4, seed=seed, open_batches=open_batches,
                       shuffle_buffer=shuffle_buffer, cycle_length=cycle_length, repeat=repeat, **layout)
    # Class block i holds [x0, x1, x2, x3]; cross-domain: x0, x1 sketches, x2, x3 photos.
    first, second = ((0, 2), (1, 3)) if mode == "cross_domain" else ((0, 1), (2, 3))

    def make_pairs(keys, records):
        r = tf.reshape(records, [pair_classes, 4])
        a = tf.concat([r[:, first[0]], r[:, second[0]]], 0)
        b = tf.concat([r[:, first[1]], tf.roll(r[:, second[1]], shift=-1, axis=0)], 0)
        same = tf.concat([tf.ones([pair_classes]), tf.zeros([pair_classes])], 0)
        return tf.data.Dataset.from_tensor_slices((a, b, same))

    ds = ds.flat_map(make_pairs).shuffle(max(4 * batch_size, 8 * pair_classes), seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    names = ["image", "label"] + (["domain_id"] if has_domain else [])

    def parse(a, b, same):
        fa, fb = parse_batch(a, specs, names), parse_batch(b, specs, names)
        xa = model_input(fa["image"], image_size, channels)
        xb = model_input(fb["image"], image_size, channels)
        if not with_labels:
            return (xa, xb), same
        zeros = tf.zeros_like(fa["label"])
        return {"a": xa, "b": xb, "same": same, "label_a": tf.cast(fa["label"], tf.int32),
                "label_b": tf.cast(fb["label"], tf.int32), "domain_a": fa.get("domain_id", zeros),
                "domain_b": fb.get("domain_id", zeros)}

    return ds.map(parse, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def domain_dataset(data_dir: str | os.PathLike, split: str | Sequence[str], domain: str | None, batch_size: int, *,
                   image_size: int | None = None, channels: int | None = None) -> tf.data.Dataset:
    """The records of one domain of a split, in shard order: (image, {label, ids...}) batches."""
    if batch_size < 1:
        raise ValueError(f"Invalid value for argument `batch_size`: {batch_size}. Expected >= 1.")
    info = tfrecords.read_dataset_info(data_dir)
    specs = tfrecords.feature_specs(info)
    has_domain = "domain_id" in specs
    if domain is not None and not has_domain:
        raise ValueError("This data set has no `domain_id` feature; pass domain=None.")
    id_names = _id_names(info, specs)
    ds = record_dataset(split_files(data_dir, info, split), shuffle=False, seed=None, cycle_length=1,
                        shuffle_buffer=0, repeat=False)
    if domain is not None:
        wanted, spec = _domain_id(domain), {"domain_id": tf.io.FixedLenFeature([], tf.int64)}
        ds = ds.batch(1024).map(
            lambda recs: tf.boolean_mask(recs, tf.equal(tf.io.parse_example(recs, spec)["domain_id"], wanted)),
            num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
    ds = ds.batch(batch_size)

    def parse(records):
        features = parse_batch(records, specs, ["image", "label", *id_names])
        meta = {"label": tf.cast(features["label"], tf.int32), **_ids_of(features, id_names)}
        return model_input(features["image"], image_size, channels), meta

    return ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def query_gallery(data_dir: str | os.PathLike, split: str | Sequence[str] = "test", batch_size: int = 256, *,
                  image_size: int | None = None, channels: int | None = None, query_domain: str = "sketch",
                  gallery_domain: str = "photo") -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(queries, gallery) for retrieval evaluation: sketches of `split` against its photos.

    Both yield (image float32 [B, H, W, C], {label, item_id, photo_id, domain_id}) in a fixed
    order, so embeddings line up with the metadata; photo_id lets instance-level retrieval find
    a sketch's own photo. For zero-shot retrieval use split='test_unseen'.
    """
    return (domain_dataset(data_dir, split, query_domain, batch_size, image_size=image_size, channels=channels),
            domain_dataset(data_dir, split, gallery_domain, batch_size, image_size=image_size, channels=channels))
