"""Photos to line drawings (edge maps), so that one sketch encoder sees photos and sketches alike.

A photo becomes dark lines on white, the look of a sketch: `canny` (OpenCV's Canny on a smoothed
grey image, hysteresis thresholds from the photo's own gradient percentiles) or `gradient` (Sobel
magnitude thinned by non-maximum suppression, lines as dark as their edge is strong). Thresholds are
relative, so a dull and a contrasty photo give as many lines. Lines are widened to `line_width(size)`
pixels, so that after resizing they keep the weight of the sketches' strokes at the same size.
"""

from __future__ import annotations

import cv2
import numpy as np

METHODS = ("none", "canny", "gradient")
HIGH_PERCENTILE = 95.0  # share of pixels whose gradient is weaker than the strong-edge threshold
LOW_RATIO = 0.4  # weak-edge threshold, as a share of the strong one (hysteresis)
SIGMA_PER_128 = 2.0  # Gaussian smoothing before the gradients, in pixels of a 128 px image


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"Invalid value for argument `photo_edges`. Received: {method!r}. "
                         f"Expected one of {', '.join(METHODS)}.")
    return method


def line_width(size: int) -> int:
    """Line width in pixels of a `size` px source: 2 at 128 px, 3 at 256, as the Sketchy strokes."""
    return max(1, round(size / 80))


def _grey(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    sigma = SIGMA_PER_128 * max(grey.shape) / 128
    return cv2.GaussianBlur(grey.astype(np.float32), (0, 0), sigma)


def _sobel(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return gx, gy


def non_maximum_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """`magnitude` where it is a local maximum across the edge (along the gradient, quantised to
    0, 45, 90 or 135 degrees), else 0: edges one pixel wide."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (np.floor((angle + 22.5) / 45.0).astype(np.int64)) % 4  # 0: horizontal gradient, 2: vertical
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    out = np.zeros_like(magnitude)
    for s, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        # image rows grow downwards: a gradient at +45 degrees points to (y+1, x+1)
        ahead = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        behind = padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep = (sector == s) & (magnitude >= ahead) & (magnitude >= behind)
        out[keep] = magnitude[keep]
    return out


def _thresholds(magnitude: np.ndarray) -> tuple[float, float]:
    high = float(np.percentile(magnitude, HIGH_PERCENTILE))
    return LOW_RATIO * high, high


def edge_strength(pixels: np.ndarray, method: str) -> np.ndarray:
    """Edge strength in [0, 1] per pixel (1 = a line), one pixel wide, of an RGB or grey uint8 image."""
    grey = _grey(pixels)
    gx, gy = _sobel(grey)
    magnitude = np.hypot(gx, gy)
    low, high = _thresholds(magnitude)
    if high <= 0:
        return np.zeros(grey.shape, np.float32)  # a flat image has no edges
    if method == "canny":
        # OpenCV's Canny takes 8-bit input; its 3x3 Sobel is the one above, so the thresholds carry over.
        edges = cv2.Canny(np.clip(grey, 0, 255).astype(np.uint8), low, high, L2gradient=True)
        return (edges > 0).astype(np.float32)
    if method == "gradient":
        thin = non_maximum_suppression(magnitude, gx, gy)
        return np.where(thin >= low, np.clip(thin / high, 0.0, 1.0), 0.0).astype(np.float32)
    raise ValueError(f"Invalid value for argument `method`. Received: {method!r}. Expected canny or gradient.")


def edge_map(pixels: np.ndarray, method: str) -> np.ndarray:
    """The photo as a line drawing: uint8 RGB [H, W, 3], white paper, dark lines `line_width` wide."""
    strength = edge_strength(pixels, method)
    width = line_width(max(strength.shape))
    if width > 1:
        strength = cv2.dilate(strength, np.ones((width, width), np.uint8))
    grey = np.round(255.0 * (1.0 - strength)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
