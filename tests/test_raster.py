"""data_prep.raster against the cairo reference (Google's recipe) on real Quick, Draw! drawings."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib

import numpy as np
import pytest

from configuration_sketch import RasterConfig
from data_prep import raster

SIZES = (28, 64, 128, 224, 256)
# Mean absolute difference (0..255) from the cairo reference over the 200 drawings below: the
# average as measured (1.68, 0.81, 0.45, 0.25, 0.22) with some slack (2.0 is the requirement at
# every size), and the worst single drawing (measured 4.85, 1.93, 1.13, 0.67, 0.50).
MAX_MAD = {28: 1.9, 64: 1.0, 128: 0.6, 224: 0.35, 256: 0.3}
MAX_MAD_ONE = {28: 5.5, 64: 2.3, 128: 1.4, 224: 0.8, 256: 0.6}


def _read(path: pathlib.Path, limit: int | None = None) -> dict[str, list[np.ndarray]]:
    """key_id -> strokes as (points, 2 or 3) float32 arrays, like Drawing.strokes."""
    drawings = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            drawings[record["key_id"]] = [np.array(s, dtype=np.float32).T for s in record["drawing"]]
            if limit is not None and len(drawings) >= limit:
                break
    return drawings


@pytest.fixture(scope="module")
def simplified(quickdraw_dir) -> list[list[np.ndarray]]:
    """200 real simplified drawings: the first of each of the first 200 categories."""
    files = sorted((quickdraw_dir / "simplified").glob("*.ndjson"))
    drawings = [next(iter(_read(p, 1).values())) for p in files[:200]]
    assert len(drawings) == 200
    return drawings


@pytest.fixture(scope="module")
def raw_pairs(quickdraw_dir) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """(raw, simplified) strokes of one key_id: the first pair of every third category, then the
    first 20 pairs whose raw coordinates happen to lie inside 0..255 (114 in the sample)."""
    regular, in_frame = [], []
    for i, path in enumerate(sorted((quickdraw_dir / "simplified").glob("*.ndjson"))):
        simp = _read(path)
        raw = _read(quickdraw_dir / "raw" / path.name)
        keys = [k for k in simp if k in raw]
        if i % 3 == 0:
            regular.append((raw[keys[0]], simp[keys[0]]))
        for k in keys:
            xy = np.concatenate(raw[k])[:, :2]
            if len(in_frame) < 20 and xy.min() >= 0 and xy.max() <= 255:
                in_frame.append((raw[k], simp[k]))
    assert len(regular) == 115 and len(in_frame) == 20
    return regular + in_frame


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _line(y: float = 0.0, t: list[float] | None = None, n: int = 11) -> list[np.ndarray]:
    """One horizontal stroke across the frame, optionally with times."""
    x = np.linspace(0, 255, n)
    columns = [x, np.full(n, y)] + ([np.asarray(t, float)] if t is not None else [])
    return [np.stack(columns, axis=1)]


@pytest.mark.parametrize("size", SIZES)
def test_shape_and_dtype(simplified, size):
    image = raster.rasterize(simplified[0], size)
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert image.max() == 255 and image.min() == 0
    batch = raster.rasterize_many(simplified[:3], size, time_channels=True)
    assert batch.shape == (3, size, size, 3) and batch.dtype == np.uint8


@pytest.mark.parametrize("size", SIZES)
def test_matches_cairo_reference(simplified, size):
    skia_images = raster.rasterize_many(simplified, size)
    cairo_images = np.stack([raster.rasterize_cairo(d, size) for d in simplified])
    mad = _mad(skia_images, cairo_images)
    assert mad <= MAX_MAD[size], f"mean abs difference {mad:.3f} at {size} px"
    per_drawing = np.abs(skia_images.astype(np.int16) - cairo_images).mean(axis=(1, 2))
    assert per_drawing.max() <= MAX_MAD_ONE[size]
    ink = skia_images.astype(np.float64).sum() / cairo_images.astype(np.float64).sum()
    assert abs(ink - 1) < 0.01


def test_rasterize_moved_by_nothing_is_rasterize_and_by_whole_pixels_a_shifted_image(simplified):
    for drawing in simplified[:20]:
        image = raster.rasterize(drawing, image_size=40, padding=48.0)  # wide margins: nothing reaches the border
        assert np.array_equal(raster.rasterize_moved(drawing, 0.0, image_size=40, padding=48.0), image)
        moved = raster.rasterize_moved(drawing, 2.0, image_size=40, padding=48.0)
        assert np.array_equal(moved[2:, 2:], image[:-2, :-2]) and not moved[:2].any() and not moved[:, :2].any()


def test_rasterize_many_equals_rasterize(simplified):
    batch = raster.rasterize_many(simplified[:20], 64)
    for image, strokes in zip(batch, simplified[:20]):
        np.testing.assert_array_equal(image, raster.rasterize(strokes, 64))


def test_accepts_lists_and_integers(simplified):
    strokes = simplified[5]
    expected = raster.rasterize(strokes, 28)
    np.testing.assert_array_equal(raster.rasterize([s.tolist() for s in strokes], 28), expected)
    np.testing.assert_array_equal(raster.rasterize([s.astype(np.int32) for s in strokes], 28), expected)


def test_rasterize_with_config(simplified):
    config = RasterConfig(image_size=64, line_width=8.0, time_channels=True)
    image = raster.rasterize_with(simplified[1], config)
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(image[..., 0], raster.rasterize(simplified[1], 64, line_width=8.0))


def test_reference_geometry():
    """A horizontal line across the frame: the recipe's ink area and placement, in both renderers."""
    size, width, padding = 256, 16.0, 16.0
    scale = size / (256 + 2 * padding + width)
    expected_ink = (255 * width + np.pi * (width / 2) ** 2) * scale**2
    expected_row = (128 + (2 * padding + width) / 2) * scale - 0.5  # centred vertically: (256 - 0) / 2
    expected_col = (127.5 + 0.5 + (2 * padding + width) / 2) * scale - 0.5  # x offset (256 - 255) / 2
    for image in (raster.rasterize(_line(), size), raster.rasterize_cairo(_line(), size)):
        weights = image.astype(np.float64) / 255
        assert weights.sum() == pytest.approx(expected_ink, rel=0.01)
        rows, cols = np.indices(image.shape)
        assert (weights * rows).sum() / weights.sum() == pytest.approx(expected_row, abs=0.05)
        assert (weights * cols).sum() / weights.sum() == pytest.approx(expected_col, abs=0.05)


def test_raw_matches_simplified(raw_pairs):
    """Raw screen coordinates (floats, negative, > 255, or inside 0..255 but elsewhere) are fitted
    like Google's simplification fitted them; t is ignored outside the time channels."""
    raws = [np.concatenate(r) for r, _ in raw_pairs]
    assert all(r.shape[1] == 3 for r in raws)
    assert sum(r[:, :2].min() < 0 for r in raws) >= 3 and sum(r[:, :2].max() > 255 for r in raws) >= 100
    assert sum(np.any(r[:, :2] % 1 != 0) for r in raws) >= 30
    raw_images = raster.rasterize_many([r for r, _ in raw_pairs], 28)
    simp_images = raster.rasterize_many([s for _, s in raw_pairs], 28)
    per_pair = np.abs(raw_images.astype(np.int16) - simp_images).mean(axis=(1, 2))
    # Measured 3.3 on average, 8.1 at worst: RDP with epsilon 2 and 1-px resampling move lines by
    # up to ~0.2 px at 28 px; the in-frame raw drawings (the last 20) do as well (3.0, 5.7).
    assert per_pair.mean() <= 4.0 and per_pair.max() <= 10.0
    assert per_pair[-20:].mean() <= 4.0
    unrelated = np.abs(raw_images.astype(np.int16) - np.roll(simp_images, 1, axis=0)).mean()
    assert unrelated > 5 * per_pair.mean()


def test_normalize_modes(simplified):
    fitted = next(d for d in simplified if np.concatenate(d).min(axis=0).tolist() == [0, 0]
                  and np.concatenate(d).max() == 255)
    reference = raster.rasterize(fitted, 64)
    moved = [s * 3.0 - 500.0 for s in fitted]  # what raw screen coordinates look like
    assert _mad(raster.rasterize(moved, 64), reference) < 0.01
    assert _mad(raster.rasterize(moved, 64, normalize="always"), reference) < 0.01
    assert _mad(raster.rasterize(moved, 64, normalize="never"), reference) > 5
    # Inside the frame but not placed at the origin: auto fits it, never draws it as given.
    small = [s * 0.5 + 60 for s in fitted]
    assert _mad(raster.rasterize(small, 64), reference) < 0.01
    assert _mad(raster.rasterize(small, 64, normalize="never"), reference) > 5
    # Already placed (within FIT_TOLERANCE): auto and never agree, always rescales.
    nudged = [s * (252 / 255) + 2 for s in fitted]
    np.testing.assert_array_equal(raster.rasterize(nudged, 64), raster.rasterize(nudged, 64, normalize="never"))
    assert _mad(raster.rasterize(nudged, 64, normalize="always"), reference) < 0.01


def test_single_point_stroke_draws_a_dot():
    image = raster.rasterize([np.array([[0.0, 0.0]])], 64)
    cairo = raster.rasterize_cairo([np.array([[0.0, 0.0]])], 64)
    assert image.max() == 255 and 5 <= np.count_nonzero(image) <= 30
    assert _mad(image, cairo) < 1.0
    rows, cols = np.nonzero(image)
    assert rows.mean() == pytest.approx(31.5, abs=0.5) and cols.mean() == pytest.approx(31.5, abs=0.5)
    three = raster.rasterize([np.array([[0.0, 0.0]])], 64, time_channels=True)
    np.testing.assert_array_equal(three[..., 0], image)
    np.testing.assert_array_equal(three[..., 1], image)  # first stroke: 255
    np.testing.assert_array_equal(three[..., 2], image)  # tau 0: 255
    frame = _line(0.0) + _line(255.0)  # fixes the placement, so adding the dot moves nothing
    added = raster.rasterize(frame + [np.array([[128.0, 128.0]])], 64).astype(int) - raster.rasterize(frame, 64)
    assert added.min() == 0
    assert added.sum() / 255 == pytest.approx(np.pi * (8 * 64 / 304) ** 2, rel=0.15)
    rows, cols = np.nonzero(added)
    centre = (128 + 0.5 + 24) * 64 / 304 - 0.5
    assert rows.mean() == pytest.approx(centre, abs=0.5) and cols.mean() == pytest.approx(centre, abs=0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates_raise(bad):
    strokes = _line()
    strokes.append(np.array([[10.0, 20.0], [bad, 5.0]]))
    with pytest.raises(ValueError, match="stroke 1: non-finite"):
        raster.rasterize(strokes)


@pytest.mark.parametrize("strokes, message", [
    ([], "empty drawing"),
    ([np.zeros((0, 2))], "stroke 0: shape"),
    ([np.zeros((3, 4))], "stroke 0: shape"),
    ([np.zeros(5)], "stroke 0: shape"),
    ([np.zeros((2, 2)), np.zeros((2, 3))], "mixed column counts"),
    ([np.array([["a", "b"]])], "stroke 0: dtype"),
    ([[[1.0, 2.0]], [["a", "b"]]], "stroke 1: could not convert"),
    ([[[1.0, 2.0], [3.0]]], "stroke 0: .*inhomogeneous"),
])
def test_invalid_strokes_raise(strokes, message):
    with pytest.raises(ValueError, match=message):
        raster.rasterize(strokes)


def test_rasterize_many_names_the_bad_drawing(simplified):
    with pytest.raises(ValueError, match="drawing 2: .*empty drawing"):
        raster.rasterize_many([simplified[0], simplified[1], [], simplified[2]])


@pytest.mark.parametrize("option, value", [
    ("image_size", 0), ("image_size", 2.5), ("line_width", 0.0), ("line_width", np.nan),
    ("padding", -1.0), ("frame", 1), ("normalize", "sometimes"),
])
def test_invalid_options_raise(option, value):
    with pytest.raises(ValueError, match=f"`{option}`"):
        raster.rasterize(_line(), **{option: value})


def test_line_width_and_padding(simplified):
    for strokes in simplified[:20]:
        thin = raster.rasterize(strokes, 64, line_width=8.0).sum()
        normal = raster.rasterize(strokes, 64).sum()
        thick = raster.rasterize(strokes, 64, line_width=32.0).sum()
        assert thin < normal < thick
        tight = raster.rasterize(strokes, 64, padding=0.0)
        loose = raster.rasterize(strokes, 64, padding=64.0)
        assert tight.sum() > normal > loose.sum()
        assert np.count_nonzero(loose[:, :8]) == 0 and np.count_nonzero(loose[:, -8:]) == 0
    # padding 0: the line's outer edge touches the border
    assert raster.rasterize(_line(), 64, padding=0.0)[:, 0].max() > 100


def test_order_channel_values():
    """Twelve separate vertical strokes: channel 1 holds 255 - min(i, 10) * 13 on each."""
    xs = np.linspace(0, 255, 12)
    strokes = [np.array([[x, 0.0], [x, 255.0]]) for x in xs]
    image = raster.rasterize(strokes, 256, line_width=8.0, time_channels=True)
    scale = 256 / (256 + 2 * 16 + 8)
    columns = np.floor((xs + 0.5 + 20) * scale).astype(int)  # offset (256 - 255) / 2, translate 40 / 2
    values = image[128, columns, 1].tolist()
    assert values == raster.order_values(12).tolist()
    assert values[:3] == [255, 242, 229] and values[-2:] == [125, 125]
    assert image[128, columns, 0].tolist() == [255] * 12


def test_order_channel_on_real_drawings(simplified):
    """On the pixels under its points the last stroke holds its own order value, the first a brighter one."""
    size, checked = 128, 0  # line half-width 3.4 px: the pixel under a point is fully covered
    for strokes in simplified:
        n = len(strokes)
        if n < 3:
            continue
        image = raster.rasterize(strokes, size, time_channels=True)
        placed = raster.layout(strokes)
        scale, tx, ty = raster.device_transform(placed.offset, size, 16.0, 16.0, 256)
        first, last = (np.floor(s * scale + (tx, ty)).astype(int) for s in (placed.strokes[0], placed.strokes[-1]))
        last_values = image[last[:, 1], last[:, 0], 1]
        first_values = image[first[:, 1], first[:, 0], 1]
        assert np.all(last_values == raster.order_values(n)[-1])
        assert first_values.mean() > last_values.mean() + 13
        assert np.all(image[first[:, 1], first[:, 0], 0] == 255)
        checked += 1
    assert checked > 100


def test_time_channel_follows_t_or_index():
    """Channel 2 along a line drawn left to right: 255 at the start, 55 at the end, shaped by t."""
    row = 128  # the line's centre: (0 + (256 - 0) / 2 + 24) * 256 / 304 = 128.0
    inside = slice(28, 228)  # frame x 8.8 to 246.3: between the round caps
    by_index = raster.rasterize(_line(), 256, time_channels=True)[row, inside, 2].astype(int)
    assert by_index[0] == 245 and by_index[-1] == 65  # first and last of 10 segments: tau 0.05 and 0.95
    assert np.all(np.diff(by_index) <= 0) and len(np.unique(by_index)) >= 10
    # all points in the first 9 ms but the last: the line is early (bright) until its last segment
    t = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1000]
    by_time = raster.rasterize(_line(t=t), 256, time_channels=True)[row, inside, 2].astype(int)
    middle = len(by_time) // 2
    assert by_time[middle] >= 250 and by_index[middle] < 170
    assert by_time[-1] == 154  # last segment: tau (0.009 + 1) / 2
    np.testing.assert_array_equal(
        raster.rasterize(_line(t=t), 256, time_channels=True)[..., :2],
        raster.rasterize(_line(), 256, time_channels=True)[..., :2])


def test_time_values_encoding():
    np.testing.assert_array_equal(raster.time_values(np.array([0.0, 0.5, 1.0])), [255, 155, 55])
    np.testing.assert_allclose(raster.point_times(np.array([[0, 0, 10], [1, 1, 30], [2, 2, 20]], float)),
                               [0.0, 1.0, 0.5])
    np.testing.assert_allclose(raster.point_times(np.zeros((5, 2))), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(raster.point_times(np.zeros((3, 3))), [0, 0.5, 1])  # constant t: by index
    np.testing.assert_array_equal(raster.point_times(np.zeros((1, 2))), [0.0])


def test_threads_get_their_own_surface(simplified):
    expected = raster.rasterize_many(simplified[:40], 28)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda d: raster.rasterize(d, 28), simplified[:40]))
    np.testing.assert_array_equal(np.stack(got), expected)
