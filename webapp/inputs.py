"""Request bodies -> model inputs: Quick, Draw! strokes (raw or simplified arrays) or an image.

Every check that can fail on a user's input is here, each with a status and a one-line message:
a drawing is parsed by data_prep.quickdraw.parse_strokes (the readers' own checks: structure,
non-finite and absurd numbers) under this server's tighter caps on strokes and points; an image
by serving.image_files.encodable after its header is checked against the pixel limit, so a
decompression bomb is refused before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io

import numpy as np
import orjson
from PIL import Image

from configuration_sketch import ServeConfig
from data_prep.quickdraw import parse_strokes
from data_prep.skips import BadRecord
from serving import image_files

JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may hold; the defaults are ServeConfig's (configuration_sketch), not a copy."""

    max_body_bytes: int = ServeConfig.max_body_bytes
    max_strokes: int = ServeConfig.max_strokes
    max_points: int = ServeConfig.max_points
    max_image_pixels: int = ServeConfig.max_image_pixels
    max_k: int = 100


class InputError(ValueError):
    """A request the server cannot answer: HTTP `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class ModelInput:
    """What the model gets: strokes (rendered by serving.strokes) or encoded image bytes."""

    kind: str  # 'strokes' or 'image'
    strokes: list[np.ndarray] | None = None
    encoded: bytes | None = None
    k: int | None = None

    def describe(self) -> dict:
        if self.kind == "strokes":
            return {"kind": "strokes", "strokes": len(self.strokes), "points": int(sum(len(s) for s in self.strokes)),
                    "format": "raw" if self.strokes[0].shape[1] == 3 else "simplified"}
        return {"kind": "image", "bytes": len(self.encoded)}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def parse_body(content_type: str | None, body: bytes, limits: Limits) -> ModelInput:
    """A request body (JSON with `drawing` or `png`, or raw image bytes) as a ModelInput; InputError otherwise."""
    kind = media_type(content_type)
    if kind in IMAGE_TYPES:
        return ModelInput("image", encoded=check_image(body, limits))
    if kind not in JSON_TYPES:
        raise InputError(415, f"unsupported content type {kind or 'none'!r}: send application/json "
                              f"({{\"drawing\": strokes}} or {{\"png\": base64}}) or an image ({', '.join(IMAGE_TYPES)}).")
    if not body:
        raise InputError(400, "empty body: send {\"drawing\": [[xs, ys, ts?], ...]} or {\"png\": base64}.")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InputError(400, f"malformed JSON ({err}); NaN and Infinity are not JSON numbers.") from None
    if not isinstance(request, dict):
        raise InputError(400, f"the body must be a JSON object, not a {type(request).__name__}.")
    k = parse_k(request.get("k"), limits)
    if ("drawing" in request) == ("png" in request):
        raise InputError(422, "send exactly one of 'drawing' (Quick, Draw! strokes: [[xs], [ys]] or "
                              "[[xs], [ys], [ts]] per stroke) and 'png' (base64).")
    if "png" in request:
        if not isinstance(request["png"], str):
            raise InputError(422, "'png' must be a base64 string.")
        try:
            data = base64.b64decode(request["png"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise InputError(422, f"'png' is not valid base64: {err}.") from None
        return ModelInput("image", encoded=check_image(data, limits), k=k)
    return ModelInput("strokes", strokes=check_drawing(request["drawing"], limits), k=k)


def parse_k(value, limits: Limits) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= limits.max_k:
        raise InputError(422, f"'k' must be an integer from 1 to {limits.max_k}; received {value!r:.40}.")
    return value


def check_drawing(drawing, limits: Limits) -> list[np.ndarray]:
    """Quick, Draw! `drawing` arrays -> (points, 2|3) float32 strokes, within the limits."""
    if isinstance(drawing, list) and len(drawing) > limits.max_strokes:
        raise InputError(413, f"{len(drawing)} strokes; this server takes at most {limits.max_strokes}.")
    if isinstance(drawing, list):
        points = sum(len(s[0]) for s in drawing if isinstance(s, list) and s and isinstance(s[0], list))
        if points > limits.max_points:
            raise InputError(413, f"{points} points; this server takes at most {limits.max_points}.")
    try:
        strokes = parse_strokes(drawing)
    except BadRecord as err:
        raise InputError(422, f"not a Quick, Draw! drawing ({err.reason}: {err.detail}); expected "
                              "[[xs], [ys]] or [[xs], [ys], [ts]] per stroke.") from None
    return strokes


def check_image(data: bytes, limits: Limits) -> bytes:
    """Image bytes the `encoded` endpoints take; the size is read from the header before any decoding."""
    if not data:
        raise InputError(400, "empty image: 0 bytes.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise InputError(413, f"image too large: {err}") from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(422, "not an image this server can read (PNG, JPEG, GIF, WebP or BMP).") from None
    if width * height > limits.max_image_pixels:
        raise InputError(413, f"image of {width} x {height} pixels; this server takes at most "
                              f"{limits.max_image_pixels:,} pixels.")
    encoded, problem = image_files.encodable(data)
    if problem is not None:
        reason, detail = problem
        raise InputError(413 if reason == "too_large" else 422, f"unreadable image ({reason}: {detail}).")
    return encoded
