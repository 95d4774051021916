"""Readers for the four official Quick, Draw! formats, streaming one Drawing at a time.

| fmt          | files                      | one record                                                    |
|--------------|----------------------------|---------------------------------------------------------------|
| `simplified` | `<category>.ndjson[.gz]`   | JSON line, `drawing` = [[xs], [ys]] per stroke, ints 0..255    |
| `raw`        | `<category>.ndjson[.gz]`   | JSON line, `drawing` = [[xs], [ys], [t_ms]] per stroke         |
| `bitmap`     | `<category>.npy`           | row of an N x 784 uint8 array (28 x 28 image)                 |
| `sketchrnn`  | `<category>[.full].npz`    | int16 stroke-3 array [dx, dy, pen_lifted] in train/valid/test |

The category is the file name without its extension(s), never the record's own `word`.
Bad records are counted in a SkipCounter by a stable reason key (or raise StrictModeError in
strict mode, naming file and line); every line of an ndjson file is either yielded or counted.
ndjson skip reasons:

- `empty_line`, `not_utf8`, `malformed_json`, `not_an_object`;
- `missing_key` (`key_id` or `drawing` absent), `bad_field` (`key_id` not a non-empty str or int,
  `recognized` not a bool, `countrycode`/`timestamp` not a str);
- `bad_drawing` (not a list of strokes of 2 or 3 lists of numbers, or rows varying between strokes),
  `unequal_stroke_lengths` (xs, ys, ts of one stroke of different lengths),
  `empty_drawing` (no stroke with a point; 0-point strokes carry no ink and are dropped from a
  drawing that has other strokes), `non_finite_coordinates` (NaN or Infinity, which some JSON
  writers emit), `absurd_size` (see MAX_POINTS, MAX_COORDINATE, MAX_TIME_MS);
- `unrecognized`: only with `recognized_only=True`, a filter, still counted so that
  lines read = drawings yielded + skips; checked before the drawing is parsed;
- `truncated_gzip` (a .gz that ends early: counted once, every complete line before it is kept),
  `bad_gzip` (not gzip data, or corrupt: counted once, reading stops), `unreadable_file` (an
  OS error while reading a plain file: counted once, reading stops).

A file name whose category is unsafe as a path component raises BadRecord('bad_category_name').
Optional ndjson fields default to recognized=True, countrycode="", timestamp="".
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import sys
import zlib
from collections.abc import Callable, Iterator
from itertools import accumulate, chain

import numpy as np
import orjson

from data_prep import categories
from data_prep.drawing import Drawing
from data_prep.safe_npz import UnsafePickleError, load_npz_restricted
from data_prep.skips import BadRecord, SkipCounter, path_problem

__all__ = [
    "Drawing",
    "FORMATS",
    "EXTENSIONS",
    "MAX_POINTS",
    "MAX_COORDINATE",
    "MAX_TIME_MS",
    "BITMAP_SIDE",
    "SKETCHRNN_SPLITS",
    "category_name",
    "read_ndjson",
    "parse_line",
    "parse_strokes",
    "read_bitmaps",
    "read_sketchrnn",
    "read_drawings",
    "source_files",
    "strokes_from_stroke3",
    "stroke3_from_strokes",
    "UnsafePickleError",
]

MAX_POINTS = 100_000  # points (and strokes) in one drawing; the largest real raw drawing has ~ 1,200
MAX_COORDINATE = 1e6  # |x|, |y|; raw coordinates are screen pixels
MAX_TIME_MS = 1e9  # |t| in milliseconds (~ 11.6 days)
BITMAP_SIDE = 28
SKETCHRNN_SPLITS = ("train", "valid", "test")

# Suffixes stripped to get the category, longest first.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "simplified": (".ndjson.gz", ".ndjson"),
    "raw": (".ndjson.gz", ".ndjson"),
    "bitmap": (".npy",),
    "sketchrnn": (".full.npz", ".npz"),
}
_ALL_SUFFIXES = tuple(sorted({s for v in EXTENSIONS.values() for s in v}, key=len, reverse=True))
_NUMBERS = frozenset((int, float))


def category_name(path: str | os.PathLike, suffixes: tuple[str, ...] = _ALL_SUFFIXES) -> str:
    """The category of a source file: its name without the format's extension(s).

    Raises BadRecord('bad_category_name') for a name that is unsafe as a path component or a
    label (data_prep.categories.NAME_RULE).
    """
    name = pathlib.PurePath(path).name
    for suffix in suffixes:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if not categories.is_safe_name(name):
        raise BadRecord("bad_category_name", f"{name!r} from file {str(path)!r}: {categories.NAME_RULE}")
    return name


# --------------------------------------------------------------------------- ndjson


def read_ndjson(
    path: str | os.PathLike,
    skips: SkipCounter | None = None,
    recognized_only: bool = False,
    *,
    dtype: type = np.float32,
) -> Iterator[Drawing]:
    """Stream the drawings of a simplified or raw `.ndjson` / `.ndjson.gz` file, one line at a time.

    Strokes become (points, 2) [x, y] or (points, 3) [x, y, t] arrays of `dtype`; float32 is the
    Drawing default, float64 keeps raw coordinates exactly (they are JSON doubles), which
    data_prep.simplify needs to reproduce Google's simplified files most closely.
    The category is checked when this is called; the file is opened on the first `next()`.
    """
    path = pathlib.Path(path)
    word = category_name(path, EXTENSIONS["raw"])
    return _read_ndjson(path, word, SkipCounter() if skips is None else skips, recognized_only, np.dtype(dtype))


def _read_ndjson(
    path: pathlib.Path, word: str, skips: SkipCounter, recognized_only: bool, dtype: np.dtype
) -> Iterator[Drawing]:
    gz = path.name.endswith(".gz")
    lineno = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        lines = iter(f)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except EOFError as e:
                skips.skip("truncated_gzip", f"{path}:{lineno + 1}", str(e))
                return
            except (gzip.BadGzipFile, zlib.error, OSError) as e:
                skips.skip("bad_gzip" if gz else "unreadable_file", f"{path}:{lineno + 1}", str(e))
                return
            lineno += 1
            try:
                yield parse_line(line, word, recognized_only, dtype)
            except BadRecord as e:
                skips.skip(e.reason, f"{path}:{lineno}", e.detail)


def parse_line(line: bytes, word: str, recognized_only: bool = False, dtype: np.dtype = np.dtype(np.float32)) -> Drawing:
    """One ndjson line to a Drawing, or BadRecord with a stable reason."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        record = _loads_fallback(line, e)
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"a JSON {type(record).__name__}, expected an object")
    if "key_id" not in record or "drawing" not in record:
        missing = [k for k in ("key_id", "drawing") if k not in record]
        raise BadRecord("missing_key", f"missing {', '.join(missing)}")
    key_id = record["key_id"]
    if type(key_id) is int:
        key_id = str(key_id)
    if not isinstance(key_id, str) or not key_id:
        raise BadRecord("bad_field", f"key_id must be a non-empty string, got {key_id!r:.60}")
    recognized = record.get("recognized", True)
    if type(recognized) is not bool:
        raise BadRecord("bad_field", f"recognized must be true or false, got {recognized!r:.60}")
    countrycode = record.get("countrycode", "")
    timestamp = record.get("timestamp", "")
    if not isinstance(countrycode, str) or not isinstance(timestamp, str):
        raise BadRecord("bad_field", "countrycode and timestamp must be strings")
    if recognized_only and not recognized:
        raise BadRecord("unrecognized", f"key_id {key_id}")
    strokes = parse_strokes(record["drawing"], dtype)
    return Drawing(
        key_id=key_id,
        word=word,
        strokes=strokes,
        countrycode=countrycode,
        recognized=recognized,
        timestamp=timestamp,
        source_word=record["word"] if isinstance(record.get("word"), str) else "",
    )


def _loads_fallback(line: bytes, error: Exception) -> object:
    """Classify a line orjson rejects: blank, not UTF-8, JSON with NaN/Infinity (parsed), or malformed."""
    if not line.strip():
        raise BadRecord("empty_line")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadRecord("not_utf8", str(e)) from None
    try:  # the standard library accepts NaN, Infinity and 1e400; the drawing check then names them
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadRecord("malformed_json", str(error)) from None


def parse_strokes(drawing: object, dtype: np.dtype = np.dtype(np.float32)) -> list[np.ndarray]:
    """The `drawing` field ([[xs], [ys]] or [[xs], [ys], [ts]] per stroke) to (points, 2 or 3) arrays.

    0-point strokes are dropped; BadRecord if the structure or values are unusable. Structure is
    checked stroke by stroke, values once for the whole drawing.
    """
    if not isinstance(drawing, list):
        raise BadRecord("bad_drawing", f"drawing must be a list of strokes, got {type(drawing).__name__}")
    if len(drawing) > MAX_POINTS:
        raise BadRecord("absurd_size", f"{len(drawing)} strokes > {MAX_POINTS}")
    rows = len(drawing[0]) if drawing and isinstance(drawing[0], list) else 2
    lengths = []
    for i, stroke in enumerate(drawing):
        if type(stroke) is not list or len(stroke) != rows or rows not in (2, 3):
            raise BadRecord("bad_drawing", f"stroke {i} must be [xs, ys] or [xs, ys, ts] like stroke 0")
        if not all(type(row) is list for row in stroke):
            raise BadRecord("bad_drawing", f"stroke {i}: every row must be a list of numbers")
        n = len(stroke[0])
        if any(len(row) != n for row in stroke):
            raise BadRecord("unequal_stroke_lengths", f"stroke {i}: rows of lengths {[len(r) for r in stroke]}")
        lengths.append(n)
    total = sum(lengths)
    if total == 0:
        raise BadRecord("empty_drawing", "no stroke with a point")
    if total > MAX_POINTS:
        raise BadRecord("absurd_size", f"{total} points > {MAX_POINTS}")
    if not _NUMBERS.issuperset(map(type, chain.from_iterable(chain.from_iterable(drawing)))):
        raise BadRecord("bad_drawing", "a coordinate that is not a number")
    try:
        values = np.fromiter(
            chain.from_iterable(chain.from_iterable(s[k] for s in drawing) for k in range(rows)), np.float64, rows * total
        ).reshape(rows, total)
    except OverflowError:
        raise BadRecord("absurd_size", "an integer beyond the float range") from None
    largest = np.abs(values).max(axis=1)  # NaN propagates
    if not np.isfinite(largest).all():
        raise BadRecord("non_finite_coordinates", "NaN or Infinity in the drawing")
    if largest[:2].max() > MAX_COORDINATE or (rows == 3 and largest[2] > MAX_TIME_MS):
        raise BadRecord("absurd_size", f"|coordinate| > {MAX_COORDINATE:g} or |t| > {MAX_TIME_MS:g}")
    points = np.ascontiguousarray(values.T, dtype=dtype)
    ends = list(accumulate(lengths))
    return [points[end - n : end] for end, n in zip(ends, lengths) if n]


# --------------------------------------------------------------------------- numpy_bitmap


def read_bitmaps(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[Drawing]:
    """Stream the 28 x 28 images of a numpy_bitmap `.npy` file (N x 784 uint8), memory-mapped.

    Each Drawing has `image` (28, 28) uint8 (a read-only view into the file), no strokes and
    key_id f"{category}/{row}". A file that is not a readable .npy (garbage, truncated, pickled
    objects) counts one `bad_npy` skip; an .npy of the wrong dtype or shape counts `bad_npy_shape`
    once per row when it has rows (2-D or more: shape[0] skips, named file:row), else once for
    the file. Never loads the whole file.
    """
    path = pathlib.Path(path)
    word = category_name(path, EXTENSIONS["bitmap"])
    return _read_bitmaps(path, word, SkipCounter() if skips is None else skips)


NPY_MAGIC = b"\x93NUMPY"


def _npy_problem(path: pathlib.Path, error: Exception) -> str:
    """What is wrong with an .npy that np.load refused, in words (numpy calls any file without the .npy
    magic 'pickled data', and a pickled object array one it 'can't memory-map')."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if not head:
        return "an empty file (0 bytes)"
    if head != NPY_MAGIC:
        return f"not an .npy file: it starts with {head!r}, not the .npy magic {NPY_MAGIC!r}"
    if "Python objects" in str(error) or "pickled" in str(error):
        return "an .npy of pickled Python objects, not numbers (pickles are never loaded)"
    return f"a damaged or truncated .npy: {error}"


def _read_bitmaps(path: pathlib.Path, word: str, skips: SkipCounter) -> Iterator[Drawing]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        skips.skip("bad_npy", str(path), _npy_problem(path, e))
        return
    side2 = BITMAP_SIDE * BITMAP_SIDE
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != side2:
        detail = f"shape {array.shape} dtype {array.dtype}, expected (N, {side2}) uint8"
        if array.ndim >= 2:
            for row in range(array.shape[0]):
                skips.skip("bad_npy_shape", f"{path}:{row}", detail)
        else:
            skips.skip("bad_npy_shape", str(path), detail)
        return
    for row in range(array.shape[0]):
        yield Drawing(key_id=f"{word}/{row}", word=word, image=array[row].reshape(BITMAP_SIDE, BITMAP_SIDE))


# --------------------------------------------------------------------------- sketch-rnn


def strokes_from_stroke3(arr: np.ndarray) -> list[np.ndarray]:
    """Stroke-3 [dx, dy, pen_lifted] to absolute float32 (points, 2) strokes.

    The first row is the offset from (0, 0); a stroke ends at each row with pen_lifted == 1
    (trailing rows after the last lift form a last stroke).
    """
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"Invalid value for argument `arr`. Received shape {arr.shape}. Expected (points, 3).")
    xy = np.cumsum(arr[:, :2].astype(np.float64), axis=0).astype(np.float32)
    ends = np.flatnonzero(arr[:, 2] == 1) + 1
    return [s for s in np.split(xy, ends) if len(s)]


def stroke3_from_strokes(strokes: list[np.ndarray], dtype: type = np.int16) -> np.ndarray:
    """Absolute (points, 2+) strokes to stroke-3 [dx, dy, pen_lifted] (the sketch-rnn format).

    The first row holds the first point itself; pen_lifted is 1 on each stroke's last point.
    For an integer dtype the coordinates must be integers that fit (ValueError otherwise).
    """
    strokes = [np.asarray(s, dtype=np.float64)[:, :2] for s in strokes if len(s)]
    if not strokes:
        return np.zeros((0, 3), dtype=dtype)
    xy = np.concatenate(strokes)
    out = np.zeros((len(xy), 3), dtype=np.float64)
    out[:, :2] = np.diff(xy, axis=0, prepend=np.zeros((1, 2)))
    out[np.cumsum([len(s) for s in strokes]) - 1, 2] = 1
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        if not np.array_equal(out, np.round(out)) or out.min() < info.min or out.max() > info.max:
            raise ValueError(f"stroke3_from_strokes: deltas must be integers within {np.dtype(dtype).name} range")
    return out.astype(dtype)


def read_sketchrnn(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[Drawing]:
    """The drawings of a sketch-rnn `.npz` (train, valid, test object arrays of int16 stroke-3).

    Loaded through data_prep.safe_npz (a pickle of anything but numpy arrays raises
    UnsafePickleError, never executed). Drawings come split by split in file order with
    Drawing.split set and key_id f"{category}/{split}/{index}". Skips: `bad_npz` (unreadable,
    or none of the split keys) once per file, `bad_stroke3` (an element that is not an integer
    (points, 3) array with pen values 0/1), `empty_drawing` (0 rows).
    """
    path = pathlib.Path(path)
    word = category_name(path, EXTENSIONS["sketchrnn"])
    return _read_sketchrnn(path, word, SkipCounter() if skips is None else skips)


def _read_sketchrnn(path: pathlib.Path, word: str, skips: SkipCounter) -> Iterator[Drawing]:
    try:
        arrays = load_npz_restricted(path)
    except UnsafePickleError:
        raise
    except (ValueError, OSError, EOFError) as e:
        skips.skip("bad_npz", str(path), str(e))
        return
    splits = [s for s in SKETCHRNN_SPLITS if s in arrays]
    if not splits:
        skips.skip("bad_npz", str(path), f"none of the keys {SKETCHRNN_SPLITS}; found {sorted(arrays)}")
        return
    for split in splits:
        for index, item in enumerate(arrays[split]):
            where = f"{path}:{split}[{index}]"
            if not (
                isinstance(item, np.ndarray)
                and np.issubdtype(item.dtype, np.integer)
                and item.ndim == 2
                and item.shape[1] == 3
                and np.isin(item[:, 2], (0, 1)).all()
            ):
                skips.skip("bad_stroke3", where, f"expected an integer (points, 3) array, got {_describe(item)}")
                continue
            if len(item) == 0:
                skips.skip("empty_drawing", where)
                continue
            yield Drawing(
                key_id=f"{word}/{split}/{index}", word=word, strokes=strokes_from_stroke3(item), split=split
            )


def _describe(item: object) -> str:
    if isinstance(item, np.ndarray):
        return f"shape {item.shape} dtype {item.dtype}"
    return type(item).__name__


# --------------------------------------------------------------------------- dispatch


_READERS: dict[str, Callable[..., Iterator[Drawing]]] = {
    "simplified": lambda path, skips, recognized_only: read_ndjson(path, skips, recognized_only),
    "raw": lambda path, skips, recognized_only: read_ndjson(path, skips, recognized_only),
    "bitmap": lambda path, skips, recognized_only: read_bitmaps(path, skips),
    "sketchrnn": lambda path, skips, recognized_only: read_sketchrnn(path, skips),
}
FORMATS: tuple[str, ...] = tuple(_READERS)


def _check_format(fmt: str) -> None:
    if fmt not in _READERS:
        raise ValueError(f"Invalid value for argument `fmt`. Received: {fmt!r}. Expected one of {FORMATS}.")


def read_drawings(
    path: str | os.PathLike, fmt: str, skips: SkipCounter | None = None, recognized_only: bool = False
) -> Iterator[Drawing]:
    """Read one source file of format `fmt` (one of FORMATS). `recognized_only` applies to ndjson only
    (bitmap and sketch-rnn files hold no such flag)."""
    _check_format(fmt)
    return _READERS[fmt](path, SkipCounter() if skips is None else skips, recognized_only)


def source_files(source_dir: str | os.PathLike, fmt: str, skips: SkipCounter | None = None) -> dict[str, pathlib.Path]:
    """Map category -> file for every `fmt` file in `source_dir` (not recursive), sorted by category.

    Raises FileNotFoundError for a missing folder or one without any such file, ValueError when two
    files give the same category (e.g. cat.ndjson and cat.ndjson.gz). An entry named like a source
    file that cannot be one (an unsafe category name: 'bad_category_name'; a folder, pipe or device:
    'not_a_file'; a symbolic-link loop or a link to nothing: 'broken_link') is counted in `skips`
    and left out, or raises BadRecord without `skips`. Hidden files (leading dot) are ignored.
    """
    _check_format(fmt)
    folder = pathlib.Path(source_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Invalid value for argument `source_dir`. Received: {str(folder)!r}, not a folder.")
    suffixes = EXTENSIONS[fmt]
    found: dict[str, pathlib.Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.name.endswith(suffixes):
            continue
        try:
            problem = path_problem(entry)
            if problem:
                raise BadRecord(*problem)
            category = category_name(entry, suffixes)
        except BadRecord as e:
            if skips is None:
                raise
            skips.skip(e.reason, str(entry), e.detail)
            continue
        if category in found:
            raise ValueError(f"Two files for category {category!r} in {folder}: {found[category].name!r} and {entry.name!r}.")
        found[category] = entry
    if not found:
        raise FileNotFoundError(f"No {fmt} files ({' or '.join(suffixes)}) in {str(folder)!r}.")
    return dict(sorted(found.items()))


# =========================================================================== end of the readers


if __name__ == "__main__":  # the command line lives in data_prep.quickdraw_cli: the readers import no build code
    import tf_startup

    tf_startup.quiet()
    from data_prep.quickdraw_cli import main

    sys.exit(main(sys.argv))
