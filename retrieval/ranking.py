"""Blocked exact ranking: where every relevant gallery item falls in each query's ranking.

Queries are processed in blocks whose size follows a memory budget, so no N x N matrix is ever
held. For a block, distances to the whole gallery come from one matrix product (L2, cosine) or a
vectorised popcount of XOR (Hamming); the ranking never leaves the block:

- real-valued distances: each row is sorted once (values only, NumPy's SIMD sort, rows split
  over threads) and every relevant item's rank is found by binary search in its sorted row;
  equal distances are resolved exactly by the tie rule below.
- Hamming distances (small integers): one stable radix argsort per row gives the ranking.

Tie rule (TIE_RULE): items at equal distance are ranked by gallery index, lowest first, which is
what a stable sort gives, as in the original tool. In leave-one-out mode the query itself is
left out of its own ranking.

The output of a block (BlockRanks) holds, per query, the ascending 1-based ranks of its relevant
items, the indices of its `top_k` nearest items and the rank of its target item (instance mode);
retrieval.metrics turns those into scores.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np

METRICS = ("l2", "cosine", "hamming")
BACKENDS = ("auto", "numpy", "tensorflow")
TIE_RULE = ("equal distances are ordered by gallery index, lowest first (a stable sort, as in the "
            "original tool)")
# Bytes held per (query, gallery item) pair while a block is ranked, peak, by path.
PAIR_BYTES = {"float": 24, "hamming": 40}
_MAX_HAMMING_BITS = 0xFFFE
_FLOAT32_SAFE = 1e37  # squared norms above this could overflow a float32 distance


@dataclasses.dataclass
class BlockRanks:
    """Rankings of one block of queries.

    `query_index` (B,) are positions in the caller's query array; the relevant items of query b
    have ranks `ranks[offsets[b]:offsets[b+1]]` (1-based, ascending; `num_relevant[b]` of them);
    `top` (B, top_k) are gallery indices in rank order and `top_distance` their distances;
    `target_rank` (B,) is the 1-based rank of each query's target (0 where it has none).
    """

    query_index: np.ndarray
    num_relevant: np.ndarray
    ranks: np.ndarray
    offsets: np.ndarray
    top: np.ndarray
    top_distance: np.ndarray
    target_rank: np.ndarray


def pack_codes(values) -> np.ndarray:
    """Binary codes from real values: bit = value > 0, packed 8 per byte (np.packbits, big-endian).

    (N, D) real -> (N, ceil(D / 8)) uint8; padding bits are 0 and so never change a distance.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"pack_codes expects a 2-D array (items x bits). Received shape {values.shape}.")
    return np.packbits(values > 0, axis=1)


def hamming_distances(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(B, G) uint16 Hamming distances between packed uint8 codes: popcount of XOR, 64 bits at a time."""
    return hamming_distances_words(_as_words(queries), _as_words(gallery))


def _as_words(codes: np.ndarray) -> np.ndarray:
    """Packed uint8 codes viewed as uint64 words (zero-padded: XOR of padding is 0)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    pad = (-codes.shape[1]) % 8
    if pad:
        codes = np.concatenate([codes, np.zeros((len(codes), pad), np.uint8)], axis=1)
    return codes.view(np.uint64)


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 keys in the same order (in place on the buffer): -0.0 becomes +0.0 first."""
    values += np.float32(0.0)
    keys = values.view(np.uint32)
    sign = keys >> np.uint32(31)
    np.negative(sign, out=sign)  # 0xFFFFFFFF for negatives, 0 otherwise
    sign |= np.uint32(0x80000000)
    keys ^= sign
    return keys


def key_to_float(keys: np.ndarray) -> np.ndarray:
    """Inverse of sortable_keys."""
    keys = np.asarray(keys, dtype=np.uint32)
    top = keys >> np.uint32(31)
    mask = np.where(top == 1, np.uint32(0x80000000), np.uint32(0xFFFFFFFF))
    return (keys ^ mask).view(np.float32)


class Ranker:
    """Ranks blocks of queries against one gallery under one metric.

    `queries`/`gallery` are validated arrays (float32, or packed uint8 for Hamming). In
    leave-one-out mode pass `gallery=None`: the queries are the gallery and each query's own
    index is left out of its ranking.
    """

    def __init__(self, queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray | None,
                 gallery_labels: np.ndarray | None, *, metric: str = "l2", backend: str = "auto",
                 threads: int | None = None):
        if metric not in METRICS:
            raise ValueError(f"Invalid value for argument `metric`. Received: {metric!r}. "
                             f"Expected one of {', '.join(METRICS)}.")
        if backend not in BACKENDS:
            raise ValueError(f"Invalid value for argument `backend`. Received: {backend!r}. "
                             f"Expected one of {', '.join(BACKENDS)}.")
        self.metric = metric
        self.leave_one_out = gallery is None
        self.queries = queries
        self.query_labels = np.asarray(query_labels, dtype=np.int64)
        self.gallery = queries if gallery is None else gallery
        self.gallery_labels = self.query_labels if gallery is None else np.asarray(gallery_labels, np.int64)
        if self.queries.shape[1] != self.gallery.shape[1]:
            raise ValueError(
                f"queries have {self.queries.shape[1]} dimensions but the gallery has "
                f"{self.gallery.shape[1]}; they must match.")
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.backend = resolve_backend(backend) if metric != "hamming" else "numpy"
        if metric == "hamming":
            if self.gallery.shape[1] * 8 > _MAX_HAMMING_BITS:
                raise ValueError(f"codes of {self.gallery.shape[1] * 8} bits are longer than the "
                                 f"{_MAX_HAMMING_BITS} bits supported.")
            self._q_words = _as_words(self.queries)
            self._g_words = self._q_words if self.leave_one_out else _as_words(self.gallery)
            # Radix sort is fastest on uint8; the query itself gets the type's largest value.
            self._dtype = np.uint8 if self.gallery.shape[1] * 8 < 255 else np.uint16
        else:
            self._prepare_float()
        # Relevant gallery indices of each class, ascending.
        order = np.argsort(self.gallery_labels, kind="stable")
        classes, starts, counts = np.unique(self.gallery_labels[order], return_index=True, return_counts=True)
        self.class_members = {int(c): order[s:s + n] for c, s, n in zip(classes, starts, counts)}

    @property
    def path(self) -> str:
        return "hamming" if self.metric == "hamming" else "float"

    def fixed_bytes(self) -> int:
        """Bytes held for the whole run besides the blocks (normalised copies, norms, words)."""
        if self.metric == "hamming":
            return self._q_words.nbytes + (0 if self.leave_one_out else self._g_words.nbytes)
        extra = 0
        if self.metric == "cosine":
            extra += self._q.nbytes + (0 if self.leave_one_out else self._g.nbytes)
        return extra + 8 * (len(self.queries) + len(self.gallery))

    def _prepare_float(self) -> None:
        q = self.queries
        g = self.gallery
        if self.metric == "cosine":
            self._q = _normalise(q, "queries")
            self._g = self._q if self.leave_one_out else _normalise(g, "gallery")
            self._q_sq = self._g_sq = None
        else:
            self._q, self._g = q, g
            self._q_sq = np.einsum("ij,ij->i", q, q, dtype=np.float32)
            self._g_sq = self._q_sq if self.leave_one_out else np.einsum("ij,ij->i", g, g, dtype=np.float32)
            largest = max(float(self._q_sq.max()), float(self._g_sq.max()))
            if not np.isfinite(largest) or largest > _FLOAT32_SAFE:
                raise ValueError(
                    f"features are too large for float32 L2 distances (largest squared norm "
                    f"{largest:.3g}); rescale them below {_FLOAT32_SAFE:.0e}.")
        if self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_tensor_float_32_execution(False)
            self._tf = tf
            self._tf_g = tf.constant(self._g)
            self._tf_g_sq = None if self._g_sq is None else tf.constant(self._g_sq)

    # ----------------------------------------------------------------------------------------
    def rank_block(self, query_index: np.ndarray, top_k: int, targets: np.ndarray | None = None) -> BlockRanks:
        """Rank the queries at `query_index` (any order; few distinct labels make fewer segments)."""
        query_index = np.asarray(query_index, dtype=np.int64)
        if self.metric == "hamming":
            return self._rank_hamming(query_index, top_k, targets)
        return self._rank_float(query_index, top_k, targets)

    def _float_distances(self, query_index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Ranking values (B, G) float32: |g|^2 - 2 q.g for L2, -cos for cosine; the query itself
        +inf in leave-one-out mode (and, on the TensorFlow backend, the rows already sorted).

        Scaling q by -2 (or -1) before the product is exact, so it costs no pass over (B, G). A
        leave-one-out block of every item in order is x @ x.T, which NumPy hands to BLAS syrk
        (one triangle, mirrored); tiling the triangle by hand cost more than it saved.
        """
        scale = np.float32(-2.0) if self._g_sq is not None else np.float32(-1.0)
        if self.backend == "tensorflow":
            tf = self._tf
            with tf.device(_tf_device(tf)):
                values = tf.linalg.matmul(tf.constant(self._q[query_index] * scale), self._tf_g, transpose_b=True)
                if self._g_sq is not None:
                    values = values + self._tf_g_sq[None, :]
                if self.leave_one_out:
                    idx = tf.stack([tf.range(len(query_index), dtype=tf.int64), tf.constant(query_index)], 1)
                    values = tf.tensor_scatter_nd_update(
                        values, idx, tf.fill([len(query_index)], np.float32(np.inf)))
                ordered = tf.sort(values, axis=1)
            return values.numpy(), ordered.numpy()
        if self.leave_one_out and len(query_index) == len(self._g) and np.array_equal(
                query_index, np.arange(len(self._g))):
            values = self._g @ self._g.T  # NumPy computes x @ x.T with BLAS syrk: ~40% less work
            values *= scale
        else:
            values = np.matmul(self._q[query_index] * scale, self._g.T)
        if self._g_sq is not None:
            values += self._g_sq[None, :]
        if self.leave_one_out:
            values[np.arange(len(query_index)), query_index] = np.inf
        return values, None

    def _distance_from_value(self, values: np.ndarray, query_index: np.ndarray) -> np.ndarray:
        """True distances from ranking values: Euclidean for L2, 1 - cos for cosine."""
        values = values.astype(np.float64)
        if self.metric == "l2":
            return np.sqrt(np.maximum(values + self._q_sq[query_index, None].astype(np.float64), 0.0))
        return 1.0 + values

    def _sort_rows(self, values: np.ndarray) -> np.ndarray:
        """A sorted copy of each row (NumPy's SIMD sort), rows split over the worker threads."""
        out = np.empty_like(values)
        pool = _pool(self.threads)

        def sort(a: int, b: int) -> None:
            out[a:b] = values[a:b]
            out[a:b].sort(axis=1)

        if pool is None or len(values) < 2 * self.threads:
            sort(0, len(values))
            return out
        bounds = np.linspace(0, len(values), self.threads + 1).astype(int)
        list(pool.map(sort, bounds[:-1], bounds[1:]))
        return out

    def _argsort_rows(self, distances: np.ndarray) -> np.ndarray:
        """Stable argsort of each row (radix sort for these small integers), rows over threads."""
        out = np.empty(distances.shape, np.int64)
        pool = _pool(self.threads)

        def argsort(a: int, b: int) -> None:
            out[a:b] = np.argsort(distances[a:b], axis=1, kind="stable")

        if pool is None or len(distances) < 2 * self.threads:
            argsort(0, len(distances))
            return out
        bounds = np.linspace(0, len(distances), self.threads + 1).astype(int)
        list(pool.map(argsort, bounds[:-1], bounds[1:]))
        return out

    def _rank_float(self, query_index, top_k, targets) -> BlockRanks:
        values, ordered = self._float_distances(query_index)
        if ordered is None:
            ordered = self._sort_rows(values)
        labels = self.query_labels[query_index]
        num = len(query_index)
        members, num_relevant = self._member_table(labels)
        # Chunks of rows keep the (rows x largest class) temporaries near 8 bytes per pair.
        chunk = max(1, (num * values.shape[1]) // max(1, members.shape[1] * 9))
        pieces = []
        for a in range(0, num, chunk):
            rows = np.arange(a, min(a + chunk, num))
            ranks = self._relevant_ranks(values, ordered, rows, members[rows], num_relevant[rows])
            pieces.append(ranks[np.arange(ranks.shape[1])[None, :] < num_relevant[rows, None]])
        offsets = np.zeros(num + 1, np.int64)
        np.cumsum(num_relevant, out=offsets[1:])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        top, top_values = _top_k(values, ordered, top_k)
        top_distance = self._distance_from_value(top_values, query_index)
        target_rank = _target_ranks(values, targets)
        return BlockRanks(query_index, num_relevant, flat, offsets, top, top_distance, target_rank)

    def _member_table(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, R_max) gallery indices of each row's relevant items, padded with -1, and how many
        each row ranks (its class size, less itself in leave-one-out mode)."""
        classes, inverse = np.unique(labels, return_inverse=True)
        lists = [self.class_members.get(int(c), np.zeros(0, np.int64)) for c in classes]
        width = max((len(m) for m in lists), default=0)
        table = np.full((len(classes), max(width, 1)), -1, np.int64)
        for i, m in enumerate(lists):
            table[i, :len(m)] = m
        sizes = np.array([len(m) for m in lists], np.int64)[inverse]
        if self.leave_one_out:
            sizes = np.maximum(sizes - 1, 0)
        return table[inverse], sizes

    def _relevant_ranks(self, values, ordered, rows, members, counts) -> np.ndarray:
        """(rows, R_max) ascending ranks of each row's relevant items (the first `counts` of a row
        are meaningful; padding and the query itself sort last as +inf).

        A relevant item's rank is 1 + the number of items below its distance in the sorted row
        (one binary search) + the items at its distance that come first by the tie rule: the
        relevant ones among them are known; non-relevant ones at the same distance are rare with
        real-valued distances and are counted in the row itself (_tied_before).
        """
        sub = values[rows[:, None], np.maximum(members, 0)]
        sub[members < 0] = np.inf
        order = np.argsort(sub, axis=1, kind="stable")
        sub = np.take_along_axis(sub, order, axis=1)
        columns = np.take_along_axis(members, order, axis=1)
        width = sub.shape[1]
        # side='right' is side='left' of the next float up: one search per row finds both
        probes = np.concatenate([sub, np.nextafter(sub, np.float32(np.inf))], axis=1)
        found = np.empty(probes.shape, np.int64)
        for i, row in enumerate(rows):
            found[i] = ordered[row].searchsorted(probes[i])
        left, right = found[:, :width], found[:, width:]
        run_start, run_stop = _runs(sub)
        position = np.arange(width)[None, :]
        ranks = left + (position - run_start) + 1
        # a non-relevant item shares the distance of a (meaningful) relevant one
        tied = ((right - left) > (run_stop - run_start)) & (position < counts[:, None])
        for i in np.flatnonzero(tied.any(axis=1)):
            which = np.flatnonzero(tied[i])
            ranks[i, which] = left[i, which] + 1 + _tied_before(values[rows[i]], sub[i, which], columns[i, which])
        return ranks

    def _rank_hamming(self, query_index, top_k, targets) -> BlockRanks:
        distances = hamming_distances_words(self._q_words[query_index], self._g_words)
        if self._dtype != distances.dtype:
            distances = distances.astype(self._dtype)
        if self.leave_one_out:
            distances[np.arange(len(query_index)), query_index] = np.iinfo(self._dtype).max
        order = self._argsort_rows(distances)
        labels = self.query_labels[query_index]
        relevant = self.gallery_labels[order] == labels[:, None]
        if self.leave_one_out:
            relevant[:, -1] = False
        rows, cols = np.nonzero(relevant)
        num_relevant = np.bincount(rows, minlength=len(query_index)).astype(np.int64)
        offsets = np.zeros(len(query_index) + 1, np.int64)
        np.cumsum(num_relevant, out=offsets[1:])
        top = order[:, :top_k]
        top_distance = np.take_along_axis(distances, top, axis=1).astype(np.float64)
        target_rank = np.zeros(len(query_index), np.int64)
        if targets is not None:
            has = targets >= 0
            target_rank[has] = np.argmax(order[has] == targets[has, None], axis=1) + 1
        return BlockRanks(query_index, num_relevant, cols.astype(np.int64) + 1, offsets, top,
                          top_distance, target_rank)

    def close(self) -> None:
        """Release the TensorFlow copy of the gallery (the thread pool is shared and kept)."""
        self._tf_g = self._tf_g_sq = None


def hamming_distances_words(q_words: np.ndarray, g_words: np.ndarray) -> np.ndarray:
    """(B, G) uint16 Hamming distances between codes already viewed as uint64 words."""
    out = np.zeros((len(q_words), len(g_words)), dtype=np.uint16)
    for w in range(q_words.shape[1]):
        out += np.bitwise_count(q_words[:, w, None] ^ g_words[None, :, w])
    return out


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise ValueError(f"cosine distance is undefined for zero vectors: {name} rows "
                         f"{zero[:5].tolist()} ({len(zero)} in all) are all zeros.")
    return (x / norms).astype(np.float32)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of sorted values: the start and stop (exclusive) of each element's run of equals."""
    n = values.shape[1]
    position = np.broadcast_to(np.arange(n), values.shape)
    new = np.ones(values.shape, bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    start = np.maximum.accumulate(np.where(new, position, 0), axis=1)
    last = np.ones(values.shape, bool)
    last[:, :-1] = new[:, 1:]
    stop = np.minimum.accumulate(np.where(last, position, n - 1)[:, ::-1], axis=1)[:, ::-1] + 1
    return start, stop


def _tied_before(row: np.ndarray, tied: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """For each value tied[j] (at gallery index columns[j]): how many items of `row` have exactly
    that value and a lower gallery index.

    Items with a tied value are found through a 65,536-entry table on the low 16 bits of their
    float32 bits (one gather over the row, no sort), then checked exactly.
    """
    bits = row.view(np.uint32)
    wanted = tied.astype(np.float32)
    if np.any(wanted == 0):  # -0.0 and +0.0 are equal distances with different bits
        wanted = np.concatenate([wanted, np.float32([0.0, -0.0])])
    low = wanted.view(np.uint32) & np.uint32(0xFFFF)
    table = np.zeros(1 << 16, bool)
    table[low] = True
    hits = np.flatnonzero(table[bits & np.uint32(0xFFFF)])
    hits = hits[np.isin(row[hits], wanted)]
    keys = np.sort((sortable_keys(row[hits].copy()).astype(np.uint64) << np.uint64(32)) | hits.astype(np.uint64))
    tied_keys = sortable_keys(tied.astype(np.float32)).astype(np.uint64) << np.uint64(32)
    return np.searchsorted(keys, tied_keys | columns.astype(np.uint64)) - np.searchsorted(keys, tied_keys)


def _top_k(values: np.ndarray, ordered: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `top_k` nearest gallery indices per row under the tie rule, and their values."""
    num = len(values)
    if top_k == 0:
        return np.zeros((num, 0), np.int64), np.zeros((num, 0), np.float32)
    threshold = ordered[:, top_k - 1]
    rows, cols = np.divmod(np.flatnonzero(values <= threshold[:, None]), values.shape[1])  # faster than 2-D nonzero
    composite = sortable_keys(values[rows, cols]).astype(np.uint64) << np.uint64(32)
    composite |= cols.astype(np.uint64)
    if len(rows) == num * top_k:  # no tie at the threshold: exactly top_k candidates a row
        composite = np.sort(composite.reshape(num, top_k), axis=1)
    else:
        composite = composite[np.lexsort((composite, rows))]
        counts = np.bincount(rows, minlength=num)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        composite = composite[starts[:, None] + np.arange(top_k)[None, :]]
    top = (composite & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return top, key_to_float((composite >> np.uint64(32)).astype(np.uint32))


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor | None:
    """One shared pool per thread count (sorting releases the GIL)."""
    if threads <= 1:
        return None
    if threads not in _POOLS:
        _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rank")
    return _POOLS[threads]


def _target_ranks(keys: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """1-based rank of each row's target gallery index under the tie rule (0 where none);
    `keys` are the rows' distances or ranking values."""
    ranks = np.zeros(len(keys), np.int64)
    if targets is None:
        return ranks
    rows = np.flatnonzero(targets >= 0)
    if len(rows) == 0:
        return ranks
    sub = keys[rows]
    target_keys = sub[np.arange(len(rows)), targets[rows]][:, None]
    before = (sub < target_keys).sum(axis=1)
    index = np.arange(keys.shape[1])[None, :]
    before += ((sub == target_keys) & (index < targets[rows, None])).sum(axis=1)
    ranks[rows] = before + 1
    return ranks


def resolve_backend(backend: str) -> str:
    """'auto' is TensorFlow when an NVIDIA GPU is present and TensorFlow is installed, else NumPy."""
    if backend != "auto":
        return backend
    import importlib.util

    if os.path.exists("/dev/nvidia0") and importlib.util.find_spec("tensorflow") is not None:
        return "tensorflow"
    return "numpy"


def _tf_device(tf) -> str:
    return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
