"""Cosine, relative update and ratio at float64's extremes (1e-320 to 1e308), against an exact
rational reference: products and squares there leave the float64 range."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save_file

import normcli
from normcli.readers import open_checkpoint
from normcli.scan import scan_pair


def root(q: Fraction) -> float:
    """√q rounded to float64, for q far outside its range (inf past it)."""
    k = (q.numerator.bit_length() - q.denominator.bit_length()) // 2
    try:
        return math.ldexp(math.sqrt(float(q / Fraction(4) ** k)), k)
    except OverflowError:
        return math.inf


def exact_figures(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """cosine, ‖B−A‖₂/‖A‖₂ and ‖B‖₂/‖A‖₂ computed with fractions, rounded once at the end."""
    fa, fb = [Fraction(float(x)) for x in a], [Fraction(float(y)) for y in b]
    aa, bb = sum(x * x for x in fa), sum(y * y for y in fb)
    dot = sum(x * y for x, y in zip(fa, fb, strict=True))
    dd = sum((y - x) ** 2 for x, y in zip(fa, fb, strict=True))
    return {
        "cosine": math.copysign(root(dot * dot / (aa * bb)), 1 if dot >= 0 else -1),
        "rel": root(dd / aa),
        "ratio": root(bb / aa),
    }


def scanned(tmp_path, a: np.ndarray, b: np.ndarray, chunk: int):
    save_file({"t": a}, str(tmp_path / "a.safetensors"))
    save_file({"t": b}, str(tmp_path / "b.safetensors"))
    with (
        open_checkpoint(tmp_path / "a.safetensors") as ca,
        open_checkpoint(tmp_path / "b.safetensors") as cb,
    ):
        return scan_pair(ca.tensors[0], cb.tensors[0], chunk_elements=chunk)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1e200, -1e200], [2e200, -1e200]),  # the dot product overflows
        ([1e-300, 3e-300], [2e-300, -1e-300]),  # squares underflow
        ([5e-320, 1e-321], [1e-321, 4e-320]),  # subnormal
        ([1.5e308, -1e308], [-1.5e308, 1.7e308]),  # B−A overflows, so do the norms
        ([1e300, 1e-300], [1e300, 3e-300]),  # one chunk each: different scales merge
    ],
)
def test_figures_are_exact_at_the_extremes(tmp_path, a, b):
    a64, b64 = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    ref = exact_figures(a64, b64)
    for chunk in (1, 2):
        pair = scanned(tmp_path, a64, b64, chunk)
        assert pair.cosine == pytest.approx(ref["cosine"], rel=1e-12)
        assert pair.rel_l2 == pytest.approx(ref["rel"], rel=1e-12)
        assert pair.ratio_l2 == pytest.approx(ref["ratio"], rel=1e-12)
        assert pair.diff.inf == 0


def test_the_whole_model_cosine_of_huge_values_is_not_one_and_min_cosine_fails(tmp_path):
    save_file({"big": np.array([1e200, -1e200])}, str(tmp_path / "a.safetensors"))
    save_file({"big": np.array([2e200, -1e200])}, str(tmp_path / "b.safetensors"))
    result = normcli.compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert result.total.cosine == pytest.approx(3 / math.sqrt(10), rel=1e-12)
    assert result.tensors[0].cosine == pytest.approx(3 / math.sqrt(10), rel=1e-12)
    gate = normcli.check(
        tmp_path / "b.safetensors", baseline=tmp_path / "a.safetensors", min_cosine=0.99
    )
    assert not gate.passed


extreme = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [5e-324, -1e-310, 1e-300, 1e300, -1.7e308]
)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 12), chunk=st.sampled_from([1, 2, 5, 64]))
def test_any_finite_values_give_the_exact_figures(data, size, chunk, tmp_path_factory):
    a = data.draw(hnp.arrays(np.float64, size, elements=extreme))
    b = data.draw(hnp.arrays(np.float64, size, elements=extreme))
    assume(np.any(a) and np.any(b))
    ref = exact_figures(a, b)
    pair = scanned(tmp_path_factory.mktemp("x"), a, b, chunk)
    assert pair.cosine is not None
    # the float64 inner product is exact to a few ulps of ‖A‖₂‖B‖₂, not of itself
    assert pair.cosine == pytest.approx(ref["cosine"], abs=1e-12)
    assert pair.rel_l2 == pytest.approx(ref["rel"], rel=1e-12)
    assert pair.ratio_l2 == pytest.approx(ref["ratio"], rel=1e-12)
