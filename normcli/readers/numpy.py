"""NumPy .npy files and .npz archives (stored or compressed members), read without pickle."""

from __future__ import annotations

import collections
import io
import math
import zipfile
from typing import IO, Any

import numpy as np

from ..dtypes import DType, from_numpy
from ..errors import CorruptFileError, UnsupportedError
from ..formats import ZIP_MAGIC
from .base import Checkpoint, TensorSource
from .files import ZIP_ERRORS, Data, open_data, open_regular, open_zip
from .zipped import ENCRYPTED, CrcCheckedReader, stored_data_start


def _read_npy_header(f: IO[bytes], where: str, path: str) -> tuple[tuple[int, ...], bool, DType]:
    """Parse an .npy header (a Python literal, never unpickled) and check its dtype is numeric."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(f, max_header_size=1 << 20)
    except Exception as e:
        # numpy parses the header as a Python literal; a damaged one fails in many ways
        # (ValueError, SyntaxError, tokenize.TokenError, ...), all of which mean one thing
        raise CorruptFileError(f"{where}: not a valid .npy header ({e})", path) from e
    if any(d < 0 for d in shape):
        raise CorruptFileError(f"{where}: negative dimension in shape {shape}", path)
    if dtype.hasobject:
        raise UnsupportedError(
            f"{where}: holds Python objects, which only pickle can load; normcli never unpickles",
            path,
        )
    stored = from_numpy(dtype)
    if stored is None:
        raise UnsupportedError(f"{where}: dtype {dtype} is not numeric", path)
    return tuple(int(d) for d in shape), bool(fortran_order), stored


def open_npy(path: str) -> Checkpoint:
    with open_regular(path) as f:
        size = f.seek(0, 2)
        f.seek(0)
        shape, fortran, dtype = _read_npy_header(f, "array", path)
        data_start = f.tell()
    data = open_data(path)
    close = data.close
    tensor = TensorSource(_stem(path), dtype, shape, data.reader(data_start), fortran_order=fortran)
    if data_start + tensor.nbytes > size:
        close()
        raise CorruptFileError(
            f"truncated: {dtype.name} {list(shape)} needs {tensor.nbytes} bytes of data "
            f"but the file holds {size - data_start}",
            path,
        )
    extra = size - data_start - tensor.nbytes
    if extra:
        close()
        raise CorruptFileError(
            f"{extra} bytes after the array belong to no tensor (several arrays written one "
            "after another, as in an Equinox .eqx file, are not an .npy file)",
            path,
        )
    return Checkpoint(path, "npy", size, [tensor], [close])


def _stem(path: str) -> str:
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".npy") else base


def open_npz(path: str) -> Checkpoint:
    with open_regular(path) as f:
        head = f.read(4)
        size = f.seek(0, 2)
    # numpy writes a plain zip: its first member, or the end record of an empty archive, first
    if head not in (ZIP_MAGIC, b"PK\x05\x06"):
        raise CorruptFileError("not a zip archive: it does not start as one (damaged?)", path)
    archive = open_zip(path)
    counts = collections.Counter(info.filename for info in archive.infolist())
    duplicates = sorted(n for n, c in counts.items() if c > 1)
    if duplicates:
        archive.close()
        raise CorruptFileError(f"zip archive holds member {duplicates[0]!r} more than once", path)
    data = open_data(path)
    try:
        tensors = [
            _member_source(archive, info, data, path)
            for info in archive.infolist()
            if info.filename.endswith(".npy")
        ]
    except BaseException:
        archive.close()
        data.close()
        raise
    names = archive.namelist()
    if names and not tensors:
        archive.close()
        data.close()
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise UnsupportedError(
                "a PyTorch checkpoint (zip with data.pkl), not an npz: drop --input-format "
                "npz, or give --input-format pytorch",
                path,
            )
        raise UnsupportedError(
            f"zip archive holds no .npy arrays ({len(names)} other members): not an .npz", path
        )
    streams = [t.read_bytes.close for t in tensors if isinstance(t.read_bytes, _StreamReader)]
    return Checkpoint(path, "npz", size, tensors, [archive.close, data.close, *streams])


def _member_source(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, buffer: Data, path: str
) -> TensorSource:
    name = info.filename[: -len(".npy")]
    where = f"member {info.filename!r}"
    if info.flag_bits & ENCRYPTED:
        raise UnsupportedError(f"{where} is encrypted", path)
    if info.compress_type == zipfile.ZIP_STORED:
        start = stored_data_start(info, buffer, where, path)
        member = io.BytesIO(bytes(buffer[start : start + min(info.file_size, 1 << 20)]))
        shape, fortran, dtype = _read_npy_header(member, where, path)
        data_size = info.file_size - member.tell()
        data_bytes = math.prod(shape) * dtype.bits // 8
        checked = CrcCheckedReader(
            buffer, start, member.tell(), min(data_bytes, data_size), info, where, path
        )
        source = TensorSource(name, dtype, shape, checked, fortran_order=fortran)
    else:
        try:
            with archive.open(info) as member_file:
                shape, fortran, dtype = _read_npy_header(member_file, where, path)
                header_size = member_file.tell()
        except ZIP_ERRORS as e:
            raise CorruptFileError(f"{where}: cannot be decompressed ({e})", path) from e
        data_size = info.file_size - header_size
        source = TensorSource(
            name,
            dtype,
            shape,
            _StreamReader(archive, info, header_size, where, path),
            seekable=False,
            fortran_order=fortran,
        )
    if source.nbytes > data_size:
        raise CorruptFileError(
            f"{where}: {dtype.name} {list(shape)} needs {source.nbytes} bytes "
            f"but the member holds {data_size}",
            path,
        )
    return source


class _StreamReader:
    """Reads a compressed member front to back; each call must continue where the last ended."""

    def __init__(
        self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, skip: int, where: str, path: str
    ) -> None:
        self.archive, self.info, self.skip = archive, info, skip
        self.where, self.path = where, path
        self.stream: Any = None
        self.position = 0

    def __call__(self, start: int, stop: int, out: np.ndarray) -> bytes:
        try:
            if self.stream is None or start != self.position:
                self._restart(start)
            data: bytes = self.stream.read(stop - start)
        except ZIP_ERRORS as e:
            self.close()
            raise CorruptFileError(f"{self.where}: damaged compressed data ({e})", self.path) from e
        if len(data) != stop - start:
            self.close()
            raise CorruptFileError(f"{self.where}: compressed data ends early", self.path)
        self.position = stop
        if stop + self.skip == self.info.file_size:
            self._finish()
        return data

    def _restart(self, start: int) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = self.archive.open(self.info)
        self.stream.read(self.skip + start)

    def _finish(self) -> None:
        # reading to the end is what makes zipfile verify the CRC of the member
        try:
            self.stream.read()
        finally:
            self.close()

    def close(self) -> None:
        """Release the member stream (also when a scan stops part way)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.position = 0
