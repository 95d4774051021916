"""JSON files written whole or not at all: the one writer of every state, report and meta file.

The text goes to a temporary name beside the target, is flushed to disk (fsync) and renamed over
the target, so a reader (or a resume after kill -9) sees the old file or the new one, never a part.
A failed write (a full disk) deletes its partial file and the OSError names it.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented JSON (and a final newline) at `path`, atomically."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk: no partial file left, and the error names the file
        tmp.unlink(missing_ok=True)
        raise type(e)(e.errno, e.strerror, str(tmp)) from None
    os.replace(tmp, path)
