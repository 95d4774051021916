"""Photo edge maps (data_prep.edges): geometry on drawn shapes, non-maximum suppression against a loop,
and the Sketchy build's --photo_edges on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep import edges, image_folder


def square_photo(size: int = 128, lo: int = 40, hi: int = 220) -> np.ndarray:
    """A dark square (rows and columns 32..95) on light ground, RGB uint8."""
    image = np.full((size, size, 3), hi, np.uint8)
    image[32:96, 32:96] = lo
    return image


@pytest.mark.parametrize("method", ["canny", "gradient"])
def test_a_square_becomes_its_outline_on_white_paper(method):
    out = edges.edge_map(square_photo(), method)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 2]).all()  # grey, like the sketches
    ink = out[..., 0] < 128
    rows, cols = np.nonzero(ink)
    assert rows.min() >= 28 and rows.max() <= 99 and cols.min() >= 28 and cols.max() <= 99  # at the border
    assert not ink[40:88, 40:88].any() and not ink[:24].any() and not ink[104:].any()  # nothing inside or out
    assert ink[30:34, 64].any() and ink[94:98, 64].any() and ink[64, 30:34].any() and ink[64, 94:98].any()
    # each side drawn as one line 1 to 2 widths wide, not a smear
    assert 1 <= ink[20:40, 64].sum() <= 2 * edges.line_width(128)


def test_flat_and_grey_images_are_handled():
    flat = np.full((64, 64, 3), 128, np.uint8)
    for method in ("canny", "gradient"):
        assert (edges.edge_map(flat, method) == 255).all()  # no edge, no ink
        grey = square_photo(64)[..., :1]
        assert edges.edge_map(grey, method).shape == (64, 64, 3)


def test_contrast_does_not_change_the_lines():
    """Thresholds are percentiles of the photo's own gradients: a dull copy gives the same lines (up to
    how rounding breaks ties between equal neighbours along the thinned edge)."""
    for method in ("canny", "gradient"):
        strong = edges.edge_map(square_photo(lo=20, hi=235), method)[..., 0] < 128
        dull = edges.edge_map(square_photo(lo=110, hi=150), method)[..., 0] < 128
        assert (strong == dull).mean() > 0.97 and abs(int(strong.sum()) - int(dull.sum())) < 0.15 * dull.sum()


def test_non_maximum_suppression_equals_a_loop():
    rng = np.random.default_rng(0)
    magnitude = rng.random((9, 11)).astype(np.float32)
    gx = rng.standard_normal((9, 11)).astype(np.float32)
    gy = rng.standard_normal((9, 11)).astype(np.float32)
    expected = np.zeros_like(magnitude)
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    for y in range(9):
        for x in range(11):
            angle = np.degrees(np.arctan2(gy[y, x], gx[y, x])) % 180
            dy, dx = steps[int((angle + 22.5) // 45) % 4]

            def at(r, c):
                return magnitude[r, c] if 0 <= r < 9 and 0 <= c < 11 else 0.0

            if magnitude[y, x] >= at(y + dy, x + dx) and magnitude[y, x] >= at(y - dy, x - dx):
                expected[y, x] = magnitude[y, x]
    np.testing.assert_array_equal(edges.non_maximum_suppression(magnitude, gx, gy), expected)


def test_an_unknown_method_is_one_clear_error():
    with pytest.raises(ValueError, match=r"argument `photo_edges`. Received: 'sobel'"):
        edges.check_method("sobel")


def test_the_sketchy_build_stores_photos_as_edge_maps_and_sketches_as_they_are(sketchy_dir, tmp_path):
    """--photo_edges canny on real photos: every photo record is the edge map of its source resized as
    the build resizes (computed here from the file), sketches are untouched, and the info says so."""
    from configuration_sketch import SketchyBuildConfig
    from data_prep import sketchy
    from tests.test_sketchy import read_split

    tree = tmp_path / "src"
    for part in ("photo", "sketch"):
        (tree / part).mkdir(parents=True)
        for name in ("apple", "cat"):
            (tree / part / name).symlink_to(sketchy_dir / part / name, target_is_directory=True)
    out = tmp_path / "edges"
    info = sketchy.build(SketchyBuildConfig(source=str(tree), out=str(out), image_size=32, workers=1, shards=1,
                                            photo_edges="canny"), progress=False)
    assert info["photo_edges"] == "canny" and "canny edge maps" in info["description"]
    rows = read_split(out, "test", images=True)
    assert {r["domain"] for r in rows} == {"photo", "sketch"}
    for row in rows:
        data = (tree / row["source"]).read_bytes()
        pixels = np.asarray(Image.open(tree / row["source"]).convert("RGB"))
        if row["domain"] == "photo":
            expected = image_folder.resize_square(edges.edge_map(pixels, "canny"), 32)
            assert (row["image"][..., 0] == row["image"][..., 2]).all()
        else:
            expected = image_folder.stored_image(data, "sketch", 32, 3, "raw", 95)
        np.testing.assert_array_equal(row["image"], expected)
    photos = np.stack([r["image"] for r in rows if r["domain"] == "photo"]).astype(np.float32)
    sketches = np.stack([r["image"] for r in rows if r["domain"] == "sketch"]).astype(np.float32)
    # mostly white paper with some ink, as the sketches are (mean ink within a factor 3 of theirs)
    ink_photo, ink_sketch = (255 - photos).mean(), (255 - sketches).mean()
    assert ink_sketch / 3 < ink_photo < ink_sketch * 3, (ink_photo, ink_sketch)
