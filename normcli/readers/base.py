"""What every reader yields: tensors described up front, whose values are read chunk by chunk."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..dtypes import DType

# Reads the raw bytes of whole element groups [start, stop) of one tensor's data.
ByteReader = Callable[[int, int], "bytes | memoryview | np.ndarray"]


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

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.bits // 8

    def chunks(self, max_elements: int) -> Iterator[np.ndarray]:
        """The values in storage order, as 1-D arrays of at most about `max_elements` each."""
        group = self.dtype.group_elements
        step_groups = max(1, max_elements // group)
        total_groups = self.numel // group
        for first in range(0, total_groups, step_groups):
            last = min(first + step_groups, total_groups)
            raw = self.read_bytes(first * self.dtype.group_bytes, last * self.dtype.group_bytes)
            yield self.dtype.decode(raw)


@dataclass
class Checkpoint:
    """An opened checkpoint: its tensors in storage order. Close it (or use `with`) when done."""

    path: str
    format: str
    nbytes: int
    tensors: list[TensorSource]
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
