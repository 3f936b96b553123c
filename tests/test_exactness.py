"""Every figure within 1e-10 of the correctly rounded reference, for every safetensors dtype,
through the public API: files read by normcli.inspect and arrays given to normcli.stats."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from reference import (
    MINIFLOATS,
    SAFETENSORS_NUMPY,
    Reference,
    assert_matches,
    combine,
    minifloat_table,
    reference,
    stored_bytes,
    to_exact,
)

from normcli.api import inspect as api_inspect
from normcli.api import stats as api_stats
from normcli.norms import TensorStats, reduce_chunk

# every figure here is checked on the numpy path and on the compiled kernels
pytestmark = pytest.mark.usefixtures("both_kernels")

# The contract: within 1e-10 relative of the correctly rounded value (a naive float64 sum of
# 10^8 elements already misses that; a float32 one misses it by orders of magnitude).
EXACT = 1e-10
DTYPES = list(SAFETENSORS_NUMPY)
COVERED_BY_DEFAULT = [n for n in DTYPES if n.startswith(("F", "BF", "C"))]


# --- writing safetensors files, independently of normcli ----------------------------------------


def _header(tensors: list[tuple[str, str, tuple[int, ...], int]]) -> bytes:
    entries, offset = {}, 0
    for name, dtype, shape, nbytes in tensors:
        entries[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> Path:
    """A safetensors file holding each (dtype name, array) under its name, in the given order."""
    blobs = [(name, dtype, a.shape, stored_bytes(dtype, a)) for name, (dtype, a) in tensors.items()]
    with path.open("wb") as f:
        f.write(_header([(n, d, s, len(b)) for n, d, s, b in blobs]))
        for *_, blob in blobs:
            f.write(blob)
    return path


# --- values that exercise each dtype ------------------------------------------------------------

_BITS = {"F6_E2M3": 6, "F6_E3M2": 6, "F4": 4}


def all_codes(name: str, repeat: int = 1, seed: int = 0) -> np.ndarray:
    """Every bit pattern of a narrow float type (NaNs, ±Inf, ±0, subnormals, extremes), shuffled."""
    dtype = SAFETENSORS_NUMPY[name]
    bits = _BITS.get(name, dtype.itemsize * 8)
    codes = np.tile(np.arange(1 << bits, dtype=f"<u{dtype.itemsize}"), repeat)
    np.random.default_rng(seed).shuffle(codes)
    return codes.view(dtype)


def rich_values(name: str) -> np.ndarray:
    """A few thousand values of dtype `name` covering its whole range and its special values."""
    dtype = SAFETENSORS_NUMPY[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "F32":
        info = np.finfo(np.float32)
        specials = [
            0.0,
            -0.0,
            np.nan,
            np.inf,
            -np.inf,
            info.max,
            -info.max,
            info.smallest_normal,
            float(info.smallest_subnormal),
            -3 * float(info.smallest_subnormal),
        ]
        spread = rng.standard_normal(5000) * 10.0 ** rng.uniform(-46, 37, 5000)
        values = np.concatenate([specials, spread]).astype(np.float32)
    elif name == "F64":
        # squares past both ends of the float64 range (kept scaled by normcli) among ordinary ones
        specials = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e300, -1e-300, 5e-324]
        spread = rng.standard_normal(5000) * 10.0 ** rng.uniform(-290, 290, 5000)
        values = np.concatenate([specials, spread])
    elif name == "C64":
        n = 3000
        re, im = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n) for _ in range(2))
        values = (re + 1j * im).astype(np.complex64)
        special = [
            complex(np.nan, 1),
            complex(1, np.nan),
            complex(np.inf, np.nan),
            complex(-np.inf, 2),
            complex(3, np.inf),
            0j,
            complex(-0.0, 0.0),
            3 + 4j,
        ]
        values[: len(special)] = special
    elif name == "BOOL":
        values = rng.integers(0, 2, 3001).astype(bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        extremes = np.array(
            [info.min, info.min + 1, -1 if info.min else 2, 0, 1, info.max - 1, info.max],
            dtype=dtype,
        )
        values = np.concatenate(
            [extremes, rng.integers(info.min, info.max, 3000, dtype=dtype, endpoint=True)]
        )
    else:
        values = all_codes(name, repeat=1 if dtype.itemsize == 2 else 4, seed=len(name))
    return np.asarray(values, dtype=dtype)


def test_reference_decoders_agree_with_ml_dtypes() -> None:
    """The reference decodes the narrow floats from their bit fields; ml_dtypes must agree."""
    for name in MINIFLOATS:
        bits = MINIFLOATS[name].bits
        codes = np.arange(1 << bits, dtype=np.uint8)
        with np.errstate(invalid="ignore"):
            theirs = codes.view(getattr(ml_dtypes, name)).astype(np.float64)
        np.testing.assert_array_equal(minifloat_table(name), theirs, err_msg=name)
    codes16 = np.arange(1 << 16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        theirs = codes16.view(ml_dtypes.bfloat16).astype(np.float64)
    np.testing.assert_array_equal(to_exact(codes16.view(ml_dtypes.bfloat16)), theirs)
    assert minifloat_table("float4_e2m1fn").max() == 6.0
    assert minifloat_table("float6_e2m3fn").max() == 7.5
    assert minifloat_table("float6_e3m2fn").max() == 28.0
    assert minifloat_table("float8_e4m3fn")[0x7E] == 448.0


# --- every dtype --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DTYPES)
def test_every_dtype_read_from_a_file(name: str, tmp_path: Path) -> None:
    values = rich_values(name)
    shape = (values.size // 4, 4) if values.size % 4 == 0 else (values.size,)
    path = write_safetensors(tmp_path / "one.safetensors", {"t": (name, values.reshape(shape))})
    result = api_inspect(path, include_int=True)
    (row,) = result.tensors
    assert (row.dtype, row.shape) == (name, shape)
    assert_matches(row.stats, reference(values), EXACT, what=name)
    assert_matches(result.total.stats, reference(values), EXACT, what=f"{name} total")


@pytest.mark.parametrize("name", DTYPES)
def test_every_dtype_given_in_memory(name: str) -> None:
    values = rich_values(name)
    result = api_stats({"t": values.reshape(-1, 2) if values.size % 2 == 0 else values})
    assert_matches(result.tensors[0].stats, reference(values), EXACT, what=name)


@pytest.mark.parametrize("include_int", [False, True])
def test_whole_file_total_over_every_dtype(include_int: bool, tmp_path: Path) -> None:
    model = {f"layer.{name}": (name, rich_values(name)) for name in DTYPES}
    path = write_safetensors(tmp_path / "model.safetensors", model)
    result = api_inspect(path, include_int=include_int, threads=4)
    covered = DTYPES if include_int else COVERED_BY_DEFAULT
    assert result.total.tensors == len(covered)
    assert result.total.excluded == len(DTYPES) - len(covered)
    expected = combine([reference(model[f"layer.{n}"][1]) for n in covered])
    assert_matches(result.total.stats, expected, EXACT, what="total")
    rows = [r.stats for r in result.tensors if r.covered]
    # the global norm √Σ‖t‖₂², by hypot: it neither overflows nor underflows on the way
    assert math.isclose(result.total.stats.l2, math.hypot(*(s.l2 for s in rows)), rel_tol=1e-12)


# --- the cases that break naive accumulation ----------------------------------------------------


def test_float16_whose_squares_overflow_float16(tmp_path: Path) -> None:
    values = np.full(1000, 300.0, dtype=np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(np.square(values)).all()  # 90000 > 65504: float16 squares overflow
    expected = reference(values)
    assert expected.l2 == pytest.approx(300 * math.sqrt(1000), rel=1e-15)
    assert_matches(api_stats({"w": values}).tensors[0].stats, expected, EXACT)
    path = write_safetensors(tmp_path / "f16.safetensors", {"w": ("F16", values)})
    assert_matches(api_inspect(path).tensors[0].stats, expected, EXACT)


def test_bfloat16_sums_that_bfloat16_cannot_hold() -> None:
    # 1 + 2^-7 is exact in bfloat16 (8 significant bits); past 256 a bfloat16 running sum can no
    # longer add 1, let alone the 2^-7 parts
    values = np.concatenate([np.full(5000, 1 + 2**-7), np.full(3000, -(2.0**-7)), [2.0**-133]])
    values = values.astype(ml_dtypes.bfloat16)
    running = np.add.accumulate(values.astype(ml_dtypes.bfloat16), dtype=ml_dtypes.bfloat16)[-1]
    exact_total = 5000 * (1 + Fraction(1, 128)) - Fraction(3000, 128) + Fraction(2) ** -133
    assert float(running) != float(exact_total)
    expected = reference(values)
    assert expected.total_exact == exact_total
    stats = api_stats({"w": values}).tensors[0].stats
    assert_matches(stats, expected, EXACT)
    assert stats.l1 == float(5000 * (1 + Fraction(1, 128)) + Fraction(3000, 128))


def test_float32_ten_million_elements() -> None:
    rng = np.random.default_rng(10_000_000)
    values = (rng.standard_normal(10_000_000) * 3 + 0.5).astype(np.float32)
    expected = reference(values)  # math.fsum over the float64 values, squares exact in float64
    # a float32 accumulator loses digits here: the test would catch one
    float32_sumsq = float(np.sum(np.square(values), dtype=np.float32))
    assert abs(float32_sumsq - float(expected.sumsq_exact)) > 1e-9 * float(expected.sumsq_exact)
    stats = api_stats({"w": values.reshape(1000, 10_000)}).tensors[0].stats
    assert_matches(stats, expected, EXACT)


def test_int64_near_two_to_the_62() -> None:
    big = [2**62 - k for k in range(1000)] + [-(2**62) + 7 * k for k in range(999)] + [2**63 - 1]
    values = np.array(big, dtype=np.int64)
    exact_l1 = sum(abs(v) for v in big)
    expected = reference(values)
    assert expected.l1_exact == exact_l1 and expected.sumsq_exact == sum(v * v for v in big)
    result = api_stats({"ids": values}, include_int=True)
    assert_matches(result.tensors[0].stats, expected, EXACT)
    assert_matches(result.total.stats, expected, EXACT)
    assert result.tensors[0].stats.l1 == pytest.approx(exact_l1, rel=EXACT)


def test_uint64_max() -> None:
    top = 2**64 - 1
    values = np.array([top] * 999 + [0, 1], dtype=np.uint64)
    stats = api_stats({"u": values}).tensors[0].stats
    assert_matches(stats, reference(values), EXACT)
    assert stats.l1 == pytest.approx(999 * top + 1, rel=EXACT)
    assert stats.l2 == pytest.approx(top * math.sqrt(999), rel=EXACT)
    assert stats.linf == pytest.approx(top, rel=1e-15)
    assert stats.zeros == 1


# --- 10^8 elements on disk ----------------------------------------------------------------------

PERIOD = 1000
REPEATS = 100_000  # 10^8 float16 elements, 200 MB


def _period() -> np.ndarray:
    rng = np.random.default_rng(108)
    period = (rng.standard_normal(PERIOD) * 100).astype(np.float16)
    period[:22] = [
        np.nan,
        np.inf,
        -np.inf,
        0,
        0,
        0,
        -0.0,
        300,
        300,
        -300,
        300,
        300,
        300,
        300,
        300,
        6e-8,
        -6e-8,
        65504,
        -65504,
        1e-4,
        -1e-4,
        0.5,
    ]
    return period


def _repeated(ref: Reference, times: int) -> Reference:
    """The reference of `times` copies of the values: counts and exact sums scale, Linf does not."""
    return dataclasses.replace(
        ref,
        numel=ref.numel * times,
        nan=ref.nan * times,
        inf=ref.inf * times,
        zeros=ref.zeros * times,
        l1_exact=ref.l1_exact * times,
        sumsq_exact=ref.sumsq_exact * times,
        total_exact=None if ref.total_exact is None else ref.total_exact * times,
    )


def _write_repeated(path: Path, name: str, period: np.ndarray, repeats: int) -> None:
    block = np.tile(period, 1000).tobytes()
    assert repeats % 1000 == 0
    with path.open("wb") as f:
        f.write(_header([(name, "F16", (repeats, PERIOD), repeats * period.nbytes)]))
        for _ in range(repeats // 1000):
            f.write(block)


def test_hundred_million_elements_from_disk(tmp_path: Path) -> None:
    period = _period()
    one = reference(period)
    finite = [Fraction(float(v)) for v in period.astype(np.float64) if math.isfinite(v)]
    # over one period the reference sums are exact (a few hundred float16 values fit in float64),
    # so over the whole tensor they are exactly REPEATS times as large
    assert one.l1_exact == sum(abs(v) for v in finite)
    assert one.total_exact == sum(finite)
    assert one.sumsq_exact == sum(v * v for v in finite)
    expected = _repeated(one, REPEATS)

    path = tmp_path / "big.safetensors"
    _write_repeated(path, "big", period, REPEATS)
    try:
        (row,) = api_inspect(path).tensors
    finally:
        path.unlink()  # 200 MB: not left behind in pytest's kept temporary directories
    assert row.stats.numel == 10**8
    assert (row.stats.nan, row.stats.inf, row.stats.zeros) == (REPEATS, 2 * REPEATS, 4 * REPEATS)
    assert_matches(row.stats, expected, EXACT)


# --- the edges of the float64 range, signalling NaNs, and the API's own surface -----------------


def test_float64_values_whose_squares_overflow_float64() -> None:
    # L2 is 1e200·√11, far inside the float64 range, though each square is not
    values = np.array([1e200, -1e200, 3e200])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = reduce_chunk(values)
    assert_matches(stats, reference(values), EXACT)
    assert stats.l2 == pytest.approx(1e200 * math.sqrt(11), rel=EXACT)


def test_float64_values_whose_squares_underflow_float64() -> None:
    for values in (np.full(4, 1e-200), np.array([5e-324, -5e-324, 1e-320]), np.array([3e-160])):
        stats = reduce_chunk(values)
        assert_matches(stats, reference(values), EXACT, what=repr(values))


def test_l1_beyond_the_float64_range_is_infinite_without_a_warning() -> None:
    values = np.array([1.7e308, 1.7e308, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = reduce_chunk(values)
    assert stats.l1 == math.inf  # the true L1, 3.4e308, rounds to infinity
    assert (stats.nan, stats.inf, stats.linf) == (0, 0, 1.7e308)


def _signalling_nans() -> Iterator[tuple[str, np.ndarray]]:
    yield "F16", np.frombuffer(struct.pack("<HHH", 0x7C01, 0x3C00, 0xFDFF), dtype="<f2")
    yield "F32", np.frombuffer(struct.pack("<III", 0x7F800001, 0x3F800000, 0xFFA00000), "<f4")
    yield (
        "F64",
        np.frombuffer(
            struct.pack("<QQQ", 0x7FF0000000000001, 0x3FF0000000000000, 0xFFF4000000000000), "<f8"
        ),
    )


@pytest.mark.parametrize("name,values", list(_signalling_nans()), ids=["F16", "F32", "F64"])
def test_signalling_nan_is_counted_without_a_warning(
    name: str, values: np.ndarray, tmp_path: Path
) -> None:
    # a signalling NaN is a NaN like any other: counted, left out of the norms, no FP exception
    assert np.isnan(values).tolist() == [True, False, True]
    path = write_safetensors(tmp_path / "snan.safetensors", {"w": (name, values)})
    for stats in (reduce_chunk(values), api_inspect(path).tensors[0].stats):
        assert (stats.numel, stats.nan, stats.l1, stats.l2) == (3, 2, 1.0, 1.0)


def test_normcli_stats_stays_the_function_once_the_core_is_imported() -> None:
    import normcli.api
    import normcli.scan  # every core module loaded, as after any real use

    assert callable(normcli.stats)
    result = normcli.stats({"w": np.array([3.0, 4.0])})
    assert result.tensors[0].stats.l2 == 5.0
    assert normcli.inspect is api_inspect


def test_reduce_chunk_of_nothing_is_empty() -> None:
    assert reduce_chunk(np.zeros((0, 7), dtype=np.float16)) == TensorStats()
