"""Compiled chunk reductions (numba) for the dtypes that fill real checkpoints: F32, F64, BF16, F16.

One fused pass per chunk, accumulated in float64 with reassociation allowed (so the loop runs in
SIMD lanes: several partial sums, a tighter error than one running sum; about 1e-14 relative on
a chunk of 2^18 values). bf16 and f16 are widened exactly in registers (in a reused buffer, for
the two sides of a compare). Chunks holding NaN or
Inf are handed back (None) to the numpy path in norms.py, which stays the reference and the
fallback: NORMCLI_KERNELS=numpy selects it, and it is used wherever numba is missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from .norms import SQUARES_FIT, PairStats, TensorStats


@dataclass(frozen=True)
class Kernels:
    """Each returns None where it does not apply, and the numpy path in norms.py takes over."""

    reduce: Callable[[np.ndarray], TensorStats | None]
    reduce_pair: Callable[[np.ndarray, np.ndarray], PairStats | None]


_lock = threading.Lock()
_compiled: dict[str, Any] | None = None
_scratch = threading.local()


def wanted() -> str:
    """numpy, numba, or auto (numba for jobs big enough to pay for importing it)."""
    choice = os.environ.get("NORMCLI_KERNELS", "auto").strip().lower()
    return choice if choice in ("numpy", "numba") else "auto"


def load() -> Kernels | None:
    """The compiled kernels, or None where numba cannot be imported."""
    global _compiled
    with _lock:
        if _compiled is None:
            try:
                _compiled = _compile()
            except ImportError:
                _compiled = {}
    return Kernels(reduce_compiled, reduce_pair_compiled) if _compiled else None


def loaded() -> Kernels | None:
    """The kernels if they are ready, without waiting for them."""
    return Kernels(reduce_compiled, reduce_pair_compiled) if _compiled else None


def _compile() -> dict[str, Any]:
    from numba import njit

    # no nnan/ninf: non-finite values must still be seen, to be counted and sent back
    fast = njit(nogil=True, cache=True, fastmath={"reassoc", "nsz", "contract", "arcp"})

    @fast
    def float_bits(x: Any, bits: Any, sign_mask: Any, exp_mask: Any) -> Any:
        l1 = 0.0
        sq = 0.0
        total = 0.0
        top = sign_mask ^ sign_mask  # largest |x| bit pattern, unsigned: an integer max stays SIMD
        zeros = 0
        bad = 0
        for i in range(x.size):
            v = np.float64(x[i])
            l1 += abs(v)
            sq += v * v
            total += v
            b = bits[i] & sign_mask
            top = max(top, b)
            zeros += b == 0
            bad += b >= exp_mask
        return l1, sq, total, top, zeros, bad

    # bf16 and f16 are widened in registers: writing the float32 bit pattern to a one-element
    # scratch array and reading it back as float32 compiles to a plain bit cast
    @fast
    def bf16_bits(u: Any, scratch: Any) -> Any:
        as_float = scratch.view(np.float32)
        l1 = sq = total = 0.0
        top = np.uint32(0)
        zeros = bad = 0
        for i in range(u.size):
            bits = np.uint32(u[i]) << np.uint32(16)
            scratch[0] = bits
            v = np.float64(as_float[0])
            l1 += abs(v)
            sq += v * v
            total += v
            b = bits & np.uint32(0x7FFFFFFF)
            top = max(top, b)
            zeros += b == 0
            bad += b >= np.uint32(0x7F800000)
        return l1, sq, total, top, zeros, bad

    @fast
    def f16_bits(u: Any, scratch: Any) -> Any:
        as_float = scratch.view(np.float32)
        l1 = sq = total = 0.0
        top = np.uint16(0)
        zeros = bad = 0
        for i in range(u.size):
            h = u[i]
            magnitude = h & np.uint16(0x7FFF)
            e = np.uint32(magnitude >> np.uint16(10))
            m = np.uint32(h & np.uint16(0x3FF))
            sign = np.uint32(h & np.uint16(0x8000)) << np.uint32(16)
            scratch[0] = sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))
            subnormal = np.float64(m) * 5.9604644775390625e-08  # m * 2**-24, exact
            subnormal = -subnormal if sign else subnormal
            v = subnormal if e == 0 else np.float64(as_float[0])
            l1 += abs(v)
            sq += v * v
            total += v
            top = max(top, magnitude)
            zeros += magnitude == 0
            bad += magnitude >= np.uint16(0x7C00)
        return l1, sq, total, top, zeros, bad

    @fast
    def pair_bits(a: Any, b: Any, a_bits: Any, b_bits: Any, sign_mask: Any, exp_mask: Any) -> Any:
        a_l1 = a_sq = a_total = 0.0
        b_l1 = b_sq = b_total = 0.0
        d_l1 = d_sq = d_total = d_top = dot = 0.0
        a_top = b_top = sign_mask ^ sign_mask
        a_zeros = b_zeros = d_zeros = same_bits = same_values = bad = 0
        for i in range(a.size):
            va = np.float64(a[i])
            vb = np.float64(b[i])
            d = vb - va
            a_l1 += abs(va)
            a_sq += va * va
            a_total += va
            b_l1 += abs(vb)
            b_sq += vb * vb
            b_total += vb
            d_l1 += abs(d)
            d_sq += d * d
            d_total += d
            d_top = max(d_top, abs(d))
            dot += va * vb
            ab = a_bits[i] & sign_mask
            bb = b_bits[i] & sign_mask
            a_top = max(a_top, ab)
            b_top = max(b_top, bb)
            a_zeros += ab == 0
            b_zeros += bb == 0
            d_zeros += d == 0.0
            same_bits += a_bits[i] == b_bits[i]
            same_values += va == vb
            bad += (ab >= exp_mask) | (bb >= exp_mask)
        # per side (A, B, B-A): l1, sum of squares, signed sum; then tops and counts
        sums = np.array((a_l1, a_sq, a_total, b_l1, b_sq, b_total, d_l1, d_sq, d_total, dot, d_top))
        counts = np.array((a_zeros, b_zeros, d_zeros, same_bits, same_values, bad))
        return sums, counts, a_top, b_top

    return {
        "float_bits": float_bits,
        "bf16_bits": bf16_bits,
        "f16_bits": f16_bits,
        "pair_bits": pair_bits,
    }


_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")
_F16 = np.dtype("<f2")
_BF16 = np.dtype(ml_dtypes.bfloat16)
_MASKS = {
    4: (np.uint32(0x7FFFFFFF), np.uint32(0x7F800000), np.uint32),
    8: (np.uint64(0x7FFFFFFFFFFFFFFF), np.uint64(0x7FF0000000000000), np.uint64),
}


def _widened(values: np.ndarray, slot: str = "a") -> np.ndarray:
    """bf16 / f16 chunk -> float32 (exact), in this thread's reused scratch buffer `slot`."""
    buffer = getattr(_scratch, slot, None)
    if buffer is None or buffer.size < values.size:
        buffer = np.empty(values.size, dtype=np.float32)
        setattr(_scratch, slot, buffer)
    out: np.ndarray = buffer[: values.size]
    np.copyto(out, values, casting="unsafe")
    return out


def _float_chunk(values: np.ndarray, slot: str = "a") -> np.ndarray | None:
    """The chunk as float32 or float64 the kernels read, or None for other dtypes."""
    if values.dtype in (_BF16, _F16):
        return _widened(values, slot)
    if values.dtype in (_F32, _F64) and values.flags.c_contiguous and values.size:
        return values
    return None


def _as_float(bits: Any, uint: type, dtype: np.dtype[Any]) -> float:
    return float(np.array([bits], dtype=uint).view(dtype)[0])


def reduce_compiled(values: np.ndarray) -> TensorStats | None:
    """Statistics of a chunk, or None when the compiled path does not apply (another dtype, a
    non-finite value, a float64 sum that overflowed)."""
    assert _compiled
    if not values.size or not values.flags.c_contiguous:
        return None
    if values.dtype in (_BF16, _F16):
        raw, scratch = values.view(np.uint16), np.empty(1, dtype=np.uint32)
        if values.dtype == _BF16:
            l1, sq, total, top, zeros, bad = _compiled["bf16_bits"](raw, scratch)
            linf = _as_float(top, np.uint32, _F32)
        else:
            l1, sq, total, top, zeros, bad = _compiled["f16_bits"](raw, scratch)
            linf = _as_float(top, np.uint16, _F16)
    elif values.dtype in (_F32, _F64):
        sign_mask, exp_mask, uint = _MASKS[values.dtype.itemsize]
        l1, sq, total, top, zeros, bad = _compiled["float_bits"](
            values, values.view(uint), sign_mask, exp_mask
        )
        linf = _as_float(top, uint, values.dtype)
    else:
        return None
    if bad or not (np.isfinite(sq) and np.isfinite(l1)):
        return None
    if linf and not SQUARES_FIT[0] < linf < SQUARES_FIT[1]:
        return None  # float64 squares out of range: the numpy path scales them
    return TensorStats(int(values.size), float(l1), float(sq), linf, float(total), int(zeros))


def reduce_pair_compiled(a_values: np.ndarray, b_values: np.ndarray) -> PairStats | None:
    """A and B of one aligned chunk in one pass, or None where the compiled path does not apply
    (the same cases as reduce_compiled, or the two sides widened to different float types)."""
    assert _compiled
    a, b = _float_chunk(a_values, "a"), _float_chunk(b_values, "b")
    if a is None or b is None or a.dtype != b.dtype or not a.size:
        return None
    sign_mask, exp_mask, uint = _MASKS[a.dtype.itemsize]
    sums, counts, a_top, b_top = _compiled["pair_bits"](
        a, b, a.view(uint), b.view(uint), sign_mask, exp_mask
    )
    a_zeros, b_zeros, d_zeros, same_bits, same_values, bad = (int(c) for c in counts)
    if bad or not np.isfinite(sums).all():
        return None
    tops = (_as_float(a_top, uint, a.dtype), _as_float(b_top, uint, b.dtype), float(sums[-1]))
    if any(top and not SQUARES_FIT[0] < top < SQUARES_FIT[1] for top in tops):
        return None  # float64 squares out of range: the numpy path scales them
    (a_l1, a_sq, a_total, b_l1, b_sq, b_total, d_l1, d_sq, d_total, dot, d_top) = (
        float(v) for v in sums
    )
    n = int(a.size)
    # bit-identical for the same stored dtype (so -0.0 differs from 0.0), equal values otherwise
    same = same_bits if a_values.dtype == b_values.dtype else same_values
    return PairStats(
        a=TensorStats(n, a_l1, a_sq, _as_float(a_top, uint, a.dtype), a_total, a_zeros),
        b=TensorStats(n, b_l1, b_sq, _as_float(b_top, uint, b.dtype), b_total, b_zeros),
        diff=TensorStats(n, d_l1, d_sq, d_top, d_total, d_zeros),
        dot=dot,
        identical=bool(same == n),
    )
