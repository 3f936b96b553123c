"""GGUF files (llama.cpp): float tensors read as stored, quantized ones dequantized block by block
(the DType names the storage type, "Q4_K"; the chunks hold the dequantized float32 values).

The header is walked here rather than by gguf.GGUFReader, which in gguf 0.19 spends 6 to 16 s on
the tokenizer arrays of a real model's header (against 0.1 s here) and checks no count against the
file, so a hostile one reads past the end or loops for ever. The gguf package still supplies the
type table and the dequantizers; the tests check this walk against GGUFReader."""

from __future__ import annotations

import functools
import math
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..dtypes import SAFETENSORS_DTYPES, DType, from_numpy
from ..errors import CorruptFileError, UnsupportedError
from ..formats import GGUF_MAGIC
from .base import Checkpoint, TensorSource
from .files import Data, import_optional, open_data, open_regular
from .remote import is_url

# ggml's GGML_MAX_DIMS: a tensor has at most four dimensions
MAX_DIMS = 4
# ggml counts elements in int64
MAX_ELEMENTS = 2**63 - 1
# arrays of arrays are legal; nothing real nests them this deep
MAX_NESTING = 8
DEFAULT_ALIGNMENT = 32
# A remote header is read from the file's first bytes; one larger than this is refused.
REMOTE_HEADER_MAX = 256 << 20

# GGUF metadata value types: the fixed-size ones and their sizes in bytes
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# the GGML types stored as plain values, by their safetensors-style dtype names
_PLAIN_TYPES = {
    "F32": "<f4",
    "F16": "<f2",
    "F64": "<f8",
    "I8": "i1",
    "I16": "<i2",
    "I32": "<i4",
    "I64": "<i8",
}


@dataclass(frozen=True)
class _Info:
    """One tensor as the header describes it (dims fastest first, as stored)."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int


def open_gguf(path: str) -> Checkpoint:
    gguf = import_optional("gguf", "gguf.quants", what="a GGUF file", extra="gguf", path=path)
    data = open_data(path)
    try:
        size = data.size
        if size < 24:
            raise CorruptFileError(f"not a GGUF file: only {size} bytes", path)
        infos, data_start, order = _read_header(data, path, gguf)
        _check_layout(infos, data_start, size, gguf, path)
    except BaseException:
        data.close()
        raise
    sources, skipped = [], []
    for info in infos:
        made = _source(info, data, data_start + info.offset, order, gguf)
        if isinstance(made, str):
            skipped.append((info.name, made))
        else:
            sources.append(made)
    return Checkpoint(path, "gguf", size, sources, [data.close], skipped=skipped)


def _read_header(data: Data, path: str, gguf: Any) -> tuple[list[_Info], int, Literal["<", ">"]]:
    """The header, read through a map of a local file; from a remote file, from its first
    bytes, more of them fetched while the header runs past them (up to REMOTE_HEADER_MAX)."""
    if not is_url(path):
        with open_regular(path) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _Header(buffer, path, gguf).read()
    wanted = 1 << 20
    while True:
        prefix = data[0:wanted]
        try:
            return _Header(prefix, path, gguf).read()
        except CorruptFileError:
            if len(prefix) >= min(data.size, REMOTE_HEADER_MAX):
                raise
        wanted *= 8


class _Header:
    """Walks the header with every length checked against the file before it is trusted, so a
    hostile count can neither read past the end nor loop for ever; gguf's reader does not check."""

    def __init__(self, buffer: mmap.mmap | bytes, path: str, gguf: Any) -> None:
        self.buffer, self.path, self.gguf = buffer, path, gguf
        self.pos = 0
        self.order: Literal["<", ">"] = "<"

    def fail(self, problem: str) -> CorruptFileError:
        return CorruptFileError(f"GGUF header at byte {self.pos}: {problem}", self.path)

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n > len(self.buffer) - start:
            raise self.fail(f"{what} needs {n} bytes but the file ends (truncated?)")
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> int:
        start = self.take(struct.calcsize(fmt), what)
        value: int = struct.unpack_from(self.order + fmt, self.buffer, start)[0]
        return value

    def string(self, what: str) -> bytes:
        length = self.unpack("Q", f"the length of {what}")
        start = self.take(length, what)
        return bytes(self.buffer[start : start + length])

    def left(self) -> int:
        return len(self.buffer) - self.pos

    def read(self) -> tuple[list[_Info], int, Literal["<", ">"]]:
        if bytes(self.buffer[:4]) != GGUF_MAGIC:
            raise self.fail("wrong magic: not a GGUF file")
        self.pos = 4
        (version,) = struct.unpack_from("<I", self.buffer, 4)
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            self.order = ">"
        version = self.unpack("I", "the version")
        if version not in (2, 3):
            raise UnsupportedError(
                f"GGUF version {version}: normcli reads versions 2 and 3", self.path
            )
        tensor_count = self.unpack("Q", "the tensor count")
        kv_count = self.unpack("Q", "the metadata count")
        # a key/value pair takes at least 13 bytes, a tensor description at least 24
        if kv_count * 13 > self.left() or tensor_count * 24 > self.left():
            raise self.fail(
                f"{tensor_count} tensors and {kv_count} metadata entries cannot fit in the file"
            )
        alignment = DEFAULT_ALIGNMENT
        keys: set[bytes] = set()
        for _ in range(kv_count):
            key = self.string("a metadata key")
            if key in keys:
                raise self.fail(f"metadata key {key!r} appears twice")
            keys.add(key)
            value_type = self.unpack("I", "a metadata type")
            value = self.value(value_type, key, 0)
            if key == b"general.alignment":
                if value_type != _UINT32 or value is None or value <= 0 or value & (value - 1):
                    raise self.fail("general.alignment must be a power of two (uint32)")
                alignment = value
        infos: list[_Info] = []
        names: set[str] = set()
        for _ in range(tensor_count):
            info = self.tensor_info()
            if info.name in names:
                raise self.fail(f"tensor {info.name!r} is described twice (duplicated name)")
            names.add(info.name)
            infos.append(info)
        data_start = self.pos + (-self.pos % alignment)
        return infos, data_start, self.order

    def value(self, value_type: int, key: bytes, depth: int) -> int | None:
        """Skips one metadata value; returns it if it is an unsigned 32-bit integer."""
        if value_type in _SCALAR_SIZES:
            start = self.take(_SCALAR_SIZES[value_type], f"metadata {key!r}")
            if value_type == _UINT32:
                value: int = struct.unpack_from(self.order + "I", self.buffer, start)[0]
                return value
            return None
        if value_type == _STRING:
            self.string(f"metadata {key!r}")
            return None
        if value_type != _ARRAY:
            raise self.fail(f"metadata {key!r} has unknown value type {value_type}")
        if depth >= MAX_NESTING:
            raise self.fail(f"metadata {key!r} nests arrays more than {MAX_NESTING} deep")
        item_type = self.unpack("I", f"the item type of metadata {key!r}")
        count = self.unpack("Q", f"the length of metadata {key!r}")
        if item_type in _SCALAR_SIZES:
            self.take(count * _SCALAR_SIZES[item_type], f"metadata {key!r}")
            return None
        smallest = {_STRING: 8, _ARRAY: 12}.get(item_type)
        if smallest is None:
            raise self.fail(f"metadata {key!r} holds items of unknown type {item_type}")
        if count * smallest > self.left():
            raise self.fail(f"metadata {key!r}: {count} items cannot fit in the file")
        if item_type == _STRING:
            self.skip_strings(count, key)
        for _ in range(count if item_type == _ARRAY else 0):
            self.value(item_type, key, depth + 1)
        return None

    def skip_strings(self, count: int, key: bytes) -> None:
        # a tokenizer holds hundreds of thousands: skipped in a tight loop, never copied
        length_at = struct.Struct(self.order + "Q").unpack_from
        buffer, pos, end = self.buffer, self.pos, len(self.buffer)
        for _ in range(count):
            if pos + 8 > end:
                break
            pos += 8 + length_at(buffer, pos)[0]
            if pos > end:
                break
        else:
            self.pos = pos
            return
        self.pos = min(pos, end)
        raise self.fail(f"metadata {key!r}: a string runs past the end of the file (truncated?)")

    def tensor_info(self) -> _Info:
        raw_name = self.string("a tensor name")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"tensor name {raw_name!r} is not UTF-8") from e
        n_dims = self.unpack("I", f"the rank of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise self.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = tuple(self.unpack("Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        if math.prod(dims) > MAX_ELEMENTS:
            raise self.fail(f"tensor {name!r}: shape {list(dims)} overflows a 64-bit size")
        type_id = self.unpack("I", f"the type of tensor {name!r}")
        offset = self.unpack("Q", f"the data offset of tensor {name!r}")
        if type_id not in self.gguf.GGML_QUANT_SIZES:
            raise UnsupportedError(
                f"tensor {name!r} has GGML type id {type_id}, unknown to gguf "
                f"{_version(self.gguf)} (a type llama.cpp has since removed, or a newer one)",
                self.path,
            )
        return _Info(name, dims, type_id, offset)


def _version(gguf: Any) -> str:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:
        return getattr(gguf, "__version__", "?")


def _stored_bytes(info: _Info, gguf: Any, path: str) -> int:
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[info.type_id]
    row = info.dims[0] if info.dims else 1
    if row % block_elements:
        name = gguf.GGMLQuantizationType(info.type_id).name
        raise CorruptFileError(
            f"tensor {info.name!r}: rows of {row} elements are not whole {name} blocks "
            f"of {block_elements}",
            path,
        )
    return int(math.prod(info.dims) // block_elements * block_bytes)


def _check_layout(infos: list[_Info], data_start: int, size: int, gguf: Any, path: str) -> None:
    """Every tensor's data lies inside the file, and no two tensors share a byte."""
    spans = sorted((i.offset, i.offset + _stored_bytes(i, gguf, path), i.name) for i in infos)
    end, previous = 0, None
    for begin, stop, name in spans:
        if begin < end:
            raise CorruptFileError(
                f"tensor {name!r}: data at offset {begin} overlaps tensor {previous!r}", path
            )
        if data_start + stop > size:
            raise CorruptFileError(
                f"tensor {name!r}: data [{begin}, {stop}) runs past the end of the file "
                f"({size - data_start} bytes of data): truncated",
                path,
            )
        end, previous = stop, name


def _source(
    info: _Info, data: Data, base: int, order: Literal["<", ">"], gguf: Any
) -> TensorSource | str:
    """The tensor's source, or why it cannot be read."""
    kind = gguf.GGMLQuantizationType(info.type_id)
    shape = tuple(reversed(info.dims))  # ne[0] varies fastest: the logical shape is reversed
    if kind.name in _PLAIN_TYPES:
        stored = from_numpy(np.dtype(_PLAIN_TYPES[kind.name]).newbyteorder(order))
        assert stored is not None
        return TensorSource(info.name, stored, shape, data.reader(base))
    if kind.name == "BF16" and order == "<":
        return TensorSource(info.name, SAFETENSORS_DTYPES["BF16"], shape, data.reader(base))
    if order == ">":
        return f"{kind.name} blocks in a big-endian GGUF file: not supported"
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    problem = _cannot_dequantize(kind, block_bytes, gguf)
    if problem:
        return problem
    # the name shows the storage type; chunks hold the dequantized float32 values
    dtype = DType(kind.name, "float", np.dtype("<f4"), 32)
    read = _dequantizing_reader(data, base, kind, block_elements, block_bytes, gguf)
    blocks = math.prod(shape) // block_elements
    return TensorSource(info.name, dtype, shape, read, stored_nbytes=blocks * block_bytes)


@functools.cache
def _cannot_dequantize(kind: Any, block_bytes: int, gguf: Any) -> str | None:
    # one block on this thread first also builds the grids of the IQ types, before any scan
    try:
        with np.errstate(all="ignore"):
            gguf.quants.dequantize(np.zeros(block_bytes, dtype=np.uint8), kind)
    except NotImplementedError:
        return f"{kind.name} blocks: gguf {_version(gguf)} cannot dequantize them"
    except Exception as e:
        return f"{kind.name} blocks: dequantizing failed ({type(e).__name__}: {e})"
    return None


def _dequantizing_reader(
    data: Data, base: int, kind: Any, block_elements: int, block_bytes: int, gguf: Any
) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """Reads bytes [start, stop) of the tensor as if stored as float32: only the blocks that
    cover those elements are read and dequantized, so memory stays a chunk's worth."""
    read_raw = data.reader(base)

    def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
        first, last = start // 4, stop // 4
        begin, end = first // block_elements, -(-last // block_elements)
        raw = read_raw(
            begin * block_bytes,
            end * block_bytes,
            np.empty((end - begin) * block_bytes, dtype=np.uint8),
        )
        # damaged scales make NaN or Inf values, which are counted, not warned about
        with np.errstate(all="ignore"):
            values = gguf.quants.dequantize(raw, kind).reshape(-1)
        skip = first - begin * block_elements
        target = out[: stop - start].view(np.float32)
        target[:] = values[skip : skip + last - first]
        return out[: stop - start]

    return read
