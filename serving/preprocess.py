"""The one preprocessing from an image to model input, in TensorFlow ops.

The training input pipeline (data_prep.pipeline), every SavedModel endpoint, the TFLite model,
the retrieval tools and the batch job all call `model_input` (pixels) or `decode_encoded`
(PNG, JPEG, GIF, BMP bytes), so what a model sees in serving is what it saw in training.

- Pixels become float32 in [0, 1]: uint8 / 255, uint16 / 65535 (16-bit images are scaled, never
  clipped), floats as they are.
- Images of another size are resized to the model's square with the rule of the data builder
  (data_prep.image_folder.resize_square): area averaging to shrink, bicubic to enlarge.
- Polarity: a model records what it was trained on (`TRAINED_POLARITIES`); a request's policy
  (`POLICIES`) is 'as_is', 'invert', or 'auto', which inverts an image whose border is light when
  the model learned light strokes on a dark ground (Quick, Draw!), and the other way round.
- Encoded images: EXIF orientation applied (JPEG), alpha composited onto a ground that contrasts
  with the opaque pixels (dark strokes on transparent -> white ground), grey/colour to C channels.
"""

from __future__ import annotations

import tensorflow as tf

TRAINED_POLARITIES = ("white_on_black", "black_on_white", "as_is")
POLICIES = ("auto", "as_is", "invert")
# A training set counts as one polarity when this share of its images has a border at most
# DARK_BORDER (white_on_black) or at least 1 - DARK_BORDER (black_on_white); else 'as_is'.
POLARITY_SHARE = 0.95
DARK_BORDER = 0.25
EXIF_ORIENTATION_TAG = 0x0112
MAX_EXIF_ENTRIES = 64
LUMA = (0.299, 0.587, 0.114)
PNG_MAGIC = b"\x89PNG"
PNG_DEPTH_OFFSET = 24  # the bit-depth byte of the IHDR chunk, which a PNG must start with
JPEG_MAGIC = b"\xff\xd8\xff"


def to_unit_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 / 255, uint16 / 65535, float as is: float32 in [0, 1] for valid input."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (1.0 / 255.0)
    if images.dtype == tf.uint16:
        return tf.cast(images, tf.float32) * (1.0 / 65535.0)
    return tf.cast(images, tf.float32)


def to_grey(x: tf.Tensor) -> tf.Tensor:
    """Float RGB [..., 3] -> grey [..., 1] with ITU-R 601 luma (PIL's "L"); weights summing to 1
    keep white at 1.0 (tf.image.rgb_to_grayscale's sum to 0.9999)."""
    return tf.reduce_sum(x * tf.constant(LUMA, x.dtype), axis=-1, keepdims=True)


def convert_channels(x: tf.Tensor, channels: int | None) -> tf.Tensor:
    """Float images [..., H, W, C] with C in (1, 3) to `channels` (None keeps them)."""
    have = x.shape[-1]
    if channels is None or have == channels:
        return x
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(x)
    if have == 3 and channels == 1:
        return to_grey(x)
    raise ValueError(f"Cannot convert {have} channels to {channels}.")


def resize_square(x: tf.Tensor, size: int) -> tf.Tensor:
    """Float images [B, H, W, C] -> [B, size, size, C]: unchanged at that size, area averaging to
    shrink, bicubic (clipped to [0, 1]) to enlarge: the data builder's rule (cv2.resize with
    INTER_AREA when size < max(H, W), else INTER_CUBIC), kernel for kernel."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    shape = tf.shape(x)
    height, width = shape[1], shape[2]

    def area():
        return tf.image.resize(x, [size, size], method="area")

    def area_linear():
        rows, cols = area_linear_matrix(height, size), area_linear_matrix(width, size)
        return tf.einsum("yh,bhwc,xw->byxc", rows, x, cols)

    def shrink():
        # OpenCV averages areas only when neither side grows; else it uses a 2-tap kernel.
        return tf.cond(tf.minimum(height, width) >= size, area, area_linear)

    def enlarge():
        rows, cols = cubic_matrix(height, size), cubic_matrix(width, size)
        return tf.clip_by_value(tf.einsum("yh,bhwc,xw->byxc", rows, x, cols), 0.0, 1.0)

    def resize():
        return tf.cond(tf.maximum(height, width) > size, shrink, enlarge)

    same = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
    out = tf.cond(same, lambda: tf.identity(x), resize)
    return tf.ensure_shape(out, [None, size, size, x.shape[-1]])


def area_linear_matrix(source: tf.Tensor, size: int) -> tf.Tensor:
    """[size, source] weights of OpenCV's INTER_AREA when one side shrinks and the other grows:
    two taps per output pixel, at floor(i * scale) and the next source pixel (replicated border),
    the second weighted by the fraction of the output pixel past the first's end."""
    source = tf.cast(source, tf.int32)
    scale = tf.cast(source, tf.float64) / float(size)
    i = tf.range(size, dtype=tf.float64)
    first = tf.floor(i * scale)
    fraction = (i + 1) - (first + 1) / scale
    fraction = tf.cast(tf.where(fraction <= 0, tf.zeros_like(fraction), fraction - tf.floor(fraction)), tf.float32)
    index = tf.cast(first, tf.int32)
    second = tf.minimum(index + 1, source - 1)
    return (tf.one_hot(index, source) * (1.0 - fraction)[:, None]
            + tf.one_hot(second, source) * fraction[:, None])


def cubic_matrix(source: tf.Tensor, size: int, a: float = -0.75) -> tf.Tensor:
    """[size, source] weights of OpenCV's INTER_CUBIC (Keys kernel a = -0.75, half-pixel centres,
    replicated border), so enlarging here matches the builder's cv2.resize; TF's bicubic uses
    a = -0.5 and differs by up to 20 grey levels."""
    source = tf.cast(source, tf.int32)
    scale = tf.cast(source, tf.float32) / float(size)
    f = (tf.range(size, dtype=tf.float32) + 0.5) * scale - 0.5
    first = tf.floor(f)
    t = f - first
    weights = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
               ((a + 2) * t - (a + 3)) * t * t + 1,
               ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    weights.append(1.0 - weights[0] - weights[1] - weights[2])
    matrix = tf.zeros([size, source])
    for k, w in zip(range(-1, 3), weights):
        index = tf.clip_by_value(tf.cast(first, tf.int32) + k, 0, source - 1)
        matrix += tf.one_hot(index, source) * w[:, None]
    return matrix


def border_mean(x: tf.Tensor) -> tf.Tensor:
    """[B] mean grey level of the outer one-pixel ring of float images [B, H, W, C]."""
    grey = tf.reduce_mean(x, axis=-1)
    ring = tf.concat([grey[:, 0, :], grey[:, -1, :], grey[:, 1:-1, 0], grey[:, 1:-1, -1]], axis=1)
    return tf.reduce_mean(ring, axis=1)


def _check_policy(policy: tf.Tensor) -> tf.Tensor:
    known = tf.reduce_any(tf.equal(policy, tf.constant(POLICIES)))
    message = f"polarity must be one of {', '.join(POLICIES)}; received:"
    with tf.control_dependencies([tf.debugging.Assert(known, [message, policy])]):
        return tf.identity(policy)


def apply_polarity(x: tf.Tensor, trained: str, policy) -> tf.Tensor:
    """Invert float images [B, H, W, C] as `policy` says for a model trained on `trained`."""
    if trained not in TRAINED_POLARITIES:
        raise ValueError(f"Invalid value for argument `trained`. Received: {trained!r}. "
                         f"Expected one of {TRAINED_POLARITIES}.")
    policy = _check_policy(tf.convert_to_tensor(policy, tf.string))
    border = border_mean(x)
    if trained == "white_on_black":
        wrong_way = border > 0.5
    elif trained == "black_on_white":
        wrong_way = border < 0.5
    else:
        wrong_way = tf.zeros_like(border, tf.bool)
    invert = tf.logical_or(tf.equal(policy, "invert"), tf.logical_and(tf.equal(policy, "auto"), wrong_way))
    return tf.where(invert[:, None, None, None], 1.0 - x, x)


def model_input(images: tf.Tensor, image_size: int | None, channels: int | None = None, *,
                trained: str = "as_is", policy="as_is") -> tf.Tensor:
    """Pixels [B, H, W, C] (uint8, uint16 or float in [0, 1]) -> float32 model input
    [B, image_size, image_size, channels]; None keeps the size or the channels."""
    x = convert_channels(to_unit_float(images), channels)
    if image_size is not None:
        x = resize_square(x, image_size)
    if policy == "as_is":  # the training pipeline: no polarity work at all
        return x
    return apply_polarity(x, trained, policy)


def _u16(data: tf.Tensor, at: tf.Tensor, big_endian: tf.Tensor) -> tf.Tensor:
    hi, lo = tf.gather(data, at), tf.gather(data, at + 1)
    return tf.where(big_endian, hi * 256 + lo, lo * 256 + hi)


def _u32(data: tf.Tensor, at: tf.Tensor, big_endian: tf.Tensor) -> tf.Tensor:
    hi, lo = _u16(data, at, big_endian), _u16(data, at + 2, big_endian)
    return tf.where(big_endian, hi * 65536 + lo, lo * 65536 + hi)


def exif_orientation(encoded: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of one JPEG's bytes, 1 when it has none or it is unreadable."""
    parts = tf.strings.split(encoded, sep=b"Exif\x00\x00", maxsplit=1)
    tiff = tf.strings.substr(parts[-1], 0, 1 << 16)
    found = tf.size(parts) > 1
    raw = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int64)
    length = tf.size(raw, out_type=tf.int64)
    # Reads past the end land on a zero byte appended here, so a short or broken header reads as 0.
    data = tf.concat([raw, tf.zeros([4], tf.int64)], 0)
    clip = lambda at: tf.clip_by_value(at, 0, length)  # noqa: E731 - index guard
    big_endian = tf.equal(_u16(data, clip(tf.constant(0, tf.int64)), tf.constant(True)), 0x4D4D)
    ifd = _u32(data, clip(tf.constant(4, tf.int64)), big_endian)
    count = _u16(data, clip(ifd), big_endian)
    starts = ifd + 2 + 12 * tf.range(MAX_EXIF_ENTRIES, dtype=tf.int64)
    tags = _u16(data, clip(starts), big_endian)
    values = _u16(data, clip(starts + 8), big_endian)
    hit = tf.logical_and(tf.equal(tags, EXIF_ORIENTATION_TAG), tf.range(MAX_EXIF_ENTRIES, dtype=tf.int64) < count)
    value = tf.reduce_max(tf.where(hit, values, 0))
    valid = tf.logical_and(found, tf.logical_and(value >= 1, value <= 8))
    return tf.cast(tf.where(valid, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """One image [H, W, C] turned upright for its EXIF orientation (PIL.ImageOps.exif_transpose)."""
    transpose = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,  # 1
        lambda: tf.reverse(image, [1]),  # 2 mirrored
        lambda: tf.reverse(image, [0, 1]),  # 3 rotated 180
        lambda: tf.reverse(image, [0]),  # 4 flipped
        transpose,  # 5
        lambda: tf.reverse(transpose(), [1]),  # 6 rotate 90 clockwise
        lambda: tf.reverse(transpose(), [0, 1]),  # 7 transverse
        lambda: tf.reverse(transpose(), [0]),  # 8 rotate 90 counter-clockwise
    ]
    return tf.switch_case(orientation - 1, branches)


def composite_alpha(x: tf.Tensor) -> tf.Tensor:
    """Float [H, W, 2 or 4] (grey or colour with alpha) -> [H, W, 1 or 3] on a contrasting ground:
    white when the opaque pixels are dark on average, black when they are light."""
    colour, alpha = x[..., :-1], x[..., -1:]
    weight = tf.reduce_sum(alpha)
    ink = tf.reduce_sum(tf.reduce_mean(colour, -1, keepdims=True) * alpha) / tf.maximum(weight, 1e-6)
    ground = tf.where(ink > 0.5, 0.0, 1.0)
    return colour * alpha + ground * (1.0 - alpha)


def decode_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """One PNG, JPEG, GIF (first frame) or BMP -> float32 [H, W, 1..4] in [0, 1] as stored.

    16-bit PNGs are read at 16 bits, everything else at 8 (so 8-bit pixels become v / 255 exactly
    as in training; decode_image(dtype=uint16) scaled GIF, BMP and JPEG by 256: white was 0.996).
    JPEG uses the accurate integer DCT, as PIL (the image-folder builder) does: TF's default fast
    DCT differs from it by up to 5 grey levels."""
    def png():
        sixteen_bit = tf.equal(tf.strings.substr(encoded, PNG_DEPTH_OFFSET, 1), b"\x10")
        return tf.cond(sixteen_bit, lambda: to_unit_float(tf.io.decode_png(encoded, channels=0, dtype=tf.uint16)),
                       lambda: to_unit_float(tf.io.decode_png(encoded, channels=0, dtype=tf.uint8)))

    def jpeg():
        return to_unit_float(tf.io.decode_jpeg(encoded, channels=0, dct_method="INTEGER_ACCURATE"))

    def other():
        return to_unit_float(tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False))

    is_png = tf.equal(tf.strings.substr(encoded, 0, len(PNG_MAGIC)), PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    return tf.case([(is_png, png), (is_jpeg, jpeg)], default=other)


def decode_one(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """One PNG, JPEG, GIF (first frame) or BMP -> float32 [H, W, channels] in [0, 1], upright."""
    image = apply_orientation(decode_pixels(encoded), exif_orientation(encoded))
    return _to_channels(image, channels)


def _to_channels(x: tf.Tensor, channels: int) -> tf.Tensor:
    """Decoded float [H, W, 1..4] -> [H, W, channels], alpha composited first."""
    have = tf.shape(x)[-1]
    padded = tf.concat([x, tf.ones_like(x[..., :1])], -1)  # a 5th plane so every slice below exists

    def grey():
        return padded[..., :1]

    def grey_alpha():
        return composite_alpha(padded[..., :2])

    def rgb():
        return to_grey(padded[..., :3]) if channels == 1 else padded[..., :3]

    def rgba():
        flat = composite_alpha(padded[..., :4])
        return to_grey(flat) if channels == 1 else flat

    def expand(fn):
        def branch():
            out = fn()
            if channels == 3 and out.shape[-1] == 1:
                out = tf.image.grayscale_to_rgb(out)
            return tf.ensure_shape(out, [None, None, channels])
        return branch

    return tf.switch_case(tf.clip_by_value(have, 1, 4) - 1, [expand(grey), expand(grey_alpha), expand(rgb), expand(rgba)])


def decode_encoded(encoded: tf.Tensor, image_size: int, channels: int, *, trained: str = "as_is",
                   policy="auto") -> tf.Tensor:
    """Encoded images string [B] -> float32 model input [B, image_size, image_size, channels]."""
    def one(data):
        return resize_square(decode_one(data, channels)[None], image_size)[0]

    x = tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([image_size, image_size, channels], tf.float32))
    return apply_polarity(x, trained, policy)
