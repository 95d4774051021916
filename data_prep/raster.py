"""Strokes -> anti-aliased pixels with Google's numpy_bitmap recipe (skia fast path, cairo reference).

The recipe (Google's `vector_to_raster`, quickdraw-dataset issue #19): white round-capped,
round-joined lines `line_width` wide on black, in a `frame`-unit square (256) grown by
`padding` on each side plus half a line width, scaled to `image_size`; the drawing is
centred with offset (frame - max(x, y)) / 2, which assumes it already starts at 0 (as
simplified data does); each stroke is drawn (and composited) on its own.

`rasterize` draws with skia straight at the target size on a surface reused per thread;
`rasterize_cairo` is the recipe itself with cairo (cairocffi, a test dependency) and is what
the skia output is checked against. Coordinates may be anything finite: see `normalize`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence

import numpy as np
import skia

from configuration_sketch import RasterConfig

NORMALIZE_MODES = ("auto", "always", "never")
ORDER_STEP = 13  # channel 1: stroke i gets 255 - min(i, ORDER_STEPS) * ORDER_STEP
ORDER_STEPS = 10
TIME_START = 255  # channel 2: value TIME_START - TIME_SPAN * tau, tau in [0, 1]
TIME_SPAN = 200
FIT_TOLERANCE = 1 / 64  # of the frame (4 units of 256): slack for "already fitted" in normalize="auto"

_local = threading.local()


def _check_options(image_size: int, line_width: float, padding: float, frame: int, normalize: str) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"Invalid value for argument `image_size`. Received: {image_size!r}. "
                         "Expected a positive integer.")
    if not np.isfinite(line_width) or line_width <= 0:
        raise ValueError(f"Invalid value for argument `line_width`. Received: {line_width!r}. "
                         "Expected a finite number > 0.")
    if not np.isfinite(padding) or padding < 0:
        raise ValueError(f"Invalid value for argument `padding`. Received: {padding!r}. "
                         "Expected a finite number >= 0.")
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 2:
        raise ValueError(f"Invalid value for argument `frame`. Received: {frame!r}. Expected an integer >= 2.")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"Invalid value for argument `normalize`. Received: {normalize!r}. "
                         f"Expected one of {NORMALIZE_MODES}.")


def check_strokes(strokes: Sequence) -> list[np.ndarray]:
    """The strokes as arrays of shape (points, 2 or 3); ValueError naming the problem otherwise."""
    if strokes is None or len(strokes) == 0:
        raise ValueError("Invalid value for argument `strokes`. Received an empty drawing (no strokes). "
                         "Expected at least one stroke of at least one point.")
    arrays = []
    for i, stroke in enumerate(strokes):
        try:
            a = stroke if type(stroke) is np.ndarray else np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"Invalid stroke {i}: {e}. Expected an array of numbers (points, 2 or 3).") from e
        if a.ndim != 2 or a.shape[1] not in (2, 3) or a.shape[0] == 0:
            raise ValueError(f"Invalid stroke {i}: shape {a.shape}. Expected (points >= 1, 2) for x, y "
                             "or (points >= 1, 3) for x, y, t.")
        if a.dtype.kind not in "fiu":
            raise ValueError(f"Invalid stroke {i}: dtype {a.dtype}. Expected numbers.")
        arrays.append(a)
    return arrays


@dataclasses.dataclass
class Layout:
    """A drawing placed in the frame: xy strokes in frame units and the recipe's centring offset."""

    strokes: list[np.ndarray]  # (points, 2) each, frame units
    offset: tuple[float, float]  # (frame - max(x), frame - max(y)) / 2
    points: np.ndarray  # all points, (N, 2 or 3), as given (for time channels)


def layout(strokes: Sequence, frame: int = 256, normalize: str = "auto") -> Layout:
    """Check the strokes and place them in the `frame` square the recipe expects.

    normalize="never" keeps coordinates as given (Google's recipe exactly: its centring
    assumes the drawing starts at 0, 0). "always" first aligns the drawing to the top-left
    corner and scales it uniformly so its longer side spans 0..frame-1, what Google's
    simplification did to the raw data. "auto" (default) keeps drawings that are already so
    placed, to within FIT_TOLERANCE of the frame (top-left corner within it of the origin,
    longer side reaching within it of frame-1, nothing outside 0..frame-1), and fits all
    others: simplified data, whose extreme points Ramer-Douglas-Peucker sometimes dropped, is
    then drawn as given (8,575 of the 8,600 sample drawings) and matches numpy_bitmap, while
    raw data (screen pixels, possibly negative) is fitted like "always".
    """
    arrays = check_strokes(strokes)
    dims = arrays[0].shape[1]
    if any(a.shape[1] != dims for a in arrays):
        raise ValueError(f"Invalid value for argument `strokes`: mixed column counts "
                         f"{sorted({a.shape[1] for a in arrays})}. Expected all strokes (points, 2) or all (points, 3).")
    points = np.concatenate(arrays)
    lows = points.min(axis=0).tolist()
    highs = points.max(axis=0).tolist()
    if not all(math.isfinite(v) for v in lows + highs):  # min and max propagate nan and reach inf
        bad = next(i for i, a in enumerate(arrays) if not np.isfinite(a).all())
        raise ValueError(f"Invalid stroke {bad}: non-finite coordinates (nan or inf). Expected finite numbers.")
    (x0, y0), (x1, y1) = lows[:2], highs[:2]
    tol = FIT_TOLERANCE * frame
    fitted = min(x0, y0) >= 0 and max(x0, y0) <= tol and frame - 1 - tol <= max(x1, y1) <= frame - 1
    fit = normalize == "always" or (normalize == "auto" and not fitted)
    if fit:
        span = max(x1 - x0, y1 - y0)
        k = (frame - 1) / span if span > 0 else 1.0
        xy_strokes = [(a[:, :2] - (x0, y0)) * k for a in arrays]
        x1, y1 = (x1 - x0) * k, (y1 - y0) * k
    else:
        xy_strokes = [a[:, :2] for a in arrays] if dims == 3 else arrays
    return Layout(xy_strokes, ((frame - x1) / 2, (frame - y1) / 2), points)


def device_transform(offset: tuple[float, float], image_size: int, line_width: float, padding: float,
                     frame: int) -> tuple[float, float, float]:
    """(scale, tx, ty): device = scale * point + t, the recipe's scale, translate and centring."""
    total_padding = 2.0 * padding + line_width
    scale = image_size / (frame + total_padding)
    return scale, scale * (offset[0] + total_padding / 2), scale * (offset[1] + total_padding / 2)


class _Target:
    """One reusable skia surface over a numpy array, with its canvas and paint (one per thread and kind)."""

    def __init__(self, image_size: int, rgba: bool):
        if rgba:
            self.pixels = np.zeros((image_size, image_size, 4), np.uint8)
            self.surface = skia.Surface(self.pixels, colorType=skia.kRGBA_8888_ColorType,
                                        alphaType=skia.kPremul_AlphaType)
        else:
            self.pixels = np.zeros((image_size, image_size), np.uint8)
            self.surface = skia.Surface(self.pixels, colorType=skia.kAlpha_8_ColorType,
                                        alphaType=skia.kPremul_AlphaType)
        self.canvas = self.surface.getCanvas()
        self.paint = skia.Paint(AntiAlias=True, Style=skia.Paint.kStroke_Style, StrokeCap=skia.Paint.kRound_Cap,
                                StrokeJoin=skia.Paint.kRound_Join, Color=skia.ColorWHITE)
        self.background = skia.ColorBLACK if rgba else skia.ColorTRANSPARENT

    def begin(self, matrix: tuple[float, float, float], line_width: float) -> skia.Canvas:
        scale, tx, ty = matrix
        self.canvas.setMatrix(skia.Matrix.MakeAll(scale, 0, tx, 0, scale, ty, 0, 0, 1))
        self.canvas.clear(self.background)
        self.paint.setStrokeWidth(line_width)
        return self.canvas


def _target(image_size: int, rgba: bool) -> _Target:
    cache = getattr(_local, "targets", None)
    if cache is None:
        cache = _local.targets = {}
    key = (image_size, rgba)
    target = cache.get(key)
    if target is None:
        target = cache[key] = _Target(image_size, rgba)
    return target


def _draw_strokes(canvas: skia.Canvas, paint: skia.Paint, strokes: list[np.ndarray], colors=None) -> None:
    """One path per stroke: move_to the first point, line_to every point (a lone point makes a round dot)."""
    for i, stroke in enumerate(strokes):
        pts = stroke.tolist()
        path = skia.Path()
        line_to = path.lineTo
        x0, y0 = pts[0]
        path.moveTo(x0, y0)
        for x, y in pts:
            line_to(x, y)
        if colors is not None:
            paint.setColor(colors[i])
        canvas.drawPath(path, paint)


def order_values(num_strokes: int) -> np.ndarray:
    """Channel-1 value of each stroke: 255 - min(i, 10) * 13 (first stroke 255, the 11th on 125)."""
    return 255 - np.minimum(np.arange(num_strokes), ORDER_STEPS) * ORDER_STEP


def point_times(points: np.ndarray) -> np.ndarray:
    """tau in [0, 1] per point: (t - min t) / (max t - min t) when t is given and varies, else index / (N - 1)."""
    n = len(points)
    if points.shape[1] == 3:
        t = points[:, 2].astype(np.float64)
        span = t.max() - t.min()
        if span > 0:
            return (t - t.min()) / span
    return np.arange(n) / (n - 1) if n > 1 else np.zeros(n)


def time_values(tau: np.ndarray) -> np.ndarray:
    """Channel-2 value from tau: round(255 - 200 * tau), so the drawing's start is 255 and its end 55."""
    return np.rint(TIME_START - TIME_SPAN * tau).astype(np.int64)


def _draw_time(canvas: skia.Canvas, paint: skia.Paint, strokes: list[np.ndarray], tau: np.ndarray) -> None:
    """Channel 2: each segment drawn alone in grey from the mean tau of its two ends, in drawing order."""
    start = 0
    draw_line, set_color = canvas.drawLine, paint.setColor
    for stroke in strokes:
        n = len(stroke)
        t = tau[start:start + n]
        start += n
        if n == 1:
            ends, values = np.concatenate([stroke, stroke], axis=1), time_values(t)
        else:
            ends, values = np.concatenate([stroke[:-1], stroke[1:]], axis=1), time_values((t[:-1] + t[1:]) / 2)
        colors = (0xFF000000 | values * 0x010101).tolist()
        for (xa, ya, xb, yb), color in zip(ends.tolist(), colors):
            set_color(color)
            draw_line(xa, ya, xb, yb, paint)


def _render_into(out: np.ndarray, strokes: Sequence, image_size: int, line_width: float, padding: float,
                 frame: int, time_channels: bool, normalize: str) -> None:
    placed = layout(strokes, frame, normalize)
    matrix = device_transform(placed.offset, image_size, line_width, padding, frame)
    if not time_channels:
        target = _target(image_size, False)
        _draw_strokes(target.begin(matrix, line_width), target.paint, placed.strokes)
        out[...] = target.pixels
        return
    target = _target(image_size, True)
    colors = [skia.Color(255, v, 0) for v in order_values(len(placed.strokes)).tolist()]
    _draw_strokes(target.begin(matrix, line_width), target.paint, placed.strokes, colors)
    out[..., :2] = target.pixels[..., :2]
    _draw_time(target.begin(matrix, line_width), target.paint, placed.strokes, point_times(placed.points))
    out[..., 2] = target.pixels[..., 0]


def rasterize(strokes: Sequence, image_size: int = 28, line_width: float = 16.0, padding: float = 16.0,
              frame: int = 256, time_channels: bool = False, normalize: str = "auto") -> np.ndarray:
    """One drawing as an (image_size, image_size) uint8 image, white strokes on black.

    strokes: arrays (points, 2) x, y or (points, 3) x, y, t (Drawing.strokes). line_width and
    padding are in frame units (frame=256 as Google). With time_channels the result is
    (image_size, image_size, 3):
      channel 0: the plain strokes (the 1-channel image);
      channel 1: stroke order: stroke i drawn in 255 - min(i, 10) * 13, later strokes over
        earlier ones (255, 242, ..., 125 from the 11th stroke on);
      channel 2: time: each segment drawn on its own in round(255 - 200 * tau), tau the mean of
        its two ends' normalised times; a lone point uses its own tau. tau = (t - min t) /
        (max t - min t) over the drawing when the strokes carry t that varies, else the point's
        index over all points / (points - 1). The start is 255 and the end 55.
    Raises ValueError for an empty drawing, an empty or misshapen stroke, non-finite numbers
    or invalid options.
    """
    _check_options(image_size, line_width, padding, frame, normalize)
    out = np.empty((image_size, image_size, 3) if time_channels else (image_size, image_size), np.uint8)
    _render_into(out, strokes, image_size, line_width, padding, frame, time_channels, normalize)
    return out


def rasterize_moved(strokes: Sequence, shift_px: float, image_size: int = 28, line_width: float = 16.0,
                    padding: float = 16.0, frame: int = 256, normalize: str = "auto") -> np.ndarray:
    """`rasterize`'s plain image with the placed drawing moved `shift_px` pixels right and down (no refit):
    how much a model's answers depend on sub-pixel position (bench.render_agreement)."""
    _check_options(image_size, line_width, padding, frame, normalize)
    placed = layout(strokes, frame, normalize)
    scale, tx, ty = device_transform(placed.offset, image_size, line_width, padding, frame)
    target = _target(image_size, False)
    _draw_strokes(target.begin((scale, tx + shift_px, ty + shift_px), line_width), target.paint, placed.strokes)
    return target.pixels.copy()


def rasterize_many(drawings: Sequence[Sequence], image_size: int = 28, line_width: float = 16.0,
                   padding: float = 16.0, frame: int = 256, time_channels: bool = False,
                   normalize: str = "auto") -> np.ndarray:
    """Many drawings as one (N, H, W) (or (N, H, W, 3)) uint8 array; a bad drawing raises naming its index."""
    _check_options(image_size, line_width, padding, frame, normalize)
    shape = (len(drawings), image_size, image_size) + ((3,) if time_channels else ())
    out = np.empty(shape, np.uint8)
    for i, strokes in enumerate(drawings):
        try:
            _render_into(out[i], strokes, image_size, line_width, padding, frame, time_channels, normalize)
        except ValueError as e:
            raise ValueError(f"drawing {i}: {e}") from e
    return out


RASTER_OPTIONS = ("image_size", "line_width", "padding", "frame", "time_channels", "normalize")


def rasterize_with(strokes: Sequence, config: RasterConfig) -> np.ndarray:
    """`rasterize` with the settings of a RasterConfig."""
    return rasterize(strokes, **{name: getattr(config, name) for name in RASTER_OPTIONS})


def rasterize_cairo(strokes: Sequence, image_size: int = 28, line_width: float = 16.0, padding: float = 16.0,
                    frame: int = 256, normalize: str = "auto") -> np.ndarray:
    """The reference: Google's vector_to_raster recipe with cairo, step for step (slow; tests and benchmarks).

    ARGB32 surface, ANTIALIAS_BEST, round caps and joins, scale then translate by half the
    total padding, paint black, then per stroke move_to + line_to every point and stroke() in
    white; one channel of the result. Needs cairocffi (requirements-dev.txt).
    """
    import cairocffi as cairo

    _check_options(image_size, line_width, padding, frame, normalize)
    placed = layout(strokes, frame, normalize)
    surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, image_size, image_size)
    ctx = cairo.Context(surface)
    ctx.set_antialias(cairo.ANTIALIAS_BEST)
    ctx.set_line_cap(cairo.LINE_CAP_ROUND)
    ctx.set_line_join(cairo.LINE_JOIN_ROUND)
    ctx.set_line_width(line_width)
    total_padding = 2.0 * padding + line_width
    scale = image_size / (frame + total_padding)
    ctx.scale(scale, scale)
    ctx.translate(total_padding / 2, total_padding / 2)
    ctx.set_source_rgb(0, 0, 0)
    ctx.paint()
    ctx.set_source_rgb(1, 1, 1)
    ox, oy = placed.offset
    for stroke in placed.strokes:
        pts = stroke.tolist()
        ctx.move_to(pts[0][0] + ox, pts[0][1] + oy)
        for x, y in pts:
            ctx.line_to(x + ox, y + oy)
        ctx.stroke()
    surface.flush()
    data = np.frombuffer(surface.get_data(), np.uint8).reshape(image_size, surface.get_stride())
    return data[:, 0:4 * image_size:4].copy()
