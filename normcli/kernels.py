"""Compiled chunk reductions (numba, in compiled.py) for the dtypes that fill real checkpoints:
F32, F64, BF16, F16. Chunks holding NaN or Inf, or whose float64 squares would leave its range,
are handed back (None) to the numpy path in norms.py, which stays the reference and the
fallback: NORMCLI_KERNELS=numpy selects it, and it is used wherever numba is missing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .dtypes import BF16_BITS, as_float64
from .norms import SQUARES_FIT, PairStats, TensorStats


@dataclass(frozen=True)
class Kernels:
    """Each returns None where it does not apply, and the numpy path in norms.py takes over."""

    reduce: Callable[[np.ndarray], TensorStats | None]
    reduce_pair: Callable[[np.ndarray, np.ndarray], PairStats | None]


_lock = threading.Lock()
_compiled: ModuleType | None = None
_tried = False
_failed: set[np.dtype[Any]] = set()


def wanted() -> str:
    """numpy, numba, or auto (numba for jobs big enough to pay for importing it)."""
    choice = os.environ.get("NORMCLI_KERNELS", "auto").strip().lower()
    return choice if choice in ("numpy", "numba") else "auto"


def load(compiling: Callable[[], None] | None = None) -> Kernels | None:
    """The compiled kernels, or None where numba cannot be imported. `compiling` is called
    first when they must be compiled rather than loaded from numba's cache (a pause of seconds,
    on the first run after an install or upgrade)."""
    global _compiled, _tried
    with _lock:
        if not _tried:
            try:
                from . import compiled

                if compiling is not None and not compiled.cached():
                    compiling()
                compiled.warm_up()
                _compiled = compiled
                _read_through_maps()
            except Exception:  # numba missing, or unable to compile or cache here: numpy it is
                _compiled = None
            _tried = True
    return Kernels(reduce_compiled, reduce_pair_compiled) if _compiled else None


def _read_through_maps() -> None:
    """Big scans read files through memory maps once a SIGBUS handler, compiled with numba too,
    makes a page that cannot be read an error rather than the end of the process."""
    from . import sigbus
    from .readers import files

    with contextlib.suppress(Exception):  # no handler here: positioned reads, kernels all the same
        if sigbus.install():
            files.map_safely(sigbus)


# how each dtype reaches the kernels: the view type, its magnitude bits, and the bits of Inf
_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")
_F16 = np.dtype("<f2")
_LAYOUT: dict[np.dtype[Any], tuple[np.dtype[Any], type[np.unsignedinteger[Any]], int]] = {
    _F32: (np.dtype("<f4"), np.uint32, 0x7F800000),
    _F64: (np.dtype("<f8"), np.uint64, 0x7FF0000000000000),
    BF16_BITS: (np.dtype("<u2"), np.uint16, 0x7F80),
    _F16: (np.dtype("<i2"), np.uint16, 0x7C00),
}


def _stored(values: np.ndarray) -> np.ndarray:
    """bfloat16 values of an ml_dtypes type (handed to the API) as the bits the readers give."""
    return values.view(BF16_BITS) if values.dtype.name == "bfloat16" else values


def _kernel_view(values: np.ndarray) -> np.ndarray | None:
    """The chunk as the read-only view the kernels take, or None where they do not apply."""
    layout = _LAYOUT.get(values.dtype)
    if layout is None or not values.size or not values.flags.c_contiguous:
        return None
    assert _compiled
    if layout[0] not in _compiled.TYPES or layout[0] in _failed:
        return None
    view = values.view(layout[0])
    if not view.flags.aligned:
        return None
    view.flags.writeable = False
    return view


def _linf(bits: int, dtype: np.dtype[Any]) -> float | None:
    """The float whose magnitude bits these are, or None for Inf/NaN and for magnitudes whose
    float64 squares would leave its range (the numpy path scales those)."""
    _, uint, infinity = _LAYOUT[dtype]
    if bits >= infinity:
        return None
    linf = float(as_float64(np.array([bits], dtype=uint).view(dtype))[0])
    return linf if not linf or SQUARES_FIT[0] < linf < SQUARES_FIT[1] else None


def reduce_compiled(values: np.ndarray) -> TensorStats | None:
    """Statistics of a chunk, or None when the compiled path does not apply (another dtype, a
    non-finite value, squares out of float64's range)."""
    values = _stored(values)
    view = _kernel_view(values)
    if view is None:
        return None
    assert _compiled
    try:
        l1, sq, total, top, low = _compiled.stats(view)
    except Exception:  # compiled on first use: a type that cannot compile here goes to numpy
        _failed.add(view.dtype)
        return None
    linf = _linf(int(top), values.dtype)
    if linf is None:
        return None
    zeros = int(_compiled.count_zeros(view)) if low == 0 else 0
    return TensorStats(int(values.size), float(l1), float(sq), linf, float(total), zeros)


def reduce_pair_compiled(a_values: np.ndarray, b_values: np.ndarray) -> PairStats | None:
    """A and B of one aligned chunk in one pass, or None where the compiled path does not apply
    (the same cases as reduce_compiled)."""
    a_values, b_values = _stored(a_values), _stored(b_values)
    a, b = _kernel_view(a_values), _kernel_view(b_values)
    if a is None or b is None:
        return None
    assert _compiled
    try:
        sums, (a_top, a_low), (b_top, b_low), (d_top, d_low) = _compiled.pair_stats(a, b)
    except Exception:  # as in reduce_compiled
        if a.dtype == b.dtype:
            _failed.add(a.dtype)
        return None
    a_linf, b_linf = _linf(int(a_top), a_values.dtype), _linf(int(b_top), b_values.dtype)
    d_linf = _linf(int(d_top), _F64)
    if a_linf is None or b_linf is None or d_linf is None:
        return None
    (a_l1, a_sq, a_total, b_l1, b_sq, b_total, d_l1, d_sq, d_total, dot) = (float(v) for v in sums)
    n = int(a.size)
    a_zeros = int(_compiled.count_zeros(a)) if a_low == 0 else 0
    b_zeros = int(_compiled.count_zeros(b)) if b_low == 0 else 0
    d_zeros = int(_compiled.count_equal(a, b)) if d_low == 0 else 0
    # bit-identical for the same stored dtype (so -0.0 differs from 0.0), equal values otherwise
    identical = d_zeros == n and (
        a_values.dtype != b_values.dtype
        or a_low != 0  # equal non-zero values have equal bits; only ±0 needs a closer look
        or np.array_equal(a.view(np.uint8), b.view(np.uint8))
    )
    return PairStats(
        a=TensorStats(n, a_l1, a_sq, a_linf, a_total, a_zeros),
        b=TensorStats(n, b_l1, b_sq, b_linf, b_total, b_zeros),
        diff=TensorStats(n, d_l1, d_sq, d_linf, d_total, d_zeros),
        dot=dot,
        identical=identical,
    )
