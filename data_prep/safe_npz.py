"""Load an .npz whose members may be object arrays (sketch-rnn) without trusting pickle.

`np.load(..., allow_pickle=True)` runs whatever a pickle names: a downloaded file could
execute code. Here object-dtype members are unpickled by a restricted Unpickler that resolves
only the few globals numpy's own array pickles use (array reconstruction, ndarray, dtype,
scalar); any other global raises UnsafePickleError before anything is called.
Plain (non-object) members are read with `allow_pickle=False`. A member whose .npy header claims more
data than the member can hold (a tiny file claiming 10^9 rows) is refused before anything is allocated.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile

import numpy as np
from numpy.lib import format as npy_format

_RECONSTRUCT = np._core.multiarray._reconstruct
_SCALAR = np._core.multiarray.scalar
# Deflate expands at most about 1032:1; other zip methods are not used by numpy.
_MAX_EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1100}



def _latin1_encode(text: str, encoding: str) -> bytes:
    """What protocol-2 pickles written by Python 3 use for bytes: `_codecs.encode(text, 'latin1')`."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"disallowed _codecs.encode(..., {encoding!r:.40}): only latin1 text is allowed")
    return text.encode("latin1")


# (module, name) as written in pickles by numpy 1.x (numpy.core) and 2.x (numpy._core).
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle inside an .npz names a global other than numpy's array machinery."""

    def __init__(self, message: str, global_name: str = ""):
        super().__init__(message)
        self.global_name = global_name


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            qualified = f"{module}.{name}"
            raise UnsafePickleError(
                f"disallowed global {qualified!r}: only numpy arrays and dtypes may be unpickled", qualified
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"disallowed persistent id {pid!r:.60}")


def load_npz_restricted(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every member of an .npz as an array, object members through the restricted unpickler.

    Raises UnsafePickleError (naming the file, the member and the disallowed global) for a pickle
    of anything else, ValueError for a file that is not a valid .npz of .npy members.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{os.fspath(path)!r} is not an .npz (zip) file: {e}") from None
    out: dict[str, np.ndarray] = {}
    archive_bytes = os.path.getsize(path)
    with archive:
        for member in archive.namelist():
            key = member[: -len(".npy")] if member.endswith(".npy") else member
            entry = archive.getinfo(member)
            # What the member can really hold: its stated size, bounded by what the file on disk can expand to.
            expansion = _MAX_EXPANSION.get(entry.compress_type, 1100)
            capacity = min(entry.file_size, min(entry.compress_size, archive_bytes) * expansion)
            try:
                with archive.open(member) as f:
                    out[key] = _read_member(f, capacity)
            except UnsafePickleError as e:
                raise UnsafePickleError(f"{os.fspath(path)!r} member {member!r}: {e}", e.global_name) from None
            except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, TypeError) as e:
                raise ValueError(f"{os.fspath(path)!r} member {member!r} is not a valid .npy: {e}") from None
    return out


def _read_member(f, capacity: int) -> np.ndarray:
    """One .npy member of at most `capacity` bytes (header included)."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported (1.0 and 2.0 are)")
    available = capacity - f.tell()
    count = math.prod(shape)
    # An object array's pickle takes at least a byte per element; plain data takes itemsize bytes each.
    needed = count if dtype.hasobject else count * dtype.itemsize
    if needed > available:
        raise ValueError(f"its header claims shape {tuple(shape)} {dtype} ({needed:,} bytes) but the member holds "
                         f"{max(available, 0):,} bytes of data")
    if not dtype.hasobject:
        f.seek(0)
        return npy_format.read_array(f, allow_pickle=False)
    # numpy writes object arrays as a pickle of the whole array; latin1 reads Python 2 pickles.
    array = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise ValueError(f"object member does not unpickle to an array of shape {tuple(shape)}")
    return array
