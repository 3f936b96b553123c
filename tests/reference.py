"""An independent reference for the numeric core: exact values, exact sums, one rounding at the end.

Nothing here imports normcli. Stored values are decoded from their bit patterns by the formulas of
their formats (the narrow floats), or converted by numpy where the conversion is exact (IEEE half,
single and double precision), or taken as Python integers. Sums are exact (Python integers scaled
by a power of two, or math.fsum where the terms are exact), and are rounded to float64 once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np

# --- decoding stored values -------------------------------------------------------------------


@dataclass(frozen=True)
class MiniFloat:
    """A narrow binary float format, described by its fields and its special codes."""

    exponent_bits: int
    mantissa_bits: int
    bias: int
    signed: bool = True
    # exponent all ones: mantissa 0 is ±infinity, anything else NaN (IEEE 754 style)
    ieee_specials: bool = False
    # codes, sign included, that are NaN in a format without IEEE specials
    nan_codes: frozenset[int] = frozenset()

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    def value(self, code: int) -> float:
        if code in self.nan_codes:
            return math.nan
        mantissa = code & ((1 << self.mantissa_bits) - 1)
        exponent = (code >> self.mantissa_bits) & ((1 << self.exponent_bits) - 1)
        negative = self.signed and bool(code >> (self.exponent_bits + self.mantissa_bits))
        sign = -1.0 if negative else 1.0
        if self.ieee_specials and exponent == (1 << self.exponent_bits) - 1:
            return sign * math.inf if mantissa == 0 else math.nan
        if exponent == 0 and self.mantissa_bits > 0:  # subnormal
            return sign * math.ldexp(mantissa, 1 - self.bias - self.mantissa_bits)
        significand = (1 << self.mantissa_bits) | mantissa
        return sign * math.ldexp(significand, exponent - self.bias - self.mantissa_bits)

    def table(self) -> np.ndarray:
        return np.array([self.value(c) for c in range(1 << self.bits)], dtype=np.float64)


# The formats as the OCP 8-bit float / MX specifications and the fnuz papers define them.
MINIFLOATS: dict[str, MiniFloat] = {
    "float8_e4m3fn": MiniFloat(4, 3, 7, nan_codes=frozenset({0x7F, 0xFF})),
    "float8_e5m2": MiniFloat(5, 2, 15, ieee_specials=True),
    # no sign, no mantissa: 2^(e-127); the all-ones code is NaN; there is no zero
    "float8_e8m0fnu": MiniFloat(8, 0, 127, signed=False, nan_codes=frozenset({0xFF})),
    # "fnuz": no infinities, no negative zero; the negative-zero code is the one NaN
    "float8_e4m3fnuz": MiniFloat(4, 3, 8, nan_codes=frozenset({0x80})),
    "float8_e5m2fnuz": MiniFloat(5, 2, 16, nan_codes=frozenset({0x80})),
    "float6_e2m3fn": MiniFloat(2, 3, 1),
    "float6_e3m2fn": MiniFloat(3, 2, 3),
    "float4_e2m1fn": MiniFloat(2, 1, 1),
}

_TABLES: dict[str, np.ndarray] = {}


def minifloat_table(name: str) -> np.ndarray:
    """float64 value of every code of the narrow format `name` (an ml_dtypes type name)."""
    if name not in _TABLES:
        _TABLES[name] = MINIFLOATS[name].table()
    return _TABLES[name]


def to_exact(array: np.ndarray) -> np.ndarray | list[int]:
    """The stored values, exactly: a float64 array (complex128 for complex), or Python ints."""
    a = np.asarray(array).reshape(-1)
    dt = a.dtype
    if dt == np.dtype(ml_dtypes.bfloat16):
        # bfloat16 is the top half of an IEEE single
        bits = np.ascontiguousarray(a).view(np.uint16).astype(np.uint32) << np.uint32(16)
        return _widen(bits.view(np.float32), np.float64)
    for name, fmt in MINIFLOATS.items():
        if dt == np.dtype(getattr(ml_dtypes, name)):
            codes = np.ascontiguousarray(a).view(np.uint8) & np.uint8((1 << fmt.bits) - 1)
            return minifloat_table(name)[codes]
    if dt.kind in "f":
        assert dt.itemsize in (2, 4, 8), dt
        return _widen(a, np.float64)  # IEEE half/single/double widen exactly
    if dt.kind == "c":
        return _widen(a, np.complex128)
    if dt.kind in "iub":
        return [int(v) for v in a.tolist()]
    raise TypeError(f"no reference for dtype {dt}")


def _widen(a: np.ndarray, dtype: type) -> np.ndarray:
    # widening a signalling NaN raises the "invalid" flag; the value stays a NaN, as it should
    with np.errstate(invalid="ignore"):
        return a.astype(dtype)


# --- exact arithmetic -------------------------------------------------------------------------


def _round(value: Fraction | int) -> float:
    """Correctly rounded to float64; beyond the largest float, ±inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _scaled_significands(values: np.ndarray) -> tuple[list[int], list[int], int]:
    """Finite float64 values as integer significands m and exponents e ≥ 0 with x = m·2^(e+low)."""
    mantissa, exponent = np.frexp(values)
    significand = (mantissa * 2.0**53).astype(np.int64)  # exact: 53-bit integers
    exponent = exponent.astype(np.int64) - 53
    low = int(exponent.min())
    return significand.tolist(), (exponent - low).tolist(), low


def _exact_sum(values: np.ndarray) -> Fraction:
    """Σx exactly for finite float64 values."""
    if values.size == 0:
        return Fraction(0)
    significands, exponents, low = _scaled_significands(values)
    total = sum(m << e for m, e in zip(significands, exponents, strict=True))
    return Fraction(total) * Fraction(2) ** low


def _exact_square_sum(values: np.ndarray) -> Fraction:
    """Σx² exactly for finite float64 values."""
    if values.size == 0:
        return Fraction(0)
    significands, exponents, low = _scaled_significands(values)
    total = sum((m * m) << (2 * e) for m, e in zip(significands, exponents, strict=True))
    return Fraction(total) * Fraction(2) ** (2 * low)


def _exact_sqrt(value: Fraction) -> float:
    """√value to within 2^-128 relative before the final rounding."""
    if value == 0:
        return 0.0
    # √(n/d) = √(n·d)/d; isqrt of n·d·4^k has at least k bits, so truncating it costs < 2^-k
    num, den, extra = value.numerator, value.denominator, 128
    return _round(Fraction(math.isqrt((num * den) << (2 * extra)), den << extra))


def _fsum(values: np.ndarray) -> Fraction:
    # a memoryview hands fsum its floats several times faster than a list does
    return Fraction(math.fsum(memoryview(np.ascontiguousarray(values, dtype=np.float64))))


# Above this many finite values, the reference sums with fsum (see Reference).
_EXACT_LIMIT = 200_000


# --- the reference statistics -----------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What a tensor's statistics must be. The sums are kept, unrounded, for whole-model totals.

    They are exact, except over more than _EXACT_LIMIT finite values, where they are fsum's
    correctly rounded float64, and the L1 of complex values, whose moduli are rounded (math.hypot).
    """

    numel: int
    nan: int
    inf: int
    zeros: int
    linf: float
    l1_exact: Fraction
    sumsq_exact: Fraction
    total_exact: Fraction | None  # None for complex values

    @property
    def finite(self) -> int:
        return self.numel - self.nan - self.inf

    @property
    def l1(self) -> float:
        return _round(self.l1_exact)

    @property
    def l2(self) -> float:
        return _exact_sqrt(self.sumsq_exact)

    @property
    def total(self) -> float | None:
        return None if self.total_exact is None else _round(self.total_exact)

    @property
    def mean(self) -> float | None:
        if self.total_exact is None or not self.finite:
            return None
        return _round(self.total_exact / self.finite)

    @property
    def mean_abs(self) -> float:
        return _round(self.l1_exact / self.finite) if self.finite else 0.0

    @property
    def rms(self) -> float | None:
        return _exact_sqrt(self.sumsq_exact / self.finite) if self.finite else None


def reference(array: np.ndarray) -> Reference:
    """The statistics of `array`'s values, computed independently of normcli."""
    values = to_exact(array)
    if isinstance(values, list):
        return _reference_ints(values)
    if values.dtype.kind == "c":
        return _reference_complex(values)
    return _reference_floats(values, narrow=np.asarray(array).dtype.itemsize <= 4)


def _reference_ints(values: list[int]) -> Reference:
    return Reference(
        numel=len(values),
        nan=0,
        inf=0,
        zeros=values.count(0),
        linf=_round(max((abs(v) for v in values), default=0)),
        l1_exact=Fraction(sum(abs(v) for v in values)),
        sumsq_exact=Fraction(sum(v * v for v in values)),
        total_exact=Fraction(sum(values)),
    )


def _reference_floats(values: np.ndarray, narrow: bool) -> Reference:
    nan = int(np.count_nonzero(np.isnan(values)))
    inf = int(np.count_nonzero(np.isinf(values)))
    finite = values[np.isfinite(values)]
    magnitude = np.abs(finite)
    if finite.size <= _EXACT_LIMIT:
        l1, sumsq, total = _exact_sum(magnitude), _exact_square_sum(finite), _exact_sum(finite)
    else:
        # Too many for exact integer sums in Python: fsum rounds each sum correctly instead. The
        # squares of values with at most 24 significant bits are exact in float64 (and neither
        # overflow nor underflow there), so fsum over them is the correctly rounded Σx².
        assert narrow, "a float64 tensor this large would make the exact reference too slow"
        l1 = _fsum(magnitude)
        sumsq = _fsum(magnitude * magnitude)
        total = _fsum(finite)
    return Reference(
        numel=values.size,
        nan=nan,
        inf=inf,
        zeros=int(np.count_nonzero(finite == 0)),
        linf=float(magnitude.max()) if magnitude.size else 0.0,
        l1_exact=l1,
        sumsq_exact=sumsq,
        total_exact=total,
    )


def _reference_complex(values: np.ndarray) -> Reference:
    re, im = values.real, values.imag
    # NaN in either part makes the value NaN; otherwise an infinite part makes it infinite
    nan_mask = np.isnan(re) | np.isnan(im)
    inf_mask = ~nan_mask & (np.isinf(re) | np.isinf(im))
    keep = ~(nan_mask | inf_mask)
    re, im = re[keep], im[keep]
    # |z| is irrational in general: math.hypot rounds it within an ulp, fsum adds without error
    modulus = [math.hypot(a, b) for a, b in zip(re.tolist(), im.tolist(), strict=True)]
    return Reference(
        numel=values.size,
        nan=int(nan_mask.sum()),
        inf=int(inf_mask.sum()),
        zeros=int(np.count_nonzero((re == 0) & (im == 0))),
        linf=max(modulus, default=0.0),
        l1_exact=Fraction(math.fsum(modulus)),
        sumsq_exact=_exact_square_sum(re) + _exact_square_sum(im),
        total_exact=None,
    )


def combine(parts: Sequence[Reference]) -> Reference:
    """The reference of the union of the values: exact sums add, counts add, Linf is the max."""
    totals = [p.total_exact for p in parts]
    return Reference(
        numel=sum(p.numel for p in parts),
        nan=sum(p.nan for p in parts),
        inf=sum(p.inf for p in parts),
        zeros=sum(p.zeros for p in parts),
        linf=max((p.linf for p in parts), default=0.0),
        l1_exact=sum((p.l1_exact for p in parts), Fraction(0)),
        sumsq_exact=sum((p.sumsq_exact for p in parts), Fraction(0)),
        total_exact=None if None in totals else sum(totals, Fraction(0)),  # type: ignore[arg-type]
    )


# --- comparing --------------------------------------------------------------------------------


def close(actual: float | None, expected: float | None, rtol: float) -> bool:
    if actual is None or expected is None:
        return actual is expected
    if math.isinf(expected) or math.isinf(actual):
        return actual == expected
    return abs(actual - expected) <= rtol * abs(expected)


def mismatches(stats: Any, ref: Reference, rtol: float) -> list[str]:
    """Every figure of `stats` (a normcli TensorStats, read by attribute) that misses `ref`."""
    problems = []
    for name in ("numel", "nan", "inf", "zeros", "finite"):
        if getattr(stats, name) != getattr(ref, name):
            problems.append(f"{name}: {getattr(stats, name)} != reference {getattr(ref, name)}")
    for name in ("l1", "l2", "linf", "rms"):
        if not close(getattr(stats, name), getattr(ref, name), rtol):
            problems.append(f"{name}: {getattr(stats, name)!r} vs reference {getattr(ref, name)!r}")
    # The mean is a signed sum: cancellation can make it tiny next to the values it sums, where
    # any relative tolerance is meaningless. Its error is bounded against the mean magnitude.
    mean, expected = stats.mean, ref.mean
    if mean is None or expected is None:
        if mean is not expected:
            problems.append(f"mean: {mean!r} vs reference {expected!r}")
    elif not abs(mean - expected) <= rtol * ref.mean_abs:
        problems.append(f"mean: {mean!r} vs reference {expected!r} (|x| mean {ref.mean_abs!r})")
    return problems


def assert_matches(stats: Any, ref: Reference, rtol: float = 1e-12, what: str = "") -> None:
    problems = mismatches(stats, ref, rtol)
    assert not problems, f"{what}: " + "; ".join(problems) if what else "; ".join(problems)


# --- stored form --------------------------------------------------------------------------------

# Every dtype the safetensors format defines, as the numpy (or ml_dtypes) element type holding it.
SAFETENSORS_NUMPY: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F6_E2M3": np.dtype(ml_dtypes.float6_e2m3fn),
    "F6_E3M2": np.dtype(ml_dtypes.float6_e3m2fn),
    "F4": np.dtype(ml_dtypes.float4_e2m1fn),
    "C64": np.dtype("<c8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}

# Elements per packed group of the sub-byte types (6-bit: four in three bytes; 4-bit: two in one).
GROUP_ELEMENTS = {"F6_E2M3": 4, "F6_E3M2": 4, "F4": 2}


def stored_bytes(dtype_name: str, array: np.ndarray) -> bytes:
    """The bytes safetensors stores for `array`: little-endian, sub-byte codes packed.

    4-bit: the first element in the low nibble. 6-bit: four elements as one little-endian
    24-bit word, the first in the low bits (the layouts normcli's dtypes module documents).
    """
    flat = np.ascontiguousarray(np.asarray(array, dtype=SAFETENSORS_NUMPY[dtype_name]).reshape(-1))
    if dtype_name == "F4":
        codes = flat.view(np.uint8) & np.uint8(0x0F)
        assert codes.size % 2 == 0
        return (codes[0::2] | (codes[1::2] << np.uint8(4))).tobytes()
    if dtype_name in ("F6_E2M3", "F6_E3M2"):
        codes = (flat.view(np.uint8) & np.uint8(0x3F)).astype(np.uint32).reshape(-1, 4)
        word = codes[:, 0] | (codes[:, 1] << 6) | (codes[:, 2] << 12) | (codes[:, 3] << 18)
        packed = np.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=1)
        return packed.astype(np.uint8).tobytes()
    return flat.tobytes()


# --- two models as vectors ---------------------------------------------------------------------


def model_vectors(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Both models as float64 vectors over the union of names: zeros where a side lacks a tensor
    or holds it in another shape (then each shape is a coordinate block of its own)."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is not None and y is not None and x.shape == y.shape:
            xs.append(x.astype(np.float64).ravel())
            ys.append(y.astype(np.float64).ravel())
            continue
        if x is not None:
            xs.append(x.astype(np.float64).ravel())
            ys.append(np.zeros(x.size))
        if y is not None:
            xs.append(np.zeros(y.size))
            ys.append(y.astype(np.float64).ravel())
    empty = [np.zeros(0)]
    return np.concatenate(xs or empty), np.concatenate(ys or empty)


def vector_figures(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    keep = np.isfinite(x) & np.isfinite(y)
    d = [float(q) - float(p) for p, q in zip(x[keep], y[keep], strict=True)]
    a_l2 = math.sqrt(math.fsum(float(v) ** 2 for v in x[np.isfinite(x)]))
    b_l2 = math.sqrt(math.fsum(float(v) ** 2 for v in y[np.isfinite(y)]))
    dot = math.fsum(float(p) * float(q) for p, q in zip(x[keep], y[keep], strict=True))
    diff_l2 = math.sqrt(math.fsum(v * v for v in d))
    return {
        "a_l2": a_l2,
        "b_l2": b_l2,
        "diff_l1": math.fsum(abs(v) for v in d),
        "diff_l2": diff_l2,
        "diff_linf": max((abs(v) for v in d), default=0.0),
        "rel": diff_l2 / a_l2 if a_l2 else math.nan,
        "ratio": b_l2 / a_l2 if a_l2 else math.nan,
        "cosine": dot / (a_l2 * b_l2) if a_l2 and b_l2 else math.nan,
    }
