"""compare: name matching, statuses, exact update norms against a float64 math.fsum reference."""

from __future__ import annotations

import json
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import model_vectors, vector_figures
from safetensors.numpy import load_file, save_file

import normcli
from normcli.cli import cli

# every figure here is checked on the numpy path and on the compiled kernels
pytestmark = pytest.mark.usefixtures("both_kernels")

SAMPLES = Path(__file__).parent.parent / "sample_checkpoints"
SCALED = "model.layers.1.mlp.down_proj.weight"
POISONED = "model.layers.0.self_attn.v_proj.weight"
REMOVED = "model.layers.1.self_attn.k_proj.weight"
RESHAPED = "model.layers.0.mlp.up_proj.weight"
CAST = "model.embed_tokens.weight"
ADDED = "model.layers.2.extra.weight"
COMPARE_SCHEMA = json.loads((files("normcli") / "schemas" / "compare.v2.json").read_text("utf-8"))


def fsum_norms(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Independent reference: exact float64 values, correctly rounded sums, finite pairs only."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    keep = np.isfinite(a64) & np.isfinite(b64)
    d = [float(y) - float(x) for x, y in zip(a64[keep], b64[keep], strict=True)]
    fa = a64[np.isfinite(a64)]
    fb = b64[np.isfinite(b64)]
    l2a = math.sqrt(math.fsum(float(x) * float(x) for x in fa))
    l2b = math.sqrt(math.fsum(float(x) * float(x) for x in fb))
    return {
        "a_l2": l2a,
        "b_l2": l2b,
        "diff_l1": math.fsum(abs(v) for v in d),
        "diff_l2": math.sqrt(math.fsum(v * v for v in d)),
        "diff_linf": max((abs(v) for v in d), default=0.0),
        "dot": math.fsum(float(x) * float(y) for x, y in zip(a64[keep], b64[keep], strict=True)),
    }


@pytest.fixture(scope="module")
def edited_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The issue's scenario: one tensor scaled 50x, one NaN, one removed, one added, one
    reshaped and one cast to float16, against the base sample."""
    folder = tmp_path_factory.mktemp("pair")
    base = load_file(str(SAMPLES / "base.safetensors"))
    edited = dict(base)
    edited[SCALED] = base[SCALED] * np.float32(50)
    poisoned = base[POISONED].copy()
    poisoned[5, 5] = np.nan
    edited[POISONED] = poisoned
    del edited[REMOVED]
    edited[ADDED] = np.ones((4, 4), np.float32)
    edited[RESHAPED] = base[RESHAPED].reshape(48, 96)
    edited[CAST] = base[CAST].astype(np.float16)
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    save_file(base, str(a))
    save_file(edited, str(b))
    return a, b


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    return result.exit_code, result.stdout, result.stderr


def test_the_scaled_tensor_is_the_first_row_and_every_edit_is_visible(edited_pair):
    code, out, err = run("compare", *map(str, edited_pair))
    assert code == 0, err
    rows = [
        line for line in out.splitlines() if line.startswith("model.") or line.startswith("lm_head")
    ]
    assert rows[0].startswith(SCALED)
    by_name = {r.split()[0]: r for r in rows}
    assert "removed" in by_name[REMOVED]
    assert "added" in by_name[ADDED]
    assert "shape changed [96, 48]→[48, 96]" in by_name[RESHAPED]
    assert "F32→F16" in by_name[CAST]
    assert "0/1" in by_name[POISONED]  # NaN count A/B
    assert f"non-finite values in: {POISONED}" in out
    assert "1 added, 1 removed, 1 shape changed, 1 dtype changed" in out


def test_json_figures_are_exact(edited_pair):
    a_path, b_path = edited_pair
    code, out, err = run("compare", str(a_path), str(b_path), "-f", "json")
    assert code == 0, err
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
    jsonschema.validate(doc, COMPARE_SCHEMA)
    rows = {t["name"]: t for t in doc["tensors"]}
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert doc["summary"] == {
        "changed": 3,
        "unchanged": 15,
        "added": 1,
        "removed": 1,
        "shape_changed": 1,
        "dtype_changed": 1,
    }
    assert rows["lm_head.weight"]["status"] == "unchanged"
    for name in (SCALED, POISONED, CAST):
        ref = fsum_norms(a[name], b[name])
        row = rows[name]
        assert row["status"] == "changed"
        assert row["diff"]["l1"] == pytest.approx(ref["diff_l1"], rel=1e-10)
        assert row["diff"]["l2"] == pytest.approx(ref["diff_l2"], rel=1e-10)
        assert row["diff"]["linf"] == pytest.approx(ref["diff_linf"], rel=1e-12)
        assert row["rel_l2"] == pytest.approx(ref["diff_l2"] / ref["a_l2"], rel=1e-10)
        assert row["ratio_l2"] == pytest.approx(ref["b_l2"] / ref["a_l2"], rel=1e-10)
        assert row["cosine"] == pytest.approx(ref["dot"] / (ref["a_l2"] * ref["b_l2"]), rel=1e-10)
    assert rows[SCALED]["ratio_l2"] == pytest.approx(50, rel=1e-6)
    assert rows[POISONED]["b"]["nan"] == 1 and rows[POISONED]["a"]["nan"] == 0
    assert rows[CAST]["dtype_changed"] and rows[CAST]["b"]["dtype"] == "F16"
    assert rows[REMOVED]["b"] is None and rows[REMOVED]["diff"] is None
    assert rows[ADDED]["a"] is None and rows[ADDED]["b"]["l2"] == 4.0
    assert rows[RESHAPED]["diff"] is None and rows[RESHAPED]["b"]["shape"] == [48, 96]
    assert doc["nonfinite_tensors"] == [POISONED]
    # the whole-model update covers every tensor, one missing on a side counting as zeros
    floating = [{k: v for k, v in side.items() if v.dtype.kind == "f"} for side in (a, b)]
    ref = vector_figures(*model_vectors(*floating))
    assert doc["total"]["diff"]["l2"] == pytest.approx(ref["diff_l2"], rel=1e-12)
    assert doc["total"]["rel_l2"] == pytest.approx(ref["rel"], rel=1e-12)
    assert doc["total"]["covers"] == {"matched": 17, "added": 1, "removed": 1, "reshaped": 1}


def test_a_checkpoint_against_itself_is_unchanged_with_cosine_one():
    path = str(SAMPLES / "base.safetensors")
    result = normcli.compare(path, path)
    assert result.summary["unchanged"] == len(result.tensors) == 20
    for row in result.tensors:
        assert row.pair is not None and row.pair.diff.l2 == 0.0 and row.pair.diff.linf == 0.0
        if row.covered:
            assert row.cosine == 1.0 and row.rel_l2 == 0.0
    assert result.total.cosine == 1.0 and result.total.rel_l2 == 0.0


def test_npz_against_safetensors_matches_and_bf16_is_a_dtype_change():
    same = normcli.compare(SAMPLES / "base.safetensors", SAMPLES / "base.npz")
    assert same.summary["unchanged"] == 20 and same.summary["dtype_changed"] == 0
    cast = normcli.compare(SAMPLES / "base.safetensors", SAMPLES / "base-bf16.safetensors")
    assert cast.summary["dtype_changed"] == 19  # every float tensor; the int64 one is untouched
    assert 0 < cast.total.rel_l2 < 0.004  # bfloat16 keeps 8 significant bits


def test_strip_prefix_and_rename_match_renamed_keys(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_file({"module.encoder.w": w, "module.head.bias": w[0]}, str(tmp_path / "ddp.safetensors"))
    save_file({"encoder.w": w, "classifier.bias": w[0]}, str(tmp_path / "plain.safetensors"))
    result = normcli.compare(
        tmp_path / "ddp.safetensors",
        tmp_path / "plain.safetensors",
        strip_prefix=["module."],
        rename=[r"^head\.=classifier."],
    )
    assert result.summary["unchanged"] == 2
    assert {r.a.name for r in result.tensors if r.a} == {"module.encoder.w", "module.head.bias"}


def test_names_colliding_after_rename_are_a_usage_error(tmp_path):
    save_file(
        {"a.w": np.zeros(2, np.float32), "b.w": np.zeros(2, np.float32)},
        str(tmp_path / "x.safetensors"),
    )
    code, out, err = run(
        "compare",
        str(tmp_path / "x.safetensors"),
        str(tmp_path / "x.safetensors"),
        "--rename",
        r"^\w\.=",
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "both become 'w'" in err


def test_against_a_saved_report_uses_stored_norms(tmp_path):
    report = tmp_path / "base.json"
    code, _, err = run(
        "inspect", str(SAMPLES / "base.safetensors"), "-f", "json", "-o", str(report)
    )
    assert code == 0, err
    result = normcli.compare(report, SAMPLES / "blowup.safetensors")
    assert result.a.format == "report"
    scaled = next(r for r in result.tensors if r.name == SCALED)
    assert scaled.pair is None and scaled.rel_l2 is None and scaled.cosine is None
    assert scaled.ratio_l2 == pytest.approx(50, rel=1e-3)
    assert result.tensors[0].name == SCALED or result.summary["changed"] == 19
    same = normcli.compare(report, SAMPLES / "base.safetensors")
    assert same.summary["unchanged"] == 20


@pytest.mark.parametrize("include_int", [False, True])
def test_a_report_saved_with_include_int_keeps_integers_to_their_scope(tmp_path, include_int):
    # a report saved with --include-int marks every tensor in_total; the totals of a compare
    # against it still leave the integer tensors out unless this compare includes them
    report = tmp_path / "base-all.json"
    run(
        "inspect",
        str(SAMPLES / "base.safetensors"),
        "--include-int",
        "-f",
        "json",
        "-o",
        str(report),
    )
    arrays = load_file(str(SAMPLES / "base.safetensors"))
    counted = [a for a in arrays.values() if include_int or a.dtype.kind == "f"]
    assert len(counted) < len(arrays) or include_int
    expected = math.sqrt(math.fsum(float(x) ** 2 for a in counted for x in a.ravel()))
    result = normcli.compare(report, SAMPLES / "base.safetensors", include_int=include_int)
    assert result.total.a_l2 == pytest.approx(expected, rel=1e-12)
    assert result.total.b_l2 == pytest.approx(expected, rel=1e-12)


def test_sort_by_cosine_puts_the_least_similar_first_even_orthogonal(tmp_path):
    a = {"same": np.ones(4, np.float32), "turned": np.float32([1, 0, 0, 0])}
    a["bent"] = np.float32([1, 1, 0, 0])
    b = {"same": a["same"], "turned": np.float32([0, 1, 0, 0]), "bent": np.float32([1, 0, 0, 0])}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    result = normcli.compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors", sort="cosine")
    assert [(r.name, r.cosine) for r in result.tensors] == [
        ("turned", 0.0),
        ("bent", pytest.approx(math.sqrt(0.5), rel=1e-12)),
        ("same", 1.0),
    ]


def test_a_partial_report_is_refused(tmp_path):
    report = tmp_path / "top.json"
    run("inspect", str(SAMPLES / "base.safetensors"), "-f", "json", "--top", "3", "-o", str(report))
    code, _, err = run("compare", str(report), str(SAMPLES / "base.safetensors"))
    assert code == 2 and "lists only 3 of 20 tensors" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "bad", [["--sort", "bogus"], ["--top", "0"], ["--rename", "noequals"], ["--rename", "(=x"]]
)
def test_bad_options_exit_2_with_one_line(bad):
    path = str(SAMPLES / "base.safetensors")
    code, out, err = run("compare", path, path, *bad)
    assert code == 2 and out == "" and err.startswith("normcli: error:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_group_by_aggregates_updates():
    result = normcli.compare(
        SAMPLES / "base.safetensors", SAMPLES / "blowup.safetensors", group_by=3
    )
    assert result.groups is not None
    assert result.groups[0].name == "model.layers.1"  # holds the scaled tensor
    members = [r for r in result.tensors if r.name.startswith("model.layers.1.")]
    expected = math.sqrt(math.fsum(r.pair.diff.sumsq for r in members))
    assert result.groups[0].pair.diff.l2 == pytest.approx(expected, rel=1e-12)
    jsonschema.validate(result.to_dict(), COMPARE_SCHEMA)


finite_floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.integers(0, 300), chunk=st.sampled_from([1, 3, 64, 1 << 20]))
def test_pair_figures_match_the_reference_for_any_chunking(data, size, chunk, tmp_path_factory):
    from normcli.readers import open_checkpoint
    from normcli.scan import scan_pair

    a = data.draw(hnp.arrays(np.float32, size, elements=finite_floats))
    b = data.draw(
        hnp.arrays(
            np.float32,
            size,
            elements=finite_floats | st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]),
        )
    )
    folder = tmp_path_factory.mktemp("prop")
    save_file({"t": a}, str(folder / "a.safetensors"))
    save_file({"t": b}, str(folder / "b.safetensors"))
    with (
        open_checkpoint(folder / "a.safetensors") as ca,
        open_checkpoint(folder / "b.safetensors") as cb,
    ):
        pair = scan_pair(ca.tensors[0], cb.tensors[0], chunk_elements=chunk)
    ref = fsum_norms(a, b)
    assert pair.diff.l1 == pytest.approx(ref["diff_l1"], rel=1e-12, abs=1e-300)
    assert pair.diff.l2 == pytest.approx(ref["diff_l2"], rel=1e-12, abs=1e-300)
    assert pair.diff.linf == ref["diff_linf"]
    assert pair.dot == pytest.approx(ref["dot"], rel=1e-9, abs=1e-6 * ref["a_l2"] * ref["b_l2"])
    assert pair.b.nan == int(np.isnan(b).sum())
    assert pair.identical == (a.tobytes() == b.tobytes())


def test_against_a_report_the_largest_ratio_comes_first_and_new_nan_is_seen(tmp_path):
    report = tmp_path / "base.json"
    run("inspect", str(SAMPLES / "base.safetensors"), "-f", "json", "-o", str(report))
    by_ratio = normcli.compare(report, SAMPLES / "blowup.safetensors")
    assert by_ratio.tensors[0].name == SCALED
    assert by_ratio.a.path == str(report)
    # finetuned -> blowup: the NaN moved no norm, yet comes right after the scaled tensor
    nan_seen = normcli.compare(SAMPLES / "finetuned.safetensors", SAMPLES / "blowup.safetensors")
    assert [r.name for r in nan_seen.tensors[:2]] == [SCALED, POISONED]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: normcli.compare(
                SAMPLES / "base.safetensors", SAMPLES / "blowup.safetensors", top=0
            ),
            "--top must be at least 1",
        ),
        (
            lambda: normcli.compare(
                SAMPLES / "base.safetensors", SAMPLES / "blowup.safetensors", top=-1
            ),
            "--top must be at least 1",
        ),
        (
            lambda: normcli.compare(
                SAMPLES / "base.safetensors", SAMPLES / "blowup.safetensors", group_by=0
            ),
            "--group-by must be at least 1",
        ),
        (
            lambda: normcli.trend(
                [SAMPLES / "base.safetensors", SAMPLES / "blowup.safetensors"], group_by=-1
            ),
            "--group-by must be at least 0",
        ),
        (
            lambda: normcli.inspect(SAMPLES / "base.safetensors", threads=0),
            "--threads must be at least 1",
        ),
        (
            lambda: normcli.check(SAMPLES / "base.safetensors", threads=-2),
            "--threads must be at least 1",
        ),
    ],
)
def test_the_library_refuses_the_options_the_command_line_refuses(call: Any, message: str) -> None:
    # a --top of -1 would silently drop the last row, a --group-by of 0 group by all but the last
    # name part: the library says so as inspect does, rather than returning a clipped result
    with pytest.raises(normcli.NormcliError, match=message):
        call()


@pytest.mark.parametrize("sort", ["rel", "diff", "cosine"])
def test_sorting_by_a_figure_of_the_update_against_a_saved_report_is_refused(tmp_path, sort):
    report = tmp_path / "base.json"
    run("inspect", str(SAMPLES / "base.safetensors"), "-f", "json", "-o", str(report))
    for a, b in (
        (report, SAMPLES / "blowup.safetensors"),
        (SAMPLES / "blowup.safetensors", report),
    ):
        code, out, err = run("compare", str(a), str(b), "--sort", sort)
        assert code == 2 and out == "" and len(err.splitlines()) == 1
        assert f"--sort {sort} needs the values" in err and str(report) in err
    code, out, _ = run("compare", str(report), str(SAMPLES / "blowup.safetensors"), "--sort", "l2")
    assert code == 0 and out.index(SCALED) < out.index(CAST)
