"""Retrieval metrics computed exactly from full rankings, and `evaluate`, which reports them.

Notation, for one query: the gallery (in leave-one-out mode, every other item) is ranked by
distance, ties by gallery index (retrieval.ranking.TIE_RULE). R is the number of relevant items
(same label as the query); r_1 < r_2 < ... < r_R are their 1-based ranks; P(i) is the precision
of the first i items; rel(i) is 1 when the i-th item is relevant; hits(K) = #{j : r_j <= K}.

- AP (key `map`, averaged) = (1/R) sum_j j / r_j: the mean, over every relevant item, of the
  precision at its rank (the original tool's metric, and sklearn's average_precision_score when
  there are no ties).
- AP@K (`map@K`) = (1/min(K, R)) sum_{i<=K} P(i) rel(i).
- precision@K = hits(K) / K;  recall@K = hits(K) / R;  hit@K = 1 if hits(K) > 0 (what deep
  metric learning papers call Recall@K).
- R-precision (`r_precision`) = hits(R) / R.
- MAP@R (`map@r`, Musgrave et al. 2020) = (1/R) sum_{i<=R} P(i) rel(i).
- kNN accuracy (`knn_accuracy@K`): the majority label of the K nearest items is the prediction;
  between labels with equally many votes, the one whose nearest member ranks first wins.
- instance accuracy (`instance_accuracy@K`): the query's target gallery item (named by its id)
  is among the K nearest.
- `chance`: the same figures for a uniformly random ranking, from the class counts (`chance`);
  `notes`: caveats, such as kNN accuracy@K with K larger than the classes.
- `protocol`: the sketch-based retrieval papers' headline figures, each with its chance and its ratio
  to chance (`protocol`, PROTOCOL): mAP@all, mAP@200, P@100, P@200 by category, and acc@1 / acc@10 of
  each query's own gallery item where ids name one. Their cut-offs are always computed.

Queries with R = 0 (leave-one-out: the only member of their class; query/gallery: no gallery
item of their class) have no AP: they are excluded from every label-based mean and listed under
`excluded_queries`. Worked example: ranks of relevant items 1 and 3 out of R = 2 give
AP = (1/1 + 2/3) / 2 = 0.8333, precision@2 = 0.5, R-precision = 0.5, MAP@R = 0.5.
"""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np

from retrieval.features import FeatureFileError, instance_targets, validate_features
from retrieval.ranking import METRICS, PAIR_BYTES, TIE_RULE, Ranker, pack_codes  # noqa: F401

DEFAULT_MEMORY_BUDGET = 3 * 2**30
DEFAULT_K = (1, 10, 100)
PROTOCOL = (("mAP@all", "map"), ("mAP@200", "map@200"), ("P@100", "precision@100"), ("P@200", "precision@200"),
            ("acc@1", "instance_accuracy@1"), ("acc@10", "instance_accuracy@10"))
PROTOCOL_K = (1, 10, 100, 200)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


class MemoryBudgetError(ValueError):
    """The memory budget cannot hold even one query row of the computation."""


def parse_bytes(value) -> int:
    """'3GiB', '512MB', '2e9' or an int -> bytes."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"Invalid value for argument `memory_budget`. Received: {value!r}. "
                         f"Expected bytes such as 3GiB, 512MB or 2000000000.")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_k(value) -> tuple[int, ...]:
    """'1,10,100' or an iterable of ints -> sorted unique positive ints."""
    items = value.split(",") if isinstance(value, str) else list(np.atleast_1d(value))
    try:
        ks = sorted({int(str(x).strip()) for x in items if str(x).strip()})
    except ValueError:
        raise ValueError(f"Invalid value for argument `k`. Received: {value!r}. "
                         f"Expected positive integers such as 1,10,100.") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"Invalid value for argument `k`. Received: {value!r}. "
                         f"Expected positive integers such as 1,10,100.")
    return tuple(ks)


# ---------------------------------------------------------------------------------------------
# Per-query metrics from ranks.


def _segments(num_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query id of each flat rank, and each rank's 1-based position j among its query's ranks."""
    segment = np.repeat(np.arange(len(num_relevant)), num_relevant)
    offsets = np.concatenate([[0], np.cumsum(num_relevant)[:-1]])
    position = np.arange(len(segment)) - offsets[segment] + 1
    return segment, position


def ranking_metrics(ranks: np.ndarray, num_relevant: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Per-query AP, AP@K, precision@K, recall@K, hit@K, R-precision and MAP@R.

    `ranks` holds every query's ascending 1-based relevant ranks back to back, `num_relevant`
    how many each query has. Queries with none get NaN.
    """
    num_relevant = np.asarray(num_relevant, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.float64)
    nq = len(num_relevant)
    segment, position = _segments(num_relevant)
    precision = position / ranks
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num_relevant.astype(np.float64)
        out = {"ap": np.bincount(segment, precision, minlength=nq) / r}
        for k in ks:
            within = ranks <= k
            hits = np.bincount(segment, within, minlength=nq)
            out[f"map@{k}"] = np.bincount(segment, precision * within, minlength=nq) / np.minimum(k, r)
            out[f"precision@{k}"] = hits / k
            out[f"recall@{k}"] = hits / r
            out[f"hit@{k}"] = (hits > 0).astype(np.float64)
        within_r = ranks <= num_relevant[segment]
        out["r_precision"] = np.bincount(segment, within_r, minlength=nq) / r
        out["map@r"] = np.bincount(segment, precision * within_r, minlength=nq) / r
    empty = num_relevant == 0
    for values in out.values():
        values[empty] = np.nan
    return out


def knn_predictions(neighbour_labels: np.ndarray, k: int) -> np.ndarray:
    """Majority label of each row's first `k` neighbour labels; ties go to the label whose
    nearest member comes first."""
    top = np.asarray(neighbour_labels)[:, :k]
    if top.shape[1] == 1:
        return top[:, 0].copy()
    num = len(top)
    order = np.argsort(top, axis=1, kind="stable")  # groups labels, nearest member first
    grouped = np.take_along_axis(top, order, axis=1)
    new = np.ones(grouped.shape, bool)
    new[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    group = np.cumsum(new, axis=1) - 1
    rows = np.repeat(np.arange(num), top.shape[1])
    flat_group = rows * top.shape[1] + group.ravel()
    votes = np.bincount(flat_group, minlength=num * top.shape[1]).reshape(num, -1)
    first = np.full(num * top.shape[1], top.shape[1], np.int64)
    starts = new.ravel()
    first[flat_group[starts]] = order.ravel()[starts]
    first = first.reshape(num, -1)
    score = votes * (top.shape[1] + 1) - first  # more votes first, then the nearer member
    best = np.argmax(score, axis=1)
    return grouped[np.arange(num), np.argmax(group == best[:, None], axis=1)]


# --------------------------------------------------------------------------------------------- chance


def expected_random_ap(num_relevant: np.ndarray, candidates: int) -> np.ndarray:
    """E[AP] of a uniformly random ranking of `candidates` items holding `num_relevant` relevant ones:
    (H_N + (R - 1) / (N - 1) * (N - H_N)) / N, H_N the N-th harmonic number (from E[rel(i) rel(m)]
    = R/N for i = m and R(R-1)/(N(N-1)) otherwise)."""
    r = np.asarray(num_relevant, np.float64)
    n = int(candidates)
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (harmonic + (r - 1) / max(n - 1, 1) * (n - harmonic)) / n


def expected_random_ap_at(num_relevant: np.ndarray, candidates: int, k: int) -> np.ndarray:
    """E[AP@k] of a uniformly random ranking: (R/N H_k + R(R-1)/(N(N-1)) (k - H_k)) / min(k, R), from
    E[P(i) rel(i)] = (R/N + (i-1) R(R-1)/(N(N-1))) / i; equals expected_random_ap at k = N."""
    r = np.asarray(num_relevant, np.float64)
    n, k = int(candidates), min(int(k), int(candidates))
    harmonic = float(np.sum(1.0 / np.arange(1, k + 1)))
    return (r / n * harmonic + r * (r - 1) / (n * max(n - 1, 1)) * (k - harmonic)) / np.minimum(k, r)


def expected_random_hit(num_relevant: np.ndarray, candidates: int, k: int) -> np.ndarray:
    """P(at least one relevant item in the first k) of a random ranking: 1 - C(N-R, k) / C(N, k)."""
    r = np.asarray(num_relevant, np.float64)
    i = np.arange(k, dtype=np.float64)
    miss = np.prod(np.clip((candidates - r[:, None] - i) / (candidates - i), 0, None), axis=1)
    return 1.0 - miss


def chance(query_labels, gallery_labels=None, ks=DEFAULT_K, *, instance: bool = False) -> dict:
    """What a uniformly random ranking scores on average, from the class counts alone (leave-one-out
    when `gallery_labels` is None), over the queries `evaluate` includes (R > 0): `map`,
    precision/recall/hit@K, `r_precision`, `knn_accuracy@1`, and with `instance` the
    instance_accuracy@K of one target among the candidates, and map@K. Keys as in the report."""
    query_labels = np.asarray(query_labels)
    gallery = query_labels if gallery_labels is None else np.asarray(gallery_labels)
    values, counts = np.unique(gallery, return_counts=True)
    lookup = dict(zip(values.tolist(), counts.tolist()))
    relevant = np.array([lookup.get(label, 0) for label in query_labels.tolist()], np.float64)
    n = len(gallery)
    if gallery_labels is None:
        relevant, n = relevant - 1, n - 1
    relevant = relevant[relevant > 0]
    if not len(relevant) or n < 1:
        return {}
    share = float(np.mean(relevant / n))
    out = {"map": float(expected_random_ap(relevant, n).mean()), "r_precision": share, "knn_accuracy@1": share}
    for k in (k for k in ks if k <= n):
        out[f"map@{k}"] = float(expected_random_ap_at(relevant, n, k).mean())
        out[f"precision@{k}"] = share
        out[f"recall@{k}"] = k / n
        out[f"hit@{k}"] = float(expected_random_hit(relevant, n, k).mean())
        if instance:
            out[f"instance_accuracy@{k}"] = k / n
    return out


def protocol(report: dict) -> dict:
    """The PROTOCOL figures of an `evaluate` report: {name: {"key", "value", "chance", "x_chance"}};
    a figure the report lacks (no instance ids, K above the gallery) is left out."""
    chances = report.get("chance", {})
    out = {}
    for name, key in PROTOCOL:
        value = report.get(key)
        if value is None:
            continue
        base = chances.get(key)
        out[name] = {"key": key, "value": value, "chance": base,
                     "x_chance": round(value / base, 2) if base else None}
    return out


def format_protocol(figures: dict) -> str:
    """One line: 'mAP@all 0.0812 (chance 0.0080, 10.1x) | ...', the way every report prints the protocol."""
    def one(name: str, f: dict) -> str:
        if f["chance"] is None:
            return f"{name} {f['value']:.4f}"
        return f"{name} {f['value']:.4f} (chance {f['chance']:.4f}, {f['x_chance']:.1f}x)"

    return " | ".join(one(name, f) for name, f in figures.items())


def knn_notes(query_labels, gallery_labels, ks) -> list[str]:
    """A caveat for each kNN accuracy@K whose K exceeds the typical class size: most of those K
    neighbours cannot share the query's class, so the vote says little about the embedding."""
    gallery = np.asarray(query_labels if gallery_labels is None else gallery_labels)
    sizes = np.unique(gallery, return_counts=True)[1] - (1 if gallery_labels is None else 0)
    median = float(np.median(sizes)) if len(sizes) else 0.0
    return [f"knn_accuracy@{k}: K is larger than the median class ({median:g} relevant items), so at most "
            f"{median:g} of the {k} neighbours can share a typical query's class" for k in ks if k > median]


# ---------------------------------------------------------------------------------------------


def evaluate(features, labels, gallery_features=None, gallery_labels=None, *, query_ids=None,
             gallery_ids=None, metric: str = "l2", k=DEFAULT_K, memory_budget=DEFAULT_MEMORY_BUDGET,
             backend: str = "auto", block_rows: int | None = None, threads: int | None = None,
             pr_points: int = 100, progress=None) -> dict:
    """Exact retrieval metrics of `features` (leave-one-out) or of queries against a gallery.

    Returns the JSON report as a dict: `map` is always the mean AP over all relevant items under
    `metric`; see the module docstring for every key. `metric='hamming'` takes packed uint8
    codes (pack_codes). `memory_budget` (bytes or '3GiB') bounds the arrays held at once,
    the inputs included; it sets the number of queries ranked per block unless `block_rows` is
    given. `backend`: 'numpy', 'tensorflow' (distances and sorting on the GPU when present) or
    'auto' (TensorFlow when an NVIDIA GPU is present).

    Steps: check the inputs (_retrieval_sets), plan the blocks within the budget (_plan_blocks),
    rank every query block by block (_rank_blocks), then average per query (_report).
    """
    start_time = time.perf_counter()
    if metric not in METRICS:
        raise ValueError(f"Invalid value for argument `metric`. Received: {metric!r}. "
                         f"Expected one of {', '.join(METRICS)}.")
    budget = parse_bytes(memory_budget)
    asked = parse_k(k)
    ks = tuple(sorted(set(asked) | set(PROTOCOL_K)))
    sets = _retrieval_sets(features, labels, gallery_features, gallery_labels, query_ids, gallery_ids,
                           binary=metric == "hamming")
    used_k = tuple(x for x in ks if x <= sets.candidates)
    skipped_k = [x for x in asked if x > sets.candidates]
    targets = None
    if not sets.leave_one_out and sets.query_ids is not None and sets.gallery_ids is not None:
        targets = instance_targets(sets.query_ids, sets.gallery_ids)
    ranker = Ranker(sets.queries, sets.query_labels, sets.gallery, sets.gallery_labels, metric=metric,
                    backend=backend, threads=threads)
    try:
        plan = _plan_blocks(sets, ranker, used_k, budget, block_rows)
        ranked = _rank_blocks(sets, ranker, used_k, targets, plan.block_rows, progress)
    finally:
        ranker.close()
    report = _report(sets, ranked, metric, used_k, skipped_k, targets, pr_points)
    report["k"] = [x for x in asked if x <= sets.candidates]
    report["timing"] = {
        "seconds": round(time.perf_counter() - start_time, 4),
        "blocks": ranked.blocks,
        "block_rows": plan.block_rows,
        "memory_budget_bytes": budget,
        "estimated_peak_bytes": int(plan.fixed + plan.per_row * plan.block_rows),
        "backend": ranker.backend,
    }
    return report


@dataclasses.dataclass(frozen=True)
class _Sets:
    """Validated queries and gallery (None and the queries' labels in leave-one-out mode), and how
    many items each query is ranked against (`candidates`)."""

    queries: np.ndarray
    query_labels: np.ndarray
    query_ids: np.ndarray | None
    gallery: np.ndarray | None
    gallery_labels: np.ndarray
    gallery_ids: np.ndarray | None
    leave_one_out: bool
    num_gallery: int
    candidates: int


def _retrieval_sets(features, labels, gallery_features, gallery_labels, query_ids, gallery_ids, *,
                    binary: bool) -> _Sets:
    """Check and normalise evaluate's inputs; a mismatch is a one-line error naming both sides."""
    queries, query_labels, query_ids = validate_features(features, labels, query_ids, name="features",
                                                         binary=binary)
    leave_one_out = gallery_features is None
    if leave_one_out:
        if gallery_labels is not None or gallery_ids is not None:
            raise ValueError("gallery_labels/gallery_ids were given without gallery_features.")
        gallery, gallery_labels_arr = None, query_labels
        num_gallery = len(queries)
        candidates = num_gallery - 1
    else:
        if gallery_labels is None:
            raise ValueError("gallery_features were given without gallery_labels.")
        gallery, gallery_labels_arr, gallery_ids = validate_features(
            gallery_features, gallery_labels, gallery_ids, name="gallery_features", binary=binary)
        if gallery.shape[1] != queries.shape[1]:
            raise FeatureFileError(
                f"queries have {queries.shape[1]} {'bytes' if binary else 'dimensions'} but the gallery "
                f"has {gallery.shape[1]}; they must match.")
        num_gallery = len(gallery)
        candidates = num_gallery
    if candidates < 1:
        raise FeatureFileError("leave-one-out evaluation needs at least 2 items; received 1.")
    return _Sets(queries, query_labels, query_ids, gallery, gallery_labels_arr, gallery_ids, leave_one_out,
                 num_gallery, candidates)


@dataclasses.dataclass(frozen=True)
class _BlockPlan:
    """Queries ranked per block, and the bytes the estimate counts: `fixed` (inputs, per-query
    results) plus `per_row` for each query row of a block."""

    block_rows: int
    fixed: int
    per_row: int


def _plan_blocks(sets: _Sets, ranker: Ranker, used_k, budget: int, block_rows: int | None) -> _BlockPlan:
    """The block size: `block_rows` when given, else as many query rows as `budget` holds; a budget
    that cannot hold one row is a MemoryBudgetError saying how much would do."""
    top_k = max(used_k) if used_k else 0
    nq = len(sets.queries)
    per_query_bytes = 8 * (8 + 5 * len(used_k) + top_k)
    fixed = sets.queries.nbytes + (0 if sets.gallery is None else sets.gallery.nbytes) + ranker.fixed_bytes() \
        + nq * per_query_bytes + 16 * (nq + sets.num_gallery)
    per_row = sets.num_gallery * PAIR_BYTES[ranker.path] + 64 * top_k + 64
    if block_rows is None:
        block_rows = (budget - fixed) // per_row
        if block_rows < 1:
            raise MemoryBudgetError(
                f"memory_budget of {budget:,} bytes is too small: the inputs and per-query results take "
                f"{fixed:,} bytes and one query row {per_row:,} more (gallery of {sets.num_gallery:,}); "
                f"allow at least {fixed + per_row:,} bytes.")
    return _BlockPlan(int(max(1, min(block_rows, nq))), fixed, per_row)


@dataclasses.dataclass
class _Ranked:
    """Per-query results of the ranking (indexed like the queries) and the rank histograms."""

    per_query: dict[str, np.ndarray]
    num_relevant: np.ndarray
    target_rank: np.ndarray
    knn_correct: dict[int, np.ndarray]
    rank_hist: np.ndarray
    recall_hist: np.ndarray
    blocks: int = 0


def _rank_blocks(sets: _Sets, ranker: Ranker, used_k, targets, block_rows: int, progress) -> _Ranked:
    """Rank every query, `block_rows` at a time, keeping per-query metrics and rank histograms;
    `progress(done, total)` after each block."""
    top_k = max(used_k) if used_k else 0
    nq, candidates = len(sets.queries), sets.candidates
    # One block: items in order (leave-one-out then takes the symmetric product x @ x.T);
    # several: queries grouped by label, so that each block holds few classes.
    order = np.arange(nq) if block_rows >= nq else np.argsort(sets.query_labels, kind="stable")
    out = _Ranked({}, np.zeros(nq, np.int64), np.zeros(nq, np.int64), {x: np.zeros(nq, bool) for x in used_k},
                  np.zeros(candidates + 2, np.float64), np.zeros(candidates + 2, np.float64))
    for start in range(0, nq, block_rows):
        idx = order[start:start + block_rows]
        block = ranker.rank_block(idx, top_k, None if targets is None else targets[idx])
        out.blocks += 1
        values = ranking_metrics(block.ranks, block.num_relevant, used_k)
        for name, v in values.items():
            out.per_query.setdefault(name, np.full(nq, np.nan))[idx] = v
        out.num_relevant[idx] = block.num_relevant
        out.target_rank[idx] = block.target_rank
        neighbour_labels = sets.gallery_labels[block.top]
        for x in used_k:
            out.knn_correct[x][idx] = knn_predictions(neighbour_labels, x) == sets.query_labels[idx]
        segment = np.repeat(np.arange(len(idx)), block.num_relevant)
        out.rank_hist += np.bincount(block.ranks, minlength=candidates + 2)[:candidates + 2]
        weights = 1.0 / block.num_relevant[segment]
        out.recall_hist += np.bincount(block.ranks, weights, minlength=candidates + 2)[:candidates + 2]
        if progress is not None:
            progress(min(start + block_rows, nq), nq)
    return out


def _report(sets: _Sets, ranked: _Ranked, metric: str, used_k, skipped_k, targets, pr_points: int) -> dict:
    """The report without its timing: counts, means over the queries with a relevant item, instance
    accuracy, chance, notes and the precision-recall curve."""
    binary = metric == "hamming"
    nq, candidates = len(sets.queries), sets.candidates
    included = ranked.num_relevant > 0
    n_eval = int(included.sum())
    report: dict = {
        "mode": "leave_one_out" if sets.leave_one_out else "query_gallery",
        "metric": metric,
        "dimensions": int(sets.queries.shape[1] * 8 if binary else sets.queries.shape[1]),
        "num_queries": int(nq),
        "num_gallery": int(sets.num_gallery),
        "num_evaluated": n_eval,
        "excluded_queries": _excluded(~included, sets.query_ids, sets.leave_one_out),
        "k": list(used_k),
        "skipped_k": [{"k": x, "reason": f"larger than the {candidates} items each query is ranked against"}
                      for x in skipped_k],
        "tie_rule": TIE_RULE,
    }

    def mean(values: np.ndarray) -> float | None:
        return float(np.mean(values[included])) if n_eval else None

    per_query = ranked.per_query
    report["map"] = mean(per_query["ap"])
    for x in used_k:
        for name in ("map", "precision", "recall", "hit"):
            report[f"{name}@{x}"] = mean(per_query[f"{name}@{x}"])
    report["r_precision"] = mean(per_query["r_precision"])
    report["map@r"] = mean(per_query["map@r"])
    for x in used_k:
        report[f"knn_accuracy@{x}"] = mean(ranked.knn_correct[x].astype(np.float64))
    if targets is not None:
        has_target = targets >= 0
        report["instance_queries"] = int(has_target.sum())
        report["instance_excluded"] = int((~has_target).sum())
        for x in used_k:
            target_rank = ranked.target_rank[has_target]
            hits = (target_rank >= 1) & (target_rank <= x)
            report[f"instance_accuracy@{x}"] = float(hits.mean()) if has_target.any() else None
    gallery_labels = None if sets.leave_one_out else sets.gallery_labels
    report["chance"] = chance(sets.query_labels, gallery_labels, used_k, instance=targets is not None)
    report["notes"] = knn_notes(sets.query_labels, gallery_labels, used_k)
    report["protocol"] = protocol(report)
    report["pr_curve"] = _pr_curve(ranked.rank_hist, ranked.recall_hist, n_eval, candidates, pr_points)
    return report


def _excluded(mask: np.ndarray, ids, leave_one_out: bool) -> dict:
    indices = np.flatnonzero(mask)
    reason = ("the only item of its class: no other relevant item" if leave_one_out
              else "no gallery item of its class")
    out = {"count": int(len(indices)), "reason": reason, "indices": indices.tolist()}
    if ids is not None:
        out["ids"] = [str(x) for x in np.asarray(ids)[indices]]
    return out


def _pr_curve(rank_hist, recall_hist, n_eval, candidates, points) -> dict:
    """Mean precision and recall after each rank cut-off, at about `points` log-spaced cut-offs."""
    if n_eval == 0 or candidates == 0:
        return {"rank": [], "precision": [], "recall": []}
    cut = np.unique(np.round(np.geomspace(1, candidates, max(2, points))).astype(np.int64))
    hits = np.cumsum(rank_hist)[cut]
    recall = np.cumsum(recall_hist)[cut] / n_eval
    precision = hits / (cut * n_eval)
    return {"rank": cut.tolist(), "precision": [round(float(x), 6) for x in precision],
            "recall": [round(float(x), 6) for x in recall]}
