"""retrieval.metrics / retrieval.ranking against brute-force references.

References: a plain Python ranking per query (sorted by (distance, gallery index), float64
distances) and a loop per metric; sklearn's average_precision_score per query on tie-free data.
Data: random features, features with ties (duplicates, integer grids, Hamming codes), and real
features of real Quick, Draw! drawings and Sketchy sketches/photos.
"""

from __future__ import annotations

import json
import pathlib
import tracemalloc

import numpy as np
import orjson
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from retrieval.features import FeatureFileError, instance_targets
from retrieval.metrics import MemoryBudgetError, evaluate, knn_predictions, parse_bytes, ranking_metrics
from retrieval.ranking import hamming_distances, key_to_float, pack_codes, sortable_keys

KS = (1, 3, 10)


# ------------------------------------------------------------------------------- references
def reference_distances(q, g, metric):
    if metric == "hamming":
        bits_q = np.unpackbits(q, axis=1).astype(np.int64)
        bits_g = np.unpackbits(g, axis=1).astype(np.int64)
        return np.array([[int(np.sum(a != b)) for b in bits_g] for a in bits_q], dtype=np.float64)
    q = q.astype(np.float64)
    g = g.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


def reference_rankings(q, g, metric, leave_one_out):
    """Per query: gallery indices in rank order, by (distance, index), itself left out."""
    d = reference_distances(q, g, metric)
    out = []
    for i in range(len(q)):
        order = sorted(range(d.shape[1]), key=lambda j: (d[i, j], j))
        if leave_one_out:
            order = [j for j in order if j != i]
        out.append(order)
    return out, d


def reference_report(q, ql, g, gl, metric, ks, leave_one_out, targets=None):
    rankings, d = reference_rankings(q, g, metric, leave_one_out)
    rows = {name: [] for name in ["map", "r_precision", "map@r"]
            + [f"{m}@{k}" for k in ks for m in ("map", "precision", "recall", "hit", "knn_accuracy")]}
    excluded = []
    aps = {}
    for i, order in enumerate(rankings):
        rel = [int(gl[j] == ql[i]) for j in order]
        r = sum(rel)
        if r == 0:
            excluded.append(i)
            continue
        hits, precisions = 0, []
        for rank, is_rel in enumerate(rel, 1):
            if is_rel:
                hits += 1
                precisions.append(hits / rank)
        aps[i] = sum(precisions) / r
        rows["map"].append(aps[i])
        for k in ks:
            top = rel[:k]
            p_at = [sum(rel[:n]) / n for n in range(1, k + 1)]
            rows[f"map@{k}"].append(sum(p for p, x in zip(p_at, top) if x) / min(k, r))
            rows[f"precision@{k}"].append(sum(top) / k)
            rows[f"recall@{k}"].append(sum(top) / r)
            rows[f"hit@{k}"].append(float(any(top)))
            labels = [gl[j] for j in order[:k]]
            counts = {lab: labels.count(lab) for lab in labels}
            best = max(counts.values())
            pred = next(lab for lab in labels if counts[lab] == best)
            rows[f"knn_accuracy@{k}"].append(float(pred == ql[i]))
        rows["r_precision"].append(sum(rel[:r]) / r)
        p_at = [sum(rel[:n]) / n for n in range(1, r + 1)]
        rows["map@r"].append(sum(p for p, x in zip(p_at, rel[:r]) if x) / r)
    out = {name: float(np.mean(v)) for name, v in rows.items()}
    out["excluded"] = excluded
    out["aps"] = aps
    if targets is not None:
        for k in ks:
            hits = [targets[i] in rankings[i][:k] for i in range(len(q)) if targets[i] >= 0]
            out[f"instance_accuracy@{k}"] = float(np.mean(hits))
    return out, d


def assert_matches(report, ref, ks):
    for name in ["map", "r_precision", "map@r"] + [f"{m}@{k}" for k in ks
                                                 for m in ("map", "precision", "recall", "hit", "knn_accuracy")]:
        assert report[name] == pytest.approx(ref[name], abs=1e-12), name
    assert report["excluded_queries"]["indices"] == ref["excluded"]
    assert report["excluded_queries"]["count"] == len(ref["excluded"])


def clustered(rng, n, d, classes, spread=1.5):
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d)) * spread
    return (centres[labels] + rng.standard_normal((n, d))).astype(np.float32), labels


# ------------------------------------------------------------------------------- formulas
def test_worked_example_from_docstring():
    out = ranking_metrics(np.array([1, 3]), np.array([2]), ks=(2,))
    assert out["ap"][0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert out["precision@2"][0] == 0.5
    assert out["recall@2"][0] == 0.5
    assert out["hit@2"][0] == 1.0
    assert out["map@2"][0] == pytest.approx(1 / 2)
    assert out["r_precision"][0] == 0.5
    assert out["map@r"][0] == pytest.approx(0.5)


def test_ranking_metrics_empty_query_is_nan():
    out = ranking_metrics(np.array([2]), np.array([0, 1]), ks=(1,))
    assert np.isnan(out["ap"][0]) and out["ap"][1] == pytest.approx(0.5)


def test_knn_vote_ties_go_to_the_nearest_member():
    top = np.array([[5, 7, 7, 5, 9], [3, 4, 4, 3, 3], [8, 8, 1, 1, 1]])
    assert knn_predictions(top, 1).tolist() == [5, 3, 8]
    assert knn_predictions(top, 4).tolist() == [5, 3, 8]  # 2-2 ties: the label seen first wins
    assert knn_predictions(top, 5).tolist() == [5, 3, 1]


def test_sortable_keys_preserve_float_order():
    rng = np.random.default_rng(0)
    values = np.concatenate([(rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000)).astype(np.float32),
                             np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32)]).astype(np.float32)
    keys = sortable_keys(values.copy())
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(values[order]) >= 0)
    assert keys[values == 0].min() == keys[values == 0].max()  # -0.0 and +0.0 share one key
    np.testing.assert_array_equal(key_to_float(keys), values + np.float32(0.0))


def test_pack_codes_and_hamming_distance_against_bit_loops():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, 77))
    codes = pack_codes(x)
    assert codes.dtype == np.uint8 and codes.shape == (13, 10)
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1)[:, :77], (x > 0).astype(np.uint8))
    d = hamming_distances(codes[:5], codes)
    expected = [[bin(int.from_bytes(a.tobytes(), "big") ^ int.from_bytes(b.tobytes(), "big")).count("1")
                 for b in codes] for a in codes[:5]]
    np.testing.assert_array_equal(d, expected)


def test_parse_bytes():
    assert parse_bytes("3GiB") == 3 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes(1000) == 1000
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes("lots")


# ------------------------------------------------------------------------------- random data
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_leave_one_out_random_matches_loops_and_sklearn(metric):
    rng = np.random.default_rng(2)
    x, y = clustered(rng, 150, 12, 8)
    y[7] = 99  # a class of one: excluded
    report = evaluate(x, y, metric=metric, k=KS, block_rows=37)
    ref, d = reference_report(x, y, x, y, metric, KS, leave_one_out=True)
    assert_matches(report, ref, KS)
    assert report["excluded_queries"]["indices"] == [7]
    assert report["num_evaluated"] == 149
    # sklearn per query on this tie-free data
    aps = []
    for i in range(len(x)):
        if i == 7:
            continue
        mask = np.arange(len(x)) != i
        aps.append(average_precision_score(y[mask] == y[i], -d[i, mask]))
    assert report["map"] == pytest.approx(np.mean(aps), abs=1e-12)


def test_original_tool_metric_reproduced():
    """The original: per query, L2 to all items, stable sort, drop itself, mean precision at each hit."""
    rng = np.random.default_rng(3)
    x, y = clustered(rng, 120, 32, 6)
    aps = []
    for i in range(len(x)):
        dist = np.linalg.norm(x - x[i], axis=1)
        order = [j for j in np.argsort(dist, kind="stable") if j != i]
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if y[j] == y[i]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    assert evaluate(x, y)["map"] == pytest.approx(np.mean(aps), abs=1e-12)


def test_query_gallery_random_with_instances():
    rng = np.random.default_rng(4)
    g, gl = clustered(rng, 90, 10, 6)
    picks = rng.integers(0, 90, 40)
    q = (g[picks] + 0.8 * rng.standard_normal((40, 10))).astype(np.float32)
    ql = gl[picks].copy()
    ql[3] = 42  # no gallery item of this class: excluded
    gallery_ids = np.array([f"p{j}" for j in range(90)])
    query_ids = np.array([f"p{j}-{i % 3}" for i, j in enumerate(picks)])
    query_ids[5] = "unknown"  # no target: counted apart
    targets = instance_targets(query_ids, gallery_ids)
    assert targets[5] == -1 and targets[0] == picks[0]
    report = evaluate(q, ql, g, gl, query_ids=query_ids, gallery_ids=gallery_ids, k=KS, block_rows=9)
    ref, d = reference_report(q, ql, g, gl, "l2", KS, leave_one_out=False, targets=targets)
    assert_matches(report, ref, KS)
    assert report["mode"] == "query_gallery"
    assert report["excluded_queries"]["ids"] == [query_ids[3]]
    assert report["instance_queries"] == 39 and report["instance_excluded"] == 1
    for k in KS:
        assert report[f"instance_accuracy@{k}"] == pytest.approx(ref[f"instance_accuracy@{k}"])
    for i, ap in ref["aps"].items():
        assert ap == pytest.approx(average_precision_score(gl == ql[i], -d[i]), abs=1e-12)


def test_block_size_and_threads_do_not_change_results():
    rng = np.random.default_rng(5)
    x, y = clustered(rng, 200, 8, 7)
    base = evaluate(x, y, block_rows=200, threads=1)
    for rows, threads in ((1, 1), (13, 2), (64, 2)):
        other = evaluate(x, y, block_rows=rows, threads=threads)
        for key in base:
            if key != "timing":
                assert other[key] == base[key], (key, rows)


def test_pr_curve_agrees_with_precision_and_recall_at_k():
    rng = np.random.default_rng(6)
    x, y = clustered(rng, 120, 6, 5)
    report = evaluate(x, y, k=(1, 10), pr_points=200)
    curve = report["pr_curve"]
    for k in (1, 10):
        i = curve["rank"].index(k)
        assert curve["precision"][i] == pytest.approx(report[f"precision@{k}"], abs=1e-6)
        assert curve["recall"][i] == pytest.approx(report[f"recall@{k}"], abs=1e-6)
    assert curve["rank"][-1] == 119 and curve["recall"][-1] == pytest.approx(1.0)


def test_k_larger_than_the_gallery_is_skipped_and_said():
    rng = np.random.default_rng(7)
    x, y = clustered(rng, 20, 4, 3)
    report = evaluate(x, y, k=(1, 19, 20, 100))
    assert report["k"] == [1, 19]
    assert [s["k"] for s in report["skipped_k"]] == [20, 100]
    assert "precision@20" not in report


def test_report_is_json_serialisable_with_the_documented_keys():
    rng = np.random.default_rng(8)
    x, y = clustered(rng, 60, 4, 3)
    report = json.loads(json.dumps(evaluate(x, y, k=(1, 5))))
    for key in ("map", "map@1", "precision@5", "recall@5", "hit@5", "r_precision", "map@r", "knn_accuracy@5",
                "excluded_queries", "num_queries", "num_gallery", "metric", "dimensions", "timing", "tie_rule"):
        assert key in report
    assert report["dimensions"] == 4 and report["num_queries"] == 60 and report["metric"] == "l2"


# ------------------------------------------------------------------------------- ties
def test_tie_rule_hand_computed_l2():
    """Query at 0; gallery at +1 (other), -1 (same), +2 (same), -2 (other): distances 1, 1, 2, 2.

    Lower index first gives the order other, same, same, other: relevant ranks 2 and 3,
    AP = (1/2 + 2/3) / 2. (Higher index first would give ranks 1 and 4, AP = 0.75.)
    """
    q = np.array([[0.0]], np.float32)
    g = np.array([[1.0], [-1.0], [2.0], [-2.0]], np.float32)
    report = evaluate(q, [1], g, [0, 1, 1, 0], k=(1, 2))
    assert report["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert report["precision@1"] == 0.0 and report["precision@2"] == 0.5
    assert report["knn_accuracy@2"] == 0.0  # one vote each: label 0 ranks first
    # same gallery in another order: relevant items first among ties
    report = evaluate(q, [1], g[[1, 0, 2, 3]], [1, 0, 1, 0], k=(1,))
    assert report["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_tie_rule_hand_computed_hamming():
    """4-bit codes; query 0000 against 0001 (other), 0010 (same), 0011 (same), 0100 (other), 0000 (other).

    Distances 1, 1, 2, 1, 0: order 4, 0, 1, 3, 2, relevant ranks 3 and 5: AP = (1/3 + 2/5) / 2.
    """
    bits = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    codes = np.packbits(bits, axis=1)
    report = evaluate(codes[:1], [1], codes[1:], [0, 1, 1, 0, 0], metric="hamming", k=(1, 3))
    assert report["map"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert report["precision@3"] == pytest.approx(1 / 3)
    assert report["dimensions"] == 8


def test_heavy_ties_on_integer_grid_match_loops():
    """Small integers: every distance is exact in float32, so equal distances are true ties."""
    rng = np.random.default_rng(9)
    x = rng.integers(-2, 3, (160, 3)).astype(np.float32)  # many equal distances and duplicates
    y = rng.integers(0, 4, 160)
    report = evaluate(x, y, k=KS, block_rows=50)
    ref, _ = reference_report(x, y, x, y, "l2", KS, leave_one_out=True)
    assert_matches(report, ref, KS)


def test_heavy_ties_cosine_on_scaled_axes_match_loops():
    """Vectors c * (+-e_i), c in {1, 2, 4}: unit vectors and cosines are exact, so ties are true ties."""
    rng = np.random.default_rng(15)
    axis = rng.integers(0, 4, 150)
    x = np.zeros((150, 4), np.float32)
    x[np.arange(150), axis] = rng.choice([-4.0, -2.0, -1.0, 1.0, 2.0, 4.0], 150)
    y = rng.integers(0, 3, 150)
    report = evaluate(x, y, metric="cosine", k=KS, block_rows=40)
    ref, _ = reference_report(x, y, x, y, "cosine", KS, leave_one_out=True)
    assert_matches(report, ref, KS)


def test_duplicated_items_match_loops_in_query_gallery_mode():
    rng = np.random.default_rng(10)
    base, labels = clustered(rng, 30, 5, 4)
    g = np.concatenate([base, base[:10], base[5:15]])  # exact duplicates: equal distances
    gl = np.concatenate([labels, (labels[:10] + 1) % 4, labels[5:15]])
    q = base[::3].copy()
    ql = labels[::3]
    report = evaluate(q, ql, g, gl, k=KS)
    ref, _ = reference_report(q, ql, g, gl, "l2", KS, leave_one_out=False)
    assert_matches(report, ref, KS)


@pytest.mark.parametrize("bits", [16, 72, 300])
def test_hamming_codes_match_loops(bits):
    rng = np.random.default_rng(bits)
    x, y = clustered(rng, 140, bits, 5, spread=0.7)
    codes = pack_codes(x)
    report = evaluate(codes, y, metric="hamming", k=KS, block_rows=33)
    ref, _ = reference_report(codes, y, codes, y, "hamming", KS, leave_one_out=True)
    assert_matches(report, ref, KS)
    assert report["dimensions"] == codes.shape[1] * 8


def test_tensorflow_backend_agrees_with_numpy():
    rng = np.random.default_rng(11)
    x, y = clustered(rng, 90, 16, 5)
    a = evaluate(x, y, backend="numpy", k=KS)
    b = evaluate(x, y, backend="tensorflow", k=KS, block_rows=40)
    assert b["timing"]["backend"] == "tensorflow"
    for key in a:
        if key != "timing":
            assert a[key] == b[key], key


# ------------------------------------------------------------------------------- memory
def test_block_rows_follow_the_memory_budget_and_peak_stays_inside():
    rng = np.random.default_rng(12)
    x, y = clustered(rng, 3000, 64, 30)
    budget = 12 * 2**20
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    report = evaluate(x, y, memory_budget=budget, k=(1, 10))
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    assert report["timing"]["blocks"] > 1
    assert report["timing"]["estimated_peak_bytes"] <= budget
    assert peak + x.nbytes <= budget, (peak, budget)
    full = evaluate(x, y, k=(1, 10))
    assert report["map"] == full["map"] and full["timing"]["blocks"] == 1


def test_memory_budget_too_small_is_a_clear_error():
    x = np.zeros((500, 16), np.float32) + np.arange(500)[:, None]
    with pytest.raises(MemoryBudgetError, match="memory_budget of 10,000 bytes is too small"):
        evaluate(x, np.arange(500) % 5, memory_budget=10_000)


def test_100k_by_1024_fits_three_gib_by_the_block_plan():
    """The planner alone (no ranking) for N = 100,000 x 1,024: blocks fit in the default budget."""
    from retrieval.metrics import DEFAULT_MEMORY_BUDGET
    from retrieval.ranking import PAIR_BYTES

    n, d, k = 100_000, 1024, 100
    fixed = n * d * 4 + n * 8 * (8 + 5 * 3 + k) + 16 * 2 * n + 8 * 2 * n
    per_row = n * PAIR_BYTES["float"] + 64 * k + 64
    rows = (DEFAULT_MEMORY_BUDGET - fixed) // per_row
    assert rows >= 1000  # about 100 blocks of >= 1,000 queries
    assert fixed + rows * per_row <= DEFAULT_MEMORY_BUDGET


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, message", [
    (lambda x, y: (x, y[:-1]), "has 40 items but its labels have 39"),
    (lambda x, y: (np.where(np.arange(40)[:, None] == 3, np.nan, x), y), "NaN values in 1 of 40 rows"),
    (lambda x, y: (np.where(np.arange(40)[:, None] == 5, np.inf, x), y), "infinite values in 1 of 40 rows"),
    (lambda x, y: (x[0], y), "must be a 2-D array"),
    (lambda x, y: (x[:0], y[:0]), "is empty"),
    (lambda x, y: (x.astype(str), y), "must be real numbers"),
    (lambda x, y: (x, y + 0.5), "labels of `features` must be integers"),
])
def test_bad_query_input(make, message):
    rng = np.random.default_rng(13)
    x, y = clustered(rng, 40, 4, 3)
    features, labels = make(x.astype(np.float64), y)
    with pytest.raises(FeatureFileError, match=message):
        evaluate(features, labels)


def test_bad_gallery_input():
    rng = np.random.default_rng(14)
    x, y = clustered(rng, 40, 4, 3)
    with pytest.raises(FeatureFileError, match="`gallery_features` is empty"):
        evaluate(x, y, np.zeros((0, 4), np.float32), np.zeros(0, int))
    with pytest.raises(FeatureFileError, match="queries have 4 dimensions but the gallery has 5"):
        evaluate(x, y, np.zeros((3, 5), np.float32), [0, 1, 2])
    with pytest.raises(ValueError, match="without gallery_labels"):
        evaluate(x, y, x)
    with pytest.raises(FeatureFileError, match="packed uint8 bit codes"):
        evaluate(x, y, metric="hamming")
    with pytest.raises(ValueError, match="undefined for zero vectors"):
        evaluate(np.zeros_like(x), y, metric="cosine")
    with pytest.raises(ValueError, match="Invalid value for argument `metric`"):
        evaluate(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="Invalid value for argument `k`"):
        evaluate(x, y, k="1,zero")
    with pytest.raises(ValueError, match="too large for float32"):
        evaluate(x * np.float32(1e20), y)


def test_instance_targets_reject_duplicate_gallery_ids():
    with pytest.raises(FeatureFileError, match="appears more than once"):
        instance_targets(["a-1"], ["a", "b", "a"])


# ------------------------------------------------------------------------------- real data
def _quickdraw_occupancy(quickdraw_dir: pathlib.Path, categories: int = 20, grid: int = 12):
    """Real features: per drawing, the grid x grid counts of its points (no model, deterministic).

    Counts are small integers, so float32 L2 distances are exact and the many equal distances
    between real drawings are true ties, ranked by the tie rule.
    """
    files = sorted((quickdraw_dir / "simplified").glob("*.ndjson"))[:categories]
    feats, labels = [], []
    for label, path in enumerate(files):
        for line in path.read_bytes().splitlines():
            drawing = orjson.loads(line)["drawing"]
            xs = np.concatenate([s[0] for s in drawing]).astype(np.float64)
            ys = np.concatenate([s[1] for s in drawing]).astype(np.float64)
            hist, _, _ = np.histogram2d(xs, ys, bins=grid, range=[[0, 256], [0, 256]])
            feats.append(hist.ravel())
            labels.append(label)
    return np.asarray(feats, np.float32), np.asarray(labels)


def test_real_quickdraw_features_match_loops(quickdraw_dir):
    x, y = _quickdraw_occupancy(quickdraw_dir)
    assert x.shape == (500, 144)
    report = evaluate(x, y, k=KS, block_rows=128)
    ref, d = reference_report(x, y, x, y, "l2", KS, leave_one_out=True)
    assert_matches(report, ref, KS)
    assert report["map"] > 1.5 / 20  # better than chance on real drawings
    ties = sum(len(row) - len(np.unique(row)) for row in d)
    assert ties > 1000  # the data exercises the tie rule
    codes = pack_codes(x - np.median(x, axis=0))
    report = evaluate(codes, y, metric="hamming", k=KS)
    ref, _ = reference_report(codes, y, codes, y, "hamming", KS, leave_one_out=True)
    assert_matches(report, ref, KS)


def test_real_quickdraw_cosine_within_float32_rounding(quickdraw_dir):
    """Cosine of real counts is not exact in float32: pairs closer than rounding may swap, so
    the comparison with the float64 loop allows differences of that size only."""
    x, y = _quickdraw_occupancy(quickdraw_dir)
    report = evaluate(x, y, metric="cosine", k=KS, block_rows=128)
    ref, _ = reference_report(x, y, x, y, "cosine", KS, leave_one_out=True)
    assert report["map"] == pytest.approx(ref["map"], abs=5e-5)
    assert report["map@r"] == pytest.approx(ref["map@r"], abs=5e-5)
    assert report["excluded_queries"]["count"] == 0


def test_real_sketchy_sketch_to_photo_with_instances(sketchy_dir):
    """Sketch queries against their photos: 16 x 16 grey thumbnails as features, ids from file names."""
    categories = sorted(p.name for p in (sketchy_dir / "photo").iterdir())[:6]

    def load(kind, suffix):
        feats, labels, ids = [], [], []
        for label, cat in enumerate(categories):
            for p in sorted((sketchy_dir / kind / cat).glob(f"*{suffix}"))[:12]:
                img = Image.open(p).convert("L").resize((16, 16), Image.BILINEAR)
                feats.append(np.asarray(img, np.float32).ravel() / 255)
                labels.append(label)
                ids.append(p.stem)
        return np.asarray(feats), np.asarray(labels), np.asarray(ids)

    g, gl, gid = load("photo", ".jpg")
    q, ql, qid = load("sketch", ".png")
    report = evaluate(q, ql, g, gl, query_ids=qid, gallery_ids=gid, k=KS, block_rows=25)
    targets = instance_targets(qid, gid)
    ref, d = reference_report(q, ql, g, gl, "l2", KS, leave_one_out=False, targets=targets)
    assert_matches(report, ref, KS)
    assert report["instance_queries"] == int((targets >= 0).sum()) > 0
    for k in KS:
        assert report[f"instance_accuracy@{k}"] == pytest.approx(ref[f"instance_accuracy@{k}"])
    for i, ap in list(ref["aps"].items())[:20]:
        assert ap == pytest.approx(average_precision_score(gl == ql[i], -d[i]), abs=1e-12)


def test_float32_rounding_ties_at_scale_follow_the_tie_rule():
    """At a few thousand items, float32 ranking values collide often; the engine's ranks must be
    those of a plain sort of its own values by (value, gallery index)."""
    from retrieval.ranking import Ranker

    rng = np.random.default_rng(16)
    x, y = clustered(rng, 3000, 256, 10, spread=0.3)
    x += np.float32(20.0)  # a common offset: large norms, coarse float32 values, many collisions
    ranker = Ranker(x, y, None, None, metric="l2", backend="numpy", threads=2)
    rows = np.sort(rng.choice(3000, 60, replace=False))
    block = ranker.rank_block(rows, top_k=5)
    values, _ = ranker._float_distances(rows)
    collisions = tied_relevant = 0
    for b, i in enumerate(rows):
        order = sorted(range(3000), key=lambda j: (values[b, j], j))[:-1]  # itself (+inf) last
        expected = [r + 1 for r, j in enumerate(order) if y[j] == y[i]]
        got = block.ranks[block.offsets[b]:block.offsets[b + 1]].tolist()
        assert got == expected, i
        assert block.top[b].tolist() == order[:5]
        collisions += len(values[b]) - len(np.unique(values[b]))
        same = y == y[i]
        same[i] = False
        other = ~same
        other[i] = False
        tied_relevant += len(np.intersect1d(values[b, same], values[b, other]))
    assert collisions > 1000 and tied_relevant > 50  # rounding ties, many between relevant and not


@pytest.mark.slow
def test_real_drawings_through_a_conv_net_match_loops_and_sklearn(quickdraw_dir):
    """The features of a model: a seeded, untrained small conv net on 500 real drawings (20 classes)
    rasterized at 28 px. Float32 features: pairs whose distances agree to float32 rounding may be
    ordered differently from the float64 loop, so the means agree to 1e-5, not to the last bit."""
    import keras

    from data_prep.raster import rasterize

    files = sorted((quickdraw_dir / "simplified").glob("*.ndjson"))[20:40]
    images, labels = [], []
    for label, path in enumerate(files):
        for line in path.read_bytes().splitlines():
            strokes = [np.asarray(s[:2], np.float32).T for s in orjson.loads(line)["drawing"]]
            images.append(rasterize(strokes, image_size=28))
            labels.append(label)
    images = np.stack(images)[..., None].astype(np.float32) / 255.0
    y = np.asarray(labels)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    x = keras.Model(inputs, keras.layers.Dense(32, name="features")(h)).predict(images, verbose=0)
    assert x.shape == (500, 32) and np.isfinite(x).all()
    for metric in ("l2", "cosine"):
        report = evaluate(x, y, metric=metric, k=KS, block_rows=100)
        ref, d = reference_report(x, y, x, y, metric, KS, leave_one_out=True)
        for name in ["map", "r_precision", "map@r"] + [f"{m}@{k}" for k in KS for m in
                                                     ("map", "precision", "recall", "hit", "knn_accuracy")]:
            assert report[name] == pytest.approx(ref[name], abs=1e-5), (metric, name)
        assert report["excluded_queries"]["count"] == 0
        aps = [average_precision_score(np.delete(y == y[i], i), -np.delete(d[i], i)) for i in range(len(y))]
        assert report["map"] == pytest.approx(np.mean(aps), abs=1e-5)
        assert report["map"] > 1.5 / 20  # an untrained net already groups real drawings above chance


def test_chance_equals_the_average_over_every_random_placement():
    """E[AP], E[hit@K] and E[precision@K] of a random ranking, by enumerating every placement of the
    R relevant items among N candidates (an independent computation of the closed forms)."""
    import itertools

    from retrieval.metrics import expected_random_ap, expected_random_ap_at, expected_random_hit

    for n, r in ((12, 3), (9, 1), (10, 10), (8, 5)):
        aps, hits3, prec4, ap_at = [], [], [], {k: [] for k in (1, 4, 7, n)}
        for positions in itertools.combinations(range(1, n + 1), r):
            aps.append(np.mean([(j + 1) / rank for j, rank in enumerate(positions)]))
            hits3.append(float(positions[0] <= 3))
            prec4.append(sum(p <= 4 for p in positions) / 4)
            for k in ap_at:
                ap_at[k].append(sum((j + 1) / rank for j, rank in enumerate(positions) if rank <= k) / min(k, r))
        for k, values in ap_at.items():
            assert expected_random_ap_at(np.array([r]), n, k)[0] == pytest.approx(np.mean(values), rel=1e-12)
        assert expected_random_ap(np.array([r]), n)[0] == pytest.approx(np.mean(aps), rel=1e-12)
        assert expected_random_hit(np.array([r]), n, 3)[0] == pytest.approx(np.mean(hits3), rel=1e-12)
        assert r / n == pytest.approx(np.mean(prec4), rel=1e-12)


def test_report_gives_chance_and_random_features_score_it():
    """Leave-one-out and query/gallery reports carry `chance` from the class counts; random features
    land near it (3 classes of unequal size, 600 items), and the table prints it."""
    import evaluate_similarity_lookup as cli
    from retrieval.metrics import chance, evaluate, expected_random_ap

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [100, 200, 300])
    report = evaluate(rng.standard_normal((600, 16)).astype(np.float32), labels, k=(1, 10, 100))
    expected_map = np.mean(np.concatenate([expected_random_ap(np.full(c, c - 1), 599) for c in (100, 200, 300)]))
    assert report["chance"]["map"] == pytest.approx(expected_map, rel=1e-9)
    share = (100 * 99 + 200 * 199 + 300 * 299) / 600 / 599
    assert report["chance"]["precision@10"] == pytest.approx(share, rel=1e-9)
    assert abs(report["map"] - report["chance"]["map"]) < 0.02
    assert abs(report["precision@100"] - share) < 0.02
    table = cli.format_table(report)
    assert f"(chance {report['chance']['map']:.4f})" in table
    gallery_labels = np.repeat([0, 1], [5, 45])
    cross = chance(np.array([0, 1, 1, 2]), gallery_labels, (1, 10), instance=True)
    assert cross["precision@10"] == pytest.approx((5 / 50 + 45 / 50 * 2) / 3)  # label 2: no gallery item, left out
    assert cross["instance_accuracy@10"] == pytest.approx(10 / 50)


def test_protocol_reports_the_sbir_figures_with_chance_beside_each():
    """Every report carries the SBIR protocol (mAP@all, mAP@200, P@100, P@200, instance acc@1/@10)
    whatever K was asked, each with the chance of a random ranking; random features score near it,
    and the one-line format prints every figure with its chance."""
    from retrieval.metrics import expected_random_ap_at, format_protocol

    rng = np.random.default_rng(3)
    gallery_labels = np.repeat(np.arange(4), [100, 150, 200, 250])
    query_labels = np.repeat(np.arange(4), 300)
    gallery_ids = np.arange(700)
    query_ids = rng.integers(0, 700, 1200)
    report = evaluate(rng.standard_normal((1200, 8)).astype(np.float32), query_labels,
                      rng.standard_normal((700, 8)).astype(np.float32), gallery_labels,
                      query_ids=query_ids, gallery_ids=gallery_ids, k=(5,))
    figures = report["protocol"]
    assert list(figures) == ["mAP@all", "mAP@200", "P@100", "P@200", "acc@1", "acc@10"]
    assert report["k"] == [5]  # the protocol's cut-offs are computed, the table shows what was asked
    expected = np.mean([expected_random_ap_at(np.array([c]), 700, 200)[0] for c in (100, 150, 200, 250)])
    assert figures["mAP@200"]["chance"] == pytest.approx(expected, rel=1e-9)
    assert figures["P@200"]["chance"] == pytest.approx((100 + 150 + 200 + 250) / 4 / 700, rel=1e-9)
    assert figures["acc@10"]["chance"] == pytest.approx(10 / 700)
    for name, f in figures.items():
        assert f["value"] == report[f["key"]]
        assert abs(f["value"] - f["chance"]) < 0.03, name
    line = format_protocol(figures)
    assert line.startswith(f"mAP@all {report['map']:.4f} (chance {report['chance']['map']:.4f}, ")
    assert line.count("chance") == 6
    loo = evaluate(rng.standard_normal((60, 4)).astype(np.float32), np.repeat(np.arange(3), 20))
    assert list(loo["protocol"]) == ["mAP@all"]  # 59 candidates: no @100/@200, no instance ids


def test_knn_accuracy_beyond_the_class_size_carries_a_note():
    from retrieval.metrics import evaluate

    labels = np.repeat(np.arange(20), 5)
    report = evaluate(np.random.default_rng(1).standard_normal((100, 8)).astype(np.float32), labels, k=(1, 10))
    assert len(report["notes"]) == 1 and report["notes"][0].startswith("knn_accuracy@10: K is larger")
