"""Quick, Draw! readers on the real samples and on every kind of bad input (strict and counted)."""

from __future__ import annotations

import gzip
import itertools
import json
import pathlib
import tempfile

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep import quickdraw as qd
from data_prep.drawing import Drawing
from data_prep.safe_npz import UnsafePickleError
from data_prep.skips import BadRecord, SkipCounter, StrictModeError


def _lines(path: pathlib.Path) -> int:
    """Lines of an ndjson file: newline-terminated ones plus a last one without newline."""
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


@pytest.fixture(scope="module")
def simplified(quickdraw_dir):
    files = qd.source_files(quickdraw_dir / "simplified", "simplified")
    skips = SkipCounter(strict=True)
    return files, {c: list(qd.read_ndjson(p, skips)) for c, p in files.items()}


@pytest.fixture(scope="module")
def raw(quickdraw_dir):
    files = qd.source_files(quickdraw_dir / "raw", "raw")
    skips = SkipCounter(strict=True)
    return files, {c: list(qd.read_ndjson(p, skips)) for c, p in files.items()}


# --------------------------------------------------------------------------- real samples


def test_re_export_and_formats():
    assert qd.Drawing is Drawing
    assert qd.FORMATS == ("simplified", "raw", "bitmap", "sketchrnn")


def test_real_simplified_files(simplified, quickdraw_dir):
    files, drawings = simplified
    assert len(files) == 344 and list(files) == sorted(files)
    assert files["The Eiffel Tower"].name == "The Eiffel Tower.ndjson"
    assert sum(len(v) for v in drawings.values()) == 8600
    assert sum(_lines(p) for p in files.values()) == 8600
    for category, items in drawings.items():
        assert len(items) == 25
        for d in items:
            assert d.word == category and isinstance(d.key_id, str) and d.key_id.isdigit()
            assert d.image is None and d.split is None and isinstance(d.recognized, bool)
            for s in d.strokes:
                assert s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == 2 and len(s) >= 1
                assert s.flags.c_contiguous and s.min() >= 0 and s.max() <= 255
                assert np.array_equal(s, np.round(s))
    first = json.loads((quickdraw_dir / "simplified" / "cat.ndjson").read_text().splitlines()[0])
    cat = drawings["cat"][0]
    assert cat.key_id == first["key_id"] and cat.countrycode == first["countrycode"]
    assert cat.timestamp == first["timestamp"] and cat.recognized == first["recognized"]
    assert [s.T.tolist() for s in cat.strokes] == first["drawing"]


def test_real_raw_files(raw):
    files, drawings = raw
    every = [d for items in drawings.values() for d in items]
    assert len(files) == 345 and len(every) == 9570
    assert sum(_lines(p) for p in files.values()) == 9570
    assert sum(not d.recognized for d in every) == 700
    assert max(d.num_points for d in every) == 1174
    assert {len(v) for v in drawings.values()} <= set(range(11, 115))
    assert all(s.shape[1] == 3 and s.dtype == np.float32 for d in every for s in d.strokes)
    coords = np.concatenate([s[:, :2] for d in every for s in d.strokes])
    assert coords.min() < 0 and coords.max() > 255  # raw screen coordinates, not 0..255
    assert np.any(coords != np.round(coords)) and np.any(coords == np.round(coords))
    backwards = sum(bool(np.any(np.diff(s[:, 2]) < 0)) for d in every for s in d.strokes)
    assert backwards == 5  # the README's 5 strokes whose timestamps go backwards


def test_recognized_only_is_a_counted_filter(raw):
    files, drawings = raw
    skips = SkipCounter()
    kept = [d for p in files.values() for d in qd.read_ndjson(p, skips, recognized_only=True)]
    assert len(kept) == 8870 and all(d.recognized for d in kept)
    assert skips.as_dict() == {"unrecognized": 700}
    assert len(kept) + skips.total == 9570
    with pytest.raises(StrictModeError, match=r"\.ndjson:\d+: unrecognized"):
        for p in files.values():
            list(qd.read_ndjson(p, SkipCounter(strict=True), recognized_only=True))


def test_gzip_reads_the_same_drawings(quickdraw_dir, tmp_path):
    source = quickdraw_dir / "raw" / "The Eiffel Tower.ndjson"
    gz = tmp_path / "The Eiffel Tower.ndjson.gz"
    gz.write_bytes(gzip.compress(source.read_bytes()))
    plain, packed = list(qd.read_ndjson(source)), list(qd.read_ndjson(gz))
    assert len(plain) == len(packed) == _lines(source)
    assert all(d.word == "The Eiffel Tower" for d in packed)
    for a, b in zip(plain, packed):
        assert a.key_id == b.key_id and all(np.array_equal(x, y) for x, y in zip(a.strokes, b.strokes))


def test_float64_dtype_keeps_raw_coordinates_exactly(quickdraw_dir):
    path = quickdraw_dir / "raw" / "cat.ndjson"
    first = json.loads(path.read_bytes().splitlines()[0])
    d64 = next(qd.read_ndjson(path, dtype=np.float64))
    assert [s.T.tolist() for s in d64.strokes] == first["drawing"]


# --------------------------------------------------------------------------- bad ndjson lines

GOOD = {"word": "x", "countrycode": "US", "timestamp": "t", "recognized": True, "key_id": "1", "drawing": [[[1, 2], [3, 4]]]}


def _line(**changes) -> bytes:
    record = {**GOOD, **changes}
    for key in [k for k, v in changes.items() if v is KeyError]:
        del record[key]
    return json.dumps(record).encode()


BAD_LINES = {
    "empty_line": b"   ",
    "not_utf8": b'{"key_id": "\xff\xfe", "drawing": [[[1], [2]]]}',
    "malformed_json": b'{"key_id": "1", "drawing": [[[1, 2], [3, 4]]]',
    "not_an_object": b"[1, 2, 3]",
    "missing_key": _line(drawing=KeyError),
    "bad_field": _line(recognized="yes"),
    "bad_drawing": _line(drawing=[[[1, "2"], [3, 4]]]),
    "empty_drawing": _line(drawing=[[[], []]]),
    "unequal_stroke_lengths": _line(drawing=[[[1, 2, 3], [3, 4]]]),
    "non_finite_coordinates": b'{"key_id": "1", "drawing": [[[1, NaN], [3, 4]]]}',
    "absurd_size": _line(drawing=[[[1, 2e7], [3, 4]]]),
}

MORE_BAD = [
    ("missing_key", _line(key_id=KeyError)),
    ("bad_field", _line(key_id=True)),
    ("bad_field", _line(key_id="")),
    ("bad_field", _line(countrycode=7)),
    ("bad_drawing", _line(drawing="strokes")),
    ("bad_drawing", _line(drawing=[[[1, 2]]])),
    ("bad_drawing", _line(drawing=[[[1, 2], [3, 4]], [[1], [2], [3]]])),  # rows change between strokes
    ("bad_drawing", _line(drawing=[[[1, True], [3, 4]]])),  # JSON true is not a coordinate
    ("bad_drawing", _line(drawing=[[[1, None], [3, 4]]])),
    ("bad_drawing", _line(drawing=[[[1, [2]], [3, 4]]])),
    ("empty_drawing", _line(drawing=[])),
    ("unequal_stroke_lengths", _line(drawing=[[[1, 2], [3, 4], [5]]])),
    ("non_finite_coordinates", b'{"key_id": "1", "drawing": [[[1, 2], [3, 4], [0, Infinity]]]}'),
    ("non_finite_coordinates", b'{"key_id": "1", "drawing": [[[1, 2], [3, 1e400]]]}'),
    ("absurd_size", _line(drawing=[[[1, 2], [3, 4], [0, 2e9]]])),  # |t| beyond MAX_TIME_MS
    ("absurd_size", _line(drawing=[[[0] * 60_000, [0] * 60_000]] * 2)),  # 120,000 points
    ("absurd_size", b'{"key_id": "1", "drawing": [[[1, 2], [3, ' + b"9" * 400 + b"]]]}"),
    ("bad_field", b'{"key_id": "1", "recognized": NaN, "drawing": [[[1], [2]]]}'),
    ("malformed_json", b'{"key_id": "1"} trailing'),
    ("malformed_json", b"[" * 5000),
]


def _write(tmp_path, name: str, lines: list[bytes]) -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_bad_line_counted_non_strict(tmp_path):
    lines = [_line(key_id="good0")]
    for bad in list(BAD_LINES.values()) + [b for _, b in MORE_BAD]:
        lines += [bad, _line(key_id=f"good{len(lines)}")]
    path = _write(tmp_path, "cat.ndjson", lines)
    skips = SkipCounter()
    got = list(qd.read_ndjson(path, skips))
    expected = {}
    for reason in list(BAD_LINES) + [r for r, _ in MORE_BAD]:
        expected[reason] = expected.get(reason, 0) + 1
    assert skips.as_dict() == dict(sorted(expected.items()))
    assert len(got) + skips.total == len(lines) == _lines(path)
    assert all(d.key_id.startswith("good") and d.word == "cat" for d in got)
    assert "cat.ndjson:2: empty_line" in skips.examples["empty_line"]


@pytest.mark.parametrize("reason, bad", list(BAD_LINES.items()) + MORE_BAD)
def test_strict_mode_names_file_and_line(tmp_path, reason, bad):
    path = _write(tmp_path, "The Eiffel Tower.ndjson", [_line(), _line(), bad, _line()])
    reader = qd.read_ndjson(path, SkipCounter(strict=True))
    assert next(reader).word == "The Eiffel Tower"
    next(reader)
    with pytest.raises(StrictModeError, match=rf"The Eiffel Tower\.ndjson:3: {reason}\b"):
        next(reader)


def test_empty_strokes_are_dropped_from_a_drawing(tmp_path):
    path = _write(tmp_path, "cat.ndjson", [_line(drawing=[[[], []], [[1, 2], [3, 4]], [[], []], [[5], [6]]])])
    (d,) = qd.read_ndjson(path, SkipCounter(strict=True))
    assert [s.tolist() for s in d.strokes] == [[[1, 3], [2, 4]], [[5, 6]]]


def test_int_key_ids_and_missing_optional_fields(tmp_path):
    path = _write(tmp_path, "cat.ndjson", [b'{"key_id": 123, "drawing": [[[1, 2], [3, 4], [0, 5]]]}'])
    (d,) = qd.read_ndjson(path)
    assert d.key_id == "123" and d.recognized is True and d.countrycode == "" and d.timestamp == ""
    assert d.strokes[0].tolist() == [[1, 3, 0], [2, 4, 5]]


def test_default_skip_counter_is_fresh_and_lenient(tmp_path):
    path = _write(tmp_path, "cat.ndjson", [b"garbage", _line()])
    assert len(list(qd.read_ndjson(path))) == 1
    assert len(list(qd.read_drawings(path, "simplified"))) == 1


def _gz_truncated(tmp_path, name, lines: list[bytes], keep: float) -> pathlib.Path:
    data = gzip.compress(b"\n".join(lines) + b"\n")
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_gzip_keeps_complete_lines_and_counts_once(quickdraw_dir, tmp_path):
    source = (quickdraw_dir / "raw" / "cat.ndjson").read_bytes().splitlines()
    path = _gz_truncated(tmp_path, "cat.ndjson.gz", source, 0.6)
    skips = SkipCounter()
    got = list(qd.read_ndjson(path, skips))
    assert skips.as_dict() == {"truncated_gzip": 1}
    decompressed = b""
    with gzip.open(path, "rb") as f:
        try:
            while chunk := f.read(1):
                decompressed += chunk
        except EOFError:
            pass
    assert len(got) == decompressed.count(b"\n") > 0  # every complete line read before the end
    assert [d.key_id for d in got] == [json.loads(line)["key_id"] for line in source[: len(got)]]
    with pytest.raises(StrictModeError, match=rf"cat\.ndjson\.gz:{len(got) + 1}: truncated_gzip"):
        list(qd.read_ndjson(path, SkipCounter(strict=True)))


def test_not_gzip_data_is_one_bad_gzip_skip(tmp_path):
    path = tmp_path / "cat.ndjson.gz"
    path.write_bytes(b'{"key_id": "1"}\n' * 10)
    skips = SkipCounter()
    assert list(qd.read_ndjson(path, skips)) == []
    assert skips.as_dict() == {"bad_gzip": 1}


@pytest.mark.parametrize(
    "name",
    ["..ndjson", "a..b.ndjson", "back\\slash.ndjson", "c:cat.ndjson", "nul\x00.ndjson", " cat.ndjson", ".hidden.ndjson", ".ndjson", "tab\t.ndjson"],
)
def test_unsafe_category_names_are_errors(tmp_path, name):
    with pytest.raises(BadRecord) as info:
        qd.read_ndjson(str(tmp_path) + "/" + name)
    assert info.value.reason == "bad_category_name"
    with pytest.raises(BadRecord, match="bad_category_name"):
        qd.category_name(name)


def test_category_names():
    assert qd.category_name("x/The Eiffel Tower.ndjson") == "The Eiffel Tower"
    assert qd.category_name("cat.ndjson.gz") == "cat"
    assert qd.category_name("t-shirt.npy") == "t-shirt"
    assert qd.category_name("cat.full.npz") == "cat"


# --------------------------------------------------------------------------- fuzz


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_lines(quickdraw_dir):
    lines = []
    for fmt in ("simplified", "raw"):
        for name in ("cat.ndjson", "The Eiffel Tower.ndjson"):
            lines += (quickdraw_dir / fmt / name).read_bytes().splitlines()[:3]
    return lines


def _check_file(directory, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as d:
        path = pathlib.Path(d) / name
        path.write_bytes(data)
        try:
            for _ in qd.read_ndjson(path, SkipCounter(strict=True)):
                pass
        except StrictModeError:
            pass
        skips = SkipCounter()
        yielded = sum(1 for _ in qd.read_ndjson(path, skips))
        if not name.endswith(".gz"):
            assert yielded + skips.total == _lines(path), skips.summary()


@st.composite
def _mutated(draw, lines):
    line = bytearray(draw(st.sampled_from(lines)))
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(line)))
        kind = draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = draw(st.integers(0, 255))
        if kind == "replace" and where < len(line):
            line[where] = byte
        elif kind == "delete":
            del line[where : where + draw(st.integers(1, 40))]
        else:
            line[where:where] = bytes([byte])
    return bytes(line)


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_arbitrary_bytes(fuzz_dir, chunks):
    _check_file(fuzz_dir, "cat.ndjson", b"\n".join(chunks))


@_FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_lines(fuzz_dir, valid_lines, data):
    lines = data.draw(st.lists(_mutated(valid_lines) | st.sampled_from(valid_lines), min_size=1, max_size=5))
    _check_file(fuzz_dir, "cat.ndjson", b"\n".join(lines) + data.draw(st.sampled_from([b"", b"\n"])))


@_FUZZ
@given(data=st.data())
def test_fuzz_gzip_bytes(fuzz_dir, valid_lines, data):
    packed = gzip.compress(b"\n".join(valid_lines[:4]))
    cut = data.draw(st.integers(0, len(packed)))
    noise = data.draw(st.binary(max_size=20))
    _check_file(fuzz_dir, "cat.ndjson.gz", packed[:cut] + noise)


# --------------------------------------------------------------------------- numpy_bitmap


def _bitmaps(drawings: list[Drawing]) -> np.ndarray:
    """28 x 28 renderings of real drawings (white on black, like Google's files), as N x 784 uint8."""
    rows = []
    for d in drawings:
        canvas = np.zeros((256, 256), np.uint8)
        for s in d.strokes:
            cv2.polylines(canvas, [s[:, :2].astype(np.int32).reshape(-1, 1, 2)], False, 255, 16)
        rows.append(cv2.resize(canvas, (28, 28), interpolation=cv2.INTER_AREA).reshape(784))
    return np.stack(rows)


def test_bitmaps_round_trip(simplified, tmp_path):
    _, drawings = simplified
    array = _bitmaps(drawings["cat"][:12])
    assert array.max() == 255
    path = tmp_path / "cat.npy"
    np.save(path, array)
    skips = SkipCounter(strict=True)
    got = list(qd.read_drawings(path, "bitmap", skips))
    assert len(got) == 12
    for i, d in enumerate(got):
        assert d.key_id == f"cat/{i}" and d.word == "cat" and d.strokes == []
        assert d.image.shape == (28, 28) and d.image.dtype == np.uint8
        assert np.array_equal(d.image.reshape(784), array[i])
    base = got[0].image
    while not isinstance(base, np.memmap) and base.base is not None:
        base = base.base
    assert isinstance(base, np.memmap)  # memory-mapped, never loaded whole


@pytest.mark.parametrize(
    "array, skipped, where",
    [
        (np.zeros((3, 784), np.float32), 3, "cat.npy:2"),
        (np.zeros((4, 28, 28), np.uint8), 4, "cat.npy:3"),
        (np.zeros((5, 783), np.uint8), 5, "cat.npy:4"),
        (np.zeros(784 * 2, np.uint8), 1, "cat.npy"),
    ],
)
def test_bitmaps_wrong_shape_or_dtype(tmp_path, array, skipped, where):
    path = tmp_path / "cat.npy"
    np.save(path, array)
    skips = SkipCounter()
    assert list(qd.read_bitmaps(path, skips)) == []
    assert skips.as_dict() == {"bad_npy_shape": skipped}
    assert skips.examples["bad_npy_shape"].startswith(str(path))
    with pytest.raises(StrictModeError, match="bad_npy_shape"):
        list(qd.read_bitmaps(path, SkipCounter(strict=True)))


@pytest.mark.parametrize("content", [b"not numpy", None, "object", "truncated"])
def test_bitmaps_unreadable_npy(tmp_path, content):
    path = tmp_path / "cat.npy"
    if content is None:
        path.write_bytes(b"")
    elif content == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "truncated":
        np.save(path, np.zeros((10, 784), np.uint8))
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(content)
    skips = SkipCounter()
    assert list(qd.read_bitmaps(path, skips)) == []
    assert skips.as_dict() == {"bad_npy": 1}


# --------------------------------------------------------------------------- sketch-rnn


def _object_array(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def test_stroke3_round_trip_on_every_real_simplified_drawing(simplified):
    _, drawings = simplified
    for d in itertools.chain.from_iterable(drawings.values()):
        s3 = qd.stroke3_from_strokes(d.strokes)
        assert s3.dtype == np.int16 and s3.shape == (d.num_points, 3)
        assert s3[:, 2].sum() == len(d.strokes) and s3[-1, 2] == 1
        back = qd.strokes_from_stroke3(s3)
        assert len(back) == len(d.strokes)
        assert all(a.dtype == np.float32 and np.array_equal(a, b) for a, b in zip(back, d.strokes))


def test_stroke3_helpers_edge_cases():
    assert qd.strokes_from_stroke3(np.array([[1, 1, 0], [1, 1, 1], [2, 0, 0]]))[1].tolist() == [[4, 2]]
    assert qd.stroke3_from_strokes([]).shape == (0, 3)
    assert qd.stroke3_from_strokes([np.array([[0.5, 1.0]])], dtype=np.float32).tolist() == [[0.5, 1.0, 1.0]]
    with pytest.raises(ValueError, match="int16"):
        qd.stroke3_from_strokes([np.array([[0.5, 1.0]])])
    with pytest.raises(ValueError, match="int16"):
        qd.stroke3_from_strokes([np.array([[0.0, 0.0], [40000.0, 0.0]])])
    with pytest.raises(ValueError, match=r"\(points, 3\)"):
        qd.strokes_from_stroke3(np.zeros((4, 2)))


def test_sketchrnn_round_trip(simplified, tmp_path):
    _, drawings = simplified
    source = {"train": drawings["cat"][:10], "valid": drawings["cat"][10:15], "test": drawings["cat"][15:25]}
    path = tmp_path / "cat.full.npz"
    np.savez(path, **{k: _object_array([qd.stroke3_from_strokes(d.strokes) for d in v]) for k, v in source.items()})
    got = list(qd.read_drawings(path, "sketchrnn", SkipCounter(strict=True)))
    assert len(got) == 25
    expected = [(split, i, d) for split, items in source.items() for i, d in enumerate(items)]
    for d, (split, i, src) in zip(got, expected):
        assert d.split == split and d.key_id == f"cat/{split}/{i}" and d.word == "cat" and d.image is None
        assert len(d.strokes) == len(src.strokes)
        assert all(a.shape[1] == 2 and np.array_equal(a, b) for a, b in zip(d.strokes, src.strokes))


def test_sketchrnn_bad_elements_are_counted(simplified, tmp_path):
    _, drawings = simplified
    good = qd.stroke3_from_strokes(drawings["dog"][0].strokes)
    items = [
        good,
        good.astype(np.float32),  # not integers
        good[:, :2],  # not (points, 3)
        np.array([[1, 1, 2]], np.int16),  # pen value 2
        np.zeros((0, 3), np.int16),  # no rows
        "not an array",
        good,
    ]
    path = tmp_path / "dog.npz"
    np.savez(path, train=_object_array(items))
    skips = SkipCounter()
    got = list(qd.read_sketchrnn(path, skips))
    assert [d.key_id for d in got] == ["dog/train/0", "dog/train/6"]
    assert skips.as_dict() == {"bad_stroke3": 4, "empty_drawing": 1}
    with pytest.raises(StrictModeError, match=r"dog\.npz:train\[1\]: bad_stroke3"):
        list(qd.read_sketchrnn(path, SkipCounter(strict=True)))


def test_sketchrnn_unreadable_or_keyless_npz(tmp_path):
    garbage = tmp_path / "cat.npz"
    garbage.write_bytes(b"no zip")
    keyless = tmp_path / "dog.npz"
    np.savez(keyless, other=np.arange(3))
    for path in (garbage, keyless):
        skips = SkipCounter()
        assert list(qd.read_sketchrnn(path, skips)) == []
        assert skips.as_dict() == {"bad_npz": 1}


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_sketchrnn_malicious_npz_raises(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cat.npz"
    np.savez(path, train=_object_array([np.zeros((2, 3), np.int16), _Exploit(marker)]))
    with pytest.raises(UnsafePickleError, match="system"):
        list(qd.read_sketchrnn(path, SkipCounter()))
    assert not marker.exists()


# --------------------------------------------------------------------------- dispatch and discovery


def test_read_drawings_unknown_format():
    with pytest.raises(ValueError, match="'simplified', 'raw', 'bitmap', 'sketchrnn'"):
        qd.read_drawings("cat.ndjson", "svg")
    with pytest.raises(ValueError, match="fmt"):
        qd.source_files(".", "png")


def test_source_files_per_format(tmp_path):
    for name in ["cat.npy", "dog.npy", "dog.npz", "bird.full.npz", "cat.ndjson", "ant.ndjson.gz", ".hidden.npy", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert list(qd.source_files(tmp_path, "bitmap")) == ["cat", "dog"]
    assert qd.source_files(tmp_path, "sketchrnn") == {"bird": tmp_path / "bird.full.npz", "dog": tmp_path / "dog.npz"}
    assert qd.source_files(tmp_path, "raw") == {"ant": tmp_path / "ant.ndjson.gz", "cat": tmp_path / "cat.ndjson"}


def test_source_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        qd.source_files(tmp_path / "missing", "raw")
    with pytest.raises(FileNotFoundError, match=r"No bitmap files \(\.npy\)"):
        qd.source_files(tmp_path, "bitmap")
    (tmp_path / "cat.ndjson").write_bytes(b"")
    (tmp_path / "cat.ndjson.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="Two files for category 'cat'"):
        qd.source_files(tmp_path, "simplified")
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    (unsafe / "a..b.npy").write_bytes(b"")
    with pytest.raises(BadRecord, match="bad_category_name"):
        qd.source_files(unsafe, "bitmap")


def test_unreadable_npy_messages_name_the_problem(tmp_path):
    """numpy calls any file without the .npy magic 'pickled data': the skip must say what it is."""
    import random

    real = tmp_path / "real.npy"
    np.save(real, np.load(qd_bitmap_file(), mmap_mode="r")[:10])
    cases = {
        "noise.npy": random.Random(0).randbytes(8) + real.read_bytes()[8:],
        "empty.npy": b"",
        "cut.npy": real.read_bytes()[:-100],
    }
    expected = {
        "noise.npy": "not an .npy file: it starts with ",
        "empty.npy": "an empty file (0 bytes)",
        "cut.npy": "a damaged or truncated .npy",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        skips = SkipCounter()
        assert list(qd.read_bitmaps(path, skips)) == []
        message = skips.examples["bad_npy"]
        assert message.startswith(f"{path}: bad_npy ({expected[name]}") and "pickled" not in message, message
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    skips = SkipCounter()
    list(qd.read_bitmaps(tmp_path / "objects.npy", skips))
    assert "pickled Python objects" in skips.examples["bad_npy"]


def qd_bitmap_file() -> pathlib.Path:
    from tests.conftest import BITMAP

    return BITMAP / "clock.npy"


def test_source_entries_that_are_no_category_are_counted_with_a_counter(tmp_path, quickdraw_dir):
    """An unsafe name ('a:b', a leading space, a newline), a folder named like a source file and a
    broken link are counted skips when a SkipCounter is given (left out), errors without one."""
    real = (quickdraw_dir / "simplified" / "cat.ndjson").read_bytes()
    (tmp_path / "cat.ndjson").write_bytes(real)
    for name in ("a:b.ndjson", " dog.ndjson", "ca\nt.ndjson"):
        (tmp_path / name).write_bytes(real)
    (tmp_path / "dog.ndjson").mkdir()
    (tmp_path / "owl.ndjson").symlink_to(tmp_path / "owl.ndjson")
    skips = SkipCounter()
    assert qd.source_files(tmp_path, "simplified", skips) == {"cat": tmp_path / "cat.ndjson"}
    assert skips.as_dict() == {"bad_category_name": 3, "broken_link": 1, "not_a_file": 1}
    assert skips.examples["not_a_file"] == f"{tmp_path / 'dog.ndjson'}: not_a_file (a folder)"
    assert skips.examples["broken_link"] == f"{tmp_path / 'owl.ndjson'}: broken_link (a symbolic link loop)"
    with pytest.raises(BadRecord):
        qd.source_files(tmp_path, "simplified")
    with pytest.raises(StrictModeError, match="bad_category_name"):
        qd.source_files(tmp_path, "simplified", SkipCounter(strict=True))
