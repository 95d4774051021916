"""Leave-one-out mAP: `retrieval.metrics.evaluate` against the original per-query loop, same run.

Features: N x 1,024 float32, 100 classes (Gaussian clusters, seeded). Timed, at each N:

- original: the original tool's loop: for each item, the L2 distance to every item one pair at a
  time, a Python sort, drop the item itself, AP as the mean precision at each relevant item
  (sizes up to --original_max; about 90 s at N = 5,000 on the issue's machine);
- original, NumPy rows: the same loop with each query's distances as one NumPy expression;
- NumPy full sort: the whole N x N distance matrix, one stable argsort, AP by cumulative sums
  (sizes up to --full_sort_max: it holds N x N matrices);
- evaluate: blocked ranking under the default 3 GiB budget (best of --repeats).

Each is timed in wall-clock seconds and in CPU seconds (all threads of the process): on a
machine shared with other work the CPU seconds are the steadier measure of the work done.

The mAP of every method is checked against evaluate's. With --rss_n, a subprocess runs evaluate
at that N and reports its peak resident memory (ru_maxrss). Writes bench/results/similarity.json.
Run: `python -m bench.similarity [--sizes 1000,5000,20000] [--rss_n 100000]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from bench.machine import describe_machine
from retrieval.metrics import evaluate

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DIM = 1024
CLASSES = 100


def make_features(n: int, dim: int = DIM, classes: int = CLASSES, seed: int = 0):
    """N x dim float32 features around 100 class centres (filled in chunks: no N x dim temporaries)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    centres = rng.standard_normal((classes, dim)).astype(np.float32) * 0.25
    features = np.empty((n, dim), np.float32)
    for a in range(0, n, 8192):
        b = min(a + 8192, n)
        features[a:b] = rng.standard_normal((b - a, dim), dtype=np.float32)
        features[a:b] += centres[labels[a:b]]
    return features, labels


def original_loop(features, labels) -> float:
    """The original tool: per-pair L2 distances, a Python sort per query, AP per query."""
    n = len(features)
    aps = []
    for i in range(n):
        dists = [np.linalg.norm(features[i] - features[j]) for j in range(n)]
        order = [j for j in sorted(range(n), key=lambda j: dists[j]) if j != i]
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if labels[j] == labels[i]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def original_numpy_rows(features, labels) -> float:
    """The original loop with each query's distances computed as one NumPy expression."""
    n = len(features)
    aps = []
    for i in range(n):
        dists = np.linalg.norm(features - features[i], axis=1)
        order = [j for j in sorted(range(n), key=dists.__getitem__) if j != i]
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if labels[j] == labels[i]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def numpy_full_sort(features, labels) -> float:
    """Whole distance matrix, one stable argsort, AP from cumulative sums (N x N memory)."""
    sq = np.einsum("ij,ij->i", features, features)
    d = sq[None, :] - 2 * features @ features.T
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    relevant = labels[order] == labels[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, order.shape[1] + 1)
    ap = (relevant * hits / ranks).sum(axis=1) / relevant.sum(axis=1)
    return float(ap.mean())


def timed(fn, *args, repeats: int = 1) -> tuple[float, float, object]:
    """Best wall-clock seconds, best CPU seconds (all threads of the process) and the result."""
    best, best_cpu, value = math.inf, math.inf, None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu, value


def peak_rss(n: int, budget: str) -> dict:
    """Run evaluate at N in a fresh process; its peak RSS and time."""
    code = (
        "import resource, time, json, sys\n"
        "from bench.similarity import make_features\n"
        "from retrieval.metrics import evaluate\n"
        f"x, y = make_features({n})\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        f"r = evaluate(x, y, memory_budget={budget!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'map': r['map'], 'timing': r['timing'],\n"
        "  'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,\n"
        "  'rss_after_data_bytes': base * 1024}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000", help="'' with --rss_n: only the memory run")
    parser.add_argument("--original_max", type=int, default=5000)
    parser.add_argument("--full_sort_max", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss_n", type=int, default=0, help="also measure peak RSS at this N (0: skip)")
    parser.add_argument("--budget", default="3GiB")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes:  # --sizes '': only the memory run, added to the last results
        results = json.loads((RESULTS / "similarity.json").read_text())
        rss = peak_rss(args.rss_n, args.budget)
        results["peak_rss"] = {"n": args.rss_n, "budget": args.budget, **rss}
        print(f"N = {args.rss_n}: {rss['seconds']:.1f} s, peak RSS {rss['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(budget {args.budget}; blocks of {rss['timing']['block_rows']}), mAP {rss['map']:.4f}")
        (RESULTS / "similarity.json").write_text(json.dumps(results, indent=2))
        return
    results = {"machine": describe_machine(), "dim": DIM, "classes": CLASSES, "threads": os.cpu_count(),
               "load_average_at_start": os.getloadavg(), "sizes": {}}
    print(f"{results['machine']}; load average {os.getloadavg()[0]:.1f} (other processes share the cores)")
    header = f"{'N':>7} {'original':>10} {'orig rows':>10} {'full sort':>10} {'evaluate':>9} " \
             f"{'vs orig':>8} {'vs rows':>8} {'vs full':>8}"
    print(header)
    evaluate(*make_features(300))  # warm-up: imports, thread pool, BLAS
    for n in sizes:
        x, y = make_features(n)
        row: dict = {}
        t_ours, row["evaluate_cpu_s"], report = timed(lambda: evaluate(x, y, memory_budget=args.budget),
                                                      repeats=args.repeats)
        row["evaluate_s"] = t_ours
        row["map"] = report["map"]
        row["block_rows"] = report["timing"]["block_rows"]
        if n <= args.full_sort_max:
            row["numpy_full_sort_s"], row["numpy_full_sort_cpu_s"], m = timed(numpy_full_sort, x, y)
            assert abs(m - report["map"]) < 1e-6, (m, report["map"])
        if n <= args.original_max:
            row["original_numpy_rows_s"], row["original_numpy_rows_cpu_s"], m = timed(original_numpy_rows, x, y)
            assert abs(m - report["map"]) < 1e-6, (m, report["map"])
            row["original_s"], row["original_cpu_s"], m = timed(original_loop, x, y)
            assert abs(m - report["map"]) < 1e-6, (m, report["map"])
        for key, name in (("original_s", "speedup_vs_original"), ("original_numpy_rows_s", "speedup_vs_numpy_rows"),
                          ("numpy_full_sort_s", "speedup_vs_full_sort")):
            if key in row:
                row[name] = row[key] / t_ours
                row[name + "_cpu"] = row[key[:-2] + "_cpu_s"] / row["evaluate_cpu_s"]
        results["sizes"][n] = row

        def f(key, fmt="{:>10.3f}"):
            return fmt.format(row[key]) if key in row else " " * (len(fmt.format(1.0)) - 1) + "-"

        print(f"{n:>7} {f('original_s')} {f('original_numpy_rows_s')} {f('numpy_full_sort_s')} "
              f"{row['evaluate_s']:>9.3f} {f('speedup_vs_original', '{:>7.0f}x')} "
              f"{f('speedup_vs_numpy_rows', '{:>7.0f}x')} {f('speedup_vs_full_sort', '{:>7.1f}x')}   wall")
        print(f"{'':>7} {f('original_cpu_s')} {f('original_numpy_rows_cpu_s')} {f('numpy_full_sort_cpu_s')} "
              f"{row['evaluate_cpu_s']:>9.3f} {f('speedup_vs_original_cpu', '{:>7.0f}x')} "
              f"{f('speedup_vs_numpy_rows_cpu', '{:>7.0f}x')} {f('speedup_vs_full_sort_cpu', '{:>7.1f}x')}   CPU")
    ns = sorted(results["sizes"])
    growth = {f"{a}->{b}": math.log(results["sizes"][b]["evaluate_s"] / results["sizes"][a]["evaluate_s"])
              / math.log(b / a) for a, b in zip(ns[:-1], ns[1:])}
    results["evaluate_growth_exponent"] = growth
    print("evaluate time ~ N^p: " + ", ".join(f"{k}: p = {v:.2f}" for k, v in growth.items()))
    if args.rss_n:
        rss = peak_rss(args.rss_n, args.budget)
        results["peak_rss"] = {"n": args.rss_n, "budget": args.budget, **rss}
        print(f"N = {args.rss_n}: {rss['seconds']:.1f} s, peak RSS {rss['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(budget {args.budget}; blocks of {rss['timing']['block_rows']}), mAP {rss['map']:.4f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "similarity.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS / 'similarity.json'}")


if __name__ == "__main__":
    main()
