"""Metric-learning pipelines on the real Sketchy sample: P x K batches, pairs, query/gallery."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from configuration_sketch import SketchyBuildConfig
from data_prep import builder, metric_pipelines as mp, sketchy, tfrecords
from data_prep.pipeline import parse_batch

SIZE = 32


@pytest.fixture(scope="module")
def data(sketchy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sketchy_metric") / "ds"
    info = sketchy.build(SketchyBuildConfig(source=str(sketchy_dir), out=str(out), image_size=SIZE,
                                            unseen_classes="25", workers=1, shards=4), progress=False)
    return out, info


def split_ids(out, info, split) -> dict[str, set]:
    """item_ids and photo_ids of every record of a split, read straight from its shards."""
    specs = tfrecords.feature_specs(info)
    files = [str(p) for p in tfrecords.shard_paths(out, info, split)]
    ids = {"item_id": set(), "photo_id": set()}
    for batch in tf.data.TFRecordDataset(files).batch(1024):
        parsed = parse_batch(batch, specs, ["item_id", "photo_id"])
        for name in ids:
            ids[name].update(v.decode() for v in parsed[name].numpy())
    return ids


@pytest.mark.parametrize("P, K, sketches", [(8, 4, -1), (6, 4, 2), (5, 3, 1), (4, 2, 2)])
def test_every_pk_batch_holds_p_classes_with_k_each(data, P, K, sketches):
    out, info = data
    ds = mp.pk_batches(out, "train", P, K, sketches_per_class=sketches, seed=3, with_ids=True)
    for images, labels, ids in ds.take(12):
        labels, domains = labels.numpy(), ids["domain_id"].numpy()
        assert images.shape == (P * K, SIZE, SIZE, 3) and images.dtype == tf.float32
        counts = collections.Counter(labels)
        assert len(counts) == P and set(counts.values()) == {K}
        assert list(labels) == sorted(labels), "class blocks in label order"
        assert all(label < info["num_seen_classes"] for label in labels)
        if sketches >= 0:
            expected = [0] * sketches + [1] * (K - sketches)
            assert (domains.reshape(P, K) == expected).all(), "K split between sketches and photos"
        assert len(set(ids["item_id"].numpy())) == P * K, "no record twice in a batch"


def test_pk_one_domain_grey_and_resized(data):
    out, _ = data
    images, labels, ids = next(iter(mp.pk_batches(out, "train", 4, 3, domain="photo", channels=1, image_size=24,
                                                  seed=0, with_ids=True)))
    assert images.shape == (12, 24, 24, 1) and (ids["domain_id"].numpy() == 1).all()
    _, _, ids = next(iter(mp.pk_batches(out, "train", 4, 3, sketches_per_class=3, seed=0, with_ids=True)))
    assert (ids["domain_id"].numpy() == 0).all()


def test_one_pass_streams_each_record_at_most_once(data):
    out, info = data
    train = split_ids(out, info, "train")["item_id"]
    seen = []
    for images, labels, ids in mp.pk_batches(out, "train", 8, 4, seed=1, repeat=False, with_ids=True):
        seen.extend(v.decode() for v in ids["item_id"].numpy())
    assert len(seen) == len(set(seen)), "a single pass repeats no record"
    assert set(seen) <= train
    assert len(seen) >= 0.9 * len(train), f"only {len(seen)} of {len(train)} records reached a batch"


def test_no_test_example_leaks_into_training_streams(data):
    out, info = data
    held_out = {"item_id": set(), "photo_id": set()}
    for split in ("test", "test_unseen"):
        for name, values in split_ids(out, info, split).items():
            held_out[name] |= values
    train = split_ids(out, info, "train")
    assert not train["photo_id"] & held_out["photo_id"], "split by photo"
    streamed = collections.defaultdict(set)
    for _, _, ids in mp.pk_batches(out, "train", 8, 4, sketches_per_class=2, seed=5, with_ids=True).take(40):
        for name in ("item_id", "photo_id"):
            streamed[name].update(v.decode() for v in ids[name].numpy())
    assert streamed["item_id"] <= train["item_id"]
    assert not streamed["item_id"] & held_out["item_id"] and not streamed["photo_id"] & held_out["photo_id"]
    pairs = mp.pair_batches(out, "train", 32, seed=5, with_labels=True).take(10)
    assert all((b["label_a"].numpy() < info["num_seen_classes"]).all() for b in pairs)


def test_cross_domain_pairs_are_balanced_and_correct(data):
    out, _ = data
    fractions = []
    for batch in mp.pair_batches(out, "train", 32, seed=2, with_labels=True, channels=1).take(30):
        same = batch["same"].numpy()
        assert batch["a"].shape == (32, SIZE, SIZE, 1) and batch["b"].shape == (32, SIZE, SIZE, 1)
        assert ((batch["label_a"].numpy() == batch["label_b"].numpy()) == (same == 1.0)).all()
        assert (batch["domain_a"].numpy() == 0).all() and (batch["domain_b"].numpy() == 1).all()
        fractions.append(same.mean())
    assert abs(np.mean(fractions) - 0.5) <= 0.03, np.mean(fractions)
    assert min(fractions) >= 0.2 and max(fractions) <= 0.8, fractions
    (a, b), same = next(iter(mp.pair_batches(out, "train", 8, seed=2)))
    assert a.shape == (8, SIZE, SIZE, 3) and same.dtype == tf.float32


def test_same_domain_pairs(data):
    out, _ = data
    total = positives = 0
    for batch in mp.pair_batches(out, "train", 16, mode="same_domain", domain="sketch", seed=4,
                                 with_labels=True).take(10):
        same = batch["same"].numpy()
        assert (batch["domain_a"].numpy() == 0).all() and (batch["domain_b"].numpy() == 0).all()
        assert ((batch["label_a"].numpy() == batch["label_b"].numpy()) == (same == 1.0)).all()
        total, positives = total + len(same), positives + same.sum()
    assert abs(positives / total - 0.5) <= 0.05
    with pytest.raises(ValueError, match="needs `domain`"):
        mp.pair_batches(out, "train", 16, mode="same_domain")
    with pytest.raises(ValueError, match="`mode`: 'triplet'"):
        mp.pair_batches(out, "train", 16, mode="triplet")


def test_query_gallery_sketches_against_photos(data):
    out, info = data
    for split in ("test", "test_unseen"):
        queries, gallery = mp.query_gallery(out, split, 100)
        q = [m for _, m in queries.as_numpy_iterator()]
        g = [m for _, m in gallery.as_numpy_iterator()]
        q_domains = np.concatenate([m["domain_id"] for m in q])
        g_domains = np.concatenate([m["domain_id"] for m in g])
        assert len(q_domains) == info["per_domain"][split]["sketch"] and (q_domains == 0).all()
        assert len(g_domains) == info["per_domain"][split]["photo"] and (g_domains == 1).all()
        gallery_photos = {v.decode() for m in g for v in m["item_id"]}
        assert {v.decode() for m in q for v in m["photo_id"]} <= gallery_photos, "each sketch's photo is there"
        again = [v for _, m in mp.query_gallery(out, split, 64)[0].as_numpy_iterator() for v in m["item_id"]]
        assert again == [v for m in q for v in m["item_id"]], "fixed order"
    images, meta = next(iter(mp.query_gallery(out, "test", 16, channels=1)[1]))
    assert images.shape == (16, SIZE, SIZE, 1) and meta["label"].dtype == tf.int32


def reference_units(carry, chunk, sizes, num_classes, max_lead):
    """form_units as plain loops over (key, record) lists."""
    parts, items = len(sizes), carry + chunk
    by_key = collections.defaultdict(list)
    for key, record in items:
        by_key[key].append(record)
    units = []
    per_class = [min(len(by_key[c * parts + p]) // sizes[p] for p in range(parts)) for c in range(num_classes)]
    for c in range(num_classes):
        for j in range(per_class[c]):
            unit = []
            for p in range(parts):
                unit += [(c * parts + p, r) for r in by_key[c * parts + p][j * sizes[p]:(j + 1) * sizes[p]]]
            units.append(unit)
    seen, new_carry = collections.Counter(), []
    for key, record in items:
        used = per_class[key // parts] * sizes[key % parts]
        if used <= seen[key] < used + max_lead * sizes[key % parts]:
            new_carry.append((key, record))
        seen[key] += 1
    return new_carry, units


def reference_batches(pending, units, P, parts, max_pending):
    """form_batches as plain loops over lists of units."""
    items, seen, levels = pending + units, collections.Counter(), []
    for unit in items:
        levels.append(seen[unit[0][0] // parts])
        seen[unit[0][0] // parts] += 1
    order = sorted(range(len(items)), key=lambda i: (levels[i], i))
    batches, rest = [], []
    for level in sorted(set(levels)):
        members = [i for i in order if levels[i] == level]
        full = len(members) // P * P
        batches += [sum((items[i] for i in members[b:b + P]), []) for b in range(0, full, P)]
        rest += members[full:]
    return [items[i] for i in rest[:max_pending]], batches


def _as_units(keys, records):
    return [list(zip(k.tolist(), (r.decode() for r in rs))) for k, rs in zip(keys.numpy(), records.numpy())]


@pytest.mark.parametrize("sizes", [[3], [2, 1]])
def test_units_and_batches_match_plain_loops_on_imbalanced_classes(sizes):
    rng = np.random.default_rng(0)
    classes, parts, P, max_lead, max_pending = 6, len(sizes), 3, 2, 5
    weights = np.arange(1, classes * parts + 1, dtype=float)  # strongly imbalanced keys (and domains)
    carry_tf = (tf.zeros([0], tf.int64), tf.zeros([0], tf.string))
    pending_tf = (tf.zeros([0, sum(sizes)], tf.int64), tf.zeros([0, sum(sizes)], tf.string))
    carry, pending, emitted = [], [], 0
    for step in range(6):
        keys = rng.choice(classes * parts, size=40, p=weights / weights.sum()).tolist()
        chunk = [(k, f"r{step}-{i}") for i, k in enumerate(keys)]
        carry, units = reference_units(carry, chunk, sizes, classes, max_lead)
        carry_tf, units_tf = mp.form_units(*carry_tf, tf.constant(keys, tf.int64), tf.constant([r for _, r in chunk]),
                                           sizes=sizes, num_classes=classes, max_lead=max_lead)
        assert list(zip(carry_tf[0].numpy().tolist(), (r.decode() for r in carry_tf[1].numpy()))) == carry
        assert _as_units(*units_tf) == units
        assert len(carry) <= classes * parts * max_lead * max(sizes), "carry is bounded"
        pending, batches = reference_batches(pending, units, P, parts, max_pending)
        pending_tf, batches_tf = mp.form_batches(*pending_tf, *units_tf, classes_per_batch=P, num_classes=classes,
                                                 parts=parts, max_pending=max_pending)
        assert _as_units(*pending_tf) == pending and len(pending) <= max_pending
        assert _as_units(*batches_tf) == batches
        for batch in batches:
            per_class = collections.Counter(k // parts for k, _ in batch)
            assert len(per_class) == P and set(per_class.values()) == {sum(sizes)}
            if parts == 2:
                assert collections.Counter(k % 2 for k, _ in batch) == {0: P * sizes[0], 1: P * sizes[1]}
        emitted += len(batches)
    assert emitted >= 10


def test_arguments_are_checked(data):
    out, _ = data
    with pytest.raises(ValueError, match="Only 25 classes of split 'test_unseen'.*P \\(classes_per_batch\\) is 30"):
        mp.pk_batches(out, "test_unseen", 30, 4)
    with pytest.raises(ValueError, match="`sketches_per_class`: 5"):
        mp.pk_batches(out, "train", 8, 4, sketches_per_class=5)
    with pytest.raises(ValueError, match="`classes_per_batch`: 1"):
        mp.pk_batches(out, "train", 1, 4)
    with pytest.raises(ValueError, match="either `sketches_per_class` or `domain`"):
        mp.pk_batches(out, "train", 8, 4, sketches_per_class=2, domain="photo")
    with pytest.raises(ValueError, match="`domain`: 'drawing'"):
        mp.pk_batches(out, "train", 8, 4, domain="drawing")
    with pytest.raises(tfrecords.DatasetInfoError, match="Unknown split 'valid'"):
        mp.pk_batches(out, "valid", 8, 4)
    with pytest.raises(ValueError, match="`max_lead`: 0"):  # reaches the batcher (train_sketch_net.py -max_lead)
        mp.pk_batches(out, "train", 8, 4, sketches_per_class=2, max_lead=0)


SPECS = {"image": tfrecords.FeatureSpec("bytes", "uint8", (4, 4, 1), "raw", "image"),
         "label": tfrecords.FeatureSpec("int64", "int64", (), "none", "label"),
         "key_id": tfrecords.FeatureSpec("bytes", "string", (), "utf-8", "id")}


def _toy_unit(unit: dict, staging: dict) -> dict:
    """Quick, Draw!-style records (no domain feature): 6 train records of one class."""
    records = [tfrecords.serialize_example({"image": np.full((4, 4, 1), unit["label"], np.uint8),
                                            "label": unit["label"], "key_id": f"{unit['label']}/{i}"}, SPECS)
               for i in range(6)]
    tfrecords.write_records(staging["train"], records)
    return {"read": 6, "written": {"train": 6}, "per_class": {f"c{unit['label']}": {"train": 6}},
            "skipped": {}, "sources": []}


def test_single_domain_data_without_domain_feature(tmp_path):
    info = {"name": "toy", "classes": [f"c{i}" for i in range(5)],
            "features": {n: s.as_dict() for n, s in SPECS.items()}}
    builder.run_build(tmp_path, units=[{"label": i} for i in range(5)], unit_fn=_toy_unit, splits=["train"],
                      num_shards=2, workers=1, build_args={}, info=info, progress=False)
    images, labels, ids = next(iter(mp.pk_batches(tmp_path, "train", 3, 2, seed=0, with_ids=True)))
    assert sorted(collections.Counter(labels.numpy()).values()) == [2, 2, 2]
    assert set(ids) == {"key_id"}
    assert [k.decode().split("/")[0] for k in ids["key_id"].numpy()] == [str(v) for v in labels.numpy()]
    np.testing.assert_allclose(images.numpy()[:, 0, 0, 0], labels.numpy() / 255.0, rtol=1e-6)
    pairs = next(iter(mp.pair_batches(tmp_path, "train", 6, mode="same_domain", pair_classes=3, seed=0,
                                      with_labels=True)))
    # Per-batch balance depends on the (parallel) read order; the label of each pair does not.
    assert pairs["a"].shape == (6, 4, 4, 1)
    np.testing.assert_array_equal(pairs["same"].numpy(), (pairs["label_a"] == pairs["label_b"]).numpy())
    with pytest.raises(ValueError, match="no `domain_id` feature"):
        mp.pk_batches(tmp_path, "train", 3, 2, sketches_per_class=1)
