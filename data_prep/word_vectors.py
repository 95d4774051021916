"""Word vectors from a user's GloVe, fastText or word2vec text file, and class names turned into them.

A DeViSE-style visual-semantic embedding needs one vector per class name. The files are large (GB), so
they are streamed line by line, optionally keeping only the first `max_words` rows or only the `wanted`
words; every malformed input is one line, `path:line N: ...`, raised as WordVectorError.

Formats: one `word v1 ... vD` row a line, fields separated by spaces; an optional first line `count dim`
(fastText `.vec`, word2vec text) is a header when it is exactly two integers (GloVe has none). Plain or
gzip (detected by its magic bytes). Binary word2vec files are refused with how to convert them.

Class names: `name_tokens` lower-cases a name, splits it on `_`, `-` and spaces, and strips punctuation
(parentheses, apostrophes, dots) from the ends of each word: `car_(sedan)` -> ['car', 'sedan'].
`class_vector` tries, in order, the name as given ("exact"), its words joined by `_` ("token": `alarm_clock`;
for a one-word name, the word), joined with nothing ("joined": `hotdog`), joined by `-` ("hyphen":
`jack-o-lantern`), then the mean of its words' vectors, skipping words not in the vocabulary ("average");
when none is known the class has no vector ("missing"). Stop words such as "the" are averaged like any word.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import string
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
RULES = ("exact", "token", "joined", "hyphen", "average", "missing")
BINARY_HINT = ("looks like a binary word2vec file; convert it to text (e.g. gensim "
               "KeyedVectors.load_word2vec_format(path, binary=True).save_word2vec_format(out, binary=False))")

_SEPARATORS = re.compile(r"[\s_\-]+")
_EDGE_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d"
# Control bytes other than tab, newline, vertical tab, form feed and carriage return: text files have none.
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1f]")


class WordVectorError(ValueError):
    """A word vector file that cannot be read (one line, `path:line N: ...`), or class names without vectors."""


@dataclasses.dataclass
class WordVectors:
    """`vectors[i]` (float32) is the vector of `words[i]`; `index` maps a word to its row.

    `rows_read` counts the rows read from the file (before the `wanted` filter; duplicates included),
    `duplicates` the rows whose word had already been kept (the first one wins).
    """

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int]
    path: str = ""
    rows_read: int = 0
    duplicates: int = 0

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]

    def get(self, word: str, default: np.ndarray | None = None) -> np.ndarray | None:
        row = self.index.get(word)
        return default if row is None else self.vectors[row]


@dataclasses.dataclass(frozen=True)
class ClassVector:
    """How a class name was matched: `rule` (one of RULES), the vocabulary words used and the words skipped."""

    name: str
    vector: np.ndarray | None
    rule: str
    used: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def _open_binary(path: str) -> BinaryIO:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def _numbered_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) from a plain or gzip file, one at a time; corrupt gzip is one line."""
    lineno = 0
    with _open_binary(path) as stream:
        try:
            for lineno, raw in enumerate(stream, start=1):
                yield lineno, raw
        except (OSError, EOFError, zlib.error) as e:
            raise WordVectorError(f"{path}:line {lineno + 1}: corrupt or truncated gzip data ({e}).") from None


def _decode(path: str, lineno: int, raw: bytes) -> str:
    if _BINARY_BYTES.search(raw):
        raise WordVectorError(f"{path}:line {lineno}: control or NUL bytes; {BINARY_HINT}.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WordVectorError(f"{path}:line {lineno}: not UTF-8 text; {BINARY_HINT}.") from None


def _fields(line: str) -> list[str]:
    fields = line.rstrip("\r\n\t\v\f ").split(" ")
    return [f for f in fields if f] if "" in fields else fields


def _parse_header(fields: list[str]) -> tuple[int, int] | None:
    if len(fields) == 2 and all(f.isascii() and f.isdigit() for f in fields):
        return int(fields[0]), int(fields[1])
    return None


def _parse_values(path: str, lineno: int, word: str, values: list[str]) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):
            vector = np.array(values, dtype=np.float32)
    except ValueError:
        bad = next((v for v in values if not _is_float(v)), values[0])
        raise WordVectorError(
            f"{path}:line {lineno}: invalid value for word {word!r:.60}. Received: {bad!r:.40}. "
            "Expected a number.") from None
    if not np.isfinite(vector).all():
        raise WordVectorError(
            f"{path}:line {lineno}: the vector of word {word!r:.60} is not finite (nan, inf or beyond float32). "
            "Expected finite numbers.")
    return vector


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_limit(max_words: int | None) -> None:
    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1):
        raise ValueError(f"Invalid value for max_words. Received: {max_words!r}. Expected a positive integer or None.")


def load_word_vectors(path: str | os.PathLike, *, max_words: int | None = None,
                      wanted: Iterable[str] | None = None) -> WordVectors:
    """The word vectors of a GloVe / fastText `.vec` / word2vec text file, plain or gzip, streamed.

    `max_words`: read only the first N rows (the files are frequency ordered); a header's count is then
    not checked once N rows are read. `wanted`: keep only these words (exact, case-sensitive); the other
    rows are checked for their number of fields but their values are not parsed, so scanning a large file
    for a few words is quick. Raises WordVectorError (one line naming the file and line) for an empty file,
    a binary file, a header that disagrees with the rows, ragged rows, non-numeric or non-finite values.
    """
    _check_limit(max_words)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Word vector file not found: {path!r}.")
    keep = None if wanted is None else set(wanted)
    words: list[str] = []
    rows: list[np.ndarray] = []
    index: dict[str, int] = {}
    declared: tuple[int, int] | None = None
    dim = 0
    rows_read = duplicates = 0
    lineno = 0
    for lineno, raw in _numbered_lines(path):
        line = _decode(path, lineno, raw)
        if lineno == 1:
            line = line.lstrip("\ufeff")
        fields = _fields(line)
        if not fields:
            continue
        if lineno == 1 and (declared := _parse_header(fields)) is not None:
            if declared[1] < 1:
                raise WordVectorError(f"{path}:line 1: the header declares dimension {declared[1]}. "
                                      "Expected 'count dim' with dim >= 1.")
            dim = declared[1]
            continue
        word, values = fields[0], fields[1:]
        if not dim:
            if not values:
                raise WordVectorError(f"{path}:line {lineno}: word {word!r:.60} has no values. "
                                      "Expected 'word v1 ... vD'.")
            dim = len(values)
        if declared is not None and rows_read == declared[0]:
            raise WordVectorError(f"{path}:line {lineno}: the header (line 1) declares {declared[0]} words but "
                                  "there are more rows.")
        if len(values) != dim:
            source = "the header (line 1)" if declared is not None else "the first row"
            raise WordVectorError(f"{path}:line {lineno}: word {word!r:.60} has {len(values)} values. "
                                  f"Expected {dim}, the dimension {source} gives.")
        rows_read += 1
        if keep is None or word in keep:
            if word in index:
                duplicates += 1
            else:
                rows.append(_parse_values(path, lineno, word, values))
                index[word] = len(words)
                words.append(word)
        if max_words is not None and rows_read >= max_words:
            break
    else:
        if rows_read == 0:
            what = "has only a header" if declared is not None else "is empty"
            raise WordVectorError(f"{path}:line {max(lineno, 1)}: the file {what}. Expected rows 'word v1 ... vD'.")
        if declared is not None and rows_read != declared[0]:
            raise WordVectorError(f"{path}:line {lineno}: the header (line 1) declares {declared[0]} words but "
                                  f"the file ends after {rows_read}.")
    vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return WordVectors(words, vectors, index, path=path, rows_read=rows_read, duplicates=duplicates)


def name_tokens(name: str) -> list[str]:
    """The lower-cased words of a class name: split on `_`, `-`, spaces; punctuation stripped from word ends."""
    tokens = (part.strip(_EDGE_PUNCTUATION) for part in _SEPARATORS.split(name.strip().lower()))
    return [t for t in tokens if t]


def normalise_name(name: str) -> str:
    """A class name as single-spaced lower-case words: `car_(sedan)` -> 'car sedan', `Sea_Turtle` -> 'sea turtle'."""
    return " ".join(name_tokens(name))


def name_candidates(name: str) -> list[tuple[str, str]]:
    """(rule, vocabulary token) pairs tried for `name` in order, before averaging its words; no repeats."""
    tokens = name_tokens(name)
    forms = [("exact", name.strip())]
    if tokens:
        forms += [("token", "_".join(tokens)), ("joined", "".join(tokens)), ("hyphen", "-".join(tokens))]
    seen: set[str] = set()
    out = []
    for rule, token in forms:
        if token and token not in seen:
            seen.add(token)
            out.append((rule, token))
    return out


def class_vector(name: str, vectors: WordVectors) -> ClassVector:
    """The vector of a class name by the first rule that matches (see the module docstring), or rule 'missing'."""
    for rule, token in name_candidates(name):
        if token in vectors:
            return ClassVector(name, vectors[token].copy(), rule, used=(token,))
    tokens = name_tokens(name)
    used = tuple(t for t in tokens if t in vectors)
    skipped = tuple(t for t in tokens if t not in vectors)
    if not used:
        return ClassVector(name, None, "missing", skipped=skipped)
    mean = np.mean([vectors[t].astype(np.float64) for t in used], axis=0).astype(np.float32)
    return ClassVector(name, mean, "average", used=used, skipped=skipped)


def _wanted_for(class_names: Iterable[str]) -> set[str]:
    wanted: set[str] = set()
    for name in class_names:
        wanted.update(token for _, token in name_candidates(name))
        wanted.update(name_tokens(name))
    return wanted


def _names_list(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def class_vectors(class_names: Sequence[str], path_or_vectors: str | os.PathLike | WordVectors, *,
                  allow_missing: bool = False, normalise: bool = True,
                  max_words: int | None = None) -> tuple[np.ndarray, dict]:
    """A float32 [C, D] matrix, row i the vector of the i-th class kept, and an info dict.

    `path_or_vectors`: a file (read keeping only the words these names can use; `max_words` as in
    load_word_vectors) or loaded WordVectors. Classes with no vector are refused in one WordVectorError
    listing them all, unless `allow_missing`, when they are dropped (C is then the number kept).
    `normalise`: L2-normalise each row; a zero vector is refused.

    info: 'classes' (names in row order), 'missing' (names dropped), 'rules' (name -> rule, 'missing'
    included), 'used' and 'skipped' (name -> vocabulary words used / words not found), 'dim', 'path',
    'words_read' (rows read from the file), 'vocabulary' (words kept), 'duplicates'.
    """
    names = list(class_names)
    if not names:
        raise ValueError("Invalid value for class_names. Received: an empty list. Expected at least one name.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Invalid value for class_names. Received: repeated names {_names_list(repeated)}. "
                         "Expected each class once.")
    if isinstance(path_or_vectors, WordVectors):
        vectors = path_or_vectors
    else:
        vectors = load_word_vectors(path_or_vectors, max_words=max_words, wanted=_wanted_for(names))
    matches = [class_vector(name, vectors) for name in names]
    missing = [m.name for m in matches if m.vector is None]
    source = vectors.path or "the word vectors"
    if missing and not allow_missing:
        raise WordVectorError(f"{len(missing)} of {len(names)} class names have no word vector in {source}: "
                              f"{_names_list(missing)} (pass allow_missing=True to drop them).")
    kept = [m for m in matches if m.vector is not None]
    matrix = np.stack([m.vector for m in kept]).astype(np.float32) if kept else np.zeros((0, vectors.dim), np.float32)
    if normalise and kept:
        norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
        zero = [m.name for m, n in zip(kept, norms) if not n > 0]
        if zero:
            raise WordVectorError(f"Cannot L2-normalise the zero vector of class names {_names_list(zero)} "
                                  f"in {source}. Expected non-zero vectors (or pass normalise=False).")
        matrix = (matrix / norms[:, None]).astype(np.float32)
    info = {
        "classes": [m.name for m in kept],
        "missing": missing,
        "rules": {m.name: m.rule for m in matches},
        "used": {m.name: list(m.used) for m in matches},
        "skipped": {m.name: list(m.skipped) for m in matches},
        "dim": vectors.dim,
        "path": vectors.path,
        "words_read": vectors.rows_read,
        "vocabulary": len(vectors),
        "duplicates": vectors.duplicates,
    }
    return matrix, info
