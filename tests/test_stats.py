"""The streaming accumulators and the scan over them, against the independent reference."""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import (
    GROUP_ELEMENTS,
    SAFETENSORS_NUMPY,
    Reference,
    assert_matches,
    close,
    combine,
    reference,
    stored_bytes,
    to_exact,
)

from normcli.api import stats as api_stats
from normcli.dtypes import SAFETENSORS_DTYPES
from normcli.norms import TensorStats, merge_all, reduce_chunk
from normcli.readers import TensorSource
from normcli.scan import scan_tensor, scan_tensors

# every figure here is checked on the numpy path and on the compiled kernels
pytestmark = pytest.mark.usefixtures("both_kernels")

DTYPES = list(SAFETENSORS_NUMPY)
RTOL = 1e-12
CHUNK_SIZES = [1, 2, 3, 5, 7, 11, 13, 97, 1 << 20]
FEW = settings(max_examples=30, deadline=None)
MODEST = settings(max_examples=60, deadline=None)


# --- inputs -------------------------------------------------------------------------------------


def _code_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"<u{dtype.itemsize}")


def _special_codes(name: str) -> list[int]:
    """Codes of the values worth forcing: ±0, NaN, ±Inf, the largest and the smallest magnitude."""
    dtype = SAFETENSORS_NUMPY[name]
    bits = {"F6_E2M3": 6, "F6_E3M2": 6, "F4": 4}.get(name, dtype.itemsize * 8)
    codes = np.arange(1 << bits, dtype=_code_dtype(dtype))
    values = to_exact(codes.view(dtype))
    assert isinstance(values, np.ndarray)
    finite = np.isfinite(values)
    magnitude = np.where(finite, np.abs(values), np.nan)
    nonzero = np.where(magnitude > 0, magnitude, np.nan)
    wanted = {
        int(np.nanargmax(magnitude)),
        int(np.nanargmin(nonzero)),
        int(np.nanargmax(np.where(finite, values, np.nan))),
        int(np.nanargmin(np.where(finite, values, np.nan))),
    }
    for mask in (values == 0, np.isnan(values), values == np.inf, values == -np.inf):
        wanted.update(int(i) for i in np.flatnonzero(mask)[:2])
    return sorted(wanted)


def _bit_pattern_elements(name: str) -> st.SearchStrategy[int]:
    dtype = SAFETENSORS_NUMPY[name]
    top = {"F6_E2M3": 63, "F6_E3M2": 63, "F4": 15}.get(name, (1 << (8 * dtype.itemsize)) - 1)
    return st.one_of(st.sampled_from(_special_codes(name)), st.integers(0, top))


# float64 values across (almost) the whole range, whose squares leave float64 at both ends:
# normcli keeps such sums of squares scaled by a power of two. (Magnitudes stop at 1e300 so that
# an L1 of a few thousand of them still fits a float64.)
_F64 = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e300, -1e-300, 5e-324]),
    st.floats(1e-300, 1e300),
    st.floats(-1e300, -1e-300),
)


def values_of(
    name: str, shape: st.SearchStrategy[tuple[int, ...]]
) -> st.SearchStrategy[np.ndarray]:
    """Arrays of the safetensors dtype `name`: every bit pattern for the narrow floats (NaN, ±Inf,
    zeros, subnormals, the largest values), the full range for integers."""
    dtype = SAFETENSORS_NUMPY[name]
    if name == "F64":
        return hnp.arrays(dtype, shape, elements=_F64)
    if name == "F32":
        return hnp.arrays(dtype, shape, elements=st.floats(width=32))
    if name == "C64":
        return hnp.arrays(dtype, shape, elements=st.complex_numbers(width=64))
    if dtype.kind in "iub":
        return hnp.arrays(dtype, shape)
    codes = hnp.arrays(_code_dtype(dtype), shape, elements=_bit_pattern_elements(name))
    return codes.map(lambda c: c.view(dtype))


SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=10)


@st.composite
def packable(draw: st.DrawFn, name: str) -> np.ndarray:
    """A 1-D array whose length fills whole packed groups of its dtype."""
    group = GROUP_ELEMENTS.get(name, 1)
    groups = draw(st.integers(0, 300 // group))
    return draw(values_of(name, st.just((groups * group,))))


def source_of(name: str, array: np.ndarray, label: str = "t") -> TensorSource:
    """A TensorSource over the stored bytes of `array`, as a reader would yield it."""
    data = stored_bytes(name, array)

    def read(start: int, stop: int, out: np.ndarray) -> bytes:
        return data[start:stop]

    return TensorSource(label, SAFETENSORS_DTYPES[name], tuple(array.shape), read)


def assert_same(a: TensorStats, b: TensorStats, rtol: float = RTOL) -> None:
    """Counts identical, norms and sums within `rtol` of each other."""
    for name in ("numel", "nan", "inf", "zeros"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.linf == b.linf
    for name in ("l1", "sumsq"):
        assert close(getattr(a, name), getattr(b, name), rtol), (name, a, b)
    if a.total is None or b.total is None:
        assert a.total is b.total
    else:
        # the signed sum: its rounding error is relative to the sum of magnitudes
        assert abs(a.total - b.total) <= rtol * max(a.l1, b.l1), (a, b)


# --- TensorStats by hand ----------------------------------------------------------------------


def test_empty_stats_have_no_mean_rms_or_sparsity() -> None:
    empty = TensorStats()
    assert (empty.numel, empty.finite, empty.l1, empty.l2, empty.linf) == (0, 0, 0.0, 0.0, 0.0)
    assert empty.rms is None
    assert empty.mean is None
    assert empty.sparsity is None


def test_derived_figures_follow_their_definitions() -> None:
    s = reduce_chunk(np.array([3.0, -4.0, 0.0, np.nan, np.inf, -np.inf, 0.0, 12.0]))
    assert (s.numel, s.nan, s.inf, s.finite, s.zeros) == (8, 1, 2, 5, 2)
    assert (s.l1, s.sumsq, s.linf, s.total) == (19.0, 169.0, 12.0, 11.0)
    assert s.l2 == 13.0
    assert s.rms == math.sqrt(169.0 / 5)  # over the finite elements only
    assert s.mean == 11.0 / 5
    assert s.sparsity == 2 / 8


def test_all_non_finite_has_zero_norms_and_no_mean() -> None:
    s = reduce_chunk(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    assert (s.numel, s.nan, s.inf, s.finite, s.zeros) == (3, 1, 2, 0, 0)
    assert (s.l1, s.l2, s.linf) == (0.0, 0.0, 0.0)
    assert s.rms is None
    assert s.mean is None


def test_merge_all_of_nothing_is_empty() -> None:
    assert merge_all([]) == TensorStats()
    assert merge_all(()) == TensorStats()


def test_complex_has_no_total_and_passes_that_on() -> None:
    c = reduce_chunk(np.array([3 + 4j], dtype=np.complex64))
    r = reduce_chunk(np.array([1.0]))
    assert c.total is None and c.mean is None
    assert c.merge(r).total is None and r.merge(c).total is None
    assert merge_all([r, c, r]).total is None
    assert TensorStats.of_complex().merge(r).total is None
    assert reduce_chunk(np.zeros(0, dtype=np.complex64)).total is None


# --- reduce_chunk -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DTYPES)
@FEW
@given(data=st.data())
def test_reduce_chunk_matches_reference(name: str, data: st.DataObject) -> None:
    array = data.draw(values_of(name, SHAPES), label="array")
    assert_matches(reduce_chunk(array), reference(array), RTOL)


def test_complex_modulus_and_non_finite_parts() -> None:
    values = np.array(
        [
            3 + 4j,  # modulus 5
            complex(math.nan, 0.0),  # NaN in either part is NaN ...
            complex(0.0, math.nan),
            complex(math.inf, math.nan),  # ... even next to an infinite part
            complex(-math.inf, 1.0),  # otherwise an infinite part is infinite
            complex(2.0, math.inf),
            complex(0.0, -0.0),  # a zero
            complex(-5.0, 12.0),  # modulus 13
        ],
        dtype=np.complex64,
    )
    s = reduce_chunk(values)
    assert (s.numel, s.nan, s.inf, s.zeros) == (8, 3, 2, 1)
    assert (s.l1, s.sumsq, s.linf) == (18.0, 194.0, 13.0)
    assert s.total is None and s.mean is None
    assert_matches(s, reference(values))


def test_zeros_are_exact_zeros_among_finite_values() -> None:
    s = reduce_chunk(np.array([0.0, -0.0, np.nan, 5e-324, -np.inf, 1.0]))
    assert s.zeros == 2


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(10.0)[::-1],
        np.array([1 + 1j, 2 - 2j, 3 + 4j, 0j])[::-1],
        np.array([1 + 1j, 2 - 2j, 3 + 4j, 0j])[::2],
        np.arange(8, dtype=">i4"),
        np.array(7.5, dtype=np.float16),
    ],
    ids=[
        "strided-2d",
        "fortran",
        "reversed",
        "complex-reversed",
        "complex-strided",
        "big-endian",
        "0-d",
    ],
)
def test_reduce_chunk_takes_any_layout(array: np.ndarray) -> None:
    assert_matches(reduce_chunk(array), reference(array))


def test_reduce_chunk_leaves_its_input_alone() -> None:
    for array in (np.array([-1.5, 2.0, np.nan]), np.array([3 - 4j, 1j]), np.arange(-3, 3)):
        before = array.copy()
        reduce_chunk(array)
        np.testing.assert_array_equal(array, before)


# --- merging ------------------------------------------------------------------------------------


@MODEST
@given(data=st.data())
def test_splitting_anywhere_and_merging_gives_the_same_figures(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(DTYPES), label="dtype")
    array = data.draw(values_of(name, st.integers(0, 60).map(lambda n: (n,))), label="array")
    i, j = sorted(data.draw(st.lists(st.integers(0, array.size), min_size=2, max_size=2)))
    a, b, c = (reduce_chunk(p) for p in (array[:i], array[i:j], array[j:]))
    whole = reduce_chunk(array)
    for merged in (
        a.merge(b).merge(c),  # associative ...
        a.merge(b.merge(c)),
        c.merge(b).merge(a),  # ... and commutative in effect
        b.merge(TensorStats()).merge(a).merge(c),  # the empty statistics are neutral
        merge_all([a, b, c]),
        merge_all([c, a, b]),
    ):
        assert_same(merged, whole)
    assert_matches(merge_all([a, b, c]), reference(array))


# --- scanning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DTYPES)
@FEW
@given(data=st.data())
def test_chunked_scan_equals_unchunked(name: str, data: st.DataObject) -> None:
    array = data.draw(packable(name), label="array")
    chunk = data.draw(st.sampled_from(CHUNK_SIZES), label="chunk_elements")
    source = source_of(name, array)
    chunked = scan_tensor(source, chunk)
    assert_same(chunked, scan_tensor(source, 1 << 30))
    assert_same(chunked, reduce_chunk(array))
    assert_matches(chunked, reference(array))


def _mixed_sources() -> tuple[list[TensorSource], list[np.ndarray]]:
    rng = np.random.default_rng(2024)
    sources, arrays = [], []
    for i, name in enumerate(DTYPES * 2):
        group = GROUP_ELEMENTS.get(name, 1)
        n = group * int(rng.integers(0, 5000 // group))
        dtype = SAFETENSORS_NUMPY[name]
        if dtype.kind == "b":
            array = rng.integers(0, 2, n).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            array = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        elif dtype.kind == "c":
            array = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
        else:
            array = (rng.standard_normal(n) * 4).astype(dtype)
        if n:
            array[rng.integers(0, n)] = 0
        arrays.append(array)
        sources.append(source_of(name, array, f"t{i}.{name}"))
    return sources, arrays


def test_threads_do_not_change_any_figure() -> None:
    sources, arrays = _mixed_sources()
    one = scan_tensors(sources, threads=1, chunk_elements=1000)
    four = scan_tensors(sources, threads=4, chunk_elements=1000)
    assert four == one  # identical, bit for bit, and in the order given
    assert scan_tensors(sources, threads=4) == scan_tensors(sources, threads=1)
    for stats, array, source in zip(four, arrays, sources, strict=True):
        assert_matches(stats, reference(array), what=source.name)


def test_scan_of_an_empty_complex_tensor_has_no_total() -> None:
    empty = np.zeros((0, 3), dtype=np.complex64)
    s = scan_tensor(source_of("C64", empty))
    assert s.numel == 0 and s.total is None and s.mean is None


# --- whole-model totals -------------------------------------------------------------------------


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "embed.weight": rng.standard_normal((64, 32)).astype(np.float32) * 3,
        "layer.0.weight": rng.standard_normal((32, 32)).astype(ml_dtypes.bfloat16),
        "layer.0.bias": np.array([np.nan, 1.0, -2.0, np.inf, 0.0], dtype=np.float16),
        "layer.1.weight": rng.standard_normal(77).astype(ml_dtypes.float8_e4m3fn),
        "rotary": (rng.standard_normal(10) + 1j * rng.standard_normal(10)).astype(np.complex64),
        "position_ids": np.arange(-1000, 1000, dtype=np.int64) * (1 << 50),
        "counts": np.array([2**64 - 1, 0, 3], dtype=np.uint64),
        "mask": rng.integers(0, 2, 100).astype(bool),
    }


FLOATING = {"embed.weight", "layer.0.weight", "layer.0.bias", "layer.1.weight", "rotary"}


@pytest.mark.parametrize("include_int", [False, True])
def test_whole_model_total(include_int: bool) -> None:
    model = _model()
    result = api_stats(model, include_int=include_int)
    rows = {row.name: row for row in result.tensors}
    assert set(rows) == set(model)
    for name, array in model.items():
        assert_matches(rows[name].stats, reference(array), what=name)
        assert rows[name].covered == (include_int or name in FLOATING)

    covered = [n for n in model if include_int or n in FLOATING]
    total = result.total
    assert (total.tensors, total.excluded) == (len(covered), len(model) - len(covered))
    assert total.scope == ("all" if include_int else "floating")
    expected = combine([reference(model[n]) for n in covered])
    assert_matches(total.stats, expected, what="total")
    # the global norm: √(Σ over tensors of L2²), as gradient clipping computes it
    global_l2 = math.sqrt(math.fsum(rows[n].stats.l2 ** 2 for n in covered))
    assert close(total.stats.l2, global_l2, RTOL)
    assert total.stats.l1 == pytest.approx(math.fsum(rows[n].stats.l1 for n in covered), rel=RTOL)
    assert total.stats.linf == max(rows[n].stats.linf for n in covered)
    assert total.stats.numel == sum(model[n].size for n in covered)
    assert total.stats.total is None  # a complex tensor is covered: the model has no real mean


def test_integer_tensors_stay_out_of_the_total_by_default() -> None:
    floats = {"w": np.array([1.0, -2.0], dtype=np.float32)}
    ints = {"ids": np.array([10**6, -(10**6)], dtype=np.int32), "m": np.array([True, True])}
    alone = api_stats(floats).total.stats
    assert api_stats({**floats, **ints}).total.stats == alone
    with_ints = api_stats({**floats, **ints}, include_int=True).total.stats
    assert with_ints.numel == 6
    assert with_ints.l1 == 3.0 + 2e6 + 2
    assert with_ints.l2 == math.sqrt(5.0 + 2e12 + 2)
    assert with_ints.linf == 1e6
    assert with_ints.mean == (-1.0 + 0 + 2) / 6


COVERED_BY_DEFAULT = {n for n in DTYPES if n.startswith(("F", "BF", "C"))}


@MODEST
@given(data=st.data())
def test_whole_model_total_matches_reference(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(DTYPES), max_size=5), label="dtypes")
    include_int = data.draw(st.booleans(), label="include_int")
    model = {
        f"t{i}": data.draw(values_of(name, SHAPES), label=f"t{i}") for i, name in enumerate(names)
    }
    total = api_stats(model, include_int=include_int).total.stats
    covered = [
        reference(array)
        for name, array in zip(names, model.values(), strict=True)
        if include_int or name in COVERED_BY_DEFAULT
    ]
    assert_matches(total, combine(covered) if covered else _empty_reference())


def _empty_reference() -> Reference:
    return Reference(0, 0, 0, 0, 0.0, Fraction(0), Fraction(0), Fraction(0))
