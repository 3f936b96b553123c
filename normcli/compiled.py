"""The numba kernels behind kernels.py, imported only for jobs big enough to need them. Each is
compiled on first use, or loaded from numba's cache: beside this file, or where that folder may
not be written (a read-only install) in the user's cache folder (numba's own choice; set
NUMBA_CACHE_DIR to put it elsewhere). A cache written from other source or by another numba is
ignored and overwritten, so an upgrade compiles once, then loads again.

Each kernel is one fused pass over a chunk, accumulated in float64 with reassociation allowed so
the loop runs in SIMD lanes (several partial sums: a tighter error than one running sum, about
1e-14 relative on a chunk of 2^18 values). The chunk comes as a read-only view (one compiled
version per type, whether it lies in a memory map or a buffer) of float32 or float64, or of the
raw bits of bfloat16 (as uint16) or float16 (as int16), widened exactly in registers.

A chunk is walked in blocks of BLOCK_BYTES, and the memory AHEAD_BYTES further on is asked
for (prefetched) before each block: without that, the loop waited on memory it had not asked for
yet, and ran from a memory map at a third of its speed on data already in cache.

Integer work goes through the small intrinsics below because numba widens every integer
operation to 64 bits, which would cut the SIMD lanes of a 16-bit maximum by four. Counting
zeros in the main loop cost a third of its speed: the loop keeps the smallest magnitude instead,
and only a chunk whose smallest magnitude is zero is counted, in a second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic as numba_intrinsic

# numba calls an intrinsic without the typing context it is declared with, which mypy cannot
# follow: the intrinsics it makes are typed as Any
intrinsic: Callable[[Callable[..., Any]], Any] = numba_intrinsic

BLOCK_BYTES = 8 << 10
AHEAD_BYTES = 32 << 10
CACHE_LINE = 64


def fast(function: Any) -> Any:
    """Compiled without the GIL, kept in numba's cache where it finds a place it may write."""
    # no nnan/ninf: non-finite values must still be seen, for the caller to send the chunk back
    options: dict[str, Any] = {"nogil": True, "fastmath": {"reassoc", "nsz", "contract", "arcp"}}
    try:
        return njit(cache=True, **options)(function)
    except RuntimeError:  # neither beside the package nor in the user's cache: compile each run
        return njit(cache=False, **options)(function)


@intrinsic
def widen(typingctx: Any, x: Any) -> Any:
    """One stored value as float64, exactly."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        (value,) = args
        if isinstance(x, types.Float):
            return value if x.bitwidth == 64 else builder.fpext(value, ir.DoubleType())
        if x.signed:  # float16 bits
            return builder.fpext(builder.bitcast(value, ir.HalfType()), ir.DoubleType())
        # bfloat16 bits are the top half of a float32's
        wide = builder.shl(builder.zext(value, ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.fpext(builder.bitcast(wide, ir.FloatType()), ir.DoubleType())

    return types.float64(x), codegen


@intrinsic
def magnitude(typingctx: Any, x: Any) -> Any:
    """|x| as an unsigned bit pattern of x's width: ordered as the magnitudes are, and at or
    above the exponent mask exactly for Inf and NaN."""
    width = x.bitwidth

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        (value,) = args
        kind = ir.IntType(width)
        bits = builder.bitcast(value, kind) if isinstance(x, types.Float) else value
        return builder.and_(bits, ir.Constant(kind, (1 << (width - 1)) - 1))

    return getattr(types, f"uint{width}")(x), codegen


@intrinsic
def umax(typingctx: Any, a: Any, b: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.select(builder.icmp_unsigned(">", args[0], args[1]), args[0], args[1])

    return a(a, b), codegen


@intrinsic
def umin(typingctx: Any, a: Any, b: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.select(builder.icmp_unsigned("<", args[0], args[1]), args[0], args[1])

    return a(a, b), codegen


@intrinsic
def is_zero(typingctx: Any, bits: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        zero = builder.icmp_unsigned("==", args[0], ir.Constant(args[0].type, 0))
        return builder.zext(zero, ir.IntType(64))

    return types.int64(bits), codegen


@intrinsic
def prefetch(typingctx: Any, array: Any, index: Any) -> Any:
    """Ask for the cache line holding array[index], to read soon."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        # named for the pointer type as this LLVM names it (p0i8 before opaque pointers, p0)
        function = builder.module.declare_intrinsic(
            "llvm.prefetch",
            [address.type],
            ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]),
        )
        # a read (0), kept in every cache level (3), of data (1)
        builder.call(function, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@fast
def prefetch_ahead(x: Any, start: Any, stop: Any) -> None:
    """Prefetch the block AHEAD_BYTES after the elements [start, stop)."""
    ahead = AHEAD_BYTES // x.itemsize
    for i in range(start + ahead, min(stop + ahead, x.size), CACHE_LINE // x.itemsize):
        prefetch(x, i)


@fast
def stats(x: Any) -> Any:
    """Σ|x|, Σx², Σx, and the largest and smallest magnitude bits, of a non-empty chunk."""
    l1 = sq = total = 0.0
    top = low = magnitude(x[0])
    block = BLOCK_BYTES // x.itemsize
    for start in range(0, x.size, block):
        stop = min(start + block, x.size)
        prefetch_ahead(x, start, stop)
        # a slice, not an index range: the loop inside is then known to start at 0, and vectorizes
        part = block_stats(x[start:stop])
        l1 += part[0]
        sq += part[1]
        total += part[2]
        top = umax(top, part[3])
        low = umin(low, part[4])
    return l1, sq, total, top, low


@fast
def block_stats(x: Any) -> Any:
    l1 = sq = total = 0.0
    for i in range(x.size):
        v = widen(x[i])
        l1 += abs(v)
        sq += v * v
        total += v
    top, low = extremes(x)
    return l1, sq, total, top, low


@fast
def extremes(x: Any) -> Any:
    """The largest and smallest magnitude bits of a non-empty block. A loop apart from the sums
    (the block is in cache by then), as it then runs in lanes of x's own width, not float64's."""
    top = low = magnitude(x[0])
    for i in range(x.size):
        m = magnitude(x[i])
        top = umax(top, m)
        low = umin(low, m)
    return top, low


@fast
def count_zeros(x: Any) -> Any:
    zeros = 0
    for i in range(x.size):
        zeros += is_zero(magnitude(x[i]))
    return zeros


@fast
def pair_stats(a: Any, b: Any) -> Any:
    """stats of A, of B and of B - A, and A·B, over a non-empty aligned chunk: the sums, then
    the largest and smallest magnitude bits of each."""
    sums = np.zeros(10)
    a_top = a_low = magnitude(a[0])
    b_top = b_low = magnitude(b[0])
    d_top = d_low = magnitude(widen(b[0]) - widen(a[0]))
    block = BLOCK_BYTES // max(a.itemsize, b.itemsize)
    for start in range(0, a.size, block):
        stop = min(start + block, a.size)
        prefetch_ahead(a, start, stop)
        prefetch_ahead(b, start, stop)
        part, (at, al), (bt, bl), (dt, dl) = block_pair_stats(a[start:stop], b[start:stop])
        for k in range(10):
            sums[k] += part[k]
        a_top, a_low = umax(a_top, at), umin(a_low, al)
        b_top, b_low = umax(b_top, bt), umin(b_low, bl)
        d_top, d_low = umax(d_top, dt), umin(d_low, dl)
    return sums, (a_top, a_low), (b_top, b_low), (d_top, d_low)


@fast
def block_pair_stats(a: Any, b: Any) -> Any:
    a_l1 = a_sq = a_total = b_l1 = b_sq = b_total = d_l1 = d_sq = d_total = dot = 0.0
    d_top = d_low = magnitude(widen(b[0]) - widen(a[0]))
    for i in range(a.size):
        va = widen(a[i])
        vb = widen(b[i])
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
        dot += va * vb
        md = magnitude(d)
        d_top = umax(d_top, md)
        d_low = umin(d_low, md)
    sums = (a_l1, a_sq, a_total, b_l1, b_sq, b_total, d_l1, d_sq, d_total, dot)
    return sums, extremes(a), extremes(b), (d_top, d_low)


@fast
def count_equal(a: Any, b: Any) -> Any:
    same = 0
    for i in range(a.size):
        same += widen(a[i]) == widen(b[i])
    return same


def _converts_half() -> bool:
    """Whether the CPU converts float16 itself: on x86 with F16C (every x86 CPU since 2012)."""
    if "x86" not in str(llvmlite.binding.get_process_triple()):
        return True
    try:
        return bool(llvmlite.binding.get_host_cpu_features().get("f16c", False))
    except RuntimeError:
        return False


# the stored types the kernels take here; each is compiled (or loaded from numba's cache) on
# first use, as loading them all up front took longer than importing numba
TYPES = frozenset(
    np.dtype(t) for t in ("<f4", "<f8", "<u2", *(("<i2",) if _converts_half() else ()))
)


def cached() -> bool:
    """Whether numba's cache holds kernels compiled from this very source by this numba: false
    on the first run after an install or an upgrade, when they take seconds to compile."""
    try:
        return bool(stats._cache._cache_file._load_index())
    except Exception:  # no cache here, or numba's internals have moved: nothing to tell
        return True


def warm_up() -> None:
    """The first kernel loaded starts numba's JIT, about 0.2 s: done by the thread that loads
    the kernels, rather than in the first scanning thread while the others wait on the
    compiler's lock."""
    one = np.zeros(1, dtype=np.float32)
    one.flags.writeable = False
    stats(one)
