"""Restricted .npz loading: numpy arrays (object arrays of arrays included) load, anything else is refused unrun."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from data_prep.safe_npz import UnsafePickleError, load_npz_restricted


def _object_array(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _stroke3_items():
    return [
        np.array([[10, 20, 0], [5, -3, 1], [-7, 2, 1]], dtype=np.int16),
        np.zeros((4, 3), dtype=np.int16),
        np.array([[255, 0, 1]], dtype=np.int16),
    ]


def _npz_with_raw_member(path, member: str, array_for_header: np.ndarray, pickled: bytes) -> None:
    """An .npz whose member has `array_for_header`'s .npy header followed by the given pickle bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array_for_header, allow_pickle=True)
    header_len = struct.unpack("<H", buf.getvalue()[8:10])[0]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, buf.getvalue()[: 10 + header_len] + pickled)


def test_object_arrays_and_plain_arrays_round_trip(tmp_path):
    items = _stroke3_items()
    path = tmp_path / "cat.npz"
    np.savez(path, train=_object_array(items), valid=_object_array(items[:1]), test=np.arange(6, dtype=np.int32))
    loaded = load_npz_restricted(path)
    assert sorted(loaded) == ["test", "train", "valid"]
    assert loaded["train"].dtype == object and loaded["train"].shape == (3,)
    for got, expected in zip(loaded["train"], items):
        assert got.dtype == np.int16 and np.array_equal(got, expected)
    assert loaded["test"].dtype == np.int32 and loaded["test"].tolist() == list(range(6))


class _PyTwoPickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as the official sketch-rnn files (Python 2, numpy 1.x) do."""

    def save_bytes(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


@pytest.mark.parametrize("python2", [False, True])
def test_numpy1_protocol2_pickles_load(tmp_path, python2):
    """numpy 1.x names `numpy.core.multiarray`; Python 3 protocol 2 adds `_codecs.encode`; Python 2 writes BINSTRING."""
    array = _object_array(_stroke3_items())
    buf = io.BytesIO()
    (_PyTwoPickler if python2 else pickle.Pickler)(buf, protocol=2).dump(array)
    pickled = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in pickled
    assert (b"_codecs" in pickled) is not python2
    path = tmp_path / "old.npz"
    _npz_with_raw_member(path, "train.npy", array, pickled)
    loaded = load_npz_restricted(path)["train"]
    assert all(np.array_equal(a, b) for a, b in zip(loaded, _stroke3_items()))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_npz_is_rejected_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, train=_object_array([np.zeros((2, 3), np.int16), _Exploit(marker)]))
    with pytest.raises(UnsafePickleError) as info:
        load_npz_restricted(path)
    assert info.value.global_name in ("posix.system", "nt.system")
    assert "evil.npz" in str(info.value) and "train.npy" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, name",
    [
        (pickle.dumps(_object_array([print]), protocol=4), "builtins.print"),
        (b"\x80\x02cbuiltins\neval\nq\x00X\x03\x00\x00\x001+1q\x01\x85q\x02Rq\x03.", "builtins.eval"),
        (b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00hiX\x04\x00\x00\x00zlib\x86R.", ""),
    ],
)
def test_other_globals_are_refused(tmp_path, payload, name):
    path = tmp_path / "bad.npz"
    _npz_with_raw_member(path, "train.npy", _object_array([1]), payload)
    with pytest.raises(UnsafePickleError) as info:
        load_npz_restricted(path)
    assert info.value.global_name == name


def test_not_an_npz_and_bad_member_are_value_errors(tmp_path):
    path = tmp_path / "plain.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not an .npz"):
        load_npz_restricted(path)
    bad = tmp_path / "bad_member.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("train.npy", b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="train.npy"):
        load_npz_restricted(bad)


def test_a_header_claiming_more_rows_than_the_file_holds_is_refused_before_allocating(tmp_path, quickdraw_dir):
    """A tiny .npz whose `valid` header claims 10^9 stroke-3 rows (6 GB of int16): a counted bad_npz skip,
    with nothing of that size allocated; the real drawings beside it are not the problem."""
    from data_prep import quickdraw
    from data_prep.skips import SkipCounter

    drawings = list(quickdraw.read_ndjson(quickdraw_dir / "simplified" / "cat.ndjson"))
    train = _object_array([quickdraw.stroke3_from_strokes(d.strokes) for d in drawings])
    buf = io.BytesIO()
    np.lib.format.write_array(buf, train, allow_pickle=True)
    claim = io.BytesIO()
    np.lib.format.write_array_header_1_0(claim, {"descr": "<i2", "fortran_order": False, "shape": (10**9, 3)})
    path = tmp_path / "cat.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train.npy", buf.getvalue())
        z.writestr("valid.npy", claim.getvalue() + np.zeros((4, 3), np.int16).tobytes())
    assert path.stat().st_size < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"valid.npy.*claims shape \(1000000000, 3\) int16 "
                                             r"\(6,000,000,000 bytes\) but the member holds 24 bytes"):
            load_npz_restricted(path)
        skips = SkipCounter()
        assert list(quickdraw.read_sketchrnn(path, skips)) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert skips.as_dict() == {"bad_npz": 1} and "claims shape" in skips.examples["bad_npz"]
    assert peak < 50 * 2**20, f"{peak:,} bytes allocated"
