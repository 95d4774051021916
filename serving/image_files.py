"""Image files as the `encoded` endpoints take them: the file's own bytes when TensorFlow decodes
them as PIL does, else a lossless PNG re-encoding (upright, alpha and 16-bit depth kept); the one
check of image files for the batch job and the retrieval tools."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

MAX_IMAGE_PIXELS = 64_000_000  # larger images are refused (`too_large`), not a 1 GB decode
# PNG modes PIL writes as they are; a re-encoded image in another mode becomes RGB(A).
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


def decoded_as_is(image: Image.Image) -> bool:
    """Whether TensorFlow's decode_image reads this opened file as PIL does: PNG and JPEG always;
    GIF without transparency (TF drops it); BMP only 24-bit uncompressed (TF takes the padding byte
    of 32-bit BMPs for alpha and refuses 1- and 4-bit ones)."""
    if image.format in ("PNG", "JPEG"):
        return True
    if image.format == "GIF":
        return "transparency" not in image.info
    if image.format == "BMP":
        return image.info.get("compression") == 0 and bool(image.tile) and image.tile[0].args[0] == "BGR"
    return False


def png_bytes(image: Image.Image) -> bytes:
    """A loaded image as PNG bytes, upright (EXIF applied), alpha and 16-bit depth kept."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "I" and 0 <= image.getextrema()[0] and image.getextrema()[1] <= 65535:
        image = Image.fromarray(np.asarray(image).astype(np.uint16))
    if image.mode not in PNG_MODES:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encodable(data: bytes) -> tuple[bytes, None] | tuple[None, tuple[str, str]]:
    """(bytes for the `encoded` endpoints, None), or (None, (reason, detail)) for a file's bytes that
    no endpoint should get: empty, not an image, truncated or corrupt, over MAX_IMAGE_PIXELS."""
    if not data:
        return None, ("empty_file", "0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                return None, ("too_large", f"{width} x {height} pixels > {MAX_IMAGE_PIXELS:,}")
            as_is = decoded_as_is(image)  # before load(), which clears the tile list it reads
            image.load()
            return (data if as_is else png_bytes(image)), None
    except Image.DecompressionBombError as err:
        return None, ("too_large", str(err))
    except Image.UnidentifiedImageError:
        return None, ("unreadable_image", "not in an image format PIL knows (the bytes may be corrupt or random)")
    except (OSError, SyntaxError, ValueError) as err:
        return None, ("unreadable_image", f"{type(err).__name__}: {err}")
