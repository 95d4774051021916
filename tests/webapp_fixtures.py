"""What the web app tests share: a served classifier with a real gallery, real drawings, and an
in-process uvicorn server on a socket bound before it starts (no port race)."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

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


class Server:
    """uvicorn serving `app` in a thread on 127.0.0.1, on a port bound before the server starts."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
