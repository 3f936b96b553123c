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
    infinite (or, parts of both signs overflowing, has no value); and raises on infinite parts of
    both signs (overflowed sums of chunks), whose sum has no value either."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
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
    zero over zero has no value (None), as nothing moved and nothing can be divided. Divided
    as scaled sums, so norms past float64's range (or subnormal) still give the right ratio."""
    if bottom.sumsq:
        quotient = math.sqrt(top.sumsq) / math.sqrt(bottom.sumsq)
        return _ldexp(quotient, top.scale - bottom.scale)
    return math.inf if top.sumsq else None


@dataclass(frozen=True)
class PairStats:
    """Two same-shaped tensors A and B element by element: each side's statistics, the update
    B−A over the elements finite on both sides, and the inner product ⟨A,B⟩ over those too.

    `dot` is ⟨A·2^-a.scale, B·2^-b.scale⟩, scaled as the sums of squares are: the inner product
    of values past 1e154 leaves float64's range, and cosine needs it whatever the magnitudes."""

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
        # the scales of dot and of the two norms cancel; every factor is a finite float64
        cosine = self.dot / (math.sqrt(self.a.sumsq) * math.sqrt(self.b.sumsq))
        if math.isnan(cosine):  # min(1, nan) would read as 1, a pass for --min-cosine
            return None
        # rounding can push |cos| a hair past 1 for parallel tensors
        return max(-1.0, min(1.0, cosine))


def merge_pairs(parts: list[PairStats] | tuple[PairStats, ...]) -> PairStats:
    a, b = merge_all([p.a for p in parts]), merge_all([p.b for p in parts])
    shift = a.scale + b.scale
    return PairStats(
        a=a,
        b=b,
        diff=merge_all([p.diff for p in parts]),
        dot=_fsum([_ldexp(p.dot, p.a.scale + p.b.scale - shift) for p in parts]),
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
    diff_stats = _reduce_difference(a, b, max(a_stats.linf, b_stats.linf))
    a, b = _scaled(a, -a_stats.scale), _scaled(b, -b_stats.scale)
    if a.dtype.kind == "c":
        dot = float(np.multiply(np.conj(a), b).real.sum())
    else:
        dot = float(np.multiply(a, b).sum())
    return PairStats(a_stats, b_stats, diff_stats, dot, identical)


def _reduce_difference(a: np.ndarray, b: np.ndarray, largest: float) -> TensorStats:
    """Statistics of B−A. Past 2**1023 a difference of finite values can overflow to Inf, which
    would count as non-finite and leave the norm: there B/2−A/2 is reduced (exact for all but
    subnormal values, whose rounding cannot reach the result) and the figures doubled."""
    if largest < 2.0**1023:
        return reduce_chunk(b - a)
    half = reduce_chunk(_scaled(b, -1) - _scaled(a, -1))
    # Python floats past the range become inf, the honest L1 or max|B−A| there
    total = None if half.total is None else 2 * half.total
    return TensorStats(
        half.numel,
        2 * half.l1,
        half.sumsq,
        2 * half.linf,
        total,
        half.zeros,
        half.nan,
        half.inf,
        half.scale + 1,
    )


def _scaled(x: np.ndarray, exponent: int) -> np.ndarray:
    """x·2^exponent, exact but where it reaches subnormal numbers."""
    if not exponent:
        return x
    if x.dtype.kind == "c":
        return np.asarray(np.ldexp(x.real, exponent) + 1j * np.ldexp(x.imag, exponent))
    return np.asarray(np.ldexp(x, exponent))


def _bits(values: np.ndarray) -> np.ndarray:
    """The stored bit patterns, so -0.0 differs from 0.0 and NaN payloads compare equal."""
    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)
