"""serving.preprocess: decoding, resizing and polarity against independent references.

References: PIL (EXIF transpose, alpha compositing, GIF/BMP/JPEG decoding, the image-folder
builder's data_prep.image_folder.load_image) and OpenCV (data_prep.image_folder.resize_square).
Images are real: Quick, Draw! drawings rendered by data_prep.raster and Sketchy photos/sketches.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import orjson
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from data_prep.image_folder import load_image, resize_square
from data_prep.raster import rasterize
from serving import preprocess
from serving.export import training_polarity

CATEGORIES = ["apple", "cat", "house", "tree"]


def drawings(quickdraw_dir, per_class=6, categories=CATEGORIES):
    """Real simplified drawings as lists of (points, 2) strokes."""
    out = []
    for name in categories:
        for line in (quickdraw_dir / "simplified" / f"{name}.ndjson").read_bytes().splitlines()[:per_class]:
            out.append([np.asarray(s[:2], np.float32).T for s in orjson.loads(line)["drawing"]])
    return out


def rendered(quickdraw_dir, size=28, per_class=6):
    """uint8 [N, size, size] renderings: white strokes on black, as the data builder draws."""
    return np.stack([rasterize(d, image_size=size) for d in drawings(quickdraw_dir, per_class)])


def encode(array, fmt, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **options)
    return buf.getvalue()


def decode(data: bytes, channels: int) -> np.ndarray:
    """serving.preprocess.decode_one in 0..255 floats."""
    return preprocess.decode_one(tf.constant(data), channels).numpy() * 255.0


def pil_pixels(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode), np.float32)


def sketchy_files(sketchy_dir, every=250):
    photos = sorted((sketchy_dir / "photo").glob("*/*.jpg"))[::every]
    sketches = sorted((sketchy_dir / "sketch").glob("*/*.png"))[::every]
    return photos + sketches


def big_endian_exif_jpeg(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 segment holding a Motorola (big-endian) TIFF header whose one IFD
    entry is the orientation, as phone cameras write it (PIL itself writes little-endian)."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_exif_orientation_equals_pil_exif_transpose(quickdraw_dir):
    """Each orientation 1-8 (PIL's little-endian EXIF and a big-endian header) turns the image as
    PIL.ImageOps.exif_transpose does; the 8 results are distinct, so a wrong turn cannot pass."""
    image = rendered(quickdraw_dir, size=48, per_class=1)[0][:, 6:40]  # 48 x 34: not square
    jpeg = encode(image, "JPEG", quality=95)
    seen = set()
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for data in (encode(image, "JPEG", quality=95, exif=exif.tobytes()), big_endian_exif_jpeg(jpeg, orientation)):
            expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"), np.float32)
            ours = decode(data, 1)[..., 0]
            assert ours.shape == expected.shape, orientation
            np.testing.assert_allclose(ours, expected, atol=0.01)  # same libjpeg decoding, accurate DCT
        seen.add(ours.tobytes())
    assert len(seen) == 8
    assert preprocess.exif_orientation(tf.constant(encode(image, "PNG"))).numpy() == 1
    assert preprocess.exif_orientation(tf.constant(b"\xff\xd8\xff\xe1\x00\x08Exif\x00\x00MM")).numpy() == 1


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.float64).reshape(64, 64) * (65535 / (64 * 64 - 1))).astype(np.uint16)
    data = encode(ramp, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    ours = decode(data, 1)[..., 0] / 255.0
    np.testing.assert_allclose(ours, ramp / 65535.0, atol=1e-6)
    assert abs(ours.mean() - 0.5) < 1e-3 and ours.max() == pytest.approx(1.0)
    assert len(np.unique(np.round(ours * 65535))) == 64 * 64  # every 16-bit level kept, none clipped
    three = decode(data, 3) / 255.0
    np.testing.assert_allclose(three, np.repeat(ramp[..., None] / 65535.0, 3, -1), atol=1e-6)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "JPEG", "GIF"])
def test_eight_bit_formats_equal_pil(fmt):
    """White stays 1.0 in every format (decode_image(dtype=uint16) once scaled 8-bit GIF, BMP and
    JPEG by 256, giving 0.996), and pixels equal PIL's decoding of the same bytes."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    data = encode(ramp, fmt)
    ours = decode(data, 1)[..., 0]
    # GIF decodes to RGB here and is converted to grey in floats; PIL reads it as palette indices.
    np.testing.assert_allclose(ours, pil_pixels(data, "L"), atol=0.05)
    assert ours.max() == pytest.approx(255.0, abs=0.05) and ours.min() == 0.0


def test_low_depth_and_palette_pngs_equal_pil(quickdraw_dir):
    """1-bit and 4-colour palette PNGs of a real drawing decode as PIL reads them."""
    drawing = rendered(quickdraw_dir, size=32, per_class=1)[0]
    for image in (Image.fromarray(drawing > 127), Image.fromarray(drawing).quantize(4)):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        data = buf.getvalue()
        assert data[24] in (1, 2), data[24]  # the IHDR bit depth PIL chose
        np.testing.assert_allclose(decode(data, 1)[..., 0], pil_pixels(data, "L"), atol=0.51)


def test_jpeg_decoding_equals_pil_on_real_photos(sketchy_dir):
    """Colour JPEG photos decode as PIL decodes them (TF's default fast DCT differed by 5 levels)."""
    for path in sketchy_files(sketchy_dir, every=200)[:8]:
        data = path.read_bytes()
        np.testing.assert_allclose(decode(data, 3), pil_pixels(data, "RGB"), atol=0.01, err_msg=str(path))


def test_alpha_composited_on_a_contrasting_ground(quickdraw_dir):
    """Dark strokes on transparent land on white, light strokes on black, as PIL's alpha_composite
    onto that ground; grey+alpha (LA) and palette PNGs with a transparent index alike."""
    strokes = rendered(quickdraw_dir, size=40, per_class=1)[:2]
    for alpha in strokes:
        for ink, ground in ((0, 255), (255, 0)):
            rgba = np.zeros(alpha.shape + (4,), np.uint8)
            rgba[..., :3], rgba[..., 3] = ink, alpha
            expected = Image.alpha_composite(Image.new("RGBA", rgba.shape[1::-1], (ground,) * 3 + (255,)),
                                             Image.fromarray(rgba))
            expected = np.asarray(expected.convert("L"), np.float32)
            for image in (Image.fromarray(rgba), Image.fromarray(rgba).convert("LA")):
                buf = io.BytesIO()
                image.save(buf, "PNG")
                np.testing.assert_allclose(decode(buf.getvalue(), 1)[..., 0], expected, atol=0.51)
            assert np.all(decode(encode(rgba, "PNG"), 1)[alpha == 0] == ground)
    paletted = np.zeros((16, 16, 4), np.uint8)
    paletted[4:12, 7:9, 3] = 255  # black bar, everything else transparent
    buf = io.BytesIO()
    Image.fromarray(paletted).quantize(4).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "P"
    ours = decode(buf.getvalue(), 1)[..., 0]
    assert np.all(ours[4:12, 7:9] == 0) and np.all(ours[:4] == 255)


def test_gif_first_frame_and_bmp(quickdraw_dir):
    first, second = rendered(quickdraw_dir, size=32, per_class=1)[:2]
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, "GIF", save_all=True, append_images=[Image.fromarray(second)])
    data = buf.getvalue()
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    np.testing.assert_allclose(decode(data, 1)[..., 0], pil_pixels(data, "L"), atol=0.05)
    assert np.abs(decode(data, 1)[..., 0] - second).max() > 100  # not the second frame
    colour = np.stack([first, second, 255 - first], -1)
    bmp = encode(colour, "BMP")
    np.testing.assert_allclose(decode(bmp, 3), colour, atol=0.01)
    np.testing.assert_allclose(decode(encode(first, "BMP"), 1)[..., 0], first, atol=0.01)


def test_grey_png_to_three_channels_and_colour_to_grey(quickdraw_dir):
    grey = rendered(quickdraw_dir, size=28, per_class=1)[0]
    three = decode(encode(grey, "PNG"), 3)
    np.testing.assert_allclose(three, np.repeat(grey[..., None].astype(np.float32), 3, -1), atol=0.01)
    colour = np.stack([grey, 255 - grey, grey // 2], -1)
    data = encode(colour, "PNG")
    # ITU-R 601 luma like PIL's "L", which rounds to integers: within half a grey level.
    np.testing.assert_allclose(decode(data, 1)[..., 0], pil_pixels(data, "L"), atol=0.51)


def cv2_float(image: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's resize of float pixels with the builder's rule (no uint8 rounding)."""
    interpolation = cv2.INTER_AREA if size < max(image.shape[:2]) else cv2.INTER_CUBIC
    out = cv2.resize(image.astype(np.float32), (size, size), interpolation=interpolation)
    return np.clip(out.reshape(size, size, -1), 0, 255)


def test_resize_equals_the_builders_opencv_resize(quickdraw_dir, sketchy_dir):
    """Area averaging to shrink, OpenCV's bicubic to enlarge: against cv2 on floats within 0.01 grey
    level (same arithmetic), and within 0.51 of the builder's uint8 resize_square (its rounding).
    A non-square image that shrinks on one side and grows on the other takes OpenCV's 2-tap
    INTER_AREA kernel, whose uint8 fixed-point path truncates: within 1 grey level there.
    Inputs: real Sketchy photos and sketches (128 px) and 256 px Quick, Draw! renderings."""
    images = [load_image(p.read_bytes(), 1)[0] for p in sketchy_files(sketchy_dir)]
    images += list(rendered(quickdraw_dir, size=256, per_class=1)[..., None])
    images.append(images[0][10:110, 30:90])  # not square: 100 x 60
    for image in images:
        for size in (28, 64, 100, 160, 300):
            ours = preprocess.model_input(tf.constant(image[None]), size, 1).numpy()[0] * 255.0
            assert ours.shape == (size, size, 1)
            np.testing.assert_allclose(ours, cv2_float(image, size), atol=0.01)
            square = image.shape[0] == image.shape[1]
            np.testing.assert_allclose(ours, resize_square(image, size), atol=0.51 if square else 1.0)
    tf_bicubic = tf.image.resize(tf.constant(images[0][None], tf.float32), [300, 300], method="bicubic").numpy()[0]
    assert np.abs(tf_bicubic - cv2_float(images[0], 300)).max() > 2  # the check can tell the kernels apart


def test_resize_keeps_the_model_size_untouched(quickdraw_dir):
    image = rendered(quickdraw_dir, size=28, per_class=1)[:1, ..., None]
    expected = image.astype(np.float32) * np.float32(1 / 255)  # model_input's own scaling, bit for bit
    np.testing.assert_array_equal(preprocess.model_input(tf.constant(image), 28, 1).numpy(), expected)


def expected_polarity(x, image_is_light_ground, trained, policy):
    if policy == "invert":
        return 1.0 - x
    if policy == "as_is" or trained == "as_is":
        return x
    wrong = image_is_light_ground if trained == "white_on_black" else not image_is_light_ground
    return 1.0 - x if wrong else x


@pytest.mark.parametrize("trained", preprocess.TRAINED_POLARITIES)
def test_polarity_policies(quickdraw_dir, trained):
    """Every policy on white-on-black and black-on-white real drawings, per trained polarity."""
    white_on_black = rendered(quickdraw_dir, size=28, per_class=2)[..., None]
    for light_ground, images in ((False, white_on_black), (True, 255 - white_on_black)):
        x = images.astype(np.float32) / 255.0
        for policy in preprocess.POLICIES:
            ours = preprocess.model_input(tf.constant(images), 28, 1, trained=trained, policy=policy).numpy()
            np.testing.assert_allclose(ours, expected_polarity(x, light_ground, trained, policy), atol=1e-6,
                                       err_msg=f"{trained} {policy} light_ground={light_ground}")


def test_invalid_polarity_is_an_error(quickdraw_dir):
    images = tf.constant(rendered(quickdraw_dir, size=28, per_class=1)[:2, ..., None])
    with pytest.raises(tf.errors.InvalidArgumentError, match="polarity must be one of auto, as_is, invert"):
        preprocess.model_input(images, 28, 1, trained="white_on_black", policy="inverted")
    with pytest.raises(ValueError, match="Invalid value for argument `trained`"):
        preprocess.model_input(images, 28, 1, trained="dark", policy="auto")


def test_border_mean_is_the_outer_ring(sketchy_dir):
    images = np.stack([load_image(p.read_bytes(), 3)[0] for p in sketchy_files(sketchy_dir)]) / 255.0
    grey = images.mean(-1)
    ring = np.ones(grey.shape[1:], bool)
    ring[1:-1, 1:-1] = False
    np.testing.assert_allclose(preprocess.border_mean(tf.constant(images, tf.float32)).numpy(),
                               grey[:, ring].mean(1), atol=1e-6)


def test_training_polarity_of_real_drawings(quickdraw_dir):
    drawn = rendered(quickdraw_dir, size=28, per_class=6)[..., None].astype(np.float32) / 255.0
    assert training_polarity(drawn) == "white_on_black"
    assert training_polarity(1.0 - drawn) == "black_on_white"
    assert training_polarity(np.concatenate([drawn[::2], 1.0 - drawn[1::2]])) == "as_is"
    assert training_polarity(np.concatenate([drawn, 1.0 - drawn[:1]])) == "white_on_black"  # 1 in 25 is noise


def test_training_pipeline_decodes_stored_jpegs_as_serving_and_pil_do(sketchy_dir):
    """Stored photos (the image-folder builder's JPEGs) decode bit for bit as PIL does in the
    tf.data pipeline too; its default fast DCT differed by up to 5 grey levels from serving."""
    from data_prep.image_folder import encode_image
    from data_prep.pipeline import decode_images
    from data_prep.tfrecords import FeatureSpec

    for path in sketchy_files(sketchy_dir, every=200)[:6]:
        pixels, _, _ = load_image(path.read_bytes(), 3)
        stored = encode_image(resize_square(pixels, 64), "photo", 90)
        assert stored[:3] == b"\xff\xd8\xff"
        decoded = decode_images(tf.constant([stored]), FeatureSpec("bytes", "uint8", (64, 64, 3), "png|jpeg", ""))
        np.testing.assert_array_equal(decoded.numpy()[0], pil_pixels(stored, "RGB"))
        np.testing.assert_allclose(decoded.numpy()[0], decode(stored, 3), atol=1e-3)
