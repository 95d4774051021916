"""Strokes -> anti-aliased pixels inside the TensorFlow graph: `data_prep.raster`'s geometry, batched.

`rasterize_batch(points, stroke_ids, num_points, ...)` draws a padded batch of drawings into
[B, H, W, C] (C = 1, or 3 with time channels) with the recipe of `data_prep.raster.rasterize`:
the same `layout` (normalize "auto" / "always" / "never", FIT_TOLERANCE), the same device
transform (line width and padding in frame units, centring offset) and the same time channels
(channel 1 stroke order, later strokes over earlier ones; channel 2 each segment on its own in
the grey of its mean tau). No Python loop per drawing; `tf.function(jit_compile=True)` works.

Inputs (the padded form):
  points      [B, P, 2 | 3] float32: x, y (and t) of every point, strokes concatenated in order;
  stroke_ids  [B, P] int: a change of id between consecutive points starts a new stroke (any
              ids that differ between neighbouring strokes do);
  num_points  [B] int: the valid points of each drawing; the rest of the row is padding.
`pad_drawings` (numpy stroke lists, for tests and serving) and `pad_records` (the records'
`strokes/points` + `strokes/lengths`, in TensorFlow) build it.

Drawing: per segment, pixel coverage = clip(half_width_px - distance + 0.5, 0, 1), the exact
1-D box-filter coverage of a line at least a pixel wide, measured from the pixel centre to the
segment (a round-capped capsule; a lone point is a zero-length segment, a round dot). A stroke
is the union (maximum) of its segments; strokes are composited source-over, 1 - prod(1 - c).
Two renderers draw it (`method`; the default "auto" culls the plain image under XLA and is dense
otherwise: in a graph without XLA the culling loop's extra iterations cost more than they save):
  dense (`_draw`; also every image with time channels): segments visited in order in a
  `tf.while_loop` over chunks of CHUNK segments, unrolled inside a chunk (XLA fuses a chunk into one
  pass over the pixels); each segment is evaluated at every pixel: work B * H * W * points. The
  state is four [B, H, W] float32 images whatever the number of points: about (8 + 2 C) * B * H * W
  * 4 bytes beyond the inputs. Measured: 64 drawings of 1,000 points at 128 px with time channels
  (state 17 MB) raised the peak RSS by 54 MB under XLA (compilation included) and by 76 MB in a
  graph without XLA.
  culled (`_draw_culled`, plain image only): each segment is clipped to the image and cut into
  pieces at most (2 + BAND_PIECE) reach - 2.5 px tall, and a piece is evaluated only on a band of K
  whole rows around it (K = ceil((2 + BAND_PIECE) reach) + 2; 10 of 28 rows at 28 px, 16 of 64, 26
  of 128), with its segment's own parameters, so every pixel gets the dense renderer's value. Per
  pixel the state keeps the image, the held stroke's coverage and that stroke's index: a later
  stroke's piece composites the held stroke first, so strokes are composited once and in order, as
  in the dense loop (the end dot of a stroke of two or more points, inside its last segment's cap,
  is skipped). Pieces go one per drawing per step (CULLED_CHUNK per loop iteration), each step a
  gather and a scatter of B * K rows. Work is B * K * W * pieces; state 3 * B * H * W float32 plus a
  [B, points, 9] table. Same images as dense to float rounding: on real drawings at most 1 grey
  level, on 1 pixel in 17 million at 128 px (tests/test_raster_tf.py bounds it at 1 in 10,000).
Both loops stop at the batch's longest drawing, so padding costs nothing. Speed on 2 CPU cores under
XLA (BENCHMARKS.md): culled draws the plain image 1.0-1.1x as fast as dense at 28 px, 1.3x at
64 and 1.8-2.8x at 128; dense draws it at 0.7-0.9x skia's rate at 28 px, about 0.5x at 64 and 0.08x at
128 (1.5-1.8x, 0.85-0.9x and 0.16-0.22x with time channels). Gather and scatter cost XLA on the CPU
several times a fused dense pixel, and at 28 px a band is a third of the image, so culling gains
little there; it is meant for the graph and the accelerator (not measured on one).

Bad input never raises inside the graph: num_points is clipped to 0..P; points with a non-finite
coordinate (or t) are dropped, as if absent (`non_finite_points` counts them); a drawing left
with no points is a black image; coordinates are clamped to +-1e18 and device coordinates to
+-CLAMP_PX so that absurd values cannot overflow (they draw something, never nan). The padding
helpers keep the first `max_points` (MAX_POINTS) points of a drawing and return how many they cut.

Public: `rasterize_batch` (uint8, or float32 on 0..255 with dtype=tf.float32; called eagerly it
runs as one cached graph), `rasterize_drawings` (numpy in, numpy out), `pad_drawings`,
`pad_records`, `StrokeBatch`, `non_finite_points`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from data_prep.raster import (
    FIT_TOLERANCE,
    ORDER_STEP,
    ORDER_STEPS,
    TIME_SPAN,
    TIME_START,
    _check_options,
)

MAX_POINTS = 2048  # points kept per drawing by the padding helpers (largest real raw drawing: ~1,200)
CHUNK = 8  # segments per while_loop iteration, unrolled (one fused pixel loop under XLA)
CLAMP_PX = 2.0**20  # |device coordinate| bound: far outside any image, far inside float32 range
BAND_PIECE = 4.0  # culling renderer: its pieces' height, in units of the line's reach (half width + 0.5 px)
CULLED_CHUNK = 2  # and its pieces per loop iteration (a longer unrolled chain is slower)
DEFAULT_METHOD = "auto"  # rasterize_batch's method when none is given (benchmarks switch it)


class StrokeBatch(NamedTuple):
    """The padded form of a batch of drawings, and how many points the cap cut from each."""

    points: np.ndarray | tf.Tensor  # [B, P, dims] float32
    stroke_ids: np.ndarray | tf.Tensor  # [B, P] int32
    num_points: np.ndarray | tf.Tensor  # [B] int32
    truncated: np.ndarray | tf.Tensor  # [B] int32: points beyond max_points, not drawn


def pad_drawings(drawings: Sequence[Sequence], max_points: int = MAX_POINTS, dims: int | None = None) -> StrokeBatch:
    """Numpy strokes (lists of (points, 2 | 3) arrays, Drawing.strokes) as a StrokeBatch.

    P is the longest drawing's point count after the cap (at least 1); an empty drawing gets no
    points. `dims` defaults to the first stroke's column count (2 if there is none); strokes with
    more columns are cut to `dims`, strokes with fewer raise ValueError.
    """
    if dims is None:
        dims = next((np.shape(s)[1] for d in drawings for s in d if len(s)), 2)
    flat = []
    for i, strokes in enumerate(drawings):
        arrays = [np.asarray(s, np.float32) for s in strokes]
        arrays = [a.reshape(0, dims) if a.size == 0 else a for a in arrays]
        if any(a.ndim != 2 or a.shape[1] < dims for a in arrays):
            raise ValueError(f"drawing {i}: strokes of shapes {[a.shape for a in arrays]}, "
                             f"expected (points, {dims} or more).")
        ids = [np.full(len(a), k, np.int32) for k, a in enumerate(arrays)]
        pts = np.concatenate([a[:, :dims] for a in arrays]) if arrays else np.zeros((0, dims), np.float32)
        flat.append((pts, np.concatenate(ids) if ids else np.zeros(0, np.int32)))
    counts = np.array([len(p) for p, _ in flat], np.int64)
    kept = np.minimum(counts, max_points)
    width = max(1, int(kept.max(initial=0)))
    points = np.zeros((len(flat), width, dims), np.float32)
    stroke_ids = np.full((len(flat), width), -1, np.int32)
    for i, ((pts, ids), n) in enumerate(zip(flat, kept)):
        points[i, :n], stroke_ids[i, :n] = pts[:n], ids[:n]
    return StrokeBatch(points, stroke_ids, kept.astype(np.int32), (counts - kept).astype(np.int32))


def _ragged(values: tf.RaggedTensor | tf.SparseTensor) -> tf.RaggedTensor:
    """A [B, None] feature as ragged rows: `tf.io.parse_example` gives VarLenFeatures as SparseTensors."""
    return tf.RaggedTensor.from_sparse(values) if isinstance(values, tf.SparseTensor) else values


def pad_records(points: tf.RaggedTensor | tf.SparseTensor, lengths: tf.RaggedTensor | tf.SparseTensor, dims: int,
                max_points: int = MAX_POINTS, fixed: bool = True) -> StrokeBatch:
    """Parsed records' `strokes/points` [B, None] (flat, row-major) and `strokes/lengths` [B, None] as a StrokeBatch.

    Ragged or sparse (as `tf.io.parse_example` returns them). `dims` (2 or 3) is the data set's
    `strokes/dims`; P is max_points (fixed, so batches keep one shape for XLA), or with fixed=False
    the batch's longest drawing within it (less to pad); points beyond max_points are cut and counted.
    """
    points, lengths = _ragged(points), _ragged(lengths)
    points = tf.RaggedTensor.from_row_lengths(
        tf.reshape(tf.cast(points.flat_values, tf.float32), [-1, dims]), points.row_lengths() // dims)
    lengths = tf.cast(lengths, tf.int64)
    stroke_of_point = tf.repeat(tf.range(tf.size(lengths.flat_values, tf.int64)), lengths.flat_values)
    stroke_ids = tf.RaggedTensor.from_row_lengths(tf.cast(stroke_of_point, tf.int32), points.row_lengths())
    counts = tf.cast(points.row_lengths(), tf.int32)
    kept = tf.minimum(counts, max_points)
    batch = tf.shape(counts, tf.int64)[0]
    width = tf.constant(max_points, tf.int64) if fixed else tf.cast(tf.reduce_max(tf.concat([kept, [1]], 0)), tf.int64)
    return StrokeBatch(points.to_tensor(0.0, shape=tf.stack([batch, width, dims])),
                       stroke_ids.to_tensor(-1, shape=tf.stack([batch, width])), kept, counts - kept)


def _valid_points(points: tf.Tensor, num_points: tf.Tensor) -> tf.Tensor:
    """[B, P] bool: within the drawing's num_points (clipped to 0..P) and every coordinate finite."""
    width = tf.shape(points)[1]
    n = tf.clip_by_value(tf.cast(num_points, tf.int32), 0, width)
    return (tf.range(width)[None, :] < n[:, None]) & tf.reduce_all(tf.math.is_finite(points), axis=-1)


def non_finite_points(points: tf.Tensor, num_points: tf.Tensor) -> tf.Tensor:
    """[B] int32: the points of each drawing that `rasterize_batch` drops for a nan or inf coordinate."""
    points = tf.cast(tf.convert_to_tensor(points), tf.float32)
    width = tf.shape(points)[1]
    inside = tf.range(width)[None, :] < tf.clip_by_value(tf.cast(num_points, tf.int32), 0, width)[:, None]
    return tf.reduce_sum(tf.cast(inside & ~_valid_points(points, num_points), tf.int32), axis=1)


def _prefix_sum(x: tf.Tensor) -> tf.Tensor:
    """Inclusive cumsum along axis 1 by log2(P) shifted adds: XLA's cumsum is quadratic in P on the CPU."""
    width = x.shape[1]
    if width is None:
        return tf.cumsum(x, axis=1)
    shift = 1
    while shift < width:
        x = x + tf.pad(x[:, :-shift], [[0, 0], [shift, 0]])
        shift *= 2
    return x


def _compact(points: tf.Tensor, stroke_ids: tf.Tensor, valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The valid points moved to the front of each row, in order: dropped points are as if absent.

    A scatter to positions counted by cumsum (argsort lowers to a sort that compiles slowly).
    """
    ones = tf.cast(valid, tf.int32)
    count = tf.reduce_sum(ones, axis=1, keepdims=True)
    before = _prefix_sum(ones)
    target = tf.where(valid, before - 1, count + tf.range(tf.shape(points)[1])[None, :] - before)
    rows = tf.broadcast_to(tf.range(tf.shape(points)[0])[:, None], tf.shape(target))
    index = tf.stack([rows, target], axis=-1)
    kept = tf.range(tf.shape(points)[1])[None, :] < count
    moved = tf.scatter_nd(index, tf.where(valid[..., None], points, 0.0), tf.shape(points))
    return moved, tf.scatter_nd(index, tf.cast(stroke_ids, tf.int32), tf.shape(target)), kept


def _layout(xy: tf.Tensor, valid: tf.Tensor, frame: int, normalize: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(xy in frame units [B, P, 2], centring offset [B, 2]): `raster.layout`'s fit rule, per drawing."""
    inside = valid[..., None]
    lo = tf.reduce_min(tf.where(inside, xy, np.inf), axis=1)
    hi = tf.reduce_max(tf.where(inside, xy, -np.inf), axis=1)
    some = tf.reduce_any(valid, axis=1)[:, None]
    lo, hi = tf.where(some, lo, 0.0), tf.where(some, hi, 0.0)
    tol = FIT_TOLERANCE * frame
    top = tf.reduce_max(hi, axis=1)
    fitted = ((tf.reduce_min(lo, axis=1) >= 0) & (tf.reduce_max(lo, axis=1) <= tol)
              & (top >= frame - 1 - tol) & (top <= frame - 1))
    fit = {"always": tf.ones_like(fitted), "never": tf.zeros_like(fitted), "auto": ~fitted}[normalize]
    span = tf.reduce_max(hi - lo, axis=1)
    k = tf.where(span > 0, tf.math.divide_no_nan(tf.constant(frame - 1.0), span), 1.0)[:, None]
    xy = tf.where(fit[:, None, None], (xy - lo[:, None]) * k[..., None], xy)
    hi = tf.where(fit[:, None], (hi - lo) * k, hi)
    return xy, (frame - hi) / 2


def _point_times(points: tf.Tensor, valid: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """tau [B, P] as `raster.point_times`: normalised t when given and varying, else index / (N - 1)."""
    index = tf.cast(tf.range(tf.shape(points)[1]), tf.float32)[None, :]
    by_index = tf.math.divide_no_nan(index, tf.cast(count[:, None] - 1, tf.float32))
    if points.shape[-1] != 3:
        return by_index
    t = points[..., 2]
    t0 = tf.reduce_min(tf.where(valid, t, np.inf), axis=1, keepdims=True)
    t1 = tf.reduce_max(tf.where(valid, t, -np.inf), axis=1, keepdims=True)
    varies = tf.math.is_finite(t1 - t0) & (t1 > t0)
    return tf.where(varies, tf.math.divide_no_nan(t - tf.where(varies, t0, 0.0), tf.where(varies, t1 - t0, 1.0)),
                    by_index)


def _flag(mask: tf.Tensor) -> tf.Tensor:
    """A boolean mask as 0.0 / 1.0, to multiply coverages by."""
    return tf.cast(mask, tf.float32)


def _segments(points: tf.Tensor, stroke_ids: tf.Tensor, valid: tf.Tensor, xy: tf.Tensor) -> tf.Tensor:
    """[B, P, 10] per point: its segment (a, b - a, 1 / |b - a|^2), whether it draws in the strokes
    image, whether it ends its stroke, its stroke's order value, whether and in which grey it draws
    in the time channel. Segment i runs to point i + 1 of the same stroke, else it is a dot at i."""
    nxt = tf.concat([valid[:, 1:], tf.zeros_like(valid[:, :1])], axis=1)
    same_next = valid & nxt & tf.concat([tf.equal(stroke_ids[:, :-1], stroke_ids[:, 1:]),
                                         tf.zeros_like(valid[:, :1])], axis=1)
    same_prev = tf.concat([tf.zeros_like(valid[:, :1]), same_next[:, :-1]], axis=1)
    b = tf.where(same_next[..., None], tf.concat([xy[:, 1:], xy[:, -1:]], axis=1), xy)
    d = b - xy
    length2 = tf.reduce_sum(d * d, axis=-1)
    rank = _prefix_sum(tf.cast(valid & ~same_prev, tf.int32)) - 1
    order = tf.cast(255 - tf.minimum(rank, ORDER_STEPS) * ORDER_STEP, tf.float32) / 255
    tau = _point_times(points, valid, tf.reduce_sum(tf.cast(valid, tf.int32), axis=1))
    tau_b = tf.where(same_next, tf.concat([tau[:, 1:], tau[:, -1:]], axis=1), tau)
    grey = tf.round(TIME_START - TIME_SPAN * (tau + tau_b) / 2) / 255
    return tf.stack([xy[..., 0], xy[..., 1], d[..., 0], d[..., 1], tf.math.divide_no_nan(1.0, length2),
                     _flag(valid), _flag(valid & ~same_next), order, _flag(valid & (same_next | ~same_prev)), grey,
                     tf.cast(rank, tf.float32)], axis=-1)


def _coverage(gx: tf.Tensor, gy: tf.Tensor, seg: list[tf.Tensor], reach: float) -> tf.Tensor:
    """[B, H, W] coverage of one capsule: clip(half width + 0.5 - distance to the segment, 0, 1)."""
    ax, ay, dx, dy, inv = seg[:5]
    px, py = gx - ax, gy - ay
    t = tf.clip_by_value((px * dx + py * dy) * inv, 0.0, 1.0)
    ex, ey = px - t * dx, py - t * dy
    return tf.clip_by_value(reach - tf.sqrt(ex * ex + ey * ey), 0.0, 1.0)


def _draw(segments: tf.Tensor, count: tf.Tensor, image_size: int, half_width: float, time_channels: bool,
          chunk: int) -> tf.Tensor:
    """[B, H, W, C] in 0..1: the segments visited in order, `chunk` per loop iteration (unrolled)."""
    batch = tf.shape(segments)[0]
    segments = tf.pad(segments, [[0, 0], [0, chunk], [0, 0]])
    centres = tf.range(image_size, dtype=tf.float32) + 0.5
    gx, gy = centres[None, None, :], centres[None, :, None]
    reach = half_width + 0.5
    chunks = (tf.reduce_max(count) + chunk - 1) // chunk
    blank = tf.zeros(tf.stack([batch, image_size, image_size]), tf.float32)

    def body(i, stroke, ink, order, time):
        part = tf.slice(segments, tf.stack([0, i * chunk, 0]), tf.stack([batch, chunk, segments.shape[-1]]))
        for k in range(chunk):
            seg = tf.unstack(part[:, k, :, None, None], axis=1)
            _, _, _, _, _, draws, ends, value, timed, grey = seg[:10]
            c = _coverage(gx, gy, seg, reach)
            stroke = tf.maximum(stroke, c * draws)
            done = stroke * ends
            ink = ink + done * (1 - ink)
            stroke = stroke * (1 - ends)
            if time_channels:
                order = order + done * (value - order)
                c = c * timed
                time = time + c * (grey - time)
        return (i + 1,) + tuple(tf.ensure_shape(x, blank.shape) for x in (stroke, ink, order, time))

    _, _, ink, order, time = tf.while_loop(lambda i, *_: i < chunks, body, (0, blank, blank, blank, blank),
                                         parallel_iterations=1)
    return tf.stack([ink, order, time] if time_channels else [ink], axis=-1)


def _to_front(values: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """values [B, P, F] with the rows where keep [B, P] moved to the front of each drawing, in order (zeros after)."""
    ones = tf.cast(keep, tf.int32)
    before = _prefix_sum(ones)
    width = tf.shape(values)[1]
    target = tf.where(keep, before - 1, width)  # dropped rows go to an extra row, then cut
    rows = tf.broadcast_to(tf.range(tf.shape(values)[0])[:, None], tf.shape(target))
    shape = tf.stack([tf.shape(values)[0], width + 1, tf.shape(values)[2]])
    moved = tf.scatter_nd(tf.stack([rows, target], axis=-1), tf.where(keep[..., None], values, 0.0), shape)
    return moved[:, :width]


def _band(reach: float) -> tuple[int, float]:
    """(rows K of a piece's band, longest piece L along y in pixels) for the culling renderer.

    A piece whose y extent is at most L reaches only pixel rows whose centres lie within `reach` of
    it: at most floor(L + 2 reach) + 1 of them, from floor(top - reach - 0.5); K keeps a row to spare.
    """
    rows = int(np.ceil((2 + BAND_PIECE) * reach)) + 2
    return rows, rows - 2 * reach - 2.5


def _draw_culled(segments: tf.Tensor, count: tf.Tensor, image_size: int, half_width: float, chunk: int) -> tf.Tensor:
    """[B, H, W, 1] in 0..1, the plain image of `_draw` with culling by rows: each segment (clipped to
    the image) is cut into pieces at most L px tall, and each piece's coverage is computed only in a
    band of K whole rows around it, with the segment's own (a, b - a, 1 / |b - a|^2), so that a pixel
    gets exactly the value `_draw` computes, whichever band reaches it.

    Pieces are visited in order, `chunk` per loop iteration, one per drawing at a time. Per pixel the
    state holds the image, the coverage of the latest stroke that reached it and that stroke's index:
    a piece of a later stroke first composites the held stroke (ink + c (1 - ink), the held stroke is
    complete by then), then starts its own maximum; so every stroke is composited once, in order, as in
    `_draw` (a stroke that never reaches a pixel adds 0 there in both). A last pass composites the
    strokes still held.
    """
    batch = tf.shape(segments)[0]
    reach = half_width + 0.5
    rows, longest = _band(reach)
    rows = min(rows, image_size)  # bands are moved inside the image: rows outside it are never drawn
    ax, ay, dx, dy, inv = (segments[..., k] for k in range(5))
    # a stroke's last point is a dot inside its last segment's round cap (as close or closer to every pixel):
    # only lone points are drawn as dots
    draws, stroke = segments[..., 5] * segments[..., 8], segments[..., 10]
    valid = (tf.range(tf.shape(segments)[1])[None, :] < count[:, None]) & (draws > 0)
    lo, hi = 0.5 - reach - 1.0, image_size - 0.5 + reach + 1.0  # the part of a segment that can reach a pixel

    def entry_exit(start, delta):
        moving = tf.not_equal(delta, 0.0)
        safe = tf.where(moving, delta, 1.0)
        ta, tb = (lo - start) / safe, (hi - start) / safe
        inside = (start >= lo) & (start <= hi)
        return (tf.where(moving, tf.minimum(ta, tb), tf.where(inside, 0.0, 2.0)),
                tf.where(moving, tf.maximum(ta, tb), tf.where(inside, 1.0, -1.0)))

    (x0, x1), (y0, y1) = entry_exit(ax, dx), entry_exit(ay, dy)
    t0 = tf.maximum(tf.maximum(x0, y0), 0.0)
    t1 = tf.minimum(tf.minimum(x1, y1), 1.0)
    seen = valid & (t0 <= t1)
    most = int(np.ceil((hi - lo) / longest)) + 1
    height = tf.abs(dy) * tf.maximum(t1 - t0, 0.0)
    pieces = tf.where(seen, tf.clip_by_value(tf.math.ceil(height / longest), 1.0, most), 0.0)
    total = tf.reduce_sum(pieces, axis=1)
    step = tf.math.divide_no_nan(t1 - t0, pieces)
    # piece k's band starts at row floor(first + k * stride) (rounding there is covered by the spare row;
    # coverage itself uses the exact segment)
    first = ay + dy * t0 + tf.minimum(dy * step, 0.0) - reach - 0.5
    table = tf.stack([ax, ay, dx, dy, inv, stroke, pieces, first, dy * step], axis=-1)
    table = _to_front(table, pieces > 0)  # the segments with pieces, in order; rows of zeros (no pieces) after
    last_row = tf.shape(table)[1] - 1

    offsets = tf.range(rows)
    gx = (tf.range(image_size, dtype=tf.float32) + 0.5)[None, None, :]
    base = tf.range(batch)[:, None] * image_size
    chunks = tf.cast(tf.math.ceil(tf.reduce_max(total) / chunk), tf.int32)
    # per image row: ink, held coverage, its stroke (-1: none), each W wide
    state = tf.tile(tf.constant([0.0, 0.0, -1.0])[None, :, None], tf.stack([batch * image_size, 1, image_size]))

    def body(i, seg, piece, state):
        for _ in range(chunk):
            row = tf.gather(table, tf.minimum(seg, last_row), batch_dims=1)  # [B, 9]
            sax, say, sdx, sdy, sinv, sid, n, fy, sy = tf.unstack(row, axis=1)
            top = tf.floor(fy + tf.cast(piece, tf.float32) * sy)
            oy = tf.cast(tf.clip_by_value(top, 0, image_size - rows), tf.int32)
            gy = tf.cast(oy[:, None, None] + offsets[None, :, None], tf.float32) + 0.5
            c = _coverage(gx, gy, [v[:, None, None] for v in (sax, say, sdx, sdy, sinv)], reach)
            c = c * _flag(n > 0)[:, None, None]  # a drawing past its last piece redraws nothing
            where = tf.reshape(base + oy[:, None] + offsets[None, :], [-1, 1])
            held = tf.reshape(tf.gather_nd(state, where), [batch, rows, 3, image_size])
            ink, cover, owner = tf.unstack(held, axis=2)
            sid = sid[:, None, None]
            fresh = tf.not_equal(owner, sid)
            ink = tf.where(fresh, ink + cover * (1 - ink), ink)
            cover = tf.where(fresh, c, tf.maximum(cover, c))
            owner = tf.broadcast_to(sid, tf.shape(ink))
            update = tf.reshape(tf.stack([ink, cover, owner], axis=2), [-1, 3, image_size])
            state = tf.tensor_scatter_nd_update(state, where, update)
            last = tf.cast(piece + 1, tf.float32) >= n
            seg = tf.where(last, seg + 1, seg)
            piece = tf.where(last, 0, piece + 1)
        return i + 1, seg, piece, state

    zeros = tf.zeros([batch], tf.int32)
    _, _, _, state = tf.while_loop(lambda i, *_: i < chunks, body, (0, zeros, zeros, state), parallel_iterations=1)
    state = tf.reshape(state, tf.stack([batch, image_size, 3, image_size]))
    ink, cover = state[:, :, 0], state[:, :, 1]
    return (ink + cover * (1 - ink))[..., None]


@tf.autograph.experimental.do_not_convert  # plain TensorFlow already: autograph would only re-read the source
def _rasterize(points: tf.Tensor, stroke_ids: tf.Tensor, num_points: tf.Tensor, image_size: int, line_width: float,
               padding: float, frame: int, time_channels: bool, normalize: str, chunk: int, dims: int,
               method: str = "dense") -> tf.Tensor:
    """[B, H, W, C] float32 on 0..255: compact, place, transform to pixels, draw.

    `dims` is static so that a relaxed trace never loses whether the points carry t.
    """
    points = tf.ensure_shape(points, [None, None, dims])
    valid = _valid_points(points, num_points)
    points, stroke_ids, valid = _compact(tf.clip_by_value(points, -1e18, 1e18), stroke_ids, valid)
    xy, offset = _layout(points[..., :2], valid, frame, normalize)
    total_padding = 2.0 * padding + line_width
    scale = image_size / (frame + total_padding)
    device = tf.clip_by_value(scale * (xy + offset[:, None] + total_padding / 2), -CLAMP_PX, CLAMP_PX)
    segments = _segments(points, stroke_ids, valid, device)
    count = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    if method == "culled" and not time_channels:
        return _draw_culled(segments, count, image_size, line_width * scale / 2, min(chunk, CULLED_CHUNK)) * 255
    return _draw(segments, count, image_size, line_width * scale / 2, time_channels, chunk) * 255


_rasterize_graph = tf.function(_rasterize, reduce_retracing=True)  # eager callers: one graph, not op by op
EAGER_CHUNK = 1  # for that graph: without XLA unrolling fuses nothing, and a small graph traces faster


def _in_xla() -> bool:
    """Whether the graph being traced is compiled by XLA (tf.function(jit_compile=True), or inside one)."""
    try:
        from tensorflow.python.ops import control_flow_util  # private: no public way to ask
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):
        return False


@tf.autograph.experimental.do_not_convert
def rasterize_batch(points, stroke_ids, num_points, image_size: int = 28, line_width: float = 16.0,
                    padding: float = 16.0, frame: int = 256, time_channels: bool = False, normalize: str = "auto",
                    dtype: tf.DType = tf.uint8, method: str | None = None) -> tf.Tensor:
    """A padded batch of drawings as [B, image_size, image_size, 1 | 3] images, white on black.

    Same options and channels as `raster.rasterize` (see the module docstring for the padded
    form and for bad input). dtype tf.uint8 rounds like the stored images; tf.float32 gives the
    unrounded values on the same 0..255 scale. Called eagerly it runs as one (cached) graph.
    `method` (default DEFAULT_METHOD, "auto"): "dense" or "culled" for the plain image (see the
    module docstring); "auto" culls when traced for XLA and time_channels is False.
    """
    _check_options(image_size, line_width, padding, frame, normalize)
    method = DEFAULT_METHOD if method is None else method
    if method not in ("auto", "culled", "dense"):
        raise ValueError(f"Invalid value for argument `method`: {method!r}. Expected 'auto', 'culled' or 'dense'.")
    if method == "auto":
        method = "culled" if not time_channels and _in_xla() else "dense"
    points = tf.cast(tf.convert_to_tensor(points), tf.float32)  # float64 or integer points too
    if points.shape.rank != 3 or points.shape[-1] not in (2, 3):
        raise ValueError(f"Invalid value for argument `points`: shape {points.shape}. Expected [B, P, 2 | 3].")
    stroke_ids = tf.cast(tf.convert_to_tensor(stroke_ids), tf.int32)
    num_points = tf.cast(tf.convert_to_tensor(num_points), tf.int32)
    eager = tf.executing_eagerly()
    images = (_rasterize_graph if eager else _rasterize)(
        points, stroke_ids, num_points, int(image_size), float(line_width), float(padding), int(frame),
        bool(time_channels), normalize, EAGER_CHUNK if eager else CHUNK, points.shape[-1], method)
    if dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
    return tf.cast(images, dtype)


def rasterize_drawings(drawings: Sequence[Sequence], max_points: int = MAX_POINTS, **options) -> np.ndarray:
    """Numpy strokes (Drawing.strokes of each drawing) to a [N, H, W, C] uint8 array, eagerly (tests, tools)."""
    batch = pad_drawings(drawings, max_points)
    return rasterize_batch(batch.points, batch.stroke_ids, batch.num_points, **options).numpy()
