"""`normcli check`, the CI gate, end to end: exit codes 0/1/2, every rule N001-N015 triggered and
not, its measured value and limit against an independent float64 reference, values exactly at a
limit, the settings file (discovery, --config, scopes, command-line overrides), and every output
(table, JSON against its schema, GitHub annotations and step summary, Markdown, JUnit XML)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from conftest import SAMPLES, Run, validate_json

NAN_TENSOR = "model.layers.0.self_attn.v_proj.weight"
SCALED_TENSOR = "model.layers.1.mlp.down_proj.weight"
INT_TENSOR = "model.position_ids"

# A GitHub step summary left in the environment must never receive the output of a test run.
NO_SUMMARY: dict[str, str | None] = {"GITHUB_STEP_SUMMARY": None}


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own empty folder, so no normcli.toml or pyproject.toml around the
    repository (or left by another test) is picked up as settings."""
    monkeypatch.chdir(tmp_path)


# --- running the gate ------------------------------------------------------------------------


def strict_json(text: str) -> Any:
    def reject(token: str) -> None:
        raise AssertionError(f"{token} is not a JSON number")

    return json.loads(text, parse_constant=reject)


def check(
    run: Run, *args: str | Path, code: int | None, env: Mapping[str, str | None] | None = None
) -> Any:
    return run("check", *args, code=code, env={**NO_SUMMARY, **(env or {})})


def check_json(run: Run, *args: str | Path, code: int) -> dict[str, Any]:
    """Run `check ... -f json`, assert the exit code, validate the document against the schema."""
    result = check(run, *args, "-f", "json", code=code)
    doc = strict_json(result.stdout)
    validate_json(doc, "check.v1")
    assert isinstance(doc, dict)
    assert doc["passed"] is (code == 0)
    assert doc["passed"] is (doc["violations"] == [])
    assert_one_verdict(result.stderr, passed=code == 0)
    return doc


def assert_one_verdict(stderr: str, passed: bool) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"not one verdict line: {stderr!r}"
    word = "passed" if passed else "FAILED"
    assert lines[0].startswith(f"normcli check: {word}"), lines[0]
    return lines[0]


def assert_one_error_line(result: Any, *mentioning: str) -> str:
    """Nothing on stdout; one `normcli: error:` line on stderr naming each of `mentioning`."""
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), f"not one line: {result.stderr!r}"
    line: str = lines[0]
    assert line.startswith("normcli: error: "), line
    assert "internal error" not in line, line
    for word in mentioning:
        assert word in line, f"{word!r} not in {line!r}"
    return line


def found(doc: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(v["code"], v["tensor"]) for v in doc["violations"]}


def outcome(doc: dict[str, Any], rule: str) -> dict[str, Any]:
    matching: list[dict[str, Any]] = [r for r in doc["checked"]["rules"] if r["rule"] == rule]
    assert len(matching) == 1, doc["checked"]["rules"]
    return matching[0]


def close(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0)


def save(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    safetensors.numpy.save_file(tensors, str(path))
    return path


def sample(name: str) -> Path:
    return SAMPLES / f"{name}.safetensors"


def saved_report(run: Run, checkpoint: Path, where: Path) -> Path:
    run("inspect", checkpoint, "-f", "json", "-o", where)
    return where


def baseline_of(run: Run, tmp_path: Path, name: str) -> Path:
    """`base` is the sample checkpoint; `report:base` its saved `inspect -f json` report."""
    if name.startswith("report:"):
        return saved_report(run, sample(name[7:]), tmp_path / f"{name[7:]}.json")
    return sample(name)


# --- the independent reference: safetensors' own loader, float64, math.fsum ------------------


def load(path: Path) -> dict[str, np.ndarray]:
    """The floating-point tensors, read by the safetensors package (not by normcli), as float64."""
    return {
        name: array.astype(np.float64).reshape(-1)
        for name, array in safetensors.numpy.load_file(str(path)).items()
        if array.dtype.kind == "f"
    }


def finite(x: np.ndarray) -> np.ndarray:
    kept: np.ndarray = x[np.isfinite(x)]
    return kept


def sumsq(x: np.ndarray) -> float:
    f = finite(x)
    return math.fsum((f * f).tolist())


def ref_l2(x: np.ndarray) -> float:
    return math.sqrt(sumsq(x))


def ref_linf(x: np.ndarray) -> float:
    f = finite(x)
    return float(np.abs(f).max()) if f.size else 0.0


def ref_rms(x: np.ndarray) -> float:
    return math.sqrt(sumsq(x) / finite(x).size)


def both_finite(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def update_sumsq(a: np.ndarray, b: np.ndarray) -> float:
    a, b = both_finite(a, b)
    d = b - a
    return math.fsum((d * d).tolist())


def dot(a: np.ndarray, b: np.ndarray) -> float:
    a, b = both_finite(a, b)
    return math.fsum((a * b).tolist())


TensorFigure = Callable[[np.ndarray, np.ndarray], float]

# rule -> the figure it limits, from the baseline's tensor A (unused without a baseline) and B
TENSOR_FIGURES: dict[str, TensorFigure] = {
    "max-tensor-l2": lambda a, b: ref_l2(b),
    "max-tensor-linf": lambda a, b: ref_linf(b),
    "max-tensor-rms": lambda a, b: ref_rms(b),
    "max-tensor-l2-ratio": lambda a, b: ref_l2(b) / ref_l2(a),
    "max-tensor-rel-update": lambda a, b: math.sqrt(update_sumsq(a, b)) / ref_l2(a),
    "min-cosine": lambda a, b: dot(a, b) / (ref_l2(a) * ref_l2(b)),
}


def model_figure(rule: str, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Whole-model figures over every floating tensor: per-tensor sums (each exact to one
    rounding) added with math.fsum, within a few ulp of the exact figure."""
    total = math.fsum
    b_sumsq = total(sumsq(x) for x in b.values())
    a_sumsq = total(sumsq(x) for x in a.values())
    if rule == "max-l2":
        return math.sqrt(b_sumsq)
    if rule == "max-l1":
        return total(math.fsum(np.abs(finite(x)).tolist()) for x in b.values())
    if rule == "max-l2-ratio":
        return math.sqrt(b_sumsq) / math.sqrt(a_sumsq)
    if rule == "max-rel-update":
        return math.sqrt(total(update_sumsq(a[n], b[n]) for n in b)) / math.sqrt(a_sumsq)
    if rule == "min-cosine":
        return total(dot(a[n], b[n]) for n in b) / (math.sqrt(a_sumsq) * math.sqrt(b_sumsq))
    raise AssertionError(rule)


def score(rule: str, value: float) -> float:
    """How far a figure is into breaking territory: a ratio r is judged by max(r, 1/r)."""
    return max(value, 1 / value) if rule.endswith("l2-ratio") else value


def breaks(rule: str, value: float, limit: float) -> bool:
    return value < limit if rule == "min-cosine" else score(rule, value) > limit


def limit_between(values: Iterable[float]) -> float:
    """A limit halfway between two neighbouring measured values: some break it, some do not,
    and none lies anywhere near it."""
    distinct = sorted(set(values))
    assert len(distinct) >= 2
    middle = len(distinct) // 2
    return (distinct[middle - 1] + distinct[middle]) / 2


# --- the "done when" -----------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["finetuned", "base", "report:base"])
def test_blowup_fails_naming_the_grown_tensor_and_the_nan_tensor(
    run: Run, tmp_path: Path, baseline: str
) -> None:
    ref = baseline_of(run, tmp_path, baseline)
    args: list[str | Path] = [sample("blowup"), "--baseline", ref, "--max-tensor-l2-ratio", "2"]
    doc = check_json(run, *args, code=1)
    assert found(doc) == {("N001", NAN_TENSOR), ("N011", SCALED_TENSOR)}
    assert doc["checkpoint"] == str(sample("blowup")) and doc["baseline"] == str(ref)
    ratio = next(v for v in doc["violations"] if v["code"] == "N011")
    a, b = load(sample("base" if baseline != "finetuned" else "finetuned")), load(sample("blowup"))
    assert close(ratio["value"], ref_l2(b[SCALED_TENSOR]) / ref_l2(a[SCALED_TENSOR]))
    assert 49 < ratio["value"] < 51 and ratio["limit"] == 2.0

    table = check(run, *args, code=1)
    assert NAN_TENSOR in table.stdout and SCALED_TENSOR in table.stdout
    verdict = assert_one_verdict(table.stderr, passed=False)
    assert "N001" in verdict and "N011" in verdict and str(sample("blowup")) in verdict


@pytest.mark.parametrize("name", ["base", "finetuned", "base-bf16"])
def test_a_checkpoint_against_itself_passes_the_strictest_limits(run: Run, name: str) -> None:
    path = sample(name)
    doc = check_json(
        run,
        path,
        "--baseline",
        path,
        "--max-l2-ratio",
        "1",
        "--max-tensor-l2-ratio",
        "1",
        "--max-rel-update",
        "0",
        "--max-tensor-rel-update",
        "0",
        "--min-cosine",
        "1",
        "--require-same-tensors",
        code=0,
    )
    assert [r["code"] for r in doc["checked"]["rules"]] == [
        "N001",
        "N010",
        "N011",
        "N012",
        "N013",
        "N014",
        "N015",
    ]
    assert all(r["violations"] == 0 for r in doc["checked"]["rules"])


def test_blowup_against_itself_fails_only_on_its_nan_and_passes_when_nan_is_allowed(
    run: Run,
) -> None:
    path = sample("blowup")
    strict: list[str | Path] = [
        "--baseline",
        path,
        "--max-tensor-l2-ratio",
        "1",
        "--max-tensor-rel-update",
        "0",
        "--min-cosine",
        "1",
    ]
    doc = check_json(run, path, *strict, code=1)
    assert found(doc) == {("N001", NAN_TENSOR)}
    check_json(run, path, *strict, "--allow-nonfinite", code=0)


@pytest.mark.parametrize("missing", ["checkpoint", "baseline", "config"])
def test_a_missing_file_exits_2_with_one_line_naming_it(
    run: Run, tmp_path: Path, missing: str
) -> None:
    gone = tmp_path / f"gone-{missing}.safetensors"
    args: dict[str, list[str | Path]] = {
        "checkpoint": [gone, "--baseline", sample("base"), "--max-tensor-l2-ratio", "2"],
        "baseline": [sample("blowup"), "--baseline", gone, "--max-tensor-l2-ratio", "2"],
        "config": [sample("blowup"), "--config", gone],
    }
    for fmt in ("table", "json", "github"):
        assert_one_error_line(check(run, *args[missing], "-f", fmt, code=2), str(gone))


# --- bad settings: exit 2, one line naming the key ---------------------------------------------

BAD_SETTINGS: dict[str, tuple[str, list[str]]] = {
    "unknown-key": ("max-l3 = 1", ["'max-l3'", "max-l2"]),
    "wrong-type": ('max-l2 = "big"', ["max-l2", "number"]),
    "bool-for-number": ("max-tensor-linf = true", ["max-tensor-linf"]),
    "number-for-flag": ("allow-nonfinite = 1", ["allow-nonfinite", "true or false"]),
    "negative-limit": ("max-tensor-l2 = -1.5", ["max-tensor-l2", "-1.5"]),
    "nan-limit": ("max-l1 = nan", ["max-l1"]),
    "infinite-limit": ("max-l1 = inf", ["max-l1"]),
    "ratio-below-1": ("max-l2-ratio = 0.5", ["max-l2-ratio", "0.5"]),
    "cosine-above-1": ("min-cosine = 1.5", ["min-cosine", "1.5"]),
    "scoped-ratio-below-1": (
        '[[check.rules]]\ntensors = "*"\nmax-tensor-l2-ratio = 0.9',
        ["max-tensor-l2-ratio"],
    ),
    "scoped-negative": ('[[check.rules]]\ntensors = "*"\nmax-tensor-rms = -1', ["max-tensor-rms"]),
    "scoped-model-rule": ('[[check.rules]]\ntensors = "*"\nmax-l2 = 5', ["'max-l2'", "scoped"]),
    "scoped-flag": (
        '[[check.rules]]\ntensors = "*"\nallow-nonfinite = true',
        ["'allow-nonfinite'", "scoped"],
    ),
    "scoped-unknown-key": (
        '[[check.rules]]\ntensors = "*"\nmax-tensor-l3 = 1',
        ["'max-tensor-l3'"],
    ),
    "scoped-wrong-type": ('[[check.rules]]\ntensors = "*"\nmax-tensor-l2 = "1"', ["max-tensor-l2"]),
    "scope-without-tensors": ("[[check.rules]]\nmax-tensor-l2 = 1", ["rules[0].tensors"]),
    "scope-tensors-not-globs": (
        "[[check.rules]]\ntensors = 5\nmax-tensor-l2 = 1",
        ["rules[0].tensors"],
    ),
    "rules-not-an-array": ('[check.rules]\ntensors = "*"', ["rules"]),
    "invalid-toml": ("max-l2 = ", ["TOML"]),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
@pytest.mark.parametrize("how", ["normcli.toml", "--config"])
def test_bad_settings_exit_2_naming_the_key_and_the_file(
    run: Run, tmp_path: Path, case: str, how: str
) -> None:
    text, mentions = BAD_SETTINGS[case]
    body = text if text.startswith("[") else f"[check]\n{text}"
    if how == "normcli.toml":
        (tmp_path / "normcli.toml").write_text(body + "\n")
        args: list[str | Path] = []
    else:
        (tmp_path / "elsewhere").mkdir()
        config = tmp_path / "elsewhere" / "gate.toml"
        config.write_text(body + "\n")
        args = ["--config", config]
    result = check(run, sample("base"), *args, code=2)
    assert_one_error_line(
        result, "normcli.toml" if how == "normcli.toml" else "gate.toml", *mentions
    )


def test_bad_settings_in_pyproject_are_named_too(run: Run, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.normcli.check]\nmax-tensor-linf = "1000"\n'
    )
    result = check(run, sample("base"), code=2)
    assert_one_error_line(result, "pyproject.toml", "max-tensor-linf")


def test_a_pyproject_whose_tool_normcli_is_not_a_table_is_a_clear_error(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool]\nnormcli = 1\n")
    assert_one_error_line(check(run, sample("base"), code=2), "pyproject.toml")


BAD_OPTIONS: dict[str, tuple[list[str], str]] = {
    "negative": (["--max-l2", "-1"], "max-l2"),
    "nan": (["--max-tensor-linf", "nan"], "max-tensor-linf"),
    "infinite": (["--max-l1", "inf"], "max-l1"),
    "ratio-below-1": (["--max-tensor-l2-ratio", "0.5"], "max-tensor-l2-ratio"),
    "cosine-above-1": (["--min-cosine", "1.01"], "min-cosine"),
    "not-a-number": (["--max-l2", "big"], "--max-l2"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_limit_on_the_command_line_exits_2_naming_the_option(run: Run, case: str) -> None:
    args, option = BAD_OPTIONS[case]
    # blowup breaks N001: a limit that cannot be honoured is still 2, not 1
    assert_one_error_line(check(run, sample("blowup"), *args, code=2), option)


def test_a_bad_command_line_limit_is_not_blamed_on_the_settings_file(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "normcli.toml").write_text("[check]\nmax-l2 = 1000\n")
    line = assert_one_error_line(
        check(run, sample("base"), "--max-tensor-l2-ratio", "0.5", code=2), "max-tensor-l2-ratio"
    )
    assert "normcli.toml" not in line


# --- every rule, triggered and not, against the reference ----------------------------------------

TENSOR_CASES = [
    *(
        (rule, ckpt, None)
        for rule in ("max-tensor-l2", "max-tensor-linf", "max-tensor-rms")
        for ckpt in ("base", "blowup")
    ),
    ("max-tensor-l2", "blowup", "base"),  # with a baseline the checked side is still B
    *(
        (rule, ckpt, ref)
        for rule in ("max-tensor-l2-ratio", "max-tensor-rel-update", "min-cosine")
        for ckpt, ref in (("finetuned", "base"), ("blowup", "base"), ("base", "blowup"))
    ),
    ("max-tensor-l2-ratio", "blowup", "report:base"),
    ("max-tensor-l2-ratio", "finetuned", "report:base"),
]
RULE_CODES = {
    "max-l2": "N002",
    "max-l1": "N003",
    "max-tensor-l2": "N004",
    "max-tensor-linf": "N005",
    "max-tensor-rms": "N006",
    "max-l2-ratio": "N010",
    "max-tensor-l2-ratio": "N011",
    "max-rel-update": "N012",
    "max-tensor-rel-update": "N013",
    "min-cosine": "N014",
}


@pytest.mark.parametrize(("rule", "ckpt", "ref"), TENSOR_CASES)
def test_tensor_rule_flags_exactly_the_tensors_past_the_limit_with_their_measured_values(
    run: Run, tmp_path: Path, rule: str, ckpt: str, ref: str | None
) -> None:
    b = load(sample(ckpt))
    a = load(sample(ref.removeprefix("report:"))) if ref else b
    values: dict[str | None, float] = {n: TENSOR_FIGURES[rule](a[n], b[n]) for n in b}
    if rule == "min-cosine":  # judged for the whole model as well as for every tensor
        values[None] = model_figure(rule, a, b)
    base_args: list[str | Path] = [sample(ckpt), "--allow-nonfinite"]
    if ref:
        base_args += ["--baseline", baseline_of(run, tmp_path, ref)]

    limit = limit_between(score(rule, v) for v in values.values())
    doc = check_json(run, *base_args, f"--{rule}", repr(limit), code=1)
    expected = {n for n, v in values.items() if breaks(rule, v, limit)}
    assert expected and expected != set(values)
    assert found(doc) == {(RULE_CODES[rule], n) for n in expected}
    for v in doc["violations"]:
        assert v["rule"] == rule and v["limit"] == limit
        assert close(v["value"], values[v["tensor"]]), (v, values[v["tensor"]])
    assert doc["checked"]["rules"] == [
        {
            "code": RULE_CODES[rule],
            "rule": rule,
            "limit": limit,
            "scoped": False,
            "violations": len(expected),
        }
    ]

    loosest = (min if rule == "min-cosine" else max)(score(rule, v) for v in values.values())
    loose = loosest * (1 - 1e-9 if rule == "min-cosine" else 1 + 1e-9)
    doc = check_json(run, *base_args, f"--{rule}", repr(loose), code=0)
    assert outcome(doc, rule)["violations"] == 0


MODEL_CASES = [
    ("max-l2", "base", None),
    ("max-l2", "blowup", None),
    ("max-l2", "blowup", "base"),
    ("max-l1", "blowup", None),
    ("max-l1", "finetuned", "base"),
    ("max-l2-ratio", "blowup", "base"),
    ("max-l2-ratio", "base", "blowup"),  # shrunk: the lower end of the band [1/R, R]
    ("max-l2-ratio", "finetuned", "base"),
    ("max-l2-ratio", "blowup", "report:base"),
    ("max-rel-update", "finetuned", "base"),
    ("max-rel-update", "blowup", "base"),
]


@pytest.mark.parametrize(("rule", "ckpt", "ref"), MODEL_CASES)
def test_model_rule_flags_the_whole_model_with_its_measured_value(
    run: Run, tmp_path: Path, rule: str, ckpt: str, ref: str | None
) -> None:
    b = load(sample(ckpt))
    a = load(sample(ref.removeprefix("report:"))) if ref else b
    value = model_figure(rule, a, b)
    base_args: list[str | Path] = [sample(ckpt), "--allow-nonfinite"]
    if ref:
        base_args += ["--baseline", baseline_of(run, tmp_path, ref)]

    limit = score(rule, value) * (1 - 1e-9)
    doc = check_json(run, *base_args, f"--{rule}", repr(limit), code=1)
    [violation] = doc["violations"]
    assert (violation["code"], violation["rule"], violation["tensor"]) == (
        RULE_CODES[rule],
        rule,
        None,
    )
    assert close(violation["value"], value) and violation["limit"] == limit
    assert doc["checked"]["rules"] == [
        {"code": RULE_CODES[rule], "rule": rule, "limit": limit, "scoped": False, "violations": 1}
    ]

    doc = check_json(run, *base_args, f"--{rule}", repr(score(rule, value) * (1 + 1e-9)), code=0)
    assert outcome(doc, rule)["violations"] == 0


def test_nonfinite_rule_counts_nan_and_inf_per_tensor(run: Run, tmp_path: Path) -> None:
    path = save(
        tmp_path / "holes.safetensors",
        {
            "a.weight": np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32),
            "b.weight": np.array([[1.0, np.inf]], dtype=np.float16),
            "c.weight": np.array([1e30, -2.0], dtype=np.float64),
        },
    )
    doc = check_json(run, path, code=1)
    by_tensor = {v["tensor"]: v for v in doc["violations"]}
    assert set(by_tensor) == {"a.weight", "b.weight"}
    assert by_tensor["a.weight"]["value"] == 3.0 and by_tensor["b.weight"]["value"] == 1.0
    assert all(v["code"] == "N001" and v["limit"] == 0.0 for v in by_tensor.values())
    assert "1 NaN" in by_tensor["a.weight"]["message"]
    assert "2 Inf" in by_tensor["a.weight"]["message"]
    assert outcome(doc, "nonfinite") == {
        "code": "N001",
        "rule": "nonfinite",
        "limit": 0.0,
        "scoped": False,
        "violations": 2,
    }


def test_nonfinite_rule_is_on_by_default_and_passes_a_clean_checkpoint(run: Run) -> None:
    doc = check_json(run, sample("finetuned"), code=0)
    assert doc["checked"]["rules"] == [
        {"code": "N001", "rule": "nonfinite", "limit": 0.0, "scoped": False, "violations": 0}
    ]
    assert doc["checked"]["tensors"] == len(safetensors.numpy.load_file(str(sample("finetuned"))))
    doc = check_json(run, sample("blowup"), code=1)
    assert doc["violations"] == [
        {
            "code": "N001",
            "rule": "nonfinite",
            "tensor": NAN_TENSOR,
            "value": 1.0,
            "limit": 0.0,
            "message": "1 NaN and 0 Inf values",
        }
    ]


def test_allow_nonfinite_turns_the_rule_off(run: Run) -> None:
    doc = check_json(run, sample("blowup"), "--allow-nonfinite", code=0)
    assert doc["checked"]["rules"] == []


def test_nonfinite_values_in_the_baseline_alone_do_not_fail(run: Run) -> None:
    doc = check_json(run, sample("finetuned"), "--baseline", sample("blowup"), code=0)
    assert outcome(doc, "nonfinite")["violations"] == 0


def test_tensor_rules_skip_integer_tensors_unless_include_int(run: Run) -> None:
    doc = check_json(run, sample("base"), "--max-tensor-linf", "10", code=0)
    assert outcome(doc, "max-tensor-linf")["violations"] == 0
    doc = check_json(run, sample("base"), "--max-tensor-linf", "10", "--include-int", code=1)
    assert [(v["code"], v["tensor"], v["value"]) for v in doc["violations"]] == [
        ("N005", INT_TENSOR, 63.0)
    ]


def _reshaped(tmp_path: Path) -> Path:
    tensors = safetensors.numpy.load_file(str(sample("base")))
    del tensors["lm_head.weight"]
    tensors["model.extra.bias"] = np.zeros(4, dtype=np.float32)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].reshape(6, 8)
    return save(tmp_path / "reshaped.safetensors", tensors)


@pytest.mark.parametrize("ref", ["base", "report:base"])
def test_require_same_tensors_names_added_removed_and_reshaped(
    run: Run, tmp_path: Path, ref: str
) -> None:
    path = _reshaped(tmp_path)
    baseline = baseline_of(run, tmp_path, ref)
    doc = check_json(run, path, "--baseline", baseline, "--require-same-tensors", code=1)
    by_tensor = {v["tensor"]: v for v in doc["violations"]}
    assert set(by_tensor) == {"lm_head.weight", "model.extra.bias", "model.norm.weight"}
    assert all(
        v["code"] == "N015" and v["value"] is None and v["limit"] is None
        for v in by_tensor.values()
    )
    assert "removed" in by_tensor["lm_head.weight"]["message"]
    assert "added" in by_tensor["model.extra.bias"]["message"]
    assert "[48]" in by_tensor["model.norm.weight"]["message"]
    assert "[6, 8]" in by_tensor["model.norm.weight"]["message"]
    assert outcome(doc, "require-same-tensors") == {
        "code": "N015",
        "rule": "require-same-tensors",
        "limit": None,
        "scoped": False,
        "violations": 3,
    }

    doc = check_json(
        run, sample("finetuned"), "--baseline", baseline, "--require-same-tensors", code=0
    )
    assert outcome(doc, "require-same-tensors")["violations"] == 0


@pytest.mark.parametrize("ref", ["base", "report:base"])
def test_require_same_tensors_judges_integer_tensors_only_with_include_int(
    run: Run, tmp_path: Path, ref: str
) -> None:
    """Tensor rules cover floating-point tensors unless --include-int, N015 as well."""
    tensors = safetensors.numpy.load_file(str(sample("base")))
    del tensors[INT_TENSOR]
    tensors["model.token_type_ids"] = np.zeros(4, dtype=np.int64)
    path = save(tmp_path / "ids.safetensors", tensors)
    baseline = baseline_of(run, tmp_path, ref)
    args = ("--baseline", baseline, "--require-same-tensors")
    doc = check_json(run, path, *args, code=0)
    assert outcome(doc, "require-same-tensors")["violations"] == 0
    doc = check_json(run, path, *args, "--include-int", code=1)
    assert found(doc) == {("N015", INT_TENSOR), ("N015", "model.token_type_ids")}


# --- a value exactly at the limit passes ---------------------------------------------------------


@pytest.fixture
def exact(tmp_path: Path) -> dict[str, Path]:
    """Checkpoints whose figures are exact in binary floating point however they are computed
    (four elements: RMS = L2/2 = sqrt(sumsq/4)): A; B = 2A; C, p's values swapped, so
    cosine(A, C) for p is 24/25; D, p doubled and q kept, so every tensor is parallel to A's but
    the whole model is not."""

    def tensors(p: list[float], q: list[float]) -> dict[str, np.ndarray]:
        return {"p": np.array(p, dtype=np.float32), "q": np.array(q, dtype=np.float32)}

    return {
        "A": save(tmp_path / "A.safetensors", tensors([3, 4, 0, 0], [0, 12, 0, 0])),
        "B": save(tmp_path / "B.safetensors", tensors([6, 8, 0, 0], [0, 24, 0, 0])),
        "C": save(tmp_path / "C.safetensors", tensors([4, 3, 0, 0], [0, 12, 0, 0])),
        "D": save(tmp_path / "D.safetensors", tensors([6, 8, 0, 0], [0, 12, 0, 0])),
    }


# rule, checkpoint, baseline, the exact figure at the limit (None: not representable; take the
# value normcli measures, checked against the reference), which way a stricter limit lies
# (1: up), and the violations {tensor (None: whole model): value} one float past it (None: the
# figure at the limit)
BOUNDARIES: dict[
    str, tuple[str, str, str | None, float | None, int, dict[str | None, float | None]]
] = {
    "max-l2": ("max-l2", "B", None, 26.0, 0, {None: 26.0}),
    "max-l1": ("max-l1", "B", None, 38.0, 0, {None: 38.0}),
    "max-tensor-l2": ("max-tensor-l2", "B", None, 24.0, 0, {"q": 24.0}),
    "max-tensor-linf": ("max-tensor-linf", "B", None, 24.0, 0, {"q": 24.0}),
    "max-tensor-rms": ("max-tensor-rms", "B", None, 12.0, 0, {"q": 12.0}),
    "max-l2-ratio-grown": ("max-l2-ratio", "B", "A", 2.0, 0, {None: 2.0}),
    # shrunk to 0.5 = 1/R exactly: the lower end of the band
    "max-l2-ratio-shrunk": ("max-l2-ratio", "A", "B", 2.0, 0, {None: 0.5}),
    "max-tensor-l2-ratio-grown": ("max-tensor-l2-ratio", "B", "A", 2.0, 0, {"p": 2.0, "q": 2.0}),
    "max-tensor-l2-ratio-shrunk": ("max-tensor-l2-ratio", "A", "B", 2.0, 0, {"p": 0.5, "q": 0.5}),
    "max-rel-update": ("max-rel-update", "B", "A", 1.0, 0, {None: 1.0}),
    "max-tensor-rel-update": ("max-tensor-rel-update", "B", "A", 1.0, 0, {"p": 1.0, "q": 1.0}),
    # p: 24/25; q is unchanged (cosine 1); the whole model: 168/169
    "min-cosine": ("min-cosine", "C", "A", 24 / 25, 1, {"p": 24 / 25}),
    # every tensor's cosine is 1, the model's 194/(13*sqrt(244))
    "min-cosine-model": ("min-cosine", "D", "A", None, 1, {None: None}),
}


@pytest.mark.parametrize("case", list(BOUNDARIES))
def test_a_value_exactly_at_the_limit_passes_and_the_next_float_fails(
    run: Run, exact: dict[str, Path], case: str
) -> None:
    rule, ckpt, ref, at, stricter, breaches = BOUNDARIES[case]
    args: list[str | Path] = [exact[ckpt]]
    if ref:
        args += ["--baseline", exact[ref]]
    if at is None:
        [measured] = check_json(run, *args, f"--{rule}", "1", code=1)["violations"]
        at = measured["value"]
        assert at is not None and close(at, 194 / (13 * math.sqrt(244)))
    doc = check_json(run, *args, f"--{rule}", repr(at), code=0)
    assert outcome(doc, rule)["limit"] == at

    tighter = math.nextafter(at, 2.0 if stricter else 0.0)
    doc = check_json(run, *args, f"--{rule}", repr(tighter), code=1)
    expected = {name: at if value is None else value for name, value in breaches.items()}
    assert {v["tensor"]: v["value"] for v in doc["violations"]} == expected
    assert all(v["limit"] == tighter for v in doc["violations"])


# --- the settings file -------------------------------------------------------------------------


def _just_below_l2(name: str) -> float:
    return model_figure("max-l2", {}, load(sample(name))) * (1 - 1e-9)


def test_settings_from_normcli_toml_in_the_current_folder(run: Run, tmp_path: Path) -> None:
    limit = _just_below_l2("base")
    (tmp_path / "normcli.toml").write_text(f"[check]\nmax-l2 = {limit!r}\n")
    doc = check_json(run, sample("base"), code=1)
    assert found(doc) == {("N002", None)}
    assert doc["violations"][0]["limit"] == limit
    assert doc["checked"]["config"] is not None
    assert Path(doc["checked"]["config"]).resolve() == tmp_path / "normcli.toml"


def test_settings_from_pyproject_tool_normcli_check(run: Run, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.ruff]\nline-length = 99\n\n'
        "[tool.normcli.check]\nmax-tensor-l2-ratio = 2\nallow-nonfinite = true\n"
    )
    doc = check_json(run, sample("blowup"), "--baseline", sample("finetuned"), code=1)
    assert found(doc) == {("N011", SCALED_TENSOR)}  # nonfinite allowed by the file
    assert Path(doc["checked"]["config"]).resolve() == tmp_path / "pyproject.toml"


def test_pyproject_without_the_section_means_no_settings(run: Run, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n[tool.black]\nx = 1\n')
    doc = check_json(run, sample("finetuned"), code=0)
    assert doc["checked"]["config"] is None
    assert [r["rule"] for r in doc["checked"]["rules"]] == ["nonfinite"]


def test_normcli_toml_wins_over_pyproject(run: Run, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.normcli.check]\nmax-l2 = 0.001\n")
    (tmp_path / "normcli.toml").write_text("[check]\nmax-l2 = 1e6\n")
    doc = check_json(run, sample("base"), code=0)
    assert outcome(doc, "max-l2")["limit"] == 1e6
    assert Path(doc["checked"]["config"]).name == "normcli.toml"


@pytest.mark.parametrize("layout", ["check-table", "top-level", "pyproject-style"])
def test_config_option_reads_the_given_file_instead_of_the_folder(
    run: Run, tmp_path: Path, layout: str
) -> None:
    (tmp_path / "normcli.toml").write_text("[check]\nmax-l2 = 0.001\n")  # must be ignored
    settings = "max-tensor-l2-ratio = 2\n"
    text = {
        "check-table": f"[check]\n{settings}",
        "top-level": settings,
        "pyproject-style": f'[project]\nname = "x"\n[tool.normcli.check]\n{settings}',
    }[layout]
    (tmp_path / "ci").mkdir()
    config = tmp_path / "ci" / "gate.toml"
    config.write_text(text)
    doc = check_json(
        run, sample("blowup"), "--baseline", sample("finetuned"), "--config", config, code=1
    )
    assert found(doc) == {("N001", NAN_TENSOR), ("N011", SCALED_TENSOR)}
    assert doc["checked"]["config"] == str(config)


def test_command_line_overrides_the_file_both_ways(run: Run, tmp_path: Path) -> None:
    limit = _just_below_l2("base")
    (tmp_path / "normcli.toml").write_text(f"[check]\nmax-l2 = {limit!r}\nmax-l1 = 1e9\n")
    doc = check_json(run, sample("base"), "--max-l2", "1e6", code=0)
    assert outcome(doc, "max-l2")["limit"] == 1e6
    assert outcome(doc, "max-l1")["limit"] == 1e9  # what the command line leaves alone stays

    (tmp_path / "normcli.toml").write_text("[check]\nmax-l2 = 1e6\n")
    doc = check_json(run, sample("base"), "--max-l2", repr(limit), code=1)
    assert doc["violations"][0]["limit"] == limit


def test_require_same_tensors_from_the_file_waits_for_a_baseline(run: Run, tmp_path: Path) -> None:
    """A settings file shared by pre-commit (no baseline) and CI (a baseline): its drift rules
    are reported as not judged, not an error; given on the command line they are an error."""
    (tmp_path / "normcli.toml").write_text("[check]\nrequire-same-tensors = true\n")
    doc = check_json(run, sample("base"), code=0)
    assert doc["checked"]["skipped_rules"] == ["require-same-tensors"]
    assert "not judged without a baseline" in check(run, sample("base"), code=0).stdout
    assert_one_error_line(
        check(run, sample("base"), "--require-same-tensors", code=2),
        "require-same-tensors",
        "--baseline",
    )
    doc = check_json(run, _reshaped(tmp_path), "--baseline", sample("base"), code=1)
    assert {v["code"] for v in doc["violations"]} == {"N015"}
    assert doc["checked"]["skipped_rules"] == []


def test_the_settings_file_name_is_shown_literally_in_the_table(run: Run, tmp_path: Path) -> None:
    # a path is not rich markup: "[/b]" must neither vanish nor crash the report
    (tmp_path / "ci[").mkdir()
    config = tmp_path / "ci[" / "b][red]gate.toml"
    config.write_text("[check]\nmax-l2 = 1e6\n")
    result = check(run, sample("base"), "--config", config, code=0)
    assert f"settings from {config}" in result.stdout


def _scaled(tmp_path: Path, factors: dict[str, float]) -> Path:
    tensors = safetensors.numpy.load_file(str(sample("base")))
    for name, factor in factors.items():
        tensors[name] = tensors[name] * np.float32(factor)
    return save(tmp_path / "scaled.safetensors", tensors)


SCOPED_SETTINGS = """
[check]
max-tensor-l2-ratio = 1.2

[[check.rules]]             # matches first, but sets another key: no say on the ratio
tensors = ["*embed_tokens*", "*.norm.*"]
max-tensor-linf = 100

[[check.rules]]             # layer norms stay within [0.5, 2]
tensors = ["*layernorm*", "*.norm.*"]
max-tensor-l2-ratio = 2

[[check.rules]]             # embeddings may move more
tensors = "*embed_tokens*"
max-tensor-l2-ratio = 3

[[check.rules]]             # everything else under model.: tighter than the global 1.2
tensors = "model.*"
max-tensor-l2-ratio = 1.1
"""


def test_scoped_limits_first_matching_scope_that_sets_the_key_wins(
    run: Run, tmp_path: Path
) -> None:
    factors = {
        "model.embed_tokens.weight": 2.5,  # within its own scope's 3
        "model.layers.0.input_layernorm.weight": 1.5,  # within the layer norms' 2
        "model.norm.weight": 3.0,  # past the layer norms' 2
        "model.layers.0.self_attn.q_proj.weight": 1.15,  # past model.*'s 1.1
        "lm_head.weight": 1.15,  # matches no scope: the global 1.2
    }
    path = _scaled(tmp_path, factors)
    (tmp_path / "normcli.toml").write_text(SCOPED_SETTINGS)
    doc = check_json(run, path, "--baseline", sample("base"), code=1)
    a, b = load(sample("base")), load(path)
    expected = {"model.norm.weight": 2.0, "model.layers.0.self_attn.q_proj.weight": 1.1}
    assert found(doc) == {("N011", n) for n in expected}
    for v in doc["violations"]:
        assert v["limit"] == expected[v["tensor"]]
        assert close(v["value"], ref_l2(b[v["tensor"]]) / ref_l2(a[v["tensor"]]))
    assert outcome(doc, "max-tensor-l2-ratio") == {
        "code": "N011",
        "rule": "max-tensor-l2-ratio",
        "limit": 1.2,
        "scoped": True,
        "violations": 2,
    }
    # set only in a scope: no global limit, and those tensors are well within 100
    assert outcome(doc, "max-tensor-linf") == {
        "code": "N005",
        "rule": "max-tensor-linf",
        "limit": None,
        "scoped": True,
        "violations": 0,
    }

    # the command line replaces the global limit; the scopes still come first
    doc = check_json(
        run, path, "--baseline", sample("base"), "--max-tensor-l2-ratio", "1.1", code=1
    )
    assert found(doc) == {("N011", n) for n in [*expected, "lm_head.weight"]}


def test_a_limit_set_only_in_a_scope_checks_only_the_matching_tensors(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "normcli.toml").write_text(
        '[[check.rules]]\ntensors = ["*layernorm*"]\nmax-tensor-l2 = 0.5\n'
    )
    doc = check_json(run, sample("base"), code=1)
    names = set(load(sample("base")))
    assert found(doc) == {("N004", n) for n in names if fnmatchcase(n, "*layernorm*")}
    assert len(doc["violations"]) == 4


def test_a_scope_that_does_not_match_leaves_the_global_limit(run: Run, tmp_path: Path) -> None:
    (tmp_path / "normcli.toml").write_text(
        "[check]\nmax-tensor-l2 = 0.5\n"
        '[[check.rules]]\ntensors = "no.such.*"\nmax-tensor-l2 = 1e9\n'
    )
    doc = check_json(run, sample("base"), code=1)
    assert {v["tensor"] for v in doc["violations"]} == set(load(sample("base")))
    assert all(v["limit"] == 0.5 for v in doc["violations"])


# --- rules that need a baseline --------------------------------------------------------------

NEEDS_BASELINE = [
    ["--max-l2-ratio", "2"],
    ["--max-tensor-l2-ratio", "2"],
    ["--max-rel-update", "0.5"],
    ["--max-tensor-rel-update", "0.5"],
    ["--min-cosine", "0.5"],
    ["--require-same-tensors"],
]


@pytest.mark.parametrize("args", NEEDS_BASELINE, ids=lambda a: a[0])
def test_a_rule_needing_a_baseline_without_one_exits_2(run: Run, args: list[str]) -> None:
    assert_one_error_line(check(run, sample("blowup"), *args, code=2), args[0][2:], "--baseline")


def test_a_baseline_named_in_the_settings_file_is_used(run: Run, tmp_path: Path) -> None:
    (tmp_path / "normcli.toml").write_text(
        f'baseline = "{sample("base")}"\n'
        '[[check.rules]]\ntensors = "*down_proj*"\nmax-tensor-l2-ratio = 2\n'
    )
    assert_one_error_line(check(run, sample("base"), code=2), "outside the [check] table")
    (tmp_path / "normcli.toml").write_text(
        f'[check]\nbaseline = "{sample("base")}"\n'
        '[[check.rules]]\ntensors = "*down_proj*"\nmax-tensor-l2-ratio = 2\n'
    )
    doc = check_json(run, sample("blowup"), "--allow-nonfinite", code=1)
    assert doc["baseline"] == str(sample("base"))
    assert {v["tensor"] for v in doc["violations"]} == {"model.layers.1.mlp.down_proj.weight"}


@pytest.mark.parametrize("rule", ["max-rel-update", "max-tensor-rel-update", "min-cosine"])
def test_a_rule_needing_values_against_a_saved_report_exits_2_saying_why(
    run: Run, tmp_path: Path, rule: str
) -> None:
    report = saved_report(run, sample("base"), tmp_path / "base.json")
    result = check(run, sample("blowup"), "--baseline", report, f"--{rule}", "0.5", code=2)
    assert_one_error_line(result, rule, "checkpoint baseline", "report", str(report))


def test_the_files_rules_needing_values_are_not_judged_against_a_saved_report(
    run: Run, tmp_path: Path
) -> None:
    """One settings file for a baseline checkpoint and a saved report: against the report the
    rules that need values are listed as not judged, with the reason; the rest still gate."""
    report = saved_report(run, sample("base"), tmp_path / "base.json")
    (tmp_path / "normcli.toml").write_text(
        "[check]\nmax-rel-update = 0.5\nmin-cosine = 0.99\nmax-l2-ratio = 1e6\n"
        '[[check.rules]]\ntensors = "*"\nmax-tensor-rel-update = 0.5\n'
    )
    skipped = ["max-rel-update", "min-cosine", "max-tensor-rel-update"]
    doc = check_json(run, sample("blowup"), "--baseline", report, "--allow-nonfinite", code=0)
    assert doc["checked"]["skipped_rules"] == skipped
    assert (
        doc["checked"]["skipped_reason"] == "against a saved report, which holds norms, not values"
    )
    assert [r["rule"] for r in doc["checked"]["rules"]] == ["max-l2-ratio"]
    text = check(run, sample("blowup"), "--baseline", report, "--allow-nonfinite", code=0).stdout
    assert (
        f"not judged against a saved report, which holds norms, not values: {', '.join(skipped)}"
        in " ".join(text.split())
    )
    # judged against the checkpoint itself, the same file fails the blown-up model
    doc = check_json(
        run, sample("blowup"), "--baseline", sample("base"), "--allow-nonfinite", code=1
    )
    assert doc["checked"]["skipped_rules"] == [] and doc["checked"]["skipped_reason"] is None
    # given on the command line, the rule is asked for explicitly: still an error
    result = check(run, sample("blowup"), "--baseline", report, "--min-cosine", "0.9", code=2)
    assert_one_error_line(result, "min-cosine", "checkpoint baseline", str(report))


def test_a_saved_report_is_checked_by_its_stored_norms(run: Run, tmp_path: Path) -> None:
    """N001-N006 need only norms and counts, which a saved report holds: checking the report
    finds what checking its checkpoint finds."""
    report = saved_report(run, sample("blowup"), tmp_path / "blowup.json")
    rules = ("--max-l2", "300", "--max-l1", "2e4", "--max-tensor-l2", "10")
    rules += ("--max-tensor-linf", "1", "--max-tensor-rms", "0.5", "--exclude", "lm_head.*")
    from_report = check_json(run, report, *rules, code=1)
    from_checkpoint = check_json(run, sample("blowup"), *rules, code=1)
    assert found(from_report) == found(from_checkpoint)
    assert {v["code"] for v in from_report["violations"]} >= {"N001", "N002", "N004", "N005"}
    for got, want in zip(from_report["violations"], from_checkpoint["violations"], strict=True):
        assert got["value"] == pytest.approx(want["value"], rel=1e-12)
    tensors = safetensors.numpy.load_file(str(sample("blowup")))
    squares = [
        float(x) ** 2
        for name, t in tensors.items()
        if t.dtype.kind == "f" and not name.startswith("lm_head.")
        for x in t.astype(np.float64).ravel()
        if math.isfinite(x)
    ]
    l2 = [v["value"] for v in from_report["violations"] if v["code"] == "N002"]
    assert close(l2[0], math.sqrt(math.fsum(squares)))
    assert from_report["checked"]["available"] == 20 and from_report["checked"]["tensors"] == 19


def test_a_list_of_reports_is_refused_naming_the_command_running(run: Run, tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps([json.loads((saved_report(run, sample("base"), one)).read_text())]))
    two = tmp_path / "two.json"
    run("inspect", sample("base"), sample("finetuned"), "-f", "json", "-o", two)
    result = run("compare", one, sample("base"), code=2)
    assert_one_error_line(result, str(one), "a list of 1 report ", "compare needs")
    result = check(run, sample("base"), "--baseline", two, "--max-l2-ratio", "2", code=2)
    assert_one_error_line(result, str(two), "a list of 2 reports", "check --baseline needs")
    result = run("trend", sample("base"), two, code=2)
    assert_one_error_line(result, str(two), "a list of 2 reports", "trend needs")
    result = check(run, two, "--max-l2", "1", code=2)
    assert_one_error_line(result, str(two), "a list of 2 reports", "check needs")


@pytest.mark.parametrize(
    "args",
    [["--max-l2-ratio", "1.5"], ["--max-tensor-l2-ratio", "1.5"], ["--require-same-tensors"]],
    ids=lambda a: a[0],
)
def test_norm_rules_work_against_a_saved_report(run: Run, tmp_path: Path, args: list[str]) -> None:
    report = saved_report(run, sample("base"), tmp_path / "base.json")
    check_json(run, sample("finetuned"), "--baseline", report, *args, code=0)


# --- outputs -----------------------------------------------------------------------------------

FAILING: list[str | Path] = [
    sample("blowup"),
    "--baseline",
    sample("finetuned"),
    "--max-tensor-l2-ratio",
    "2",
    "--max-tensor-linf",
    "1000",
]
PASSING: list[str | Path] = [
    sample("finetuned"),
    "--baseline",
    sample("base"),
    "--max-tensor-l2-ratio",
    "2",
]


def test_table_lists_violations_before_the_rules_and_the_verdict_only_on_stderr(
    run: Run,
) -> None:
    result = check(run, *FAILING, code=1)
    out = result.stdout
    assert "Violations" in out and "Rules" in out
    violations, rules = out.index("Violations"), out.index("Rules")
    assert violations < rules
    for name in (NAN_TENSOR, SCALED_TENSOR):
        assert violations < out.index(name) < rules
    rule_lines = [line.split() for line in out[rules:].splitlines()[3:] if line.strip()]
    assert [line[0] for line in rule_lines] == ["N001", "N005", "N011"]
    assert "normcli check:" not in out
    assert "\x1b" not in out
    assert_one_verdict(result.stderr, passed=False)


def test_table_of_a_pass_has_no_violations_section(run: Run) -> None:
    result = check(run, *PASSING, code=0)
    assert "Violations" not in result.stdout and "Rules" in result.stdout
    assert "normcli check:" not in result.stdout
    assert_one_verdict(result.stderr, passed=True)


def test_json_output_validates_and_says_passed(run: Run) -> None:
    failed = check_json(run, *FAILING, code=1)
    assert failed["schema"] == "normcli/check/v1" and failed["passed"] is False
    assert [r["code"] for r in failed["checked"]["rules"]] == ["N001", "N005", "N011"]
    passed = check_json(run, *PASSING, code=0)
    assert passed["passed"] is True and passed["violations"] == []


def test_output_file_gets_the_report_and_the_verdict_still_goes_to_stderr(
    run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = check(run, *FAILING, "-f", "json", "-o", out, code=1)
    assert result.stdout == ""
    assert_one_verdict(result.stderr, passed=False)
    doc = strict_json(out.read_text(encoding="utf-8"))
    validate_json(doc, "check.v1")
    assert found(doc) == {("N001", NAN_TENSOR), ("N011", SCALED_TENSOR)}


def test_several_checkpoints_give_a_list_and_one_verdict_each(run: Run) -> None:
    paths = [sample("finetuned"), sample("blowup"), sample("base")]
    result = check(run, *paths, "-f", "json", code=1)
    docs = strict_json(result.stdout)
    validate_json(docs, "check.v1")
    assert [d["checkpoint"] for d in docs] == [str(p) for p in paths]
    assert [d["passed"] for d in docs] == [True, False, True]
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert [line.split()[2] for line in lines] == ["passed", "FAILED", "passed"]
    assert all(str(p) in line for p, line in zip(paths, lines, strict=True))


@pytest.mark.parametrize("name", ["[red]tuned.safetensors", "ck[/b]x.safetensors"])
def test_the_verdict_shows_a_checkpoint_path_literally(run: Run, tmp_path: Path, name: str) -> None:
    # a path is not rich markup: "[red]" must not vanish, and "[/b]" must not turn a pass into 2
    (tmp_path / "ck[").mkdir()
    save(tmp_path / name, {"w": np.ones(3, dtype=np.float32)})
    verdict = assert_one_verdict(check(run, name, code=0).stderr, passed=True)
    assert f"passed {name} " in verdict


def test_the_verdict_stays_one_line_for_a_long_or_hostile_path(run: Run, tmp_path: Path) -> None:
    tensors = {"w": np.ones(3, dtype=np.float32)}
    long = save(tmp_path / ("x" * 150 + ".safetensors"), tensors)
    hostile = save(tmp_path / "evil\nname\x1b[31m.safetensors", tensors)
    for path in (long, hostile):
        result = check(run, path, code=0, env={"COLUMNS": "40"})
        assert "\x1b" not in result.stderr
        assert_one_verdict(result.stderr, passed=True)


# GitHub's workflow commands: message data escapes % \r \n; property values also : and ,
def unescape(text: str) -> str:
    for escaped, char in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, char)
    return text


def parse_command(line: str) -> tuple[str, dict[str, str], str]:
    """`::name key=value,key=value::message` as a runner reads it."""
    assert line.startswith("::"), line
    head, _, message = line[2:].partition("::")
    name, _, props = head.partition(" ")
    properties = dict(p.split("=", 1) for p in props.split(",")) if props else {}
    return name, {k: unescape(v) for k, v in properties.items()}, unescape(message)


@pytest.fixture
def odd_names(tmp_path: Path) -> list[Path]:
    """Checkpoints whose file and tensor names need escaping in workflow commands."""
    return [
        save(
            tmp_path / "we,ird:50%.safetensors",
            {
                "evil\nname,50%": np.array([np.nan, 1.0], dtype=np.float32),
                "ok.weight": np.ones(3, dtype=np.float32),
            },
        ),
        save(
            tmp_path / "line\nbreak\r,x.safetensors",
            {
                "big,one:\r\nx": np.full(4, 100.0, dtype=np.float32),
            },
        ),
    ]


def test_github_annotations_escape_file_and_message(run: Run, odd_names: list[Path]) -> None:
    # relative names, so the expected lines are exact whatever the temporary folder is called
    first, second = (p.name for p in odd_names)
    result = check(run, first, second, "-f", "github", "--max-tensor-l2", "10", code=1)
    lines = result.stdout.splitlines()
    assert result.stdout.endswith("\n")
    assert all(line.startswith("::") for line in lines), lines
    errors = [line for line in lines if line.startswith("::error ")]
    assert errors == [
        "::error file=we%2Cird%3A50%25.safetensors,title=normcli N001 nonfinite::"
        "evil%0Aname,50%25: 1 NaN and 0 Inf values",
        "::error file=line%0Abreak%0D%2Cx.safetensors,title=normcli N004 max-tensor-l2::"
        "big,one:%0D%0Ax: L2 200 > 10",
    ]
    parsed = [parse_command(line) for line in errors]
    assert [p[1]["file"] for p in parsed] == [first, second]
    assert [p[2].split(": ")[0] for p in parsed] == ["evil\nname,50%", "big,one:\r\nx"]
    verdicts = result.stderr.splitlines()
    assert len(verdicts) == 2 and all(v.startswith("normcli check: FAILED ") for v in verdicts)


def test_github_format_on_the_samples(run: Run) -> None:
    result = check(run, *FAILING, "-f", "github", code=1)
    errors = [
        parse_command(line) for line in result.stdout.splitlines() if line.startswith("::error")
    ]
    assert [(e[1]["title"], e[1]["file"], e[2].split(":")[0]) for e in errors] == [
        ("normcli N001 nonfinite", str(sample("blowup")), NAN_TENSOR),
        ("normcli N011 max-tensor-l2-ratio", str(sample("blowup")), SCALED_TENSOR),
    ]
    assert_one_verdict(result.stderr, passed=False)


def test_github_step_summary_is_appended_not_overwritten(run: Run, tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("## an earlier step\n\nits text\n", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    check(run, *FAILING, "-f", "github", code=1, env=env)
    check(run, *PASSING, "-f", "github", code=0, env=env)
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## an earlier step\n\nits text\n")
    failed, passed = text.index("### normcli check: ❌ failed"), text.index("### normcli check: ✅")
    assert failed < passed
    assert f"`{NAN_TENSOR}`" in text[failed:passed]
    assert f"`{SCALED_TENSOR}`" in text[failed:passed]
    assert "| N011 | max-tensor-l2-ratio |" in text[passed:]

    before = summary.read_text(encoding="utf-8")
    check(run, *FAILING, "-f", "json", code=1, env=env)  # only -f github writes the summary
    assert summary.read_text(encoding="utf-8") == before


def test_markdown_output(run: Run) -> None:
    text = check(run, *FAILING, "-f", "md", code=1).stdout
    assert text.startswith("### normcli check: ❌ failed\n")
    rows = [line for line in text.splitlines() if line.startswith("| N0")]
    assert f"| N001 | nonfinite | `{NAN_TENSOR}` | 1 NaN and 0 Inf values |" in rows
    assert any(
        row.startswith(f"| N011 | max-tensor-l2-ratio | `{SCALED_TENSOR}` |") for row in rows
    )
    assert text.index(f"`{NAN_TENSOR}`") < text.index("| code | rule | limit | result |")
    assert check(run, *PASSING, "-f", "md", code=0).stdout.startswith(
        "### normcli check: ✅ passed\n"
    )


def test_markdown_table_cells_cannot_be_broken_by_tensor_names(run: Run, tmp_path: Path) -> None:
    path = save(tmp_path / "pipes.safetensors", {"a|b`c\nd": np.array([np.nan], dtype=np.float32)})
    text = check(run, path, "-f", "md", code=1).stdout
    [row] = [line for line in text.splitlines() if line.startswith("| N001 | nonfinite | `")]
    assert row.count(" | ") == 3 and "a\\|b'c" in row and "\n" not in row


def test_markdown_rules_table_counts_violations_like_the_table_does(run: Run) -> None:
    text = check(run, *FAILING, "-f", "md", code=1).stdout
    rows = {
        line.split(" | ")[0]: line
        for line in text.splitlines()
        if line.startswith("| N0") and line.count(" | ") == 3 and "`" not in line
    }
    assert rows["| N001"] == "| N001 | nonfinite | 0 | 1 violation |"
    assert rows["| N005"] == "| N005 | max-tensor-linf | 1000 | pass |"


def junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return root


def test_junit_report_has_one_testcase_per_rule_and_a_failure_per_broken_one(
    run: Run, tmp_path: Path
) -> None:
    report = tmp_path / "normcli.xml"
    check(run, *FAILING, "--junit", report, code=1)
    [suite] = junit(report).findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "N001 nonfinite",
        "N005 max-tensor-linf",
        "N011 max-tensor-l2-ratio",
    ]
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    failures = {c.get("name"): c.find("failure") for c in cases}
    assert failures["N005 max-tensor-linf"] is None
    nonfinite, ratio = failures["N001 nonfinite"], failures["N011 max-tensor-l2-ratio"]
    assert nonfinite is not None and ratio is not None
    assert nonfinite.get("type") == "N001" and NAN_TENSOR in (nonfinite.text or "")
    assert ratio.get("type") == "N011" and SCALED_TENSOR in (ratio.text or "")

    check(run, *PASSING, "--junit", report, code=0)
    [suite] = junit(report).findall("testsuite")
    assert suite.get("failures") == "0" and suite.get("tests") == "2"
    assert suite.find("testcase/failure") is None


def test_junit_report_stays_well_formed_with_hostile_names(
    run: Run, tmp_path: Path, odd_names: list[Path]
) -> None:
    hostile = save(
        tmp_path / "esc\x1b.safetensors",
        {"bell\x07<&>\x1b[31m": np.array([np.inf], dtype=np.float32)},
    )
    report = tmp_path / "hostile.xml"
    check(run, *odd_names, hostile, "--junit", report, code=1)
    suites = junit(report).findall("testsuite")
    assert len(suites) == 3
    failure = suites[2].find("testcase/failure")
    assert failure is not None and "<&>" in (failure.text or "")


# --- exit code 2 wins when the input cannot be judged ---------------------------------------------


def _truncated(tmp_path: Path, name: str) -> Path:
    data = sample(name).read_bytes()
    path = tmp_path / f"cut-{name}.safetensors"
    path.write_bytes(data[:-1000])
    return path


@pytest.mark.parametrize("broken", ["checkpoint", "baseline"])
def test_an_unreadable_input_exits_2_even_where_rules_would_fail(
    run: Run, tmp_path: Path, broken: str
) -> None:
    ckpt = _truncated(tmp_path, "blowup") if broken == "checkpoint" else sample("blowup")
    ref = _truncated(tmp_path, "base") if broken == "baseline" else sample("base")
    for fmt in ("table", "json", "github"):
        result = check(
            run, ckpt, "--baseline", ref, "--max-tensor-l2-ratio", "2", "-f", fmt, code=2
        )
        assert_one_error_line(result, str(ckpt if broken == "checkpoint" else ref))


def test_one_unreadable_checkpoint_among_several_exits_2_without_a_half_report(
    run: Run, tmp_path: Path
) -> None:
    junit_file = tmp_path / "junit.xml"
    result = check(
        run, sample("blowup"), tmp_path / "gone.safetensors", "--junit", junit_file, code=2
    )
    assert_one_error_line(result, "gone.safetensors")
    assert not junit_file.exists()


def test_an_unreadable_checkpoint_with_a_baseline_rule_missing_its_baseline_exits_2(
    run: Run, tmp_path: Path
) -> None:
    result = check(run, tmp_path / "gone.safetensors", "--max-rel-update", "0.1", code=2)
    assert_one_error_line(result)


def test_a_zero_baseline_that_becomes_non_zero_breaks_the_drift_limits(
    run: Run, tmp_path: Path
) -> None:
    """Ratio and relative update have no finite value against an all-zero baseline: the tensor
    grew without bound, which breaks any limit rather than passing unjudged."""
    base, grown = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    safetensors.numpy.save_file(
        {"w": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}, str(base)
    )
    safetensors.numpy.save_file(
        {"w": np.ones(4, np.float32), "b": np.full(4, 1e6, np.float32)}, str(grown)
    )
    result = run(
        "check",
        grown,
        "--baseline",
        base,
        "--max-tensor-l2-ratio",
        "1.01",
        "--max-tensor-rel-update",
        "0.01",
        "-f",
        "json",
        code=1,
    )
    doc = json.loads(result.stdout)
    flagged = {(v["code"], v["tensor"]) for v in doc["violations"]}
    assert flagged == {("N011", "b"), ("N013", "b")}
    assert all(v["value"] is None and "inf" in v["message"] for v in doc["violations"])
    run(
        "check",
        base,
        "--baseline",
        base,
        "--max-tensor-l2-ratio",
        "1.01",
        "--max-tensor-rel-update",
        "0.01",
        code=0,
    )


def test_a_checkpoint_with_nothing_read_or_a_tensor_unread_fails(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    doc = check_json(run, empty, code=1)
    assert [(v["code"], v["tensor"]) for v in doc["violations"]] == [("N016", None)]
    check(run, empty, "--allow-unread", code=0)

    from normcli.readers import Checkpoint, safetensors

    original = safetensors.open_safetensors

    def with_an_unreadable_tensor(path: str) -> Checkpoint:
        checkpoint = original(path)
        checkpoint.skipped.append(("blk.9.weight", "Q8_1 cannot be dequantized"))
        return checkpoint

    monkeypatch.setattr(safetensors, "open_safetensors", with_an_unreadable_tensor)
    doc = check_json(run, sample("base"), code=1)
    assert [(v["code"], v["tensor"]) for v in doc["violations"]] == [("N016", "blk.9.weight")]
    assert "Q8_1" in doc["violations"][0]["message"]
