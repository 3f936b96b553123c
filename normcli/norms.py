"""Streaming statistics of tensor values: per-chunk reductions in float64, merged exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dtypes import as_float64


@dataclass(frozen=True)
class TensorStats:
    """Norms and counts over a set of values; the norms cover only the finite ones.

    `total` is the signed sum of the finite values (None for complex values, which have no
    real mean). Merging two TensorStats gives the statistics of the union of their values.
    `sumsq` is Σ(x·2^-scale)²: float64 values beyond about 1e154 (or all below 1e-154) have
    squares outside the float64 range, so their sum is kept scaled by a power of two, exactly.
    """

    numel: int = 0
    l1: float = 0.0
    sumsq: float = 0.0
    linf: float = 0.0
    total: float | None = 0.0
    zeros: int = 0
    nan: int = 0
    inf: int = 0
    scale: int = 0

    @property
    def finite(self) -> int:
        return self.numel - self.nan - self.inf

    @property
    def l2(self) -> float:
        return _ldexp(math.sqrt(self.sumsq), self.scale)

    @property
    def rms(self) -> float | None:
        return _ldexp(math.sqrt(self.sumsq / self.finite), self.scale) if self.finite else None

    @property
    def mean(self) -> float | None:
        if self.total is None or not self.finite:
            return None
        return self.total / self.finite

    @property
    def sparsity(self) -> float | None:
        return self.zeros / self.numel if self.numel else None

    def merge(self, other: TensorStats) -> TensorStats:
        return merge_all((self, other))

    @staticmethod
    def of_complex() -> TensorStats:
        """The empty statistics of a complex tensor, whose values have no real sum."""
        return TensorStats(total=None)


def _ldexp(value: float, exponent: int) -> float:
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.inf


def squares_of_l2(l2: float) -> tuple[float, int]:
    """(sumsq, scale) of a TensorStats whose L2 is `l2` (a norm read back from a report)."""
    scale = math.frexp(l2)[1] if l2 and not SQUARES_FIT[0] < l2 < SQUARES_FIT[1] else 0
    return math.ldexp(l2, -scale) ** 2, scale


def _fsum(values: list[float]) -> float:
    """math.fsum, which raises where finite parts add up past the float64 range: that sum is
    infinite (or, parts of both signs overflowing, has no value)."""
    try:
        return math.fsum(values)
    except OverflowError:
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.sum(values))


def merge_all(parts: list[TensorStats] | tuple[TensorStats, ...]) -> TensorStats:
    """Merge many partial results; float sums are added with math.fsum, so order never matters."""
    if not parts:
        return TensorStats()
    totals = [p.total for p in parts]
    # bring every sum of squares to the largest scale: exact, but for parts too small to count
    scale = max((p.scale for p in parts if p.sumsq), default=0)
    return TensorStats(
        numel=sum(p.numel for p in parts),
        l1=_fsum([p.l1 for p in parts]),
        sumsq=_fsum([_ldexp(p.sumsq, 2 * (p.scale - scale)) for p in parts]),
        linf=max(p.linf for p in parts),
        total=None if None in totals else _fsum([t for t in totals if t is not None]),
        zeros=sum(p.zeros for p in parts),
        nan=sum(p.nan for p in parts),
        inf=sum(p.inf for p in parts),
        scale=scale,
    )


# magnitudes whose squares (and sums of a few billion of them) stay normal float64 numbers
SQUARES_FIT = (2.0**-500, 2.0**500)


def reduce_chunk(values: np.ndarray) -> TensorStats:
    """Statistics of one chunk of stored values (any numeric dtype, any shape)."""
    x = as_float64(values).reshape(-1)
    if x.size == 0:
        return TensorStats.of_complex() if x.dtype.kind == "c" else TensorStats()
    # float64 sums of huge finite values may overflow to inf, which is then the honest answer
    with np.errstate(over="ignore", invalid="ignore"):
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
    total = None if x.dtype.kind == "c" else float(x.sum())
    # squares of values past 2**±500 leave the float64 range: square them scaled by a power of
    # two (exact), and keep the scale beside the sum
    scale = math.frexp(linf)[1] if linf and not SQUARES_FIT[0] < linf < SQUARES_FIT[1] else 0
    if x.dtype.kind == "c":
        parts = (np.ldexp(x.real, -scale), np.ldexp(x.imag, -scale)) if scale else (x.real, x.imag)
        sumsq = float(np.square(parts[0]).sum()) + float(np.square(parts[1]).sum())
    else:
        scaled = np.ldexp(magnitude, -scale, out=magnitude) if scale else magnitude
        # squares of the float64 magnitudes: pairwise summation keeps the error near 1e-16
        sumsq = float(np.square(scaled, out=scaled).sum())
    return TensorStats(numel, l1, sumsq, linf, total, zeros, nan, inf, scale)


def l2_ratio(top: TensorStats, bottom: TensorStats) -> float | None:
    """‖top‖₂/‖bottom‖₂: the ratio ‖B‖₂/‖A‖₂ and the relative update ‖B−A‖₂/‖A‖₂ alike.

    A zero bottom under a non-zero top has grown without bound (inf, which breaks any limit);
    zero over zero has no value (None), as nothing moved and nothing can be divided."""
    if bottom.sumsq:
        return top.l2 / bottom.l2
    return math.inf if top.sumsq else None


@dataclass(frozen=True)
class PairStats:
    """Two same-shaped tensors A and B element by element: each side's statistics, the update
    B−A over the elements finite on both sides, and the inner product ⟨A,B⟩ over those too."""

    a: TensorStats
    b: TensorStats
    diff: TensorStats
    dot: float
    identical: bool

    @property
    def rel_l2(self) -> float | None:
        """‖B−A‖₂ / ‖A‖₂."""
        return l2_ratio(self.diff, self.a)

    @property
    def ratio_l2(self) -> float | None:
        return l2_ratio(self.b, self.a)

    @property
    def cosine(self) -> float | None:
        if not (self.a.sumsq and self.b.sumsq):
            return None
        if self.identical:
            return 1.0
        # rounding can push |cos| a hair past 1 for parallel tensors
        return max(-1.0, min(1.0, self.dot / (self.a.l2 * self.b.l2)))


def merge_pairs(parts: list[PairStats] | tuple[PairStats, ...]) -> PairStats:
    return PairStats(
        a=merge_all([p.a for p in parts]),
        b=merge_all([p.b for p in parts]),
        diff=merge_all([p.diff for p in parts]),
        dot=_fsum([p.dot for p in parts]),
        identical=all(p.identical for p in parts),
    )


def reduce_pair(a_values: np.ndarray, b_values: np.ndarray) -> PairStats:
    """Statistics of one aligned chunk of A and of B (same number of elements)."""
    a_stats, b_stats = reduce_chunk(a_values), reduce_chunk(b_values)
    if a_values.dtype == b_values.dtype:
        identical = bool(np.array_equal(_bits(a_values), _bits(b_values)))
    else:
        identical = bool(np.array_equal(as_float64(a_values), as_float64(b_values), equal_nan=True))
    a, b = as_float64(a_values).reshape(-1), as_float64(b_values).reshape(-1)
    if a.dtype != b.dtype:  # one side complex: compare both as complex
        a, b = a.astype(np.complex128), b.astype(np.complex128)
    if a_stats.nan or a_stats.inf or b_stats.nan or b_stats.inf:
        both_finite = np.isfinite(a) & np.isfinite(b)
        a, b = a[both_finite], b[both_finite]
    with np.errstate(over="ignore", invalid="ignore"):
        diff = b - a
    diff_stats = reduce_chunk(diff)
    with np.errstate(over="ignore", invalid="ignore"):
        if a.dtype.kind == "c" or b.dtype.kind == "c":
            dot = float(np.multiply(np.conj(a), b).real.sum())
        else:
            dot = float(np.multiply(a, b).sum())
    return PairStats(a_stats, b_stats, diff_stats, dot, identical)


def _bits(values: np.ndarray) -> np.ndarray:
    """The stored bit patterns, so -0.0 differs from 0.0 and NaN payloads compare equal."""
    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)
