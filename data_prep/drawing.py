"""The one record type for a sketch, whatever file format it came from."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Drawing:
    """One drawing.

    `strokes` is a list of float32 arrays of shape (points, 2) holding x, y, or
    (points, 3) holding x, y, t (milliseconds, raw data only). Formats that ship
    pixels instead of strokes (numpy_bitmap) leave `strokes` empty and set `image`
    (H, W) uint8. `split` is set only by formats that carry their own split
    (sketch-rnn: train, valid, test). `word` is the file's category; `source_word` is the
    record's own `word` field when it has one (batch jobs label mixed files by it).
    """

    key_id: str
    word: str
    strokes: list[np.ndarray] = dataclasses.field(default_factory=list)
    countrycode: str = ""
    recognized: bool = True
    timestamp: str = ""
    image: np.ndarray | None = None
    split: str | None = None
    source_word: str = ""  # the record's own `word` field (ndjson), which may differ from `word`

    @property
    def num_points(self) -> int:
        return sum(len(s) for s in self.strokes)
