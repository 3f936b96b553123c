"""The compiled kernels against the independent exact reference, and the rule for when they run."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import assert_matches, reference

from normcli import kernels, scan
from normcli.norms import reduce_chunk, reduce_pair

compiled = kernels.load()
pytestmark = pytest.mark.skipif(compiled is None, reason="numba is not installed")

DTYPES = [np.float32, np.float64, ml_dtypes.bfloat16, np.float16]


@st.composite
def finite_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    # up to several of the kernels' blocks (BLOCK_BYTES) for every dtype
    size = draw(st.integers(1, 10_000))
    if dtype is np.float64:
        # magnitudes within 1e±150: their squares must fit a float64 (the known limit, xfailed
        # in test_exactness for both paths)
        magnitudes = st.floats(1e-150, 1e150)
        elements = st.just(0.0) | magnitudes | magnitudes.map(lambda v: -v)
    else:
        elements = st.floats(-60000.0, 60000.0, allow_nan=False, allow_subnormal=True)
    values = draw(hnp.arrays(np.float64, size, elements=elements))
    return values.astype(dtype)


@settings(max_examples=150, deadline=None)
@given(finite_arrays())
def test_compiled_figures_match_the_exact_reference(values: np.ndarray) -> None:
    assert compiled is not None
    stats = compiled.reduce(values)
    assert stats is not None
    assert_matches(stats, reference(values), rtol=1e-12, what=str(values.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_chunk_with_non_finite_values_goes_back_to_numpy(dtype: type, bad: float) -> None:
    assert compiled is not None
    values = np.array([1.0, bad, 2.0]).astype(dtype)
    assert compiled.reduce(values) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_16_bit_pattern_and_the_edges_agree_with_numpy(dtype: type) -> None:
    assert compiled is not None
    if np.dtype(dtype).itemsize == 2:
        values = np.arange(1 << 16, dtype=np.uint16).view(dtype)
        values = values[np.isfinite(values.astype(np.float32))]
    elif dtype is np.float32:
        info = np.finfo(dtype)
        values = np.array(
            [0.0, -0.0, info.tiny, info.smallest_subnormal, -info.max / 4, 1.0, -1.0], dtype=dtype
        )
    else:
        values = np.array([0.0, -0.0, 1e-150, -1e150, 1.0, -1.0], dtype=dtype)
    stats = compiled.reduce(values)
    assert stats is not None
    assert_matches(stats, reference(values), rtol=1e-12, what=str(values.dtype))
    exact = reduce_chunk(values)
    assert (stats.linf, stats.zeros, stats.numel) == (exact.linf, exact.zeros, exact.numel)


def test_other_dtypes_and_strided_chunks_are_left_to_numpy() -> None:
    assert compiled is not None
    assert compiled.reduce(np.arange(10, dtype=np.int32)) is None
    assert compiled.reduce(np.ones(10, np.complex64)) is None
    assert compiled.reduce(np.ones(10, np.float32)[::2]) is None
    unaligned = np.frombuffer(np.ones(11, np.float32).tobytes(), np.float32, count=10, offset=1)
    assert not unaligned.flags.aligned and compiled.reduce(unaligned) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_largest_value_and_the_zeros_are_found_in_any_block(dtype: type) -> None:
    """Blocks are reduced one by one: the extremes must survive being in the last or a middle
    one, and a read-only chunk (a memory map's) is taken as it is."""
    assert compiled is not None
    from normcli.compiled import BLOCK_BYTES

    size = 3 * BLOCK_BYTES // np.dtype(dtype).itemsize + 5
    values = np.linspace(0.5, 1.0, size).astype(dtype)
    values[-1] = 7.0
    values[size // 2] = -0.0
    values[size // 3] = 0.0
    values.flags.writeable = False
    stats = compiled.reduce(values)
    assert stats is not None
    assert (stats.linf, stats.zeros) == (7.0, 2)
    assert_matches(stats, reference(values), rtol=1e-12, what=str(values.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_signed_zero_makes_a_pair_differ_though_its_values_are_equal(dtype: type) -> None:

    assert compiled is not None
    a = np.array([0.0, 1.0, 2.0], dtype=dtype)
    b = np.array([-0.0, 1.0, 2.0], dtype=dtype)
    for x, y, identical in ((a, b, False), (a, a.copy(), True), (b, b.copy(), True)):
        fast = compiled.reduce_pair(x, y)
        assert fast is not None
        assert fast.identical is identical is reduce_pair(x, y).identical
        assert (fast.diff.zeros, fast.a.zeros, fast.diff.linf) == (3, 1, 0.0)


def test_small_jobs_use_numpy_and_big_or_forced_ones_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NORMCLI_KERNELS", "auto")
    assert scan.choose_kernels(1 << 20)[0] is reduce_chunk
    big = scan.choose_kernels(scan.COMPILED_MIN_ELEMENTS)[0]
    assert big is not reduce_chunk
    values = np.array([1.5, -2.0], np.float32)
    assert big(values) == reduce_chunk(values)
    monkeypatch.setenv("NORMCLI_KERNELS", "numpy")
    assert scan.choose_kernels(1 << 40) == (reduce_chunk, reduce_pair, scan.CHUNK_ELEMENTS)
    monkeypatch.setenv("NORMCLI_KERNELS", "numba")
    forced, _, chunk_elements = scan.choose_kernels(0)
    assert forced is not reduce_chunk
    assert chunk_elements == scan.COMPILED_CHUNK_ELEMENTS > scan.CHUNK_ELEMENTS
    with_nan = np.array([1.0, np.nan, -3.0], np.float32)
    assert forced(with_nan) == reduce_chunk(with_nan)  # handed back to numpy, counted there


@st.composite
def aligned_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    a = draw(finite_arrays())
    kind = draw(st.sampled_from(["same", "nudged", "other dtype", "copy"]))
    if kind == "copy":
        return a, a.copy()
    b = (a.astype(np.float64) * draw(st.floats(0.25, 1.0))).astype(a.dtype)
    if kind == "other dtype" and a.dtype != np.float64:
        b = a.astype(draw(st.sampled_from([d for d in DTYPES if d is not np.float64])))
    return a, b


@settings(max_examples=120, deadline=None)
@given(aligned_pairs())
def test_compiled_pairs_match_the_numpy_path(pair: tuple[np.ndarray, np.ndarray]) -> None:

    assert compiled is not None
    a, b = pair
    fast, exact = compiled.reduce_pair(a, b), reduce_pair(a, b)
    if fast is None:  # declined: float64 squares (of B - A) out of float64's range
        assert np.dtype(np.float64) in (a.dtype, b.dtype)
        return
    assert fast.identical == exact.identical
    assert fast.diff.linf == exact.diff.linf and fast.diff.zeros == exact.diff.zeros
    for side in ("a", "b", "diff"):
        mine, theirs = getattr(fast, side), getattr(exact, side)
        assert (mine.numel, mine.zeros, mine.linf) == (theirs.numel, theirs.zeros, theirs.linf)
        for figure in ("l1", "sumsq", "total"):
            assert getattr(mine, figure) == pytest.approx(
                getattr(theirs, figure), rel=1e-12, abs=1e-300
            )
    scale = np.sqrt(fast.a.sumsq * fast.b.sumsq)
    assert fast.dot == pytest.approx(exact.dot, rel=1e-12, abs=1e-12 * scale)


def test_a_pair_with_a_nan_goes_back_to_numpy() -> None:
    assert compiled is not None
    a = np.array([1.0, 2.0], np.float32)
    assert compiled.reduce_pair(a, np.array([1.0, np.nan], np.float32)) is None


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int32])
def test_a_big_chunk_the_kernels_decline_goes_to_numpy_in_numpy_sized_parts(
    dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMCLI_KERNELS", "numba")
    reduce, pair, _ = scan.choose_kernels(0)
    values = np.linspace(-3, 5, 3 * scan.CHUNK_ELEMENTS + 5).astype(dtype)
    if dtype is not np.int32:
        values[7] = np.nan  # the kernels send the chunk back
    assert_matches(reduce(values), reference(values), rtol=1e-12, what=str(values.dtype))
    whole = reduce_pair(values, values[::-1].copy())
    parts = pair(values, values[::-1].copy())
    assert (parts.identical, parts.diff.zeros, parts.diff.nan) == (
        whole.identical,
        whole.diff.zeros,
        whole.diff.nan,
    )
    assert parts.dot == pytest.approx(whole.dot, rel=1e-12)
    assert parts.diff.sumsq == pytest.approx(whole.diff.sumsq, rel=1e-12)


def test_kernels_that_cannot_run_here_leave_the_work_to_numpy_without_a_word() -> None:
    """numba present but unable to compile (here: told not to), as on a machine without a
    compiler back end: the figures come from numpy, and nothing is printed."""
    import subprocess
    import sys
    from pathlib import Path

    sample = Path(__file__).parent.parent / "sample_checkpoints" / "base.safetensors"
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "NORMCLI_KERNELS": "numba"}
    done = subprocess.run(
        [sys.executable, "-m", "normcli", "inspect", str(sample), "-f", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["total"]["l2"] > 0


def test_no_sigbus_handler_means_no_maps_but_the_kernels_all_the_same() -> None:
    import subprocess
    import sys

    script = (
        "from normcli import sigbus\n"
        "def fails(): raise RuntimeError('no handler here')\n"
        "sigbus.install = fails\n"
        "from normcli import kernels\n"
        "from normcli.readers import files\n"
        "print(kernels.load() is not None, files._guard is None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout.split()) == (0, ["True", "True"]), done.stderr


def test_a_progress_that_can_tell_of_compiling_is_handed_to_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Bar:
        def start(self, total_bytes: int) -> None: ...

        def advance(self, done_bytes: int) -> None: ...

        def compiling(self) -> None: ...

    told: list[object] = []
    monkeypatch.setattr(kernels, "load", lambda compiling=None: told.append(compiling))
    monkeypatch.setenv("NORMCLI_KERNELS", "auto")
    bar = Bar()
    scan.choose_kernels(scan.COMPILED_MIN_ELEMENTS, bar)
    scan.choose_kernels(scan.COMPILED_MIN_ELEMENTS, None)
    scan.choose_kernels(scan.COMPILED_MIN_ELEMENTS - 1, bar)  # numpy's: nothing to load
    assert told == [bar.compiling, None]
