"""Reading torch tensor views that are not one contiguous run of their storage: strided views
(transposed, stepped, expanded) gathered in C order, and the lazy negation and conjugation bits
torch saves with a view."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import UnsupportedError

# A strided view touching at most this much storage has that span read once and held while it
# is scanned; a larger one is gathered window by window, each chunk on its own (flat memory).
HELD_SPAN_BYTES = 64 << 20
WINDOW_BYTES = 4 << 20


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def sign_flips(metadata: Any, dtype: DType, where: str) -> tuple[bool, bool] | None:
    """The lazy negation and conjugation bits torch saves with a view (x.conj(), x.conj().imag)."""
    if metadata is None or metadata == {}:
        return None
    if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
        raise UnsupportedError(f"{where}: tensor metadata {metadata!r:.80} is not supported")
    neg, conj = bool(metadata.get("neg")), bool(metadata.get("conj"))
    conj = conj and dtype.kind == "complex"  # conjugating real values changes nothing
    if neg and dtype.kind not in ("float", "complex", "int"):
        raise UnsupportedError(f"{where}: a negated view of {dtype.name} values")
    return (neg, conj) if neg or conj else None


class SignFlipped:
    """Applies a view's negation or conjugation bit to the values its reader returns."""

    def __init__(self, read: Callable[..., Any], dtype: DType, neg: bool, conj: bool) -> None:
        self.read, self.element, self.neg, self.conj = read, dtype.element, neg, conj

    def __call__(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        raw = np.frombuffer(self.read(start, stop, out), dtype=np.uint8)
        if not raw.flags.writeable:
            raw = raw.copy()
        values = raw.view(self.element)
        if self.neg:
            np.negative(values, out=values)
        if self.conj:
            np.conjugate(values, out=values)
        return raw


class StridedReader:
    """The values of a non-contiguous view in C (row-major) order. The storage span the view
    touches is read once and held while the view is scanned when it is small; otherwise each
    chunk is gathered from windows of that span, so memory stays flat."""

    def __init__(
        self,
        read: Callable[[int, int, np.ndarray], np.ndarray],
        dtype: DType,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        offset: int,
    ) -> None:
        self.read, self.element = read, dtype.element
        self.itemsize = dtype.bits // 8
        self.shape, self.stride, self.offset = shape, stride, offset
        self.low = offset
        self.high = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1
        self.nbytes = math.prod(shape) * self.itemsize
        self.lock = threading.Lock()
        self.held: np.ndarray | None = None
        self.delivered = 0

    def __call__(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        positions = self._positions(start // self.itemsize, stop // self.itemsize)
        values = out[: stop - start].view(self.element)
        if (self.high - self.low) * self.itemsize <= HELD_SPAN_BYTES:
            np.take(self._hold(), positions - self.low, out=values)
            self._release_after(stop - start)
        else:
            self._gather(positions, values)
        return out[: stop - start]

    def _positions(self, first: int, last: int) -> np.ndarray:
        """Storage element indices of the view's elements [first, last) in C order."""
        linear = np.arange(first, last, dtype=np.int64)
        index = np.full(last - first, self.offset, dtype=np.int64)
        for n, s in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if n > 1:
                linear, digit = np.divmod(linear, n)
                index += digit * s
        return index

    def _hold(self) -> np.ndarray:
        with self.lock:
            if self.held is None:
                span = np.empty((self.high - self.low) * self.itemsize, dtype=np.uint8)
                # a copy: a view of a memory map would be handed back by this thread's next read
                np.copyto(
                    span, self.read(self.low * self.itemsize, self.high * self.itemsize, span)
                )
                self.held = span.view(self.element)
            return self.held

    def _release_after(self, nbytes: int) -> None:
        # once every element has gone out (by one scan, or by its pieces on several threads)
        with self.lock:
            self.delivered += nbytes
            if self.delivered >= self.nbytes:
                self.held, self.delivered = None, 0

    def _gather(self, positions: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        window = max(1, WINDOW_BYTES // self.itemsize)
        gap = max(1, 4096 // self.itemsize)
        cuts = (np.diff(ordered) > gap) | (ordered[1:] // window != ordered[:-1] // window)
        bounds = [0, *(np.flatnonzero(cuts) + 1).tolist(), ordered.size]
        buffer = np.empty(window * self.itemsize, dtype=np.uint8)
        for begin, end in itertools.pairwise(bounds):
            low, high = int(ordered[begin]), int(ordered[end - 1]) + 1
            span = self.read(low * self.itemsize, high * self.itemsize, buffer)
            values[order[begin:end]] = span.view(self.element)[ordered[begin:end] - low]

    def close(self) -> None:
        with self.lock:
            self.held, self.delivered = None, 0
