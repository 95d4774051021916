"""Load an exported model and call its endpoints with checked inputs: the one inference loop.

`ExportedModel.run(kind_of_input, batch)` is what the batch job, the retrieval tools and the
benchmarks call; inputs the contract does not cover are refused here with one line that names
the expected spec, before TensorFlow sees them.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from serving import preprocess
from serving.export import SAVED_MODEL, ExportError, read_meta, require_images

INPUTS = ("images", "images_float", "encoded")


class ServingInputError(ValueError):
    """An input the model's endpoints do not take; the message names the expected spec."""


def check_pixels(images, channels: int) -> tuple[np.ndarray, str]:
    """(array, 'images' or 'images_float') for a batch [N, H, W, C] of uint8 or float in [0, 1]."""
    images = np.asarray(images)
    expected = f"uint8 [N, H, W, {channels}] or float32 [N, H, W, {channels}] in [0, 1]"
    if images.ndim != 4:
        raise ServingInputError(f"images must be a batch {expected}; received rank {images.ndim} "
                                f"shape {images.shape}.")
    if images.shape[-1] != channels:
        raise ServingInputError(f"the model takes {channels}-channel images ({expected}); received "
                                f"{images.shape[-1]} channels.")
    if images.dtype == np.uint8:
        return images, "images"
    if images.dtype in (np.float32, np.float64, np.float16):
        if images.size and not np.isfinite(images).all():
            raise ServingInputError(f"float images must lie in [0, 1] ({expected}); received NaN or infinite values.")
        if images.size and not (images.min() >= 0 and images.max() <= 1):
            raise ServingInputError(f"float images must lie in [0, 1] ({expected}); received values from "
                                    f"{images.min():g} to {images.max():g}.")
        return images.astype(np.float32), "images_float"
    raise ServingInputError(f"images must be {expected}; received dtype {images.dtype} "
                            "(scale 16-bit or integer pixels to uint8, or to floats in [0, 1]).")


class ExportedModel:
    """A SavedModel written by serving.export, with its model_meta.json."""

    def __init__(self, export_dir):
        import tensorflow as tf

        self.export_dir = pathlib.Path(export_dir)
        self.meta = read_meta(self.export_dir)
        require_images(self.meta, self.export_dir)
        self.loaded = tf.saved_model.load(os.fspath(self.export_dir / SAVED_MODEL))

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def head(self) -> str:
        """'classify' for classifiers, 'embed' for embedding and hash models."""
        return "classify" if self.kind == "classifier" else "embed"

    def endpoint(self, head: str, source: str):
        if source not in INPUTS:
            raise ServingInputError(f"Invalid input kind {source!r}; expected one of {INPUTS}.")
        if head == "classify" and self.kind != "classifier":
            raise ServingInputError(f"the model at {str(self.export_dir)!r} is a {self.kind} model: it embeds, it "
                                    "does not classify (use the embed endpoints).")
        return getattr(self.loaded, f"{head}_{source}")

    def run(self, source: str, batch, *, head: str | None = None, polarity: str = "auto") -> dict[str, np.ndarray]:
        """The endpoint `<head>_<source>` on one batch (pixels checked first): NumPy outputs."""
        import tensorflow as tf

        if polarity not in preprocess.POLICIES:
            raise ServingInputError(f"polarity must be one of {', '.join(preprocess.POLICIES)}; received {polarity!r}.")
        if source not in INPUTS:  # checked first: the pixel branch below would take any name for 'images'
            raise ServingInputError(f"Invalid input kind {source!r}; expected one of {INPUTS}.")
        if source == "encoded":
            data = tf.constant(list(batch), tf.string, shape=[len(batch)])
        else:
            data, source = check_pixels(batch, self.meta["channels"])
        out = self.endpoint(head or self.head, source)(data, polarity=polarity)
        return {k: v.numpy() for k, v in out.items()}

    def embed(self, source: str, batch, polarity: str = "auto") -> np.ndarray:
        return self.run(source, batch, head="embed", polarity=polarity)["embedding"]


def load(export_dir) -> ExportedModel:
    """The model at `export_dir`; ExportError (one line) when the folder is not an export."""
    try:
        return ExportedModel(export_dir)
    except (OSError, ValueError) as err:
        if isinstance(err, ExportError):
            raise
        raise ExportError(f"cannot load the SavedModel in {str(export_dir)!r}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from None
