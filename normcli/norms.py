"""Streaming statistics of tensor values: per-chunk reductions in float64, merged exactly once each."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorStats:
    """Norms and counts over a set of values; the norms cover only the finite ones.

    `total` is the signed sum of the finite values (None for complex values, which have no
    real mean). Merging two TensorStats gives the statistics of the union of their values.
    """

    numel: int = 0
    l1: float = 0.0
    sumsq: float = 0.0
    linf: float = 0.0
    total: float | None = 0.0
    zeros: int = 0
    nan: int = 0
    inf: int = 0

    @property
    def finite(self) -> int:
        return self.numel - self.nan - self.inf

    @property
    def l2(self) -> float:
        return math.sqrt(self.sumsq)

    @property
    def rms(self) -> float | None:
        return math.sqrt(self.sumsq / self.finite) if self.finite else None

    @property
    def mean(self) -> float | None:
        if self.total is None or not self.finite:
            return None
        return self.total / self.finite

    @property
    def sparsity(self) -> float | None:
        return self.zeros / self.numel if self.numel else None

    def merge(self, other: TensorStats) -> TensorStats:
        total = None if self.total is None or other.total is None else self.total + other.total
        return TensorStats(
            numel=self.numel + other.numel,
            l1=self.l1 + other.l1,
            sumsq=self.sumsq + other.sumsq,
            linf=max(self.linf, other.linf),
            total=total,
            zeros=self.zeros + other.zeros,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
        )

    @staticmethod
    def of_complex() -> TensorStats:
        """The empty statistics of a complex tensor, whose values have no real sum."""
        return TensorStats(total=None)


def merge_all(parts: list[TensorStats] | tuple[TensorStats, ...]) -> TensorStats:
    """Merge many partial results; the float sums are added with math.fsum, so order never matters."""
    if not parts:
        return TensorStats()
    totals = [p.total for p in parts]
    return TensorStats(
        numel=sum(p.numel for p in parts),
        l1=math.fsum(p.l1 for p in parts),
        sumsq=math.fsum(p.sumsq for p in parts),
        linf=max(p.linf for p in parts),
        total=None if None in totals else math.fsum(t for t in totals if t is not None),
        zeros=sum(p.zeros for p in parts),
        nan=sum(p.nan for p in parts),
        inf=sum(p.inf for p in parts),
    )


def _as_float64(values: np.ndarray) -> np.ndarray:
    """Upcast to float64 (complex128 for complex input); every stored float converts exactly."""
    target = np.complex128 if values.dtype.kind == "c" else np.float64
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(values, dtype=target)


def reduce_chunk(values: np.ndarray) -> TensorStats:
    """Statistics of one chunk of stored values (any numeric dtype, any shape)."""
    x = _as_float64(values).reshape(-1)
    if x.size == 0:
        return TensorStats.of_complex() if x.dtype.kind == "c" else TensorStats()
    magnitude = np.abs(x)
    l1 = float(magnitude.sum())
    if math.isfinite(l1):
        return _reduce_finite(x, magnitude, l1, nan=0, inf=0, numel=x.size)
    return _reduce_with_nonfinite(x)


def _reduce_with_nonfinite(x: np.ndarray) -> TensorStats:
    nan_mask = np.isnan(x)
    inf_mask = np.isinf(x) & ~nan_mask
    nan, inf = int(nan_mask.sum()), int(inf_mask.sum())
    finite = x[~(nan_mask | inf_mask)]
    magnitude = np.abs(finite)
    return _reduce_finite(finite, magnitude, float(magnitude.sum()), nan, inf, numel=x.size)


def _reduce_finite(
    x: np.ndarray, magnitude: np.ndarray, l1: float, nan: int, inf: int, numel: int
) -> TensorStats:
    linf = float(magnitude.max()) if magnitude.size else 0.0
    zeros = magnitude.size - int(np.count_nonzero(magnitude))
    if x.dtype.kind == "c":
        parts = x.view(np.float64)
        sumsq = float(np.square(parts).sum())
        total: float | None = None
    else:
        total = float(x.sum())
        # squares of the float64 magnitudes: pairwise summation keeps the error near 1e-16
        sumsq = float(np.square(magnitude, out=magnitude).sum())
    return TensorStats(numel, l1, sumsq, linf, total, zeros, nan, inf)
