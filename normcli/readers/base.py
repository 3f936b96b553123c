"""What every reader yields: tensors described up front, whose values are read chunk by chunk."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import DType
from .files import ByteReader


@dataclass(frozen=True)
class Origin:
    """Where a tensor lies, told in terms another process can open it by: the file (a path on a
    filesystem both share, or a URL), its format, the PyTorch sub-tree read, and the tensor's
    place among the file's tensors. Picklable; holds no open file and no bytes."""

    location: str
    format: str
    key: str | None
    index: int
    # a URL's storage options (--storage-option), which the other process opens it with
    storage_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class OptimizerSlot:
    """Where a tensor of an optimizer's state belongs: the optimizer state dict holding it (its
    dotted name; "" when the whole file is one), the parameter (its name in the model where the
    checkpoint tells, else its key in the state), and the moment (exp_avg, step...)."""

    optimizer: str
    param: str
    moment: str


@dataclass(frozen=True)
class TensorSource:
    """One stored tensor: known shape and dtype, values not read until `chunks` is iterated."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    read_bytes: ByteReader = field(repr=False, compare=False)
    # whether reads may start anywhere; a deflated zip member streams front to back only
    seekable: bool = True
    # values stored column-major: storage order is the C order of the reversed shape
    fortran_order: bool = False
    # the file of a sharded checkpoint that holds this tensor (None: a single-file checkpoint)
    shard: str | None = None
    # bytes in the file where they differ from the values' (quantized blocks read as float32)
    stored_nbytes: int | None = None
    # set for a tensor of an optimizer's state (moments, step counters), None for the model's
    optimizer: OptimizerSlot | None = None
    # how another process finds this tensor again (None: in memory, nowhere else to find it)
    origin: Origin | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", readable_name(self.name))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the values as read: what a scan walks through."""
        return self.numel * self.dtype.bits // 8

    @property
    def file_bytes(self) -> int:
        """Bytes the tensor takes in its file: what a report shows."""
        return self.nbytes if self.stored_nbytes is None else self.stored_nbytes

    def chunks(
        self, max_elements: int, first: int = 0, last: int | None = None
    ) -> Iterator[np.ndarray]:
        """Elements [first, last) in storage order, as 1-D arrays of at most about
        `max_elements` each. One buffer is reused: each array is valid until the next."""
        group, group_bytes = self.dtype.group_elements, self.dtype.group_bytes
        step = max(1, max_elements // group)
        begin, end = first // group, (self.numel if last is None else last) // group
        buffer = np.empty(min(step, max(end - begin, 0)) * group_bytes, dtype=np.uint8)
        for g in range(begin, end, step):
            stop = min(g + step, end)
            raw = self.read_bytes(g * group_bytes, stop * group_bytes, buffer)
            yield self.dtype.decode(raw)


def readable_name(name: str | bytes) -> str:
    """A name from a file as text every output can carry: bytes that are not UTF-8 (which
    pickle and HDF5 pass on, as bytes or as lone surrogates) become \\xNN escapes."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:  # bytes a decoder kept as U+DC80..U+DCFF (surrogateescape) are those bytes again
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


@dataclass
class Checkpoint:
    """An opened checkpoint: its tensors in storage order. Close it (or use `with`) when done."""

    path: str
    format: str
    nbytes: int
    tensors: list[TensorSource]
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # how many files the checkpoint spans
    shards: int = 1
    # (name, reason) of each tensor it holds that normcli cannot read: in no total, but reported
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # values beside the tensors that are not tensors (a PyTorch checkpoint's epoch, settings...)
    skipped_values: int = 0

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
