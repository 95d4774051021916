"""The model and gallery behind the page: classify and search a drawing, describe the model,
and draw gallery thumbnails. No HTTP here: app.py maps these to routes."""

from __future__ import annotations

import dataclasses
import functools
import io
import pathlib
import time

import numpy as np
from PIL import Image

from retrieval.index import GalleryIndex, default_index_dir, load_index
from retrieval.lookup import index_vectors, result_image, result_rows
from serving import model as serving_model
from serving.strokes import stroke_pixels
from webapp.inputs import InputError, Limits, ModelInput

TOP_CLASSES = 5


def elapsed_ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 2)


@dataclasses.dataclass
class SketchService:
    """An exported model (serving.model) and, optionally, a gallery index built with it."""

    model: serving_model.ExportedModel
    index: GalleryIndex | None
    limits: Limits = dataclasses.field(default_factory=Limits)
    k: int = 12
    polarity: str = "auto"  # for images; strokes are rendered as the model's training data

    @property
    def meta(self) -> dict:
        return self.model.meta

    @property
    def classifies(self) -> bool:
        return self.model.kind == "classifier" and bool(self.meta.get("class_names"))

    def describe(self) -> dict:
        """GET /api/model: what the page and a client need to know."""
        meta = self.meta
        index = None
        if self.index is not None:
            index = {"count": len(self.index), "metric": self.index.metric, "dimensions": self.index.dimensions,
                     "approximate": self.index.approximate, "thumbnails": self.index.thumbnails is not None
                     or self.index.image_paths is not None}
        return {"kind": meta["kind"], "classifies": self.classifies, "class_names": meta.get("class_names"),
                "image_size": meta["image_size"], "channels": meta["channels"], "polarity": meta["polarity"],
                "embedding_dim": meta.get("embedding_dim"), "raster": meta.get("raster"),
                "search": index is not None, "index": index, "k": self.k,
                "limits": dataclasses.asdict(self.limits)}

    def _run(self, head: str, request: ModelInput) -> dict[str, np.ndarray]:
        if request.kind == "strokes":
            try:
                pixels = stroke_pixels(request.strokes, self.meta)
            except ValueError as err:
                raise InputError(422, f"the drawing cannot be drawn: {err}") from None
            return self.model.run("images", pixels[None], head=head)
        try:
            return self.model.run("encoded", [request.encoded], head=head, polarity=self.polarity)
        except Exception as err:  # TensorFlow's decode errors: the bytes passed PIL's checks, not TF's
            if type(err).__name__ in ("InvalidArgumentError", "ServingInputError"):
                raise InputError(422, f"the image cannot be decoded: {str(err).splitlines()[0][:200]}") from None
            raise

    def classify(self, request: ModelInput) -> dict:
        """The top classes with their probabilities (highest first; ties by class order)."""
        self._require_classes()
        started = time.perf_counter()
        outputs = self._run("classify", request)
        return {"classes": self._classes(outputs, request.k or TOP_CLASSES), "input": request.describe(),
                "milliseconds": elapsed_ms(started)}

    def search(self, request: ModelInput) -> dict:
        """The k nearest gallery items, each with a thumbnail URL when the index can draw it."""
        self._require_index()
        started = time.perf_counter()
        outputs = self._run("embed", request)
        return {"results": self._results(outputs, request.k or self.k), "count": len(self.index),
                "metric": self.index.metric, "input": request.describe(), "milliseconds": elapsed_ms(started)}

    def recognize(self, request: ModelInput) -> dict:
        """What the page shows, from one pass of the model: the top classes (classifiers) and the
        nearest gallery items (with an index); a classifier's classify endpoint also gives the
        embedding the index holds."""
        started = time.perf_counter()
        outputs = self._run("classify" if self.classifies else "embed", request)
        answer = {"classes": self._classes(outputs, TOP_CLASSES) if self.classifies else None,
                  "results": self._results(outputs, request.k or self.k) if self.index is not None else None}
        return {**answer, "input": request.describe(), "milliseconds": elapsed_ms(started)}

    def _require_classes(self) -> None:
        if not self.classifies:
            raise InputError(409, f"this model ({self.model.kind}) has no classes to recognise: it only "
                                  "embeds; use /api/search.")

    def _require_index(self) -> None:
        if self.index is None:
            raise InputError(409, "no gallery index is loaded: start the server with --index DIR "
                                  "(evaluate_similarity_lookup.py index).")

    def _classes(self, outputs: dict, k: int) -> list[dict]:
        probabilities = outputs["probabilities"][0]
        order = np.argsort(-probabilities, kind="stable")[:min(k, len(probabilities))]
        names = self.meta["class_names"]
        return [{"class": names[i], "probability": round(float(probabilities[i]), 6)} for i in order]

    def _results(self, outputs: dict, k: int) -> list[dict]:
        distances, indices = self.index.search(index_vectors(outputs, self.index.metric), min(k, len(self.index)))
        return [{"rank": row["rank"], "class": row["class"], "distance": round(row["distance"], 6), "id": row["id"],
                 "item": row["index"],
                 "thumbnail": f"/api/items/{row['index']}/thumbnail.png" if self.has_thumbnails else None}
                for row in result_rows(self.index, distances[0], indices[0])]

    @property
    def has_thumbnails(self) -> bool:
        return self.index is not None and (self.index.thumbnails is not None or self.index.image_paths is not None)

    @functools.lru_cache(maxsize=4096)
    def thumbnail_png(self, item: int) -> bytes | None:
        """PNG bytes of gallery item `item` (an integer, never a path from a request), or None."""
        if self.index is None or not 0 <= item < len(self.index):
            return None
        image = result_image(self.index, item)
        if image is None:
            return None
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8).squeeze()).save(buffer, format="PNG")
        return buffer.getvalue()

    def warm_up(self) -> None:
        """One call of each endpoint the page uses, so the first drawing does not pay for tracing."""
        size = self.meta["image_size"]
        blank = np.zeros((1, size, size, self.meta["channels"]), np.uint8)
        if self.classifies:
            self.model.run("images", blank, head="classify")
        embedded = self.model.run("images", blank, head="embed")
        if self.index is not None:
            self.index.search(index_vectors(embedded, self.index.metric), 1)

    __hash__ = object.__hash__  # lru_cache on a method keys on the instance


def open_service(model_dir: str, index_dir: str = "", *, limits: Limits = Limits(), k: int = 12,
                 polarity: str = "auto") -> SketchService:
    """Load the export and its index (`index_dir`, else <model_dir>/index when it exists); ValueError
    (one line) when either is missing or they do not belong together."""
    if not model_dir:
        raise ValueError("--model is required: an exported model folder (train_sketch_net.py -mode export).")
    model = serving_model.load(model_dir)
    if not index_dir and pathlib.Path(default_index_dir(model_dir)).is_dir():
        index_dir = default_index_dir(model_dir)
    index = load_index(index_dir) if index_dir else None
    if index is not None:
        meta = model.meta
        width = (meta.get("bits") or meta["embedding_dim"]) if index.metric == "hamming" else meta["embedding_dim"]
        if index.dimensions != width:
            raise ValueError(f"the index at {index_dir!r} holds {index.dimensions}-dimensional items but the model at "
                             f"{model_dir!r} gives {width}: build the index with this model "
                             "(evaluate_similarity_lookup.py index --model ...).")
    if not model.meta.get("class_names") and index is None:
        raise ValueError(f"the model at {model_dir!r} only embeds: give it a gallery with --index DIR.")
    service = SketchService(model, index, limits, k, polarity)
    service.warm_up()
    return service
