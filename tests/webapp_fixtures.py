"""What the web app tests share: a real gallery for the trained classifier, and real drawings."""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson

from tests.conftest import BITMAP_CLASSES, QUICKDRAW, bitmap_rows

GALLERY_PER_CLASS = 40


@dataclasses.dataclass
class Gallery:
    index_dir: object
    images: np.ndarray  # uint8 [N, 28, 28, 1], white on black
    labels: np.ndarray


def build_gallery(export, folder) -> Gallery:
    """An index of GALLERY_PER_CLASS training bitmaps a class, embedded by the export, with thumbnails."""
    from retrieval.index import build_index
    from retrieval.lookup import drawing_thumbnail
    from serving import model as serving_model

    images, labels = bitmap_rows(held_out=False)
    keep = np.concatenate([np.flatnonzero(labels == c)[:GALLERY_PER_CLASS] for c in range(len(BITMAP_CLASSES))])
    images, labels = images[keep], labels[keep]
    model = serving_model.load(export.export_dir)
    vectors = model.embed("images", images)
    thumbs = np.stack([drawing_thumbnail(im, 64, invert=True) for im in images])
    index = build_index(vectors, labels, ids=[f"g{i}" for i in range(len(labels))], class_names=BITMAP_CLASSES,
                        thumbnails=thumbs, model_dir=str(export.export_dir))
    index.save(folder)
    return Gallery(folder, images, labels)


def real_drawings(fmt: str = "simplified", per_class: int = 3) -> list[tuple[str, list[np.ndarray], list]]:
    """(class, strokes as arrays, the record's `drawing` lists) of the first drawings of each
    BITMAP_CLASSES file of ../shared/data/quickdraw (held out of the model's training)."""
    out = []
    for name in BITMAP_CLASSES:
        with open(QUICKDRAW / fmt / f"{name}.ndjson", "rb") as f:
            for line in list(f)[:per_class]:
                drawing = orjson.loads(line)["drawing"]
                out.append((name, [np.asarray(s, np.float64)[:3].T for s in drawing], drawing))
    return out
