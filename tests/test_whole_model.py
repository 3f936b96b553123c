"""The model is the vector of all its selected tensors, one missing on a side counting as zeros
there: compare, check and trend against an independent float64 / math.fsum reference."""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import Run, validate_json
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import model_vectors, vector_figures
from safetensors.numpy import save_file

import normcli
from normcli.norms import TensorStats, l2_ratio, reduce_chunk, reduce_pair
from normcli.update import model_update, one_sided

RNG = np.random.default_rng(16)


def weights(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


A_STATE = {
    "model.w0": weights(8, 8),
    "model.w1": weights(4, 16),
    "model.gone": weights(5),
    "model.bias": weights(8),
    "step": np.array([7], np.int64),  # outside the floating-point model
}
B_STATE = {
    "model.w0": (A_STATE["model.w0"] + weights(8, 8, scale=0.01)).astype(np.float32),
    "model.w1": weights(16, 4),  # reshaped
    "model.bias": A_STATE["model.bias"],
    "step": np.array([8], np.int64),
    **{f"new.{i}": weights(8, 8, scale=2.0) for i in range(40)},
}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """B = A with one tensor nudged, one reshaped, one removed and 40 large new ones."""
    folder = tmp_path_factory.mktemp("grown")
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    save_file(A_STATE, str(a))
    save_file(B_STATE, str(b))
    return a, b


def floating(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if v.dtype.kind == "f"}


def test_every_figure_of_the_whole_model_covers_every_tensor(grown: tuple[Path, Path]) -> None:
    result = normcli.compare(*grown)
    ref = vector_figures(*model_vectors(floating(A_STATE), floating(B_STATE)))
    total = result.total
    assert total.pair is not None
    assert total.a.l2 == pytest.approx(ref["a_l2"], rel=1e-12)
    assert total.b.l2 == pytest.approx(ref["b_l2"], rel=1e-12)
    assert total.pair.diff.l2 == pytest.approx(ref["diff_l2"], rel=1e-12)
    assert total.pair.diff.l1 == pytest.approx(ref["diff_l1"], rel=1e-12)
    assert total.pair.diff.linf == pytest.approx(ref["diff_linf"], rel=1e-12)
    assert total.rel_l2 == pytest.approx(ref["rel"], rel=1e-12)
    assert total.ratio_l2 == pytest.approx(ref["ratio"], rel=1e-12)
    assert total.cosine == pytest.approx(ref["cosine"], rel=1e-10)
    # the relative update on the line is the quotient of the two figures beside it
    assert total.rel_l2 == pytest.approx(total.pair.diff.l2 / total.a.l2, rel=1e-15)
    assert (total.matched, total.added, total.removed, total.reshaped) == (2, 40, 1, 1)


def test_json_says_which_tensors_the_totals_cover(grown: tuple[Path, Path], run: Run) -> None:
    doc = json.loads(run("compare", *grown, "-f", "json", "--group-by", "1").stdout)
    validate_json(doc, "compare.v2")
    assert doc["total"]["covers"] == {"matched": 2, "added": 40, "removed": 1, "reshaped": 1}
    assert doc["total"]["not_computed"] == []
    groups = {g["name"]: g for g in doc["groups"]}
    new = {k: v for k, v in B_STATE.items() if k.startswith("new.")}
    ref = vector_figures(*model_vectors({}, new))
    assert groups["new"]["diff"]["l2"] == pytest.approx(ref["diff_l2"], rel=1e-12)
    assert groups["new"]["rel_l2"] is None  # infinite: from nothing to something
    assert groups["new"]["covers"]["added"] == 40


def test_the_gate_fails_a_model_that_is_mostly_new(grown: tuple[Path, Path], run: Run) -> None:
    a, b = grown
    result = run(
        "check",
        b,
        "--baseline",
        a,
        "--max-rel-update",
        "0.5",
        "--min-cosine",
        "0.9",
        "-f",
        "json",
        code=1,
    )
    doc = json.loads(result.stdout)
    ref = vector_figures(*model_vectors(floating(A_STATE), floating(B_STATE)))
    model = {v["rule"]: v["value"] for v in doc["violations"] if v["tensor"] is None}
    assert model["max-rel-update"] == pytest.approx(ref["rel"], rel=1e-12)
    assert model["min-cosine"] == pytest.approx(ref["cosine"], rel=1e-10)


def test_against_a_saved_report_the_update_is_not_computed_over_a_subset(
    grown: tuple[Path, Path], run: Run, tmp_path: Path
) -> None:
    a, b = grown
    report = tmp_path / "a.json"
    run("inspect", a, "-f", "json", "-o", report)
    result = run("compare", report, b)
    assert "cannot be computed against a saved report" in result.stdout
    doc = json.loads(run("compare", report, b, "-f", "json").stdout)
    validate_json(doc, "compare.v2")
    total = doc["total"]
    assert total["diff"] is None and total["rel_l2"] is None and total["cosine"] is None
    assert total["not_computed"] == ["diff", "rel_l2", "cosine"]
    # what a report does hold still covers every tensor
    ref = vector_figures(*model_vectors(floating(A_STATE), floating(B_STATE)))
    assert total["ratio_l2"] == pytest.approx(ref["ratio"], rel=1e-12)


def test_one_ratio_for_every_figure_with_a_zero_baseline() -> None:
    zero, some = TensorStats(numel=3), TensorStats(numel=3, l1=3.0, sumsq=9.0, linf=3.0)
    assert l2_ratio(some, zero) == math.inf
    assert l2_ratio(zero, zero) is None
    assert l2_ratio(some, some) == 1.0


def test_a_tensor_from_zeros_to_values_breaks_every_update_limit(tmp_path: Path, run: Run) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": np.zeros(4, np.float32)}, str(a))
    save_file({"w": np.ones(4, np.float32)}, str(b))
    compared = normcli.compare(a, b)
    assert compared.total.rel_l2 == compared.tensors[0].rel_l2 == math.inf
    assert compared.total.ratio_l2 == compared.tensors[0].ratio_l2 == math.inf
    limits = ("--max-rel-update", "9", "--max-tensor-rel-update", "9", "--max-l2-ratio", "9")
    result = run("check", b, "--baseline", a, *limits, "-f", "json", code=1)
    rules = sorted(v["rule"] for v in json.loads(result.stdout)["violations"])
    assert rules == ["max-l2-ratio", "max-rel-update", "max-tensor-rel-update"]


# --- statuses ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A float32 checkpoint whose values all fit float16, and its float16 copy."""
    folder = tmp_path_factory.mktemp("half")
    values = {f"w{i}": np.arange(-8, 8, dtype=np.float32) / 4 for i in range(3)}
    a, b = folder / "f32.safetensors", folder / "f16.safetensors"
    save_file(values, str(a))
    save_file({k: v.astype(np.float16) for k, v in values.items()}, str(b))
    return a, b


def test_a_dtype_change_is_never_unchanged(
    half_copy: tuple[Path, Path], run: Run, tmp_path: Path
) -> None:
    result = normcli.compare(*half_copy)
    assert [t.status for t in result.tensors] == ["changed"] * 3
    assert all(t.dtype_changed and t.rel_l2 == 0.0 for t in result.tensors)
    assert result.summary["unchanged"] == 0 and result.summary["dtype_changed"] == 3
    # the table shows it even on a terminal too narrow for the dtype column
    narrow = run("compare", *half_copy, env={"COLUMNS": "60"}).stdout
    assert narrow.count("changed F32→F16") == 3
    assert run("compare", *half_copy, "-f", "md").stdout.count("changed F32→F16") == 3
    page = tmp_path / "plot.html"
    run("compare", *half_copy, "--plot", page)
    assert page.read_text("utf-8").count("changed F32→F16") == 3


def test_require_same_tensors_fails_on_a_dtype_change(
    half_copy: tuple[Path, Path], run: Run
) -> None:
    a, b = half_copy
    result = run("check", b, "--baseline", a, "--require-same-tensors", "-f", "json", code=1)
    violations = json.loads(result.stdout)["violations"]
    assert [(v["code"], v["tensor"]) for v in violations] == [("N015", f"w{i}") for i in range(3)]
    assert all("F32 → F16" in v["message"] for v in violations)
    run("check", a, "--baseline", a, "--require-same-tensors")


# --- trend ---------------------------------------------------------------------------------------


def _run_with_changing_tensors() -> list[dict[str, np.ndarray]]:
    first = {"a.w": weights(4, 4), "a.b": weights(4)}
    second = {
        "a.w": first["a.w"] * np.float32(1.1),
        "a.b": first["a.b"],
        "c.new": weights(8, scale=5),
    }
    third = {"a.w": weights(2, 8), "c.new": second["c.new"] + weights(8, scale=0.1)}
    return [first, second, third]


CHANGING = _run_with_changing_tensors()


@pytest.fixture(scope="module")
def changing_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("changing")
    for step, state in zip((100, 200, 300), CHANGING, strict=True):
        save_file(state, str(folder / f"step-{step}.safetensors"))
    return folder


def test_trend_updates_cover_every_tensor_and_say_when_the_set_changed(
    changing_run: Path, run: Run
) -> None:
    states = CHANGING
    doc = json.loads(run("trend", changing_run, "--group-by", "1", "-f", "json").stdout)
    validate_json(doc, "trend.v2")
    sets = [p["tensor_set"] for p in doc["checkpoints"]]
    assert sets == [
        None,
        {"added": 1, "removed": 0, "reshaped": 0},
        {"added": 0, "removed": 1, "reshaped": 1},
    ]
    rows = {r["name"]: r for r in doc["rows"]}
    for name, pick in (("total", lambda k: True), ("a", lambda k: k.startswith("a."))):
        row = doc["total"] if name == "total" else rows[name]
        for t in (1, 2):
            before = {k: v for k, v in states[t - 1].items() if pick(k)}
            after = {k: v for k, v in states[t].items() if pick(k)}
            ref = vector_figures(*model_vectors(before, after))
            assert row["update_l2"][t] == pytest.approx(ref["diff_l2"], rel=1e-12), (name, t)
            assert row["rel_update"][t] == pytest.approx(ref["rel"], rel=1e-12), (name, t)
    assert doc["total"]["present"] == [2, 3, 2] and rows["a"]["present"] == [2, 2, 1]
    # a tensor row keeps the per-tensor meaning: no update where it appeared
    single = json.loads(run("trend", changing_run, "--group-by", "0", "-f", "json").stdout)
    new = next(r for r in single["rows"] if r["name"] == "c.new")
    assert new["update_l2"][1] is None and new["update_l2"][2] is not None
    text = run("trend", changing_run, "--group-by", "1").stdout
    assert "tensor set changed at 200: 1 added" in text
    assert "tensor set changed at 300: 1 removed, 1 reshaped" in text
    whole = next(line for line in text.splitlines() if line.startswith("whole model"))
    assert "200 (×" in whole and "tensors changed" in whole


def test_trend_orders_a_name_before_the_same_name_continued(tmp_path: Path) -> None:
    from normcli.trends import expand_inputs

    for name in ("x-step.safetensors", "x.safetensors", "x-step/model.safetensors"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        save_file({"w": np.ones(2, np.float32)}, str(tmp_path / name))
    ordered = expand_inputs(
        [str(tmp_path / "x.safetensors"), str(tmp_path / "x-step.safetensors")], "name"
    )
    assert [Path(p).name for p in ordered] == ["x.safetensors", "x-step.safetensors"]
    nested = expand_inputs(
        [str(tmp_path / "x-step" / "model.safetensors"), str(tmp_path / "x.safetensors")], "name"
    )
    assert [Path(p).name for p in nested] == ["x.safetensors", "model.safetensors"]


# --- check: the same selection as inspect and compare --------------------------------------------


@pytest.fixture(scope="module")
def training_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Weights and their optimizer state: 30 moment tensors that hold NaN and grew 10x."""
    folder = tmp_path_factory.mktemp("training")
    weights_only = {f"model.w{i}": np.full(4, 1.0, np.float32) for i in range(3)}
    moments = {f"optimizer.m{i}": np.array([np.nan, 1, 2, 3], np.float32) for i in range(30)}
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    save_file({**weights_only, **moments}, str(a))
    save_file({**weights_only, **{k: v * 10 for k, v in moments.items()}}, str(b))
    return a, b


def test_check_leaves_out_what_the_selection_leaves_out(
    training_state: tuple[Path, Path], run: Run
) -> None:
    a, b = training_state
    failed = run("check", b, code=1)
    assert "… and 10 more violations" in failed.stdout
    assert sum(line.startswith("N001") for line in failed.stdout.splitlines()) == 20 + 1
    every = json.loads(run("check", b, "-f", "json", code=1).stdout)
    assert len(every["violations"]) == 30  # the table shows 20, the JSON every one
    passed = run("check", b, "--exclude", "optimizer.*", "-f", "json")
    doc = json.loads(passed.stdout)
    validate_json(doc, "check.v1")
    assert doc["checked"]["tensors"] == 3 and doc["checked"]["available"] == 33
    assert "3 of 33 tensors selected" in passed.stderr
    drift = ("--baseline", a, "--max-tensor-l2-ratio", "2", "--allow-nonfinite")
    run("check", b, *drift, code=1)
    run("check", b, *drift, "--filter", "model.*")
    # a whole-model rule over a selection says so
    table = run("check", b, "--filter", "model.*", "--max-l2", "0.1", code=1).stdout
    assert "(selected tensors)" in table and "selected tensors' L2" in table
    assert "(whole model)" in run("check", b, "--max-l2", "0.1", "--allow-nonfinite", code=1).stdout
    # every output of the finding names the selection in the same words
    github = run("check", b, "--filter", "model.*", "--max-l2", "0.1", "-f", "github", code=1)
    error = next(line for line in github.stdout.splitlines() if line.startswith("::error"))
    assert error.split("::")[2].startswith("(selected tensors): selected tensors' L2")
    md = run("check", b, "--filter", "model.*", "--max-l2", "0.1", "-f", "md", code=1).stdout
    assert "`(selected tensors)`" in md
    # renames apply to both sides before the selection, as in compare
    renamed = ("--rename", "^optimizer=opt", "--exclude", "opt.*")
    run("check", b, *drift, *renamed)
    alone = run("check", b, "--rename", "^optimizer=opt", code=2)
    assert "give --baseline" in alone.stderr and len(alone.stderr.splitlines()) == 1


# --- honest labels -------------------------------------------------------------------------------


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_marks_the_whole_model_row_and_labels_a_selection(
    grown: tuple[Path, Path], run: Run
) -> None:
    a, b = grown
    inspected = json.loads(run("inspect", b, "-f", "json", "--filter", "new.*").stdout)
    rows = _csv(run("inspect", b, "-f", "csv", "--filter", "new.*").stdout)
    assert [r["row"] for r in rows] == ["tensor"] * 40 + ["total"]
    total = rows[-1]
    assert total["name"] == "Selected (40 of 44 tensors)"
    assert float(total["l2"]) == inspected["total"]["l2"]
    assert float(total["l1"]) == inspected["total"]["l1"]
    grouped = _csv(run("compare", a, b, "-f", "csv", "--group-by", "1").stdout)
    assert [r["row"] for r in grouped] == ["group", "group", "total"]
    ref = vector_figures(*model_vectors(floating(A_STATE), floating(B_STATE)))
    assert grouped[-1]["name"] == "Whole model"
    assert float(grouped[-1]["diff_l2"]) == pytest.approx(ref["diff_l2"], rel=1e-12)
    assert float(grouped[-1]["rel_l2"]) == pytest.approx(ref["rel"], rel=1e-12)
    compared = _csv(run("compare", a, b, "-f", "csv", "--filter", "model.*").stdout)
    assert compared[-1]["row"] == "total"
    assert compared[-1]["name"] == "Selected (4 of 45 tensors)"


def test_tables_say_when_the_totals_cover_a_selection(grown: tuple[Path, Path], run: Run) -> None:
    a, b = grown
    assert (
        "Selected (40 of 44 tensors): 40 floating-point"
        in run("inspect", b, "--filter", "new.*").stdout
    )
    compared = run("compare", a, b, "--exclude", "new.*").stdout
    assert "Selected (5 of 45 tensors, floating-point):" in compared
    assert "Whole model" not in compared
    assert "Whole model (floating-point tensors):" in run("compare", a, b).stdout
    assert "Whole model (all tensors):" in run("compare", a, b, "--include-int").stdout
    included = run("compare", a, b, "--exclude", "new.*", "--include-int").stdout
    assert "Selected (5 of 45 tensors, integer ones included):" in included
    md = run("compare", a, b, "-f", "md", "--filter", "model.*").stdout
    assert "**Selected (4 of 45 tensors)**" in md
    followed = run("trend", a, b, "--filter", "model.*").stdout
    assert "selected (4 of 45 tensors)" in followed and "whole model" not in followed
    assert "whole model" in run("trend", a, b).stdout


def test_narrow_tables_shorten_names_from_the_left(run: Run, tmp_path: Path) -> None:
    paths = [tmp_path / "step-1.safetensors", tmp_path / "step-2.safetensors"]
    names = [f"model.encoder.layers.{i}.attention.output.dense.weight" for i in (3, 7)]
    for path in paths:
        save_file({n: np.ones(4, np.float32) for n in names}, str(path))
    commands = (("inspect", paths[0]), ("compare", *paths), ("trend", *paths, "--group-by", "0"))
    for command in commands:
        out = run(*command, env={"COLUMNS": "60"}).stdout
        cut = [line.split()[0] for line in out.splitlines() if line.startswith("…")]
        # one line per tensor, each the tail of its name: nothing wrapped onto a second line
        assert len(cut) == 2, (command, out)
        assert all(any(n.endswith(c[1:]) for n in names) for c in cut), (command, out)
        assert not any(line.startswith(("weight", "dense")) for line in out.splitlines())
    wider = run("compare", *paths, env={"COLUMNS": "90"}).stdout
    assert "…ncoder.layers.3.attention.output.dense.weight" in wider


# --- the Python API ------------------------------------------------------------------------------


def test_the_api_checks_and_follows_a_run_like_the_command_line(
    grown: tuple[Path, Path], changing_run: Path, run: Run
) -> None:
    a, b = grown
    for name in ("check", "trend", "CheckResult", "TrendResult", "compare", "inspect"):
        assert name in normcli.__all__ and name in dir(normcli)
    checked = normcli.check(b, baseline=a, max_rel_update=0.5, min_cosine=0.9)
    assert isinstance(checked, normcli.CheckResult) and not checked.passed
    cli_doc = json.loads(
        run(
            "check",
            b,
            "--baseline",
            a,
            "--max-rel-update",
            "0.5",
            "--min-cosine",
            "0.9",
            "-f",
            "json",
            code=1,
        ).stdout
    )
    assert checked.to_dict() == cli_doc
    assert normcli.check(
        b, baseline=a, max_rel_update=0.5, filter=["model.w0", "model.bias"]
    ).passed
    with pytest.raises(TypeError, match="max_rel_updat"):
        normcli.check(b, baseline=a, max_rel_updat=0.5)
    followed = normcli.trend([changing_run], group_by=1)
    assert isinstance(followed, normcli.TrendResult)
    cli_trend = json.loads(run("trend", changing_run, "--group-by", "1", "-f", "json").stdout)
    assert followed.to_dict() == cli_trend
    # the modules behind them never shadow the functions once imported
    importlib.import_module("normcli.gate")
    importlib.import_module("normcli.trends")
    assert callable(normcli.check) and callable(normcli.trend)


def test_results_answer_the_questions_users_ask_of_them(grown: tuple[Path, Path]) -> None:
    a, b = grown
    inspected = normcli.inspect(b)
    ref = vector_figures(*model_vectors(floating(A_STATE), floating(B_STATE)))
    assert inspected.total.l2 == pytest.approx(ref["b_l2"], rel=1e-12)
    assert inspected.tensors[0].l2 == inspected.tensors[0].stats.l2
    compared = normcli.compare(a, b)
    assert compared.total.update_l2 == pytest.approx(ref["diff_l2"], rel=1e-12)
    assert compared.total.a_l2 == pytest.approx(ref["a_l2"], rel=1e-12)


# --- the core, whatever the tensors --------------------------------------------------------------

_SIDE = st.sampled_from(["both", "a", "b", "reshaped"])


@st.composite
def two_models(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    values = hnp.arrays(
        np.float32,
        st.integers(0, 12),
        elements=st.floats(-1e6, 1e6, width=32) | st.just(np.float32(np.nan)),
    )
    a: dict[str, np.ndarray] = {}
    b: dict[str, np.ndarray] = {}
    for i in range(draw(st.integers(0, 5))):
        side, x, y = draw(_SIDE), draw(values), draw(values)
        if side in ("both", "a", "reshaped"):
            a[f"t{i}"] = x
        if side == "both":
            b[f"t{i}"] = draw(
                hnp.arrays(np.float32, x.shape, elements=st.floats(-1e6, 1e6, width=32))
            )
        elif side == "b":
            b[f"t{i}"] = y
        elif side == "reshaped":
            b[f"t{i}"] = np.concatenate([y, np.ones(1, np.float32)]).reshape(1, -1)  # never x's
    return a, b


@settings(max_examples=150, deadline=None)
@given(two_models())
def test_the_model_update_is_the_update_of_the_model_vector(
    models: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    a, b = models
    parts = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is not None and y is not None and x.shape == y.shape:
            parts.append(reduce_pair(x, y))
        else:
            stats = [None if v is None else reduce_chunk(v) for v in (x, y)]
            parts.append(one_sided(*stats))
    update = model_update(parts)
    assert update is not None
    ref = vector_figures(*model_vectors(a, b))
    assert math.isclose(update.diff.l2, ref["diff_l2"], rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(update.diff.l1, ref["diff_l1"], rel_tol=1e-12, abs_tol=1e-300)
    assert update.diff.linf == ref["diff_linf"]
    assert math.isclose(update.a.l2, ref["a_l2"], rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(update.b.l2, ref["b_l2"], rel_tol=1e-12, abs_tol=1e-300)
    if ref["a_l2"] and ref["b_l2"]:
        assert update.cosine is not None
        assert math.isclose(update.cosine, ref["cosine"], rel_tol=1e-9, abs_tol=1e-12)
    # any order of the parts gives the same bits
    assert model_update(parts[::-1]) == update
    assert model_update([*parts, None]) is None


def test_trend_says_where_a_saved_report_leaves_no_update(
    changing_run: Path, run: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for step in (100, 300):
        save_file(CHANGING[step // 100 - 1], str(folder / f"step-{step}.safetensors"))
    run(
        "inspect",
        changing_run / "step-200.safetensors",
        "-f",
        "json",
        "-o",
        folder / "step-200.json",
    )
    doc = json.loads(run("trend", folder, "-f", "json").stdout)
    assert doc["total"]["update_l2"] == [None, None, None]
    assert doc["total"]["values"][1] is not None  # what a report holds is still shown
    text = run("trend", folder).stdout
    assert "no update into or out of 200: a saved report holds norms, not values" in text


def test_the_status_counts_say_which_removed_tensors_the_totals_leave_out(
    tmp_path: Path, run: Run
) -> None:
    """`Tensors: ... 2 removed` counts every tensor; the totals' `over ...` line only those in
    scope: the first line says which of its tensors the totals leave out, and why."""
    a = {"w": weights(4, 4), "gone": weights(3), "position_ids": np.arange(8, dtype=np.int64)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file({"w": weights(4, 4, scale=2.0)}, str(tmp_path / "b.safetensors"))
    paths = (tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    text = " ".join(run("compare", *paths).stdout.split())
    assert "0 added, 2 removed, 0 shape changed (1 added, removed or reshaped tensor is " in text
    assert "integer/bool, outside the totals; --include-int adds them)" in text
    assert "over 1 matched, 1 removed tensors" in text
    markdown = run("compare", *paths, "-f", "md").stdout
    assert "1 added, removed or reshaped tensor is integer/bool" in markdown
    full = " ".join(run("compare", *paths, "--include-int").stdout.split())
    assert "outside the totals" not in full and "over 1 matched, 2 removed tensors" in full


def test_a_report_saved_with_a_selection_is_compared_over_that_selection(
    tmp_path: Path, run: Run
) -> None:
    """The report records its --filter/--exclude; as a baseline it compares only the tensors
    those select, and says so, instead of turning every other tensor into 'added'."""
    state = {"w": weights(4, 4), "extra.a": weights(3), "extra.b": weights(2)}
    save_file(state, str(tmp_path / "a.safetensors"))
    save_file({**state, "w": state["w"] * 2}, str(tmp_path / "b.safetensors"))
    report = tmp_path / "a.json"
    run("inspect", tmp_path / "a.safetensors", "--exclude", "extra*", "-f", "json", "-o", report)
    doc = json.loads(report.read_text())
    validate_json(doc, "inspect.v1")
    assert doc["selection"] == {"filter": [], "exclude": ["extra*"]}
    compared = json.loads(run("compare", report, tmp_path / "b.safetensors", "-f", "json").stdout)
    assert [t["name"] for t in compared["tensors"]] == ["w"]
    assert compared["summary"]["added"] == 0
    ref = math.sqrt(math.fsum(float(x) ** 2 for x in (state["w"] * 2).astype(np.float64).ravel()))
    assert compared["total"]["b"]["l2"] == pytest.approx(ref, rel=1e-12)
    text = run("compare", report, tmp_path / "b.safetensors").stdout
    assert "A is a report saved with --exclude 'extra*': only the tensors those select" in text
    gate = ("--baseline", report, "--require-same-tensors", "-f", "json")
    assert json.loads(run("check", tmp_path / "b.safetensors", *gate).stdout)["passed"]
    full = json.loads(run("inspect", tmp_path / "a.safetensors", "-f", "json").stdout)
    assert full["selection"] == {"filter": [], "exclude": []}
