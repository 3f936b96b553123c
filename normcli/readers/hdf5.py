"""HDF5 weight files (Keras .h5, .weights.h5) and Keras v3 .keras archives: every numeric dataset,
named by its HDF5 path ("model_weights/dense/dense/kernel:0"). Only arrays are read: no model
config, no Lambda layer, nothing is deserialized."""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from ..dtypes import SAFETENSORS_DTYPES, DType, from_numpy
from ..errors import CorruptFileError, NormcliError, UnsupportedError
from ..formats import ZIP_MAGIC
from .base import Checkpoint, TensorSource, readable_name
from .files import ZIP_ERRORS, Data, DataSlice, import_optional, open_data, open_regular, open_zip
from .remote import is_url
from .zipped import ENCRYPTED, check_inflated_size, stored_data_start

# Each dataset's chunk cache (h5py's default is 1 MiB): a compressed chunk larger than the cache
# is inflated again for every read that touches it, so time would grow with its size squared.
CHUNK_CACHE_BYTES = 16 << 20
_CACHE = {"rdcc_nbytes": CHUNK_CACHE_BYTES, "rdcc_w0": 1.0}

# where a Keras v3 archive keeps its weights
KERAS_WEIGHTS = "model.weights.h5"

ByteRead = Callable[[int, int, np.ndarray], np.ndarray]


def open_hdf5(path: str) -> Checkpoint:
    """An HDF5 file, or the model.weights.h5 inside a .keras archive (format "hdf5" / "keras")."""
    h5py = import_optional("h5py", what="an HDF5 / Keras file", extra="h5", path=path)
    with open_regular(path) as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(8)
    data = open_data(path)
    closers: list[Callable[[], None]] = [data.close]
    try:
        if head.startswith(ZIP_MAGIC):
            fmt = "keras"
            h5, raw_start, raw_size = _open_keras_weights(h5py, data, path, closers)
        else:
            fmt = "hdf5"
            h5, raw_start, raw_size = _open_plain(h5py, data, path, closers), 0, size
        raw = None if raw_start is None else _Raw(data, raw_start, raw_start + raw_size)
        sources, skipped = _datasets(h5py, h5, raw, path)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return Checkpoint(path, fmt, size, sources, closers, skipped=skipped)


def _open_plain(h5py: Any, data: Data, path: str, closers: list[Callable[[], None]]) -> Any:
    if not is_url(path):
        # no file lock: a read needs none, and some network file systems refuse one
        h5 = _open_h5(path, functools.partial(h5py.File, path, "r", locking=False, **_CACHE))
        closers.append(h5.close)
        return h5
    return _open_file_object(h5py, DataSlice(data), path, closers)


def _open_file_object(h5py: Any, member: Any, path: str, closers: list[Callable[[], None]]) -> Any:
    h5 = _open_h5(path, functools.partial(h5py.File, member, "r", locking=False, **_CACHE))
    # HDF5 over a Python file object must be closed before the interpreter exits, or it
    # crashes there: the finalizer closes it at exit if the checkpoint was never closed
    closers.append(weakref.finalize(member, _close_all, h5, member))
    return h5


def _open_h5(path: str, opener: Callable[[], Any]) -> Any:
    try:
        return opener()
    except Exception as e:
        raise CorruptFileError(f"not a readable HDF5 file ({e})", path) from e


def _open_keras_weights(
    h5py: Any, data: Data, path: str, closers: list[Callable[[], None]]
) -> tuple[Any, int | None, int]:
    """The archive's weights file, opened where it lies: a stored member is read in place
    (and its contiguous datasets straight from the zip); a compressed one through zipfile."""
    archive = open_zip(path)
    closers.append(archive.close)
    names = archive.namelist()
    if KERAS_WEIGHTS not in names:
        if "model.weights.npz" in names:
            raise UnsupportedError(
                "a .keras archive with its weights in model.weights.npz, which normcli does "
                "not read (save with weights_format='h5', the default)",
                path,
            )
        raise UnsupportedError(
            f"zip archive without {KERAS_WEIGHTS}: not a Keras v3 .keras file "
            f"({len(names)} members)",
            path,
        )
    info = archive.getinfo(KERAS_WEIGHTS)
    where = f"member {KERAS_WEIGHTS!r}"
    if info.flag_bits & ENCRYPTED:
        raise UnsupportedError(f"{where} is encrypted", path)
    if info.compress_type == zipfile.ZIP_STORED:
        start = stored_data_start(info, data, where, path)
        member: Any = DataSlice(data, start, info.file_size)
        base: int | None = start
    else:
        member = _inflated(archive, info, where, path)
        closers.append(member.close)
        base = None
    return _open_file_object(h5py, member, path, closers), base, info.file_size


def _inflated(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, path: str) -> Any:
    """A compressed member inflated once into a temporary file: h5py seeks back and forth, and
    every backward seek in a zip stream inflates it again from the start."""
    check_inflated_size(info, where, path)
    member = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the checkpoint)
    try:
        with archive.open(info) as source:
            shutil.copyfileobj(source, member, 1 << 20)
    except ZIP_ERRORS as e:
        member.close()
        raise CorruptFileError(f"{where}: cannot be read ({e})", path) from e
    except BaseException:
        member.close()
        raise
    return member


def _close_all(*things: Any) -> None:
    for thing in things:
        thing.close()


class _Raw:
    """Where the HDF5 file's bytes lie in the file on disk, for datasets read without h5py."""

    def __init__(self, data: Data, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end


def _datasets(
    h5py: Any, h5: Any, raw: _Raw | None, path: str
) -> tuple[list[TensorSource], list[tuple[str, str]]]:
    """Every dataset reachable by hard links, once each, in HDF5's visiting order. Soft and
    external links are not followed: an external link could name any file on the machine."""
    found: list[tuple[str, Any]] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            found.append((name, item))

    try:
        h5.visititems(visit)
        sources, skipped = [], []
        for name, dataset in found:
            made = _source(h5py, name, dataset, h5, raw, path)
            if isinstance(made, str):
                skipped.append((readable_name(name), made))
            else:
                sources.append(made)
    except NormcliError:
        raise
    except Exception as e:
        raise CorruptFileError(f"damaged HDF5 structure ({type(e).__name__}: {e})", path) from e
    return sources, skipped


def _stored_dtype(dataset: Any) -> DType | None:
    dtype = dataset.dtype
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.fields is None:
        # Keras writes bfloat16 as 2-byte opaque data, marked by a "dtype" attribute
        marker = dataset.attrs.get("dtype")
        if isinstance(marker, bytes):
            marker = marker.decode("utf-8", "replace")
        if marker == "bfloat16":
            return SAFETENSORS_DTYPES["BF16"]
    return from_numpy(dtype)


def _source(
    h5py: Any,
    name: str,
    dataset: Any,
    h5: Any,
    raw: _Raw | None,
    path: str,
) -> TensorSource | str:
    """The dataset's source, or why it cannot be read."""
    if dataset.shape is None:
        return "empty dataset (null dataspace): holds no values"
    if dataset.is_virtual:
        return "virtual dataset (its data lives in other files): not followed"
    if dataset.external:
        return "data kept in external raw files: not followed"
    dtype = _stored_dtype(dataset)
    if dtype is None:
        return f"dtype {dataset.dtype}: not numbers"
    shape = tuple(int(d) for d in dataset.shape)
    nbytes = math.prod(shape) * dtype.bits // 8
    chunk_bytes = math.prod(dataset.chunks or ()) * dataset.dtype.itemsize
    if dataset.chunks and chunk_bytes > CHUNK_CACHE_BYTES and _filtered(dataset):
        return (
            f"compressed in chunks of {chunk_bytes} bytes, more than normcli's "
            f"{CHUNK_CACHE_BYTES >> 20} MiB chunk cache: every read would inflate a whole chunk"
        )
    offset = _contiguous_offset(h5py, dataset, nbytes)
    if raw is not None and offset is not None and _raw_matches(h5py, dataset, dtype):
        if raw.start + offset + nbytes > raw.end:
            raise CorruptFileError(
                f"dataset {name!r}: data [{offset}, {offset + nbytes}) runs past the end of "
                "the file (truncated)",
                path,
            )
        return TensorSource(name, dtype, shape, raw.data.reader(raw.start + offset))
    return TensorSource(name, dtype, shape, _sliced_reader(h5, name, shape, dtype, path))


def _contiguous_offset(h5py: Any, dataset: Any, nbytes: int) -> int | None:
    """Where a contiguous dataset's bytes begin, if they are all written in one run: not one
    left unallocated (its fill value is h5py's to produce; its address would be garbage)."""
    layout = dataset.id.get_create_plist().get_layout()
    if layout != h5py.h5d.CONTIGUOUS or nbytes == 0:
        return None
    status = dataset.id.get_space_status()
    if status != h5py.h5d.SPACE_STATUS_ALLOCATED or dataset.id.get_storage_size() != nbytes:
        return None
    offset: int | None = dataset.id.get_offset()
    return offset


def _raw_matches(h5py: Any, dataset: Any, dtype: DType) -> bool:
    """The stored bytes are exactly numpy's: a standard integer or IEEE float type, or Keras'
    opaque bfloat16. Anything else (odd precisions, enums, compounds) goes through h5py."""
    if dataset.dtype.kind in "fiu":
        stored = dataset.id.get_type()
        return bool(stored == h5py.h5t.py_create(dataset.dtype))
    return dtype is SAFETENSORS_DTYPES["BF16"]


def _filtered(dataset: Any) -> bool:
    return bool(dataset.id.get_create_plist().get_nfilters())


def _sliced_reader(h5: Any, name: str, shape: tuple[int, ...], dtype: DType, path: str) -> ByteRead:
    """Reads elements through h5py (chunked, compressed or converted data), one hyperslab per
    run of whole rows, so only a chunk's worth is in memory."""
    itemsize = dtype.element.itemsize
    # held open between reads: a dataset's chunk cache lasts only as long as a handle on it
    held: list[Any] = []

    def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
        at = 0
        try:
            if not held:
                held.append(h5[name])
            dataset = held[0]
            for selection in _slabs(shape, start // itemsize, stop // itemsize):
                values = np.ascontiguousarray(dataset[selection]).reshape(-1).view(np.uint8)
                out[at : at + values.size] = values
                at += values.size
        except NormcliError:
            raise
        except Exception as e:
            raise CorruptFileError(
                f"dataset {name!r}: cannot be read ({type(e).__name__}: {e})", path
            ) from e
        if at != stop - start:
            raise CorruptFileError(f"dataset {name!r}: read {at} bytes, not {stop - start}", path)
        return out[:at]

    return read


def _slabs(shape: tuple[int, ...], first: int, last: int) -> list[tuple[slice, ...]]:
    """Hyperslabs covering the C-order elements [first, last) of an array of this shape, in
    order: a partial leading row, a block of whole rows, a partial trailing row (recursively)."""
    if first >= last:
        return []
    if not shape:
        return [()]
    if len(shape) == 1:
        return [(slice(first, last),)]
    inner = math.prod(shape[1:])
    if inner == 0:
        return []
    row, skip = divmod(first, inner)
    end_row, tail = divmod(last, inner)
    rest = shape[1:]
    if row == end_row:
        return [(slice(row, row + 1), *s) for s in _slabs(rest, skip, tail)]
    out = []
    if skip:
        out += [(slice(row, row + 1), *s) for s in _slabs(rest, skip, inner)]
        row += 1
    if end_row > row:
        out.append((slice(row, end_row), *(slice(None) for _ in rest)))
    if tail:
        out += [(slice(end_row, end_row + 1), *s) for s in _slabs(rest, 0, tail)]
    return out
