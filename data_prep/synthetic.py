"""The embedded default data set: seeded procedural doodles written as real Quick, Draw! files.

No data set can be downloaded on a fresh machine, so the demo draws its own. Each class is a
small function in SHAPES that draws an ideal shape in a unit frame (about -1..1, y down) with
its own variations (proportions, stroke order, optional parts). A shared pipeline then makes
it look hand-made: a smooth elastic deformation, a per-stroke wobble, occasional strokes split
in two, a mirror, rotation, anisotropic scale, shear and translation onto a canvas of a few
hundred pixels, and pen timing (speed profile, irregular event intervals, pauses between
strokes). The result is written exactly like Google's files: `<out>/raw/<word>.ndjson` with
`[[xs],[ys],[t_ms]]` strokes and `<out>/simplified/<word>.ndjson` with Google's
simplification (data_prep.simplify) of the same drawings, same key_ids in the same order.
Same seed, same bytes (with the pinned NumPy; float rounding could differ elsewhere).

The classes are learnable but not trivial: a small two-convolution CNN on 28-px renderings of
the 20 classes reaches about 96% test accuracy after 8 epochs; circle, hexagon and octagon are
the usual confusions.

    python -m data_prep.synthetic --out data/synthetic --per_class 600 --seed 0 [--classes circle,star]
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import multiprocessing
import pathlib
import sys
import time
import zlib
from typing import Callable, NamedTuple, Sequence

import numpy as np
import orjson

from data_prep.simplify import simplify_many

ShapeFn = Callable[[np.random.Generator], list[np.ndarray]]

SHAPES: dict[str, ShapeFn] = {}

TWO_PI = 2.0 * np.pi
_DENSE_STEP = 0.04  # unit-frame spacing of the dense polyline the pen follows
_BATCH = 64  # drawings made together, each batch from its own random stream
_COUNTRIES = ("US", "GB", "DE", "CA", "RU", "BR", "AU", "FR", "PL", "KR", "IT", "SE", "CZ", "TH", "JP", "FI")
_COUNTRY_WEIGHTS = np.array([30, 8, 6, 5, 5, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2], dtype=np.float64)
_COUNTRY_CDF = np.cumsum(_COUNTRY_WEIGHTS) / _COUNTRY_WEIGHTS.sum()
_EPOCH_2017 = 1483228800  # 2017-01-01 00:00:00 UTC, when the public data was collected


def _shape(name: str) -> Callable[[ShapeFn], ShapeFn]:
    """Register a shape generator under its Quick, Draw! word; a duplicate name is an error."""

    def register(fn: ShapeFn) -> ShapeFn:
        if name in SHAPES:
            raise ValueError(f"shape {name!r} is registered twice")
        SHAPES[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- drawing primitives


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> np.ndarray:
    """Points along an ellipse arc from angle a0 to a1 (radians, either direction)."""
    n = max(6, int(abs(a1 - a0) / TWO_PI * 48))
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _closed(vertices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A closed polyline through `vertices`, starting at a random vertex in a random direction."""
    v = np.roll(vertices, -int(rng.integers(len(vertices))), axis=0)
    if rng.random() < 0.5:
        v = v[::-1]
    return np.concatenate([v, v[:1]], axis=0)


def _regular(k: int, phase: float) -> np.ndarray:
    a = phase + TWO_PI * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _line(*points: tuple[float, float]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _maybe_reversed(stroke: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    return stroke[::-1] if rng.random() < p else stroke


# ---------------------------------------------------------------- the shapes


@_shape("circle")
def circle(rng: np.random.Generator) -> list[np.ndarray]:
    a0 = rng.uniform(0, TWO_PI)
    sweep = TWO_PI + rng.uniform(-0.25, 0.45)
    direction = rng.choice((-1.0, 1.0))
    return [_arc(0, 0, 1.0, rng.uniform(0.85, 1.15), a0, a0 + direction * sweep)]


@_shape("square")
def square(rng: np.random.Generator) -> list[np.ndarray]:
    w, h = rng.uniform(0.85, 1.15, size=2)
    corners = _line((-w, -h), (w, -h), (w, h), (-w, h))
    mode = rng.random()
    if mode < 0.7:
        return [_closed(corners, rng)]
    if mode < 0.85:  # two L-shaped strokes
        return [corners[[3, 0, 1]], corners[[1, 2, 3]]]
    return [corners[[i, (i + 1) % 4]] for i in range(4)]


@_shape("triangle")
def triangle(rng: np.random.Generator) -> list[np.ndarray]:
    apex = (rng.uniform(-0.3, 0.3), -1.0)
    base = rng.uniform(0.7, 0.9)
    return [_closed(_line(apex, (1.0, base), (-1.0, base)), rng)]


@_shape("star")
def star(rng: np.random.Generator) -> list[np.ndarray]:
    if rng.random() < 0.7:  # the five-point star drawn without lifting the pen
        a = -np.pi / 2 + 2 * TWO_PI / 5 * np.arange(6) + rng.integers(5) * TWO_PI / 5
        return [np.stack([np.cos(a), np.sin(a)], axis=1)]
    inner = rng.uniform(0.35, 0.5)
    radius = np.where(np.arange(10) % 2 == 0, 1.0, inner)[:, None]
    return [_closed(_regular(10, -np.pi / 2) * radius, rng)]


@_shape("zigzag")
def zigzag(rng: np.random.Generator) -> list[np.ndarray]:
    n = int(rng.integers(4, 9))
    amp = rng.uniform(0.2, 0.5)
    x = np.linspace(-1, 1, n + 1)
    y = amp * np.where(np.arange(n + 1) % 2 == 0, 1.0, -1.0) * rng.choice((-1.0, 1.0))
    return [_maybe_reversed(np.stack([x, y], axis=1), rng)]


@_shape("house")
def house(rng: np.random.Generator) -> list[np.ndarray]:
    eave = rng.uniform(-0.25, 0.05)
    w = rng.uniform(0.7, 0.9)
    body = _closed(_line((-w, eave), (w, eave), (w, 1.0), (-w, 1.0)), rng)
    overhang = rng.uniform(0.0, 0.15)
    roof = _maybe_reversed(_line((-w - overhang, eave), (rng.uniform(-0.15, 0.15), -1.0), (w + overhang, eave)), rng)
    strokes = [body, roof] if rng.random() < 0.7 else [roof, body]
    if rng.random() < 0.6:
        dx, top = rng.uniform(-0.4, 0.4), rng.uniform(0.35, 0.55)
        strokes.append(_line((dx - 0.18, 1.0), (dx - 0.18, top), (dx + 0.18, top), (dx + 0.18, 1.0)))
    if rng.random() < 0.3:
        cx, cy = rng.choice((-0.45, 0.45)), rng.uniform(0.2, 0.35)
        window = _line((cx - 0.13, cy - 0.13), (cx + 0.13, cy - 0.13), (cx + 0.13, cy + 0.13), (cx - 0.13, cy + 0.13))
        strokes.append(_closed(window, rng))
    return strokes


@_shape("smiley face")
def smiley_face(rng: np.random.Generator) -> list[np.ndarray]:
    a0 = rng.uniform(0, TWO_PI)
    face = _arc(0, 0, 1.0, rng.uniform(0.9, 1.1), a0, a0 + TWO_PI + rng.uniform(-0.2, 0.3))
    eye_y, eye_x = rng.uniform(-0.45, -0.2), rng.uniform(0.28, 0.45)
    if rng.random() < 0.5:
        r = rng.uniform(0.05, 0.1)
        eyes = [_arc(x, eye_y, r, r, 0, TWO_PI) for x in (-eye_x, eye_x)]
    else:
        length = rng.uniform(0.08, 0.2)
        eyes = [_line((x, eye_y - length / 2), (x, eye_y + length / 2)) for x in (-eye_x, eye_x)]
    half = rng.uniform(0.25, 0.4) * np.pi
    smile = _arc(0, rng.uniform(-0.05, 0.15), 0.55, rng.uniform(0.4, 0.6), np.pi / 2 - half, np.pi / 2 + half)
    mouth = _maybe_reversed(smile, rng)
    return [face, *eyes, mouth] if rng.random() < 0.8 else [*eyes, mouth, face]


@_shape("moon")
def moon(rng: np.random.Generator) -> list[np.ndarray]:
    tip = rng.uniform(0.55, 0.7) * np.pi
    outer = np.linspace(-tip, tip, 40)
    inner = outer[::-1]
    k = rng.uniform(0.3, 0.65)
    end_x = np.cos(tip)
    xs = np.concatenate([np.cos(outer), end_x + k * (np.cos(inner) - end_x)])
    ys = np.concatenate([np.sin(outer), np.sin(inner)])
    return [_maybe_reversed(np.stack([xs, ys], axis=1), rng)]


@_shape("lightning")
def lightning(rng: np.random.Generator) -> list[np.ndarray]:
    if rng.random() < 0.6:  # the bolt outline
        v = _line((0.2, -1.0), (-0.4, 0.1), (0.0, 0.1), (-0.25, 1.0), (0.45, -0.2), (0.05, -0.2), (0.5, -1.0))
        v = v + rng.normal(0, 0.04, size=v.shape)
        return [_closed(v, rng)]
    w = rng.uniform(0.25, 0.45)
    bolt = _line((w, -1.0), (-w, -0.05), (w, 0.05), (-w, 1.0))
    strokes = [_maybe_reversed(bolt, rng, 0.2)]
    if rng.random() < 0.5:  # arrow head at the bottom
        strokes.append(_line((-w - 0.05, 0.65), (-w, 1.0), (-w + 0.3, 0.85)))
    return strokes


@_shape("hexagon")
def hexagon(rng: np.random.Generator) -> list[np.ndarray]:
    phase = rng.choice((0.0, np.pi / 6)) + rng.normal(0, 0.05)
    return [_closed(_regular(6, phase) * [1.0, rng.uniform(0.85, 1.1)], rng)]


@_shape("octagon")
def octagon(rng: np.random.Generator) -> list[np.ndarray]:
    phase = np.pi / 8 + rng.normal(0, 0.05)
    return [_closed(_regular(8, phase) * [1.0, rng.uniform(0.85, 1.1)], rng)]


@_shape("envelope")
def envelope(rng: np.random.Generator) -> list[np.ndarray]:
    h = rng.uniform(0.5, 0.75)
    rect = _closed(_line((-1.0, -h), (1.0, -h), (1.0, h), (-1.0, h)), rng)
    flap = _maybe_reversed(_line((-1.0, -h), (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.3) * h), (1.0, -h)), rng)
    return [rect, flap] if rng.random() < 0.8 else [flap, rect]


@_shape("hurricane")
def hurricane(rng: np.random.Generator) -> list[np.ndarray]:
    turns = rng.uniform(2.0, 3.5)
    theta = np.linspace(0, TWO_PI * turns, int(turns * 40))
    r = (theta / theta[-1]) ** rng.uniform(0.8, 1.1)
    a = rng.choice((-1.0, 1.0)) * theta + rng.uniform(0, TWO_PI)
    return [_maybe_reversed(np.stack([r * np.cos(a), r * np.sin(a)], axis=1), rng, 0.3)]


@_shape("stairs")
def stairs(rng: np.random.Generator) -> list[np.ndarray]:
    k = int(rng.integers(3, 6))
    edges = np.linspace(-1, 1, k + 1)
    points = [(-1.0, 1.0)]
    for i in range(k):
        points += [(edges[i], edges[k - i - 1]), (edges[i + 1], edges[k - i - 1])]
    steps = np.asarray(points)
    if rng.random() < 0.5:
        return [_maybe_reversed(steps, rng, 0.3)]
    return [steps, _maybe_reversed(_line((1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)), rng)]


@_shape("sun")
def sun(rng: np.random.Generator) -> list[np.ndarray]:
    r = rng.uniform(0.4, 0.55)
    a0 = rng.uniform(0, TWO_PI)
    disc = _arc(0, 0, r, r, a0, a0 + rng.choice((-1.0, 1.0)) * (TWO_PI + rng.uniform(-0.1, 0.3)))
    n = int(rng.integers(6, 12))
    angles = rng.uniform(0, TWO_PI) + TWO_PI * np.arange(n) / n + rng.normal(0, 0.08, n)
    inner, outer = r * 1.25, rng.uniform(0.85, 1.0)
    rays = [
        _line((inner * np.cos(a), inner * np.sin(a)), (outer * np.cos(a), outer * np.sin(a))) for a in angles
    ]
    return [disc, *rays]


@_shape("mountain")
def mountain(rng: np.random.Generator) -> list[np.ndarray]:
    peaks = int(rng.choice((1, 2, 3), p=(0.2, 0.5, 0.3)))
    x = np.linspace(-1, 1, 2 * peaks + 1) + np.r_[0, rng.uniform(-0.12, 0.12, 2 * peaks - 1), 0]
    y = np.ones(2 * peaks + 1)
    y[1::2] = -rng.uniform(0.3, 1.0, peaks)
    y[2:-1:2] = rng.uniform(-0.1, 0.5, peaks - 1)
    return [_maybe_reversed(np.stack([x, y], axis=1), rng)]


@_shape("diamond")
def diamond(rng: np.random.Generator) -> list[np.ndarray]:
    top, girdle = rng.uniform(0.35, 0.6), rng.uniform(-0.3, -0.05)
    outline = _closed(_line((-top, -0.6), (top, -0.6), (1.0, girdle), (0.0, 1.0), (-1.0, girdle)), rng)
    strokes = [outline]
    if rng.random() < 0.7:
        strokes.append(_maybe_reversed(_line((-1.0, girdle), (1.0, girdle)), rng))
    if rng.random() < 0.3:
        strokes += [_line((-0.4, girdle), (0.0, 1.0)), _line((0.4, girdle), (0.0, 1.0))]
    return strokes


@_shape("ladder")
def ladder(rng: np.random.Generator) -> list[np.ndarray]:
    half = rng.uniform(0.3, 0.5)
    rails = [_line((-half, -1.0), (-half, 1.0)), _line((half, -1.0), (half, 1.0))]
    k = int(rng.integers(3, 7))
    ys = np.linspace(-1, 1, k + 2)[1:-1]
    rungs = [_line((-half, y), (half, y)) for y in ys]
    return [*rails, *rungs] if rng.random() < 0.8 else [rails[0], *rungs, rails[1]]


@_shape("cloud")
def cloud(rng: np.random.Generator) -> list[np.ndarray]:
    k = int(rng.integers(5, 9))
    a0 = rng.uniform(0, TWO_PI)
    theta = np.linspace(0, TWO_PI, k * 12 + 1)
    r = 1.0 + rng.uniform(0.22, 0.38) * np.abs(np.sin(k * theta / 2))
    a = a0 + rng.choice((-1.0, 1.0)) * theta
    xs, ys = 1.0 * r * np.cos(a), rng.uniform(0.5, 0.7) * r * np.sin(a)
    if rng.random() < 0.4:  # flat bottom
        ys = np.minimum(ys, 0.45)
    return [np.stack([xs, ys], axis=1)]


@_shape("snowflake")
def snowflake(rng: np.random.Generator) -> list[np.ndarray]:
    a0 = np.pi / 2 + rng.normal(0, 0.1)
    arms = [a0 + i * np.pi / 3 for i in range(3)]
    strokes = [_maybe_reversed(_line((-np.cos(a), -np.sin(a)), (np.cos(a), np.sin(a))), rng) for a in arms]
    if rng.random() < 0.5:  # a V tick on each of the six arms
        for a in np.r_[arms, np.add(arms, np.pi)]:
            q = 0.6 * np.array([np.cos(a), np.sin(a)])
            left = q + 0.25 * np.array([np.cos(a + 2.4), np.sin(a + 2.4)])
            right = q + 0.25 * np.array([np.cos(a - 2.4), np.sin(a - 2.4)])
            strokes.append(np.stack([left, q, right]))
    return strokes


# ---------------------------------------------------------------- making it look hand-made
#
# A batch of drawings is processed at once as one point array with per-stroke sizes and the
# drawing of each stroke: per-drawing numpy calls on tiny arrays would cost far more than the
# arithmetic. Strokes lie end to end on one "global arc length" axis with a gap of _GAP
# between them, so a single np.interp resamples every stroke without mixing neighbours.

_GAP = 1.0


def _arc_axis(points: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global arc-length coordinate of each point, each stroke's start on it and its length."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    ends = np.cumsum(sizes)
    seg[ends[:-1] - 1] = _GAP  # the jump from one stroke's end to the next one's start
    axis = np.concatenate([[0.0], np.cumsum(seg)])
    start = axis[ends - sizes]
    return axis, start, axis[ends - 1] - start


def _sample(points: np.ndarray, axis: np.ndarray, start: np.ndarray, length: np.ndarray,
            fractions: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Points at `fractions` (0..1, grouped by stroke as `counts`) of each stroke's length."""
    where = np.repeat(start, counts) + fractions * np.repeat(length, counts)
    return np.stack([np.interp(where, axis, points[:, 0]), np.interp(where, axis, points[:, 1])], axis=1)


def _local_index(counts: np.ndarray) -> np.ndarray:
    """0..n-1 within each group, for groups of `counts` items laid end to end."""
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def _resample(points: np.ndarray, sizes: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Every stroke resampled at (about) uniform spacing `step`, end points kept."""
    axis, start, length = _arc_axis(points, sizes)
    counts = np.maximum(2, (length / step).astype(np.int64) + 1)
    fractions = _local_index(counts) / np.repeat(counts - 1, counts)
    return _sample(points, axis, start, length, fractions, counts), counts


def _elastic(points: np.ndarray, per_drawing: np.ndarray, rng: np.random.Generator, amount: np.ndarray) -> np.ndarray:
    """Per drawing, a smooth random displacement field (two plane waves per axis): moves corners, bends lines.

    `per_drawing` counts the points of each drawing (they are contiguous).
    """
    n = len(amount)
    angles = rng.uniform(0, TWO_PI, (n, 4))
    wavenumber = rng.uniform(0.8, 2.5, (n, 4))
    kx = np.repeat(wavenumber * np.cos(angles), per_drawing, axis=0)
    ky = np.repeat(wavenumber * np.sin(angles), per_drawing, axis=0)
    phase = np.repeat(rng.uniform(0, TWO_PI, (n, 4)), per_drawing, axis=0)
    amp = np.repeat(rng.normal(0, 1, (n, 4)) * 0.05 * amount[:, None], per_drawing, axis=0)
    waves = amp * np.sin(kx * points[:, :1] + ky * points[:, 1:] + phase)  # (points, 4)
    return points + np.stack([waves[:, 0] + waves[:, 1], waves[:, 2] + waves[:, 3]], axis=1)


def _wobble(points: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, amount: np.ndarray) -> np.ndarray:
    """Low-frequency hand wobble along each stroke (its own frequency and phase) plus a little tremor."""
    k = len(sizes)
    u = (_local_index(sizes) * _DENSE_STEP)[:, None]
    freq = np.repeat(rng.uniform(0.3, 1.6, (k, 2)), sizes, axis=0)
    phase = np.repeat(rng.uniform(0, TWO_PI, (k, 2)), sizes, axis=0)
    amp = np.repeat(rng.normal(0, 1, (k, 2)) * 0.018 * amount[:, None], sizes, axis=0)
    return points + amp * np.sin(TWO_PI * freq * u + phase) + rng.normal(0, 0.003, points.shape)


def _split_strokes(points: np.ndarray, sizes: np.ndarray, drawing: np.ndarray, rng: np.random.Generator,
                   p: float = 0.12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sometimes lift the pen mid-stroke: the rest restarts near (not exactly at) the lift point.

    Returns the points, the stroke sizes and the drawing of each stroke.
    """
    chosen = (sizes >= 20) & (rng.random(len(sizes)) < p)
    if not chosen.any():
        return points, sizes, drawing
    starts = np.cumsum(sizes) - sizes
    pieces, new_sizes, owners, shifts = [], [], [], []
    for start, size, owner, split in zip(starts.tolist(), sizes.tolist(), drawing.tolist(), chosen.tolist()):
        if not split:
            pieces.append(np.arange(start, start + size))
            new_sizes.append(size)
            owners.append(owner)
            shifts.append((0.0, 0.0))
            continue
        cut = int(rng.integers(size * 3 // 10, size * 7 // 10))
        restart = max(0, cut - int(rng.integers(0, 3)))
        pieces += [np.arange(start, start + cut + 1), np.arange(start + restart, start + size)]
        new_sizes += [cut + 1, size - restart]
        owners += [owner, owner]
        shifts += [(0.0, 0.0), tuple(rng.normal(0, 0.02, 2))]
    new_sizes = np.asarray(new_sizes)
    moved = points[np.concatenate(pieces)] + np.repeat(np.asarray(shifts), new_sizes, axis=0)
    return moved, new_sizes, np.asarray(owners)


def _placement(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per drawing: mirror, rotation, anisotropic scale and shear (n, 2, 2), and an offset (n, 2) onto
    a canvas of a few hundred pixels."""
    angle = np.deg2rad(np.clip(rng.normal(0, 10, n), -25, 25))
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], axis=1)
    shear = np.tile(np.eye(2), (n, 1, 1))
    shear[:, 0, 1] = rng.uniform(-0.15, 0.15, n)
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    diagonal = rng.uniform(0.8, 1.2, (n, 2)) * rng.uniform(80, 210, (n, 1))
    diagonal[:, 0] *= mirror
    scale = np.zeros((n, 2, 2))
    scale[:, 0, 0], scale[:, 1, 1] = diagonal[:, 0], diagonal[:, 1]
    offset = np.stack([rng.uniform(200, 700, n), rng.uniform(200, 500, n)], axis=1)
    return rotation @ shear @ scale, offset


def _pen_events(points: np.ndarray, sizes: np.ndarray, drawing: np.ndarray, integer: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw pen events (n, 3) of x, y, t_ms sampled along the canvas strokes, and their counts per stroke.

    Events come at irregular intervals; the pen speeds up and slows down (a blend of constant
    speed and a minimum-jerk profile); strokes are separated by pauses; each drawing's clock
    starts at 0. Integer devices (`integer`, per drawing) drop repeated positions; float devices
    report float32 values, repeats included.
    """
    n_drawings, n_strokes = len(integer), len(sizes)
    speed = rng.uniform(0.35, 1.0, n_drawings)[drawing]  # px/ms
    interval = rng.uniform(10, 20, n_drawings)[drawing]  # mean ms between events
    blend = rng.uniform(0.3, 0.8, n_drawings)[drawing]
    axis, start, length = _arc_axis(points, sizes)
    duration = np.maximum(30.0, length / speed * rng.uniform(0.85, 1.2, n_strokes))
    counts = np.maximum(2, (duration / interval).astype(np.int64) + 1)
    first, last = np.cumsum(counts) - counts, np.cumsum(counts) - 1
    steps = rng.uniform(0.5, 1.5, counts.sum())
    steps[first] = 0.0  # each stroke's first event is at its start
    elapsed = np.cumsum(steps)
    u = (elapsed - np.repeat(elapsed[first], counts)) / np.repeat(elapsed[last] - elapsed[first], counts)
    b = np.repeat(blend, counts)
    xy = _sample(points, axis, start, length, (1 - b) * u + b * u**3 * (10 - 15 * u + 6 * u**2), counts)
    busy = np.rint(duration).astype(np.int64)
    pause = (rng.uniform(80, 450, n_strokes) + rng.exponential(120, n_strokes)).astype(np.int64)
    clock = np.concatenate([[0], np.cumsum(busy + pause)[:-1]])
    first_stroke = np.searchsorted(drawing, np.arange(n_drawings))
    t0 = clock - clock[first_stroke][drawing]
    t = np.repeat(t0, counts) + np.rint(u * np.repeat(duration, counts)).astype(np.int64)
    exact = np.repeat(integer[drawing], counts)
    xy = np.where(exact[:, None], np.rint(xy), np.round(xy, 3).astype(np.float32).astype(np.float64))
    keep = ~exact | np.r_[True, np.any(xy[1:] != xy[:-1], axis=1)]
    keep[first] = True
    stroke_of_event = np.repeat(np.arange(n_strokes), counts)
    counts = np.bincount(stroke_of_event[keep], minlength=n_strokes)
    return np.column_stack([xy[keep], t[keep]]), counts


class Doodle(NamedTuple):
    """One generated drawing: raw strokes (n, 3) of x, y, t_ms; whether x, y are integers; sloppiness."""

    strokes: list[np.ndarray]
    integer: bool
    sloppiness: float


def draw_batch(word: str, rng: np.random.Generator, n: int) -> list[Doodle]:
    """`n` hand-made drawings of `word` on a canvas of a few hundred pixels, with pen timing."""
    sloppiness = rng.lognormal(0.0, 0.35, n)
    ideal = [SHAPES[word](rng) for _ in range(n)]
    drawing = np.repeat(np.arange(n), [len(strokes) for strokes in ideal])
    flat = [stroke for strokes in ideal for stroke in strokes]
    points, sizes = _resample(np.concatenate(flat).astype(np.float64), np.array([len(s) for s in flat]), _DENSE_STEP)
    points = _elastic(points, np.bincount(drawing, weights=sizes, minlength=n).astype(np.int64), rng, sloppiness)
    points = _wobble(points, sizes, rng, sloppiness[drawing])
    points, sizes, drawing = _split_strokes(points, sizes, drawing, rng)
    matrix, offset = _placement(rng, n)
    per_drawing = np.bincount(drawing, weights=sizes, minlength=n).astype(np.int64)
    m = np.repeat(matrix.reshape(n, 4), per_drawing, axis=0)
    x, y = points[:, 0], points[:, 1]
    canvas = np.stack([m[:, 0] * x + m[:, 1] * y, m[:, 2] * x + m[:, 3] * y], axis=1)
    canvas += np.repeat(offset, per_drawing, axis=0)
    integer = rng.random(n) < 0.75
    events, counts = _pen_events(canvas, sizes, drawing, integer, rng)
    strokes = np.split(events, np.cumsum(counts)[:-1])
    bounds = np.searchsorted(drawing, np.arange(n + 1))
    return [
        Doodle(strokes[bounds[i] : bounds[i + 1]], bool(integer[i]), float(sloppiness[i])) for i in range(n)
    ]


def draw(word: str, rng: np.random.Generator) -> Doodle:
    """One hand-made drawing of `word` (see draw_batch)."""
    return draw_batch(word, rng, 1)[0]


# ---------------------------------------------------------------- records and files


def key_ids(seed: int, words: Sequence[str], per_class: int) -> dict[str, list[str]]:
    """Stable 16-digit numeric keys (like Google's) for each class's drawings, unique over all of them."""
    taken: set[str] = set()
    keys: dict[str, list[str]] = {}
    for word in words:
        keys[word] = []
        for index in range(per_class):
            attempt = 0
            while True:
                digest = hashlib.blake2b(f"{seed}:{word}:{index}:{attempt}".encode(), digest_size=8).digest()
                key = str(4_500_000_000_000_000 + int.from_bytes(digest, "big") % 2_000_000_000_000_000)
                if key not in taken:
                    break
                attempt += 1
            taken.add(key)
            keys[word].append(key)
    return keys


def _timestamps(rng: np.random.Generator, n: int) -> list[str]:
    """Times in early 2017 in Google's format, e.g. '2017-01-25 03:11:35.55071 UTC'."""
    seconds = _EPOCH_2017 + rng.integers(0, 90 * 86400, n)
    fractions = rng.integers(1, 1_000_000, n)
    utc = datetime.timezone.utc
    return [
        datetime.datetime.fromtimestamp(int(s), tz=utc).strftime("%Y-%m-%d %H:%M:%S.")
        + f"{int(f):06d}".rstrip("0")
        + " UTC"
        for s, f in zip(seconds, fractions)
    ]


def _batch_rng(seed: int, word: str, batch: int) -> np.random.Generator:
    """One stream per (seed, class, batch): a class's drawings depend neither on the other classes
    made nor on how many are made (drawing i is the same for any per_class > i)."""
    return np.random.default_rng([seed, zlib.crc32(word.encode()), batch])


def class_records(word: str, seed: int, keys: Sequence[str]) -> tuple[list[bytes], list[bytes]]:
    """The raw and simplified ndjson lines of one class, one drawing per key."""
    raw_lines, simplified_lines = [], []
    for batch, first in enumerate(range(0, len(keys), _BATCH)):
        rng = _batch_rng(seed, word, batch)
        doodles = draw_batch(word, rng, _BATCH)  # always a full batch, so that a batch never depends on per_class
        countries = np.searchsorted(_COUNTRY_CDF, rng.random(_BATCH), side="right")
        stamps = _timestamps(rng, _BATCH)
        recognized = (np.array([d.sloppiness for d in doodles]) < 1.7) & (rng.random(_BATCH) > 0.03)
        wanted = keys[first : first + _BATCH]
        simplified = simplify_many([d.strokes for d in doodles[: len(wanted)]])
        for i, key in enumerate(wanted):
            head = {
                "word": word,
                "countrycode": _COUNTRIES[int(countries[i])],
                "timestamp": stamps[i],
                "recognized": bool(recognized[i]),
                "key_id": key,
            }
            xy_type = np.int64 if doodles[i].integer else np.float64
            raw = [
                [s[:, 0].astype(xy_type).tolist(), s[:, 1].astype(xy_type).tolist(), s[:, 2].astype(np.int64).tolist()]
                for s in doodles[i].strokes
            ]
            simple = [s.astype(np.int64).T.tolist() for s in simplified[i]]
            raw_lines.append(orjson.dumps({**head, "drawing": raw}) + b"\n")
            simplified_lines.append(orjson.dumps({**head, "drawing": simple}) + b"\n")
    return raw_lines, simplified_lines


def _write_class(out: pathlib.Path, word: str, seed: int, keys: Sequence[str]) -> int:
    """Write one class's two files (whole files at once); returns the number of drawings."""
    raw_lines, simplified_lines = class_records(word, seed, keys)
    (out / "raw" / f"{word}.ndjson").write_bytes(b"".join(raw_lines))
    (out / "simplified" / f"{word}.ndjson").write_bytes(b"".join(simplified_lines))
    return len(raw_lines)


def generate(
    out_dir: str | pathlib.Path,
    classes: Sequence[str] | None = None,
    per_class: int = 600,
    seed: int = 0,
    workers: int = 1,
) -> dict:
    """Write `per_class` drawings of each class to <out_dir>/raw/ and <out_dir>/simplified/.

    `workers` > 1 makes the classes in parallel (spawned) processes; the bytes do not depend on
    it. A script calling it so needs the usual `if __name__ == "__main__":` guard.
    Returns a summary: the classes, counts per class, num_drawings (their sum), file paths and the seconds taken.
    """
    names = list(SHAPES) if classes is None else list(classes)
    unknown = [name for name in names if name not in SHAPES]
    if unknown or not names:
        raise ValueError(
            f"Invalid value for argument `classes`. Received: {names!r}. "
            f"Expected a non-empty selection of {sorted(SHAPES)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"Invalid value for argument `classes`. Received: {names!r}. Names must not repeat.")
    if per_class < 1:
        raise ValueError(f"Invalid value for argument `per_class`. Received: {per_class}. Expected an integer >= 1.")
    if workers < 1:
        raise ValueError(f"Invalid value for argument `workers`. Received: {workers}. Expected an integer >= 1.")
    out = pathlib.Path(out_dir)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "simplified").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    keys = key_ids(seed, names, per_class)
    jobs = [(out, word, seed, keys[word]) for word in names]
    if workers == 1 or len(names) == 1:
        counts = [_write_class(*job) for job in jobs]
    else:  # spawn: safe even when the caller already runs TensorFlow threads
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(names)), mp_context=context) as pool:
            counts = list(pool.map(_write_class, *zip(*jobs)))
    return {
        "out": str(out),
        "seed": seed,
        "per_class": per_class,
        "classes": names,
        "counts": dict(zip(names, counts)),
        "num_drawings": sum(counts),
        "raw": {word: str(out / "raw" / f"{word}.ndjson") for word in names},
        "simplified": {word: str(out / "simplified" / f"{word}.ndjson") for word in names},
        "seconds": time.perf_counter() - start,
    }


def main(argv: Sequence[str]) -> int:
    """CLI: parse the SyntheticConfig flags, generate, print a one-line summary (or the flags, for --help)."""
    import configuration_sketch as cs

    usage = ("usage: python -m data_prep.synthetic --out DIR [--per_class N] [--seed S] [--classes a,b] "
             "[--workers N]\n\n" + __doc__.strip())
    parsed = cs.parse_command(argv, [cs.SyntheticConfig], "synthetic", usage)
    if isinstance(parsed, int):
        return parsed
    rest, flag_values = parsed
    if len(rest) > 1:
        print(f"synthetic: unexpected arguments {rest[1:]}", file=sys.stderr)
        return 2
    config = cs.from_flags(cs.SyntheticConfig, flag_values)
    classes = [c.strip() for c in config.classes.split(",") if c.strip()] or None
    try:
        summary = generate(config.out, classes=classes, per_class=config.per_class, seed=config.seed,
                           workers=config.workers)
    except (ValueError, OSError) as error:
        print(f"synthetic: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['num_drawings']} drawings ({len(summary['classes'])} classes x {config.per_class}) "
        f"to {config.out}/raw and {config.out}/simplified in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
