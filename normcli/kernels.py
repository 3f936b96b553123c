"""Compiled chunk reductions (numba) for the dtypes that fill real checkpoints: F32, F64, BF16, F16.

One fused pass per chunk, accumulated in float64 with reassociation allowed (so the loop runs in
SIMD lanes: several partial sums, a tighter error than one running sum; about 1e-14 relative on
a chunk of 2^18 values). bf16 and f16 are widened exactly to float32 first. Chunks holding NaN or
Inf are handed back (None) to the numpy path in norms.py, which stays the reference and the
fallback: NORMCLI_KERNELS=numpy selects it, and it is used wherever numba is missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from .norms import TensorStats

Reducer = Callable[[np.ndarray], "TensorStats | None"]

_lock = threading.Lock()
_compiled: dict[str, Any] | None = None
_scratch = threading.local()


def wanted() -> str:
    """numpy, numba, or auto (numba for jobs big enough to pay for importing it)."""
    choice = os.environ.get("NORMCLI_KERNELS", "auto").strip().lower()
    return choice if choice in ("numpy", "numba") else "auto"


def load() -> Reducer | None:
    """The compiled reducer, or None where numba cannot be imported."""
    global _compiled
    with _lock:
        if _compiled is None:
            try:
                _compiled = _compile()
            except ImportError:
                _compiled = {}
    return reduce_compiled if _compiled else None


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

    return {"float_bits": float_bits}


_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")
_F16 = np.dtype("<f2")
_BF16 = np.dtype(ml_dtypes.bfloat16)
_MASKS = {
    4: (np.uint32(0x7FFFFFFF), np.uint32(0x7F800000), np.uint32),
    8: (np.uint64(0x7FFFFFFFFFFFFFFF), np.uint64(0x7FF0000000000000), np.uint64),
}


def _widened(values: np.ndarray) -> np.ndarray:
    """bf16 / f16 chunk -> float32 (exact), in this thread's reused scratch buffer."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < values.size:
        buffer = _scratch.buffer = np.empty(values.size, dtype=np.float32)
    out: np.ndarray = buffer[: values.size]
    np.copyto(out, values, casting="unsafe")
    return out


def reduce_compiled(values: np.ndarray) -> TensorStats | None:
    """Statistics of a chunk, or None when the compiled path does not apply (another dtype, a
    non-finite value, a float64 sum that overflowed)."""
    assert _compiled
    dtype = values.dtype
    if dtype in (_BF16, _F16):
        values = _widened(values)
    elif dtype not in (_F32, _F64) or not values.flags.c_contiguous:
        return None
    if values.size == 0:
        return None
    sign_mask, exp_mask, uint = _MASKS[values.dtype.itemsize]
    bits = values.view(uint)
    l1, sq, total, top, zeros, bad = _compiled["float_bits"](values, bits, sign_mask, exp_mask)
    if bad or not np.isfinite(sq) or not np.isfinite(l1):
        return None
    linf = float(np.array([top], dtype=uint).view(values.dtype)[0])
    return TensorStats(int(values.size), float(l1), float(sq), linf, float(total), int(zeros))
