"""data_prep.raster_tf against data_prep.raster (skia) on real Quick, Draw! drawings; padding, XLA, bad input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from data_prep import quickdraw_build, raster, raster_tf, tfrecords

# Mean absolute difference (0..255) from skia, the bounds. Measured over the fixtures below
# (channel 0 / order / time): simplified 2.41 / 2.16 / 1.48 at 28 px, 1.00 / 0.91 / 0.62 at 64,
# 0.50 / 0.46 / 0.33 at 128; raw 2.33 / 2.14 / 1.83 at 28 (0.94 / 0.87 / 0.69 at 64).
MAX_MAD = {28: 3.0, 64: 2.0, 128: 2.0}


@functools.cache
def _compiled(image_size: int, time_channels: bool, normalize: str = "auto"):
    return tf.function(functools.partial(raster_tf.rasterize_batch, image_size=image_size,
                                         time_channels=time_channels, normalize=normalize), jit_compile=True)


def _tf_images(drawings, image_size: int, time_channels: bool = True, normalize: str = "auto") -> np.ndarray:
    batch = raster_tf.pad_drawings(drawings)
    return _compiled(image_size, time_channels, normalize)(batch.points, batch.stroke_ids, batch.num_points).numpy()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def fidelity(simplified, raw):
    """(kind, size) -> (XLA images, mean abs difference from skia per channel, ink ratio), each computed once."""
    fixtures = {"simplified": simplified, "raw": raw}

    @functools.cache
    def measure(kind: str, size: int) -> tuple[np.ndarray, list[float], float]:
        drawings = fixtures[kind]
        ours = _tf_images(drawings, size)
        plain = raster.rasterize_many(drawings, size)
        timed = raster.rasterize_many(drawings, size, time_channels=True)
        assert ours.shape == (len(drawings), size, size, 3) and ours.dtype == np.uint8
        mads = [_mad(ours[..., 0], plain), _mad(ours[..., 1], timed[..., 1]), _mad(ours[..., 2], timed[..., 2])]
        return ours, mads, float(ours[..., 0].astype(np.float64).sum() / plain.sum())

    return measure


@pytest.mark.parametrize("size", [28, 64, 128])
def test_simplified_matches_skia(fidelity, size):
    _, mads, ink = fidelity("simplified", size)
    assert max(mads) <= MAX_MAD[size], f"mean abs difference from skia at {size} px (ink, order, time): {mads}"
    assert abs(ink - 1) < 0.02


def test_raw_matches_skia(fidelity):
    """Raw screen coordinates are fitted (normalize="auto") and t drives the time channel, as in skia."""
    _, mads, ink = fidelity("raw", 28)
    assert max(mads) <= MAX_MAD[28], f"mean abs difference from skia at 28 px (ink, order, time): {mads}"
    assert abs(ink - 1) < 0.02


def test_plain_equals_channel_0_and_xla_equals_eager(fidelity, raw):
    jit = fidelity("raw", 28)[0][:24]
    batch = raster_tf.pad_drawings(raw[:24])
    eager = raster_tf.rasterize_batch(batch.points, batch.stroke_ids, batch.num_points, 28, time_channels=True)
    np.testing.assert_array_equal(jit, eager.numpy())
    plain = raster_tf.rasterize_batch(batch.points, batch.stroke_ids, batch.num_points, 28)
    np.testing.assert_array_equal(plain.numpy()[..., 0], eager.numpy()[..., 0])


@pytest.mark.parametrize("normalize", ["always", "never"])
def test_normalize_modes_match_skia(simplified, normalize):
    moved = [[s * 0.5 + 60 for s in d] for d in simplified[:40]]
    ours = raster_tf.rasterize_drawings(moved, image_size=64, normalize=normalize)[..., 0]
    assert _mad(ours, raster.rasterize_many(moved, 64, normalize=normalize)) <= MAX_MAD[64]


def test_auto_keeps_fitted_drawings(simplified):
    """Drawings already placed within FIT_TOLERANCE are drawn as given, others fitted: as raster.layout."""
    nudged = [[s * (252 / 255) + 2 for s in d] for d in simplified[:20]]
    auto = raster_tf.rasterize_drawings(nudged, image_size=64)
    np.testing.assert_array_equal(auto, raster_tf.rasterize_drawings(nudged, image_size=64, normalize="never"))
    assert _mad(auto, raster_tf.rasterize_drawings(nudged, image_size=64, normalize="always")) > 0.5


def test_padding_changes_nothing(simplified):
    """Each drawing alone, in a batch of others of different lengths, and with garbage after num_points."""
    drawings = simplified[:12]
    together = raster_tf.rasterize_drawings(drawings, image_size=28, time_channels=True)
    for i in (0, 5, 11):
        np.testing.assert_array_equal(raster_tf.rasterize_drawings([drawings[i]], image_size=28,
                                                                   time_channels=True)[0], together[i])
    batch = raster_tf.pad_drawings(drawings)
    extra = 37
    points = np.concatenate([batch.points, np.full((12, extra, 2), np.nan, np.float32)], axis=1)
    points[:, -5:] = 1e9
    ids = np.concatenate([batch.stroke_ids, np.arange(extra, dtype=np.int32)[None].repeat(12, 0)], axis=1)
    padded = raster_tf.rasterize_batch(points, ids, batch.num_points, 28, time_channels=True)
    np.testing.assert_array_equal(padded.numpy(), together)


def test_pad_records_equals_pad_drawings(raw):
    """The records' form (flat points + stroke lengths, as parsed) draws the same images."""
    drawings = raw[:6] + [[np.array([[5.0, 5.0, 0.0]], np.float32)]]
    flat = tf.ragged.constant([np.concatenate(d).reshape(-1).tolist() for d in drawings], tf.float32)
    lengths = tf.ragged.constant([[len(s) for s in d] for d in drawings], tf.int64)
    batch = raster_tf.pad_records(flat, lengths, 3, max_points=300)
    expected = raster_tf.pad_drawings(drawings, max_points=300)
    np.testing.assert_array_equal(batch.num_points.numpy(), expected.num_points)
    np.testing.assert_array_equal(batch.truncated.numpy(), expected.truncated)
    assert batch.points.shape == (7, 300, 3)
    images = raster_tf.rasterize_batch(*batch[:3], 28, time_channels=True).numpy()
    np.testing.assert_array_equal(images, raster_tf.rasterize_drawings(drawings, 300, image_size=28,
                                                                       time_channels=True))


def test_pad_records_reads_parsed_examples(raw):
    """Serialized records parsed with the data set's own feature spec (VarLenFeature: sparse) draw the same."""
    drawings = raw[6:10]
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "strokes/points": tf.train.Feature(float_list=tf.train.FloatList(value=np.concatenate(d).reshape(-1))),
        "strokes/lengths": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(s) for s in d])),
    })).SerializeToString() for d in drawings]
    spec = tfrecords.parse_spec(quickdraw_build.feature_specs(28, 1), ["strokes/points", "strokes/lengths"])
    parsed = tf.io.parse_example(examples, spec)
    assert isinstance(parsed["strokes/points"], tf.SparseTensor)
    batch = raster_tf.pad_records(parsed["strokes/points"], parsed["strokes/lengths"], 3)
    np.testing.assert_array_equal(raster_tf.rasterize_batch(*batch[:3], 28).numpy(),
                                  raster_tf.rasterize_drawings(drawings, image_size=28))


def test_tf_data_map_draws_the_same(raw):
    """In a tf.data map (a graph without XLA, batch size unknown, a partial last batch): the eager images."""
    drawings = raw[10:20]
    flat = tf.ragged.constant([np.concatenate(d).reshape(-1).tolist() for d in drawings], tf.float32)
    lengths = tf.ragged.constant([[len(s) for s in d] for d in drawings], tf.int64)

    def render(points, stroke_lengths):
        batch = raster_tf.pad_records(points, stroke_lengths, 3, max_points=1024)
        return raster_tf.rasterize_batch(*batch[:3], 28, time_channels=True)

    images = tf.data.Dataset.from_tensor_slices((flat, lengths)).batch(4).map(render)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x in images]),
                                  raster_tf.rasterize_drawings(drawings, 1024, image_size=28, time_channels=True))


def test_eager_calls_keep_t_after_calls_without_it(simplified):
    """Eager calls share relaxed graphs; one traced for x, y points must not make t ignored later."""
    raster_tf.rasterize_drawings(simplified[:2], image_size=28, time_channels=True)
    line = np.stack([np.linspace(0, 255, 9), np.zeros(9), [0, 1, 2, 3, 4, 5, 6, 7, 800]], axis=1)
    timed = [line.astype(np.float32)]
    ours = raster_tf.rasterize_drawings([timed], image_size=28, time_channels=True)[0]
    assert _mad(ours[..., 2], raster.rasterize(timed, 28, time_channels=True)[..., 2]) < 1.0


def test_lone_points_are_dots():
    dot = [np.array([[0.0, 0.0]], np.float32)]
    ours = raster_tf.rasterize_drawings([dot], image_size=64, time_channels=True)[0]
    assert _mad(ours[..., 0], raster.rasterize(dot, 64)) < 1.0
    np.testing.assert_array_equal(ours[..., 1], ours[..., 0])  # first stroke: 255
    np.testing.assert_array_equal(ours[..., 2], ours[..., 0])  # tau 0: 255
    mixed = [np.array([[0.0, 0.0], [255.0, 255.0]]), np.array([[200.0, 30.0]]), np.array([[40.0, 220.0]])]
    assert _mad(raster_tf.rasterize_drawings([mixed], image_size=64, time_channels=True)[0],
                raster.rasterize(mixed, 64, time_channels=True)) < 1.0


def test_empty_drawings_are_black_and_leave_others_alone(simplified):
    images = raster_tf.rasterize_drawings([[], simplified[0], [np.zeros((0, 2))]], image_size=28)
    assert not images[0].any() and not images[2].any()
    np.testing.assert_array_equal(images[1], raster_tf.rasterize_drawings([simplified[0]], image_size=28)[0])
    points = np.zeros((2, 4, 2), np.float32)
    out = raster_tf.rasterize_batch(points, np.zeros((2, 4), np.int32), [-3, 0], 28, time_channels=True)
    assert not out.numpy().any()


def test_non_finite_points_are_dropped_and_counted(simplified):
    drawing = simplified[3]
    spoiled = [np.insert(drawing[0], 1, [[np.nan, 4.0], [np.inf, 1.0]], axis=0)] + drawing[1:]
    spoiled.append(np.array([[np.nan, -np.inf]], np.float32))
    batch = raster_tf.pad_drawings([drawing, spoiled])
    assert raster_tf.non_finite_points(batch.points, batch.num_points).numpy().tolist() == [0, 3]
    images = raster_tf.rasterize_batch(*batch[:3], 64, time_channels=True).numpy()
    np.testing.assert_array_equal(images[1][..., :2], images[0][..., :2])
    assert _mad(images[1][..., 2], images[0][..., 2]) < 0.5  # tau by index counts the 3 dropped points' slots


def test_cap_truncates_and_counts(raw):
    drawing = max(raw, key=lambda d: sum(len(s) for s in d))
    total = sum(len(s) for s in drawing)
    batch = raster_tf.pad_drawings([drawing], max_points=100)
    assert batch.points.shape[1] == 100 and batch.truncated.tolist() == [total - 100]
    kept, left = [], 100
    for s in drawing:
        if left > 0:
            kept.append(s[:left])
        left -= len(s)
    np.testing.assert_array_equal(raster_tf.rasterize_drawings([drawing], max_points=100, image_size=28),
                                  raster_tf.rasterize_drawings([kept], image_size=28))


@pytest.mark.parametrize("normalize", ["auto", "never"])
def test_absurd_coordinates_do_not_crash(simplified, normalize):
    huge = [[s * 1e30 - 3e37 for s in simplified[0]], [np.array([[1e38, -1e38], [-3e38, 3e38]], np.float32)]]
    images = raster_tf.rasterize_drawings(huge, image_size=28, time_channels=True, normalize=normalize)
    assert images.shape == (2, 28, 28, 3)
    if normalize == "auto":
        assert images[0, ..., 0].any()


def test_float64_and_integer_points_draw_the_same(simplified):
    batch = raster_tf.pad_drawings(simplified[:2])
    expected = raster_tf.rasterize_batch(*batch[:3], 28).numpy()
    for points in (batch.points.astype(np.float64), batch.points.astype(np.int32), tf.constant(batch.points, tf.float64)):
        np.testing.assert_array_equal(raster_tf.rasterize_batch(points, *batch[1:3], 28).numpy(), expected)


def test_num_points_beyond_width_is_clipped(simplified):
    batch = raster_tf.pad_drawings(simplified[:1])
    out = raster_tf.rasterize_batch(batch.points, batch.stroke_ids, batch.num_points + 1000, 28)
    np.testing.assert_array_equal(out.numpy(), raster_tf.rasterize_drawings(simplified[:1], image_size=28))


@pytest.mark.parametrize("options, message", [
    ({"image_size": 0}, "image_size"),
    ({"line_width": -1.0}, "line_width"),
    ({"normalize": "fit"}, "normalize"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        raster_tf.rasterize_batch(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2), np.int32), [2], **options)


def test_bad_points_shape_raises():
    with pytest.raises(ValueError, match="points"):
        raster_tf.rasterize_batch(np.zeros((1, 2, 4), np.float32), np.zeros((1, 2), np.int32), [2])


@functools.cache
def _compiled_method(image_size: int, method: str, normalize: str = "auto"):
    return tf.function(functools.partial(raster_tf.rasterize_batch, image_size=image_size, method=method,
                                         normalize=normalize, dtype=tf.float32), jit_compile=True)


@pytest.mark.parametrize("size", [28, 64, 128])
def test_culled_equals_dense(simplified, edge_cases, size):
    """The culling renderer draws the dense renderer's plain image: real drawings and edge cases, under XLA."""
    drawings = simplified + edge_cases
    batch = raster_tf.pad_drawings(drawings)
    dense = _compiled_method(size, "dense")(*batch[:3]).numpy()
    culled = _compiled_method(size, "culled")(*batch[:3]).numpy()
    assert np.isfinite(culled).all()
    difference = np.abs(culled - dense)
    assert difference.max() <= 1.0 and difference.mean() < 1e-3, (difference.max(), difference.mean())
    rounded = np.abs(np.round(culled).astype(np.int16) - np.round(dense).astype(np.int16))
    assert rounded.max() <= 1 and (rounded > 0).mean() < 1e-4
    assert not culled[-2:].any()  # empty drawings are black


def test_culled_without_xla_and_bad_input(simplified, raw, edge_cases):
    """Eagerly (a graph without XLA) the culling renderer draws what it draws under XLA; absurd and
    non-finite coordinates draw something finite, never raise; ids and padding behave as in the dense path."""
    drawings = simplified[:6] + raw[:3] + edge_cases
    batch = raster_tf.pad_drawings(drawings, dims=2)
    eager = raster_tf.rasterize_batch(*batch[:3], 28, method="culled").numpy()
    jit = np.round(_compiled_method(28, "culled")(*batch[:3]).numpy()).astype(np.uint8)
    assert np.abs(eager.astype(np.int16) - jit).max() <= 1
    dense = raster_tf.rasterize_batch(*batch[:3], 28).numpy()
    assert np.abs(eager.astype(np.int16) - dense).max() <= 1
    huge = [[s * 1e30 - 3e37 for s in simplified[0]], [np.array([[1e38, -1e38], [-3e38, 3e38]], np.float32)]]
    for normalize in ("auto", "never"):
        out = raster_tf.rasterize_drawings(huge, image_size=28, normalize=normalize, method="culled")
        np.testing.assert_array_equal(out, raster_tf.rasterize_drawings(huge, image_size=28, normalize=normalize))
    with pytest.raises(ValueError, match="method"):
        raster_tf.rasterize_batch(*batch[:3], 28, method="fast")


def test_auto_culls_under_xla_only(simplified):
    """method="auto" (the default) draws the plain image with the culling renderer under XLA, and with the
    dense one in a graph without XLA and with time channels."""
    batch = raster_tf.pad_drawings(simplified[:16])
    np.testing.assert_array_equal(_compiled_method(28, "auto")(*batch[:3]).numpy(),
                                  _compiled_method(28, "culled")(*batch[:3]).numpy())
    eager = raster_tf.rasterize_batch(*batch[:3], 28, dtype=tf.float32).numpy()
    np.testing.assert_array_equal(eager, raster_tf.rasterize_batch(*batch[:3], 28, dtype=tf.float32,
                                                                   method="dense").numpy())
    assert raster_tf._in_xla() is False
