"""Strokes -> pixels on the CPU, compiled: `data_prep.raster_tf`'s images, drawn segment by segment.

`raster_tf` computes every pixel against every segment inside the TensorFlow graph, which suits
an accelerator and the SavedModel; on the CPU of a tf.data input pipeline most of that work is on
pixels a segment never reaches. This module draws the same padded batches (`raster_tf.StrokeBatch`:
points [B, P, 2 | 3], stroke_ids [B, P], num_points [B]) with the same geometry and compositing,
compiled by Numba, visiting only the pixels within a segment's reach: the training pipeline's
renderer (`data_prep.pipeline`, through `tf.numpy_function`), where it draws several times faster
(BENCHMARKS.md). `rasterize_records` draws the parsed records' ragged strokes as they are, without
building the padded batch (the pipeline's path when nothing moves the points first). The images equal `raster_tf.rasterize_batch`'s up to float rounding (float64 here,
float32 there: at most 1 grey level on a few pixels; tests/test_raster_cpu.py holds it on the real
sample), so a model trained on either sees what `classify_strokes` draws.

The recipe, as in raster_tf: points with a non-finite coordinate are dropped as if absent,
coordinates clamped to +-1e18 and device coordinates to +-raster_tf.CLAMP_PX; `normalize` fits a
drawing to the frame by `raster.layout`'s rule; per segment, pixel coverage is clip(half width +
0.5 - distance to the segment, 0, 1); a stroke is the maximum of its segments; strokes are
composited source-over in order. Time channels: channel 1 the stroke order (later strokes over
earlier), channel 2 each segment in the grey of its mean tau.

The compiled loop releases the GIL, so tf.data's parallel calls draw batches on every core. The
first call in a process compiles it (a few seconds; cached on disk beside this file when writable).
"""

from __future__ import annotations

import numba
import numpy as np

from data_prep.raster import FIT_TOLERANCE, ORDER_STEP, ORDER_STEPS, TIME_SPAN, TIME_START, _check_options
from data_prep.raster_tf import CLAMP_PX, MAX_POINTS

# Compiler licence for the pixel loops (vectorising them): finite values, any order of operations; never an
# approximate function (no 'afn').
FAST = {"nnan", "ninf", "nsz", "contract", "reassoc", "arcp"}
NORMALIZE_CODES = {"auto": 0, "always": 1, "never": 2}


@numba.njit(cache=True, nogil=True)
def _place(x, y, count, frame, normalize):
    """raster_tf._layout on one drawing's compacted points, in place; returns the centring offset."""
    lox, loy, hix, hiy = 0.0, 0.0, 0.0, 0.0
    if count > 0:
        lox, hix, loy, hiy = x[0], x[0], y[0], y[0]
        for i in range(1, count):
            lox, hix = min(lox, x[i]), max(hix, x[i])
            loy, hiy = min(loy, y[i]), max(hiy, y[i])
    tol = FIT_TOLERANCE * frame
    top = max(hix, hiy)
    fitted = min(lox, loy) >= 0 and max(lox, loy) <= tol and frame - 1 - tol <= top <= frame - 1
    fit = normalize == 1 or (normalize == 0 and not fitted)
    if fit:
        span = max(hix - lox, hiy - loy)
        k = (frame - 1.0) / span if span > 0 else 1.0
        for i in range(count):
            x[i] = (x[i] - lox) * k
            y[i] = (y[i] - loy) * k
        hix, hiy = (hix - lox) * k, (hiy - loy) * k
    return (frame - hix) / 2, (frame - hiy) / 2


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _capsule(ax, ay, bx, by, reach, size, held, touched, count, out, timed, grey, row):
    """Coverage of the capsule a-b on the pixels it reaches, row by row (only the columns within reach of
    the part of the segment level with the row): the maximum into `held`, and, when `timed`, composited
    over the time channel in `grey`. Pixels `held` gains are appended to `touched`; returns their count.

    Each row's coverages are computed first into `row` (scratch [S]) by a plain arithmetic loop that the
    compiler vectorises: its fastmath flags allow that, never an approximate function, and every input is
    finite (_draw_one drops and clamps the rest); 1.4x the drawings a second at 28 px (BENCHMARKS.md)."""
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    inv = 1.0 / length2 if length2 > 0 else 0.0
    inv_dy = 1.0 / dy if dy != 0 else 0.0
    r0 = max(0, int(np.floor(min(ay, by) - reach - 0.5)))
    r1 = min(size - 1, int(np.ceil(max(ay, by) + reach - 0.5)))
    for r in range(r0, r1 + 1):
        py = r + 0.5 - ay
        if dy != 0:
            ta, tb = (py - reach) * inv_dy, (py + reach) * inv_dy
            t0, t1 = max(min(ta, tb), 0.0), min(max(ta, tb), 1.0)
            if t0 > t1:
                continue
        else:
            if abs(py) >= reach:
                continue
            t0, t1 = 0.0, 1.0
        xa, xb = ax + t0 * dx, ax + t1 * dx
        c0 = max(0, int(np.floor(min(xa, xb) - reach - 0.5)))
        c1 = min(size - 1, int(np.ceil(max(xa, xb) + reach - 0.5)))
        for c in range(c0, c1 + 1):  # a plain arithmetic loop over the row, which the compiler vectorises
            px = c + 0.5 - ax
            t = min(max((px * dx + py * dy) * inv, 0.0), 1.0)
            ex, ey = px - t * dx, py - t * dy
            row[c] = min(max(reach - np.sqrt(ex * ex + ey * ey), 0.0), 1.0)
        for c in range(c0, c1 + 1):
            cover, old = row[c], held[r, c]
            touched[count] = r * size + c
            count += (old == 0.0) & (cover > 0.0)
            held[r, c] = max(old, cover)
            if timed:
                out[r, c, 2] += cover * (grey - out[r, c, 2])
    return count


@numba.njit(cache=True, nogil=True)
def _draw_one(points, ids, n, size, line_width, padding, frame, time_channels, normalize, out, held, touched, row, x,
              y, t, sid):
    """One drawing into out [S, S, C] (0..1, zeros on entry); held (zeros), touched, row, x, y, t, sid are scratch."""
    dims = points.shape[1]
    count = 0
    for i in range(min(max(n, 0), points.shape[0])):
        finite = True
        for d in range(dims):
            finite = finite and np.isfinite(points[i, d])
        if finite:
            x[count] = min(max(points[i, 0], -1e18), 1e18)
            y[count] = min(max(points[i, 1], -1e18), 1e18)
            t[count] = min(max(points[i, 2], -1e18), 1e18) if dims == 3 else 0.0
            sid[count] = ids[i]
            count += 1
    ox, oy = _place(x, y, count, frame, normalize)
    total_padding = 2.0 * padding + line_width
    scale = size / (frame + total_padding)
    for i in range(count):
        x[i] = min(max(scale * (x[i] + ox + total_padding / 2), -CLAMP_PX), CLAMP_PX)
        y[i] = min(max(scale * (y[i] + oy + total_padding / 2), -CLAMP_PX), CLAMP_PX)
    reach = line_width * scale / 2 + 0.5
    t0, t1 = np.inf, -np.inf
    if dims == 3:
        for i in range(count):
            t0, t1 = min(t0, t[i]), max(t1, t[i])
    varies = dims == 3 and np.isfinite(t1 - t0) and t1 > t0
    for i in range(count):
        t[i] = (t[i] - t0) / (t1 - t0) if varies else (i / (count - 1) if count > 1 else 0.0)
    rank, same_prev, held_pixels = -1, False, 0
    flat_held, flat_out = held.reshape(size * size), out.reshape((size * size, out.shape[2]))
    for i in range(count):
        same_next = i + 1 < count and sid[i + 1] == sid[i]
        if not same_prev:
            rank += 1
        j = i + 1 if same_next else i
        if same_next or not same_prev:  # a stroke's end dot lies inside its last segment's cap: skipped
            grey = np.round(TIME_START - TIME_SPAN * (t[i] + t[j]) / 2) / 255
            held_pixels = _capsule(x[i], y[i], x[j], y[j], reach, size, held, touched, held_pixels, out,
                                   time_channels, grey, row)
        if not same_next:  # the stroke ends: composite it, in order
            value = (255 - min(rank, ORDER_STEPS) * ORDER_STEP) / 255
            for k in range(held_pixels):  # by flat pixel index: no division
                p = touched[k]
                s = flat_held[p]
                flat_out[p, 0] += s * (1 - flat_out[p, 0])
                if time_channels:
                    flat_out[p, 1] += s * (value - flat_out[p, 1])
                flat_held[p] = 0.0
            held_pixels = 0
        same_prev = same_next


@numba.njit(cache=True, nogil=True)
def _scratch(size, channels, width):
    """The per-drawing working arrays of _draw_one: out, held, touched, row, x, y, t, sid."""
    return (np.empty((size, size, channels)), np.zeros((size, size)), np.empty(size * size + 1, np.int64),
            np.empty(size), np.empty(width), np.empty(width), np.empty(width), np.empty(width, np.int64))


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _store(out, image):
    """out (0..1) into the uint8 image, rounded (ties up; raster_tf rounds ties to even: never seen apart)."""
    size, channels = out.shape[0], out.shape[2]
    for r in range(size):
        for c in range(size):
            for k in range(channels):
                image[r, c, k] = int(min(max(out[r, c, k], 0.0), 1.0) * 255 + 0.5)


@numba.njit(cache=True, nogil=True)
def _draw_batch(points, stroke_ids, num_points, size, line_width, padding, frame, time_channels, normalize):
    batch, width, channels = points.shape[0], points.shape[1], 3 if time_channels else 1
    out, held, touched, row, x, y, t, sid = _scratch(size, channels, width)
    images = np.empty((batch, size, size, channels), np.uint8)
    for b in range(batch):
        out[:] = 0.0
        _draw_one(points[b], stroke_ids[b], num_points[b], size, line_width, padding, frame, time_channels,
                  normalize, out, held, touched, row, x, y, t, sid)
        _store(out, images[b])
    return images


@numba.njit(cache=True, nogil=True)
def _draw_records(values, value_starts, lengths, length_starts, dims, max_points, size, line_width, padding,
                  frame, time_channels, normalize):
    batch, channels = len(value_starts) - 1, 3 if time_channels else 1
    widest = 1
    for b in range(batch):
        widest = max(widest, min((value_starts[b + 1] - value_starts[b]) // dims, max_points))
    out, held, touched, row, x, y, t, sid = _scratch(size, channels, widest)
    ids = np.empty(widest, np.int64)
    images = np.empty((batch, size, size, channels), np.uint8)
    for b in range(batch):
        n = min((value_starts[b + 1] - value_starts[b]) // dims, max_points)
        points = values[value_starts[b]:value_starts[b] + n * dims].reshape((n, dims))
        stroke, left = 0, 0  # points beyond the strokes' lengths form one more stroke
        k = length_starts[b]
        for i in range(n):
            while left <= 0 and k < length_starts[b + 1]:
                left, stroke, k = lengths[k], stroke + 1, k + 1
            ids[i], left = stroke, left - 1
        out[:] = 0.0
        _draw_one(points, ids, n, size, line_width, padding, frame, time_channels, normalize, out, held, touched,
                  row, x, y, t, sid)
        _store(out, images[b])
    return images


def rasterize_batch(points, stroke_ids, num_points, image_size: int = 28, line_width: float = 16.0,
                    padding: float = 16.0, frame: int = 256, time_channels: bool = False,
                    normalize: str = "auto") -> np.ndarray:
    """A padded batch of drawings as uint8 [B, image_size, image_size, 1 | 3], white on black: the images of
    `raster_tf.rasterize_batch` with the same arguments (numpy in, numpy out; GIL released while drawing)."""
    _check_options(image_size, line_width, padding, frame, normalize)
    points = np.asarray(points, np.float32)
    if points.ndim != 3 or points.shape[-1] not in (2, 3):
        raise ValueError(f"Invalid value for argument `points`: shape {points.shape}. Expected [B, P, 2 | 3].")
    stroke_ids = np.asarray(stroke_ids, np.int32)
    num_points = np.asarray(num_points, np.int32)
    if stroke_ids.shape != points.shape[:2] or num_points.shape != points.shape[:1]:
        raise ValueError(f"Invalid shapes: points {points.shape}, stroke_ids {stroke_ids.shape}, num_points "
                         f"{num_points.shape}. Expected [B, P, dims], [B, P] and [B].")
    return _draw_batch(points, stroke_ids, num_points, int(image_size), float(line_width), float(padding),
                       int(frame), bool(time_channels), NORMALIZE_CODES[normalize])


def rasterize_records(values, value_splits, lengths, length_splits, dims: int, max_points: int = MAX_POINTS,
                      image_size: int = 28, line_width: float = 16.0, padding: float = 16.0, frame: int = 256,
                      time_channels: bool = False, normalize: str = "auto") -> np.ndarray:
    """A parsed batch's strokes, unpadded, as uint8 [B, S, S, 1 | 3]: `strokes/points` and `strokes/lengths`
    as ragged rows (flat values and row splits [B + 1] each, as `tf.io.parse_example` gives them ragged).

    Each drawing keeps its first `max_points` points (raster_tf.pad_records' cap); a point past the
    sum of its drawing's stroke lengths belongs to one more stroke. Same images as `rasterize_batch` on
    `raster_tf.pad_records` of the same records, without building the padded batch.
    """
    _check_options(image_size, line_width, padding, frame, normalize)
    if dims not in (2, 3):
        raise ValueError(f"Invalid value for argument `dims`: {dims}. Expected 2 or 3.")
    value_splits, length_splits = np.asarray(value_splits, np.int64), np.asarray(length_splits, np.int64)
    if (value_splits.ndim != 1 or value_splits.shape != length_splits.shape or len(value_splits) < 1
            or np.any(np.diff(value_splits) < 0) or np.any(np.diff(length_splits) < 0)
            or value_splits[0] != 0 or length_splits[0] != 0
            or value_splits[-1] != np.size(values) or length_splits[-1] != np.size(lengths)):
        raise ValueError(f"Invalid row splits: points {value_splits.shape} over {np.size(values)} values, lengths "
                         f"{length_splits.shape} over {np.size(lengths)}. Expected two [B + 1] ascending from 0 to "
                         "the size of their values.")
    return _draw_records(np.asarray(values, np.float32).ravel(), value_splits, np.asarray(lengths, np.int64).ravel(),
                         length_splits, int(dims), int(max_points), int(image_size), float(line_width),
                         float(padding), int(frame), bool(time_channels), NORMALIZE_CODES[normalize])
