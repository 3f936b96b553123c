"""`normcli inspect` end to end: exit codes and error lines, every output format, checked against
an independent float64 reference and the JSON Schema, and golden tables."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import struct
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from conftest import SAMPLES, Run, validate_json
from safetensors import safe_open

from normcli import __version__

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("NORMCLI_UPDATE_GOLDEN") == "1"

SAMPLE_FILES = [*sorted(p.name for p in SAMPLES.glob("*.safetensors")), "base.npz"]
NAN_TENSOR = "model.layers.0.self_attn.v_proj.weight"
SCALED_TENSOR = "model.layers.1.mlp.down_proj.weight"
INT_TENSOR = "model.position_ids"

FLOAT_FIELDS = ("l1", "l2", "linf", "rms", "mean", "sparsity")
COUNT_FIELDS = ("numel", "zeros", "nan", "inf")


# --- helpers ---------------------------------------------------------------------------------


def strict_json(text: str) -> Any:
    """Parse JSON, failing on the NaN / Infinity tokens Python would otherwise accept."""

    def reject(token: str) -> None:
        raise AssertionError(f"{token} is not a JSON number")

    return json.loads(text, parse_constant=reject)


def inspect_json(run: Run, *args: str | Path) -> Any:
    doc = strict_json(run("inspect", *args, "-f", "json").stdout)
    validate_json(doc, "inspect.v1")
    return doc


def assert_one_error_line(result: Any, mentioning: str | None = None) -> str:
    """Nothing on stdout; exactly one `normcli: error:` line on stderr, without a traceback."""
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), f"not one line: {result.stderr!r}"
    line: str = lines[0]
    assert line.startswith("normcli: error: ")
    if mentioning is not None:
        assert mentioning in line
    return line


def stored_arrays(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as stored, read by the reference libraries (not by normcli)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    arrays = {}
    with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            stored = f.get_slice(name)
            if stored.get_dtype() == "BF16":  # numpy has no bfloat16: read the bytes ourselves
                arrays[name] = _bf16_tensor(path, name)
                assert list(arrays[name].shape) == stored.get_shape()
            else:
                arrays[name] = f.get_tensor(name)
    return arrays


def _bf16_tensor(path: Path, name: str) -> np.ndarray:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    info = json.loads(data[8 : 8 + header_len])[name]
    begin, end = info["data_offsets"]
    raw = data[8 + header_len + begin : 8 + header_len + end]
    array: np.ndarray = np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(info["shape"])
    return array


def is_floating(array: np.ndarray) -> bool:
    return array.dtype.kind in "fc" or array.dtype == ml_dtypes.bfloat16


def reference_stats(arrays: Iterable[np.ndarray]) -> dict[str, Any]:
    """The figures normcli reports, computed the slow obvious way: float64 and math.fsum."""
    parts = [np.asarray(a).astype(np.float64).reshape(-1) for a in arrays]
    x = np.concatenate(parts) if parts else np.zeros(0)
    finite = x[np.isfinite(x)]
    sumsq = math.fsum((finite * finite).tolist())
    n = finite.size
    return {
        "numel": x.size,
        "l1": math.fsum(np.abs(finite).tolist()),
        "l2": math.sqrt(sumsq),
        "linf": float(np.abs(finite).max()) if n else 0.0,
        "rms": math.sqrt(sumsq / n) if n else None,
        "mean": math.fsum(finite.tolist()) / n if n else None,
        "zeros": int(np.count_nonzero(finite == 0)),
        "sparsity": int(np.count_nonzero(finite == 0)) / x.size if x.size else None,
        "nan": int(np.isnan(x).sum()),
        "inf": int(np.isinf(x).sum()),
    }


def assert_figures(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    for key, want in expected.items():
        got = actual[key]
        if want is None or isinstance(want, (int, bool, str)):
            assert got == want, f"{where}: {key} = {got!r}, expected {want!r}"
        else:
            assert got is not None and math.isclose(got, want, rel_tol=1e-10, abs_tol=1e-300), (
                f"{where}: {key} = {got!r}, expected {want!r}"
            )


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    safetensors.numpy.save_file(tensors, str(path))
    return path


def layered_checkpoint(path: Path) -> Path:
    """Layers 0, 1, 2 and 10, stored (as safetensors sorts names) with layers.10 before layers.2."""
    rng = np.random.default_rng(7)
    tensors = {}
    for layer in (0, 1, 2, 10):
        for part in ("attn", "mlp"):
            tensors[f"model.layers.{layer}.{part}.weight"] = rng.standard_normal(
                (4, 3 + layer)
            ).astype(np.float32)
    tensors["model.norm.weight"] = np.ones(5, dtype=np.float32)
    return write_safetensors(path, tensors)


def table_rows(text: str) -> dict[str, str]:
    """Table lines by the tensor (or group) name that starts them."""
    return {
        line.split()[0]: line
        for line in text.splitlines()
        if line[:1].isalpha() and line.split()[0].startswith(("model.", "lm_head."))
    }


# --- exit code 0: success, version, help -----------------------------------------------------


def test_inspect_succeeds_with_a_table_on_stdout_and_nothing_on_stderr(
    run: Run, samples: Path
) -> None:
    result = run("inspect", samples / "base.safetensors", code=0)
    assert result.stderr == ""
    assert "Whole model" in result.stdout
    assert "lm_head.weight" in result.stdout


def test_output_to_a_pipe_is_plain_even_without_no_color(run: Run, samples: Path) -> None:
    result = run("inspect", samples / "blowup.safetensors", env={"NO_COLOR": None})
    assert "\x1b" not in result.stdout and "non-finite!" in result.stdout


def test_version(run: Run) -> None:
    result = run("--version")
    assert result.stdout == f"normcli, version {__version__}\n"
    assert result.stderr == ""


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_commands_and_exit_codes(run: Run, flag: str) -> None:
    result = run(flag)
    assert result.stdout.startswith("Usage: normcli")
    assert "inspect" in result.stdout and "Exit codes" in result.stdout
    assert result.stderr == ""


def test_no_command_shows_the_usage_not_an_error_wrapped_around_it(run: Run) -> None:
    result = run(code=None)
    assert result.exit_code in (0, 2)  # Click 8.2+ exits 2 for a group given no command
    text = result.stdout + result.stderr
    assert text.startswith("Usage: normcli")
    assert "inspect" in text
    assert "normcli: error:" not in text


def test_inspect_help_shows_examples(run: Run) -> None:
    result = run("inspect", "--help")
    assert "Examples:" in result.stdout
    assert "normcli inspect model.safetensors --sort l2 --top 20" in result.stdout
    assert "--group-by" in result.stdout and "--include-int" in result.stdout
    assert result.stderr == ""


# --- exit code 2: bad input ------------------------------------------------------------------

# Each builds the arguments of one bad run in a temporary folder, and the file the error must name.
BadInput = Callable[[Path, Path], tuple[list[str], Path]]


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sample_prefix(samples: Path, name: str, size: int) -> bytes:
    data = (samples / name).read_bytes()
    return data[: size if size >= 0 else len(data) + size]


def _one(path: Path) -> tuple[list[str], Path]:
    return [str(path)], path


def _directory(tmp: Path) -> Path:
    folder = tmp / "checkpoint_dir"
    folder.mkdir()
    return folder


RANDOM_BYTES = random.Random(20261126).randbytes(4096)

BAD_INPUTS: dict[str, BadInput] = {
    "missing-file": lambda tmp, s: _one(tmp / "missing.safetensors"),
    "directory": lambda tmp, s: _one(_directory(tmp)),
    "empty-file": lambda tmp, s: _one(_file(tmp / "empty", b"")),
    "empty-safetensors": lambda tmp, s: _one(_file(tmp / "empty.safetensors", b"")),
    "random-bytes": lambda tmp, s: _one(_file(tmp / "noise.bin", RANDOM_BYTES)),
    "random-bytes-safetensors": lambda tmp, s: _one(_file(tmp / "noise.safetensors", RANDOM_BYTES)),
    "truncated-safetensors-data": lambda tmp, s: _one(
        _file(tmp / "cut.safetensors", _sample_prefix(s, "base.safetensors", -1000))
    ),
    "truncated-safetensors-header": lambda tmp, s: _one(
        _file(tmp / "cut.safetensors", _sample_prefix(s, "base.safetensors", 100))
    ),
    "truncated-npz": lambda tmp, s: _one(
        _file(tmp / "cut.npz", _sample_prefix(s, "base.npz", 50_000))
    ),
    "wrong-input-format": lambda tmp, s: (
        [str(s / "base.safetensors"), "--input-format", "npz"],
        s / "base.safetensors",
    ),
    # the first checkpoint is fine: no half report may reach stdout
    "second-checkpoint-missing": lambda tmp, s: (
        [str(s / "base.safetensors"), str(tmp / "gone.npz")],
        tmp / "gone.npz",
    ),
    "output-folder-missing": lambda tmp, s: (
        [str(s / "base.safetensors"), "-o", str(tmp / "no" / "such" / "report.txt")],
        tmp / "no" / "such" / "report.txt",
    ),
}


@pytest.mark.parametrize("fmt", ["table", "json"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line_naming_the_file(
    run: Run, tmp_path: Path, samples: Path, case: str, fmt: str
) -> None:
    args, named = BAD_INPUTS[case](tmp_path, samples)
    result = run("inspect", *args, "-f", fmt, code=2)
    assert_one_error_line(result, mentioning=str(named))


def test_error_line_stays_one_safe_line_for_a_hostile_file_name(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "evil\nname\x1b[31m.safetensors"
    result = run("inspect", path, code=2)
    line = assert_one_error_line(result)
    assert "\x1b" not in result.stderr
    assert "evil" in line and "name" in line


# --- exit code 2: bad usage ------------------------------------------------------------------

BAD_OPTIONS: dict[str, tuple[list[str], str]] = {
    "top-zero": (["--top", "0"], "--top"),
    "top-negative": (["--top", "-3"], "--top"),
    "top-not-a-number": (["--top", "many"], "--top"),
    "sort-bogus": (["--sort", "bogus"], "--sort"),
    "format-bogus": (["--format", "bogus"], "--format"),
    "format-short-bogus": (["-f", "bogus"], "--format"),
    "group-by-zero": (["--group-by", "0"], "--group-by"),
    "threads-zero": (["--threads", "0"], "--threads"),
    "input-format-bogus": (["--input-format", "gguf2"], "--input-format"),
    "unknown-option": (["--bogus"], "--bogus"),
    "option-missing-its-value": (["--top"], "--top"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_exits_2_with_one_error_line(run: Run, samples: Path, case: str) -> None:
    args, option = BAD_OPTIONS[case]
    result = run("inspect", samples / "base.safetensors", *args, code=2)
    assert_one_error_line(result, mentioning=option)


def test_missing_argument_exits_2(run: Run) -> None:
    assert_one_error_line(run("inspect", code=2), mentioning="CKPT")


def test_unknown_command_exits_2(run: Run) -> None:
    assert_one_error_line(run("inspekt", "x.safetensors", code=2), mentioning="inspekt")


# --- JSON: schema and exact figures ----------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_json_of_every_sample_matches_schema_and_float64_reference(
    run: Run, samples: Path, name: str
) -> None:
    path = samples / name
    doc = inspect_json(run, path)
    arrays = stored_arrays(path)

    assert doc["schema"] == "normcli/inspect/v1"
    assert doc["checkpoint"] == {
        "path": str(path),
        "format": path.suffix[1:],
        "bytes": path.stat().st_size,
        "tensors": len(arrays),
        "shards": 1,
        "skipped_values": 0,
        "skipped_tensors": [],
    }
    assert doc["selected"] == len(arrays)
    assert doc["groups"] is None
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(arrays)
    for row in doc["tensors"]:
        array = arrays[row["name"]]
        assert row["shape"] == list(array.shape)
        assert row["bytes"] == array.nbytes
        assert row["in_total"] == is_floating(array)
        assert_figures(row, reference_stats([array]), row["name"])

    floating = [a for a in arrays.values() if is_floating(a)]
    total = doc["total"]
    assert_figures(total, reference_stats(floating), f"{name} total")
    assert total["bytes"] == sum(a.nbytes for a in floating)
    assert total["covers"] == {
        "scope": "floating",
        "tensors": len(floating),
        "excluded": len(arrays) - len(floating),
        "optimizer_excluded": 0,
    }
    dtypes = {t["dtype"] for t in doc["tensors"]}
    assert [d["dtype"] for d in total["by_dtype"]] == sorted(dtypes)
    for summary in total["by_dtype"]:
        same = [arrays[t["name"]] for t in doc["tensors"] if t["dtype"] == summary["dtype"]]
        assert summary["tensors"] == len(same)
        assert summary["bytes"] == sum(a.nbytes for a in same)
        assert_figures(summary, reference_stats(same), f"{name} {summary['dtype']}")


def test_blowup_json_counts_the_nan_and_keeps_the_norms_finite(run: Run, samples: Path) -> None:
    doc = inspect_json(run, samples / "blowup.safetensors")
    rows = {t["name"]: t for t in doc["tensors"]}
    assert rows[NAN_TENSOR]["nan"] == 1 and rows[NAN_TENSOR]["l2"] > 0
    assert doc["total"]["nan"] == 1 and doc["total"]["inf"] == 0
    largest = max((t for t in doc["tensors"] if t["in_total"]), key=lambda t: t["l2"])
    assert largest["name"] == SCALED_TENSOR


def test_values_that_do_not_exist_are_null_and_the_document_still_validates(
    run: Run, tmp_path: Path
) -> None:
    path = write_safetensors(
        tmp_path / "odd.safetensors",
        {
            "empty": np.zeros((0, 4), dtype=np.float32),
            "all_nan": np.full(3, np.nan, dtype=np.float32),
            "complex": np.array([1 + 2j, 3j], dtype=np.complex64),
            "overflow": np.array([1.5e308, 1.5e308], dtype=np.float64),
            "flags": np.array([True, False]),
        },
    )
    result = run("inspect", path, "-f", "json")
    assert result.stderr == ""
    doc = strict_json(result.stdout)
    validate_json(doc, "inspect.v1")
    rows = {t["name"]: t for t in doc["tensors"]}
    assert rows["empty"]["sparsity"] is None and rows["empty"]["rms"] is None
    assert rows["all_nan"]["nan"] == 3 and rows["all_nan"]["mean"] is None
    assert rows["complex"]["mean"] is None and rows["complex"]["l2"] == pytest.approx(14**0.5)
    assert rows["overflow"]["l2"] is None and rows["overflow"]["linf"] == 1.5e308
    assert doc["total"]["l2"] is None


def test_several_checkpoints_give_a_json_list_in_argument_order(run: Run, samples: Path) -> None:
    paths = [samples / "base.safetensors", samples / "finetuned.safetensors", samples / "base.npz"]
    docs = strict_json(run("inspect", *paths, "-f", "json").stdout)
    validate_json(docs, "inspect.v1")
    assert isinstance(docs, list)
    assert [d["checkpoint"]["path"] for d in docs] == [str(p) for p in paths]
    assert docs[1] == inspect_json(run, paths[1])


def test_one_checkpoint_gives_one_json_object(run: Run, samples: Path) -> None:
    assert isinstance(inspect_json(run, samples / "base.safetensors"), dict)


@pytest.mark.parametrize("fmt", ["json", "table", "csv", "md"])
def test_output_file_gets_the_report_and_stdout_stays_empty(
    run: Run, samples: Path, tmp_path: Path, fmt: str
) -> None:
    path = samples / "blowup.safetensors"
    out = tmp_path / f"report.{fmt}"
    result = run("inspect", path, "-f", fmt, "-o", out)
    assert result.stdout == "" and result.stderr == ""
    written = out.read_text(encoding="utf-8")
    assert "\x1b" not in written
    if fmt == "json":
        assert strict_json(written) == strict_json(run("inspect", path, "-f", "json").stdout)
    elif fmt in ("csv", "md"):
        assert written == run("inspect", path, "-f", fmt).stdout
    else:
        assert "Whole model" in written and SCALED_TENSOR in written


# --- selection: sort, top, filter, exclude, group-by, include-int ----------------------------


@pytest.mark.parametrize("key", ["l2", "l1", "linf", "numel"])
def test_sort_and_top_give_the_largest_rows_in_order(run: Run, samples: Path, key: str) -> None:
    path = samples / "blowup.safetensors"
    everything = inspect_json(run, path)["tensors"]
    doc = inspect_json(run, path, "--sort", key, "--top", "3")
    expected = sorted(everything, key=lambda t: t[key], reverse=True)[:3]
    assert [t[key] for t in doc["tensors"]] == [t[key] for t in expected]
    assert doc["selected"] == len(everything)
    if key == "l2":
        assert doc["tensors"][0]["name"] == SCALED_TENSOR
        values = [t["l2"] for t in doc["tensors"]]
        assert values == sorted(values, reverse=True) and len(set(values)) == 3


def test_top_in_the_table_says_how_many_rows_are_hidden(run: Run, samples: Path) -> None:
    out = run("inspect", samples / "blowup.safetensors", "--sort", "l2", "--top", "3").stdout
    assert list(table_rows(out))[:3] == [
        t["name"]
        for t in inspect_json(run, samples / "blowup.safetensors", "--sort", "l2", "--top", "3")[
            "tensors"
        ]
    ]
    assert "17 more tensors not shown" in out


def test_sort_by_name_is_natural_order(run: Run, tmp_path: Path) -> None:
    doc = inspect_json(run, layered_checkpoint(tmp_path / "layers.safetensors"), "--sort", "name")
    names = [t["name"] for t in doc["tensors"]]
    layers = [int(n.split(".")[2]) for n in names if n.startswith("model.layers.")]
    assert layers == [0, 0, 1, 1, 2, 2, 10, 10]
    assert names[-1] == "model.norm.weight"


SELECTIONS = [
    (["--filter", "*.mlp.*"], ["*.mlp.*"], []),
    (["--filter", "*.mlp.*", "--filter", "*norm*"], ["*.mlp.*", "*norm*"], []),
    (["--exclude", "model.layers.*"], [], ["model.layers.*"]),
    (["--filter", "model.layers.1.*", "--exclude", "*proj*"], ["model.layers.1.*"], ["*proj*"]),
]


@pytest.mark.parametrize(
    ("args", "include", "exclude"), SELECTIONS, ids=[" ".join(s[0]) for s in SELECTIONS]
)
def test_filter_and_exclude_globs(
    run: Run, samples: Path, args: list[str], include: list[str], exclude: list[str]
) -> None:
    path = samples / "finetuned.safetensors"
    everything = inspect_json(run, path)["tensors"]
    expected = [
        t
        for t in everything
        if (not include or any(fnmatchcase(t["name"], g) for g in include))
        and not any(fnmatchcase(t["name"], g) for g in exclude)
    ]
    doc = inspect_json(run, path, *args)
    assert [t["name"] for t in doc["tensors"]] == [t["name"] for t in expected]
    assert doc["selected"] == len(expected)
    assert doc["checkpoint"]["tensors"] == len(everything)
    covered = [t for t in expected if t["in_total"]]
    assert doc["total"]["covers"]["tensors"] == len(covered)
    assert doc["total"]["numel"] == sum(t["numel"] for t in covered)
    assert doc["total"]["l2"] == pytest.approx(
        math.sqrt(math.fsum(t["l2"] ** 2 for t in covered)), rel=1e-12
    )


@pytest.mark.parametrize(
    "args", [["--filter", "nothing-matches"], ["--exclude", "*.weight", "--exclude", "*_ids"]]
)
def test_a_selection_that_leaves_nothing_is_a_usage_error(
    run: Run, samples: Path, args: list[str]
) -> None:
    result = run("inspect", samples / "finetuned.safetensors", *args, code=2)
    line = assert_one_error_line(result)
    assert "left none of the 20 tensors" in line and args[1] in line


def _check_groups(doc: dict[str, Any], depth: int) -> None:
    members: dict[str, list[dict[str, Any]]] = {}
    for t in doc["tensors"]:
        if t["in_total"]:
            members.setdefault(".".join(t["name"].split(".")[:depth]), []).append(t)
    assert sorted(g["name"] for g in doc["groups"]) == sorted(members)
    for group in doc["groups"]:
        rows = members[group["name"]]
        assert group["tensors"] == len(rows)
        assert group["dtypes"] == sorted({t["dtype"] for t in rows})
        assert group["bytes"] == sum(t["bytes"] for t in rows)
        assert group["numel"] == sum(t["numel"] for t in rows)
        assert group["nan"] == sum(t["nan"] for t in rows)
        assert group["linf"] == max(t["linf"] for t in rows)
        assert math.isclose(group["l1"], math.fsum(t["l1"] for t in rows), rel_tol=1e-12)
        assert math.isclose(
            group["l2"], math.sqrt(math.fsum(t["l2"] ** 2 for t in rows)), rel_tol=1e-12
        )


def test_group_by_3_on_the_samples(run: Run, samples: Path) -> None:
    doc = inspect_json(run, samples / "blowup.safetensors", "--group-by", "3")
    assert [g["name"] for g in doc["groups"]] == [
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.layers.0",
        "model.layers.1",
        "model.norm.weight",
    ]
    _check_groups(doc, 3)
    layer1 = next(g for g in doc["groups"] if g["name"] == "model.layers.1")
    assert layer1["tensors"] == 8


def test_group_by_orders_layer_numbers_numerically(run: Run, tmp_path: Path) -> None:
    path = layered_checkpoint(tmp_path / "layers.safetensors")
    doc = inspect_json(run, path, "--group-by", "3")
    assert [g["name"] for g in doc["groups"]] == [
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.layers.10",
        "model.norm.weight",
    ]
    _check_groups(doc, 3)
    table = run("inspect", path, "--group-by", "3").stdout
    assert list(table_rows(table)) == [g["name"] for g in doc["groups"]]


def test_group_by_with_sort_and_top_limits_groups(run: Run, tmp_path: Path) -> None:
    path = layered_checkpoint(tmp_path / "layers.safetensors")
    doc = inspect_json(run, path, "--group-by", "3", "--sort", "l2", "--top", "2")
    everything = inspect_json(run, path, "--group-by", "3")["groups"]
    expected = sorted(everything, key=lambda g: g["l2"], reverse=True)[:2]
    assert doc["groups"] == expected


def test_include_int_counts_the_int_tensor_in_the_total(run: Run, samples: Path) -> None:
    path = samples / "base.safetensors"
    default = inspect_json(run, path)
    with_int = inspect_json(run, path, "--include-int")
    arrays = stored_arrays(path)

    assert default["total"]["covers"] == {
        "scope": "floating",
        "tensors": 19,
        "excluded": 1,
        "optimizer_excluded": 0,
    }
    assert {t["name"]: t["in_total"] for t in default["tensors"]}[INT_TENSOR] is False
    assert with_int["total"]["covers"] == {
        "scope": "all",
        "tensors": 20,
        "excluded": 0,
        "optimizer_excluded": 0,
    }
    assert all(t["in_total"] for t in with_int["tensors"])
    assert_figures(with_int["total"], reference_stats(arrays.values()), "total with int")
    assert with_int["total"]["bytes"] == sum(a.nbytes for a in arrays.values())
    assert with_int["total"]["numel"] == default["total"]["numel"] + 64


def test_include_int_shows_in_the_table(run: Run, samples: Path) -> None:
    default = run("inspect", samples / "base.safetensors").stdout
    with_int = run("inspect", samples / "base.safetensors", "--include-int").stdout
    assert "not in total" in table_rows(default)[INT_TENSOR]
    assert "--include-int adds them" in default
    assert "not in total" not in with_int and "--include-int adds them" not in with_int


# --- CSV and Markdown ------------------------------------------------------------------------

TENSOR_CSV_COLUMNS = [
    "row",
    "checkpoint",
    "name",
    "dtype",
    "shape",
    "bytes",
    "numel",
    "l1",
    "l2",
    "linf",
    "rms",
    "mean",
    "zeros",
    "sparsity",
    "nan",
    "inf",
    "in_total",
    "shard",
]


def _assert_csv_cell(cell: str, value: Any, where: str) -> None:
    if value is None:
        assert cell == "", where
    elif isinstance(value, bool):
        assert cell.lower() == str(value).lower(), where
    elif isinstance(value, int):
        assert int(cell) == value, where
    elif isinstance(value, float):
        assert float(cell) == value, f"{where}: {cell} does not round-trip to {value!r}"
    else:
        assert cell == value, where


def test_csv_has_a_header_and_one_full_precision_row_per_tensor(run: Run, samples: Path) -> None:
    path = samples / "blowup.safetensors"
    tensors = inspect_json(run, path)["tensors"]
    rows = list(csv.reader(io.StringIO(run("inspect", path, "-f", "csv").stdout)))
    assert rows[0] == TENSOR_CSV_COLUMNS
    assert len(rows) == 1 + len(tensors) + 1  # and the whole model's row
    for cells, tensor in zip(rows[1:], tensors, strict=False):
        record = dict(zip(rows[0], cells, strict=True))
        assert record["checkpoint"] == str(path) and record["row"] == "tensor"
        assert record["shape"] == "x".join(map(str, tensor["shape"]))
        for column in [*TENSOR_CSV_COLUMNS[5:], "name", "dtype"]:
            _assert_csv_cell(record[column], tensor[column], f"{tensor['name']} {column}")


def test_csv_with_groups_has_one_row_per_group(run: Run, samples: Path) -> None:
    path = samples / "base.safetensors"
    groups = inspect_json(run, path, "--group-by", "3")["groups"]
    text = run("inspect", path, "-f", "csv", "--group-by", "3").stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:5] == ["row", "checkpoint", "name", "tensors", "dtypes"]
    assert [r[2] for r in rows[1:-1]] == [g["name"] for g in groups]
    assert {r[0] for r in rows[1:-1]} == {"group"} and rows[-1][0] == "total"
    for cells, group in zip(rows[1:], groups, strict=False):
        record = dict(zip(rows[0], cells, strict=True))
        for column in ("numel", "l1", "l2", "linf", "nan"):
            _assert_csv_cell(record[column], group[column], f"{group['name']} {column}")


def test_markdown_has_a_table_per_checkpoint(run: Run, samples: Path) -> None:
    paths = [samples / "base.safetensors", samples / "blowup.safetensors"]
    text = run("inspect", *paths, "-f", "md").stdout
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("| tensor | dtype | shape |")]
    assert len(headers) == 2
    for i in headers:
        assert re.fullmatch(r"\|(-{3,}:?\|)+", lines[i + 1])
        body = lines[i + 2 : i + 2 + 20]
        assert all(line.startswith("| `") and line.endswith(" |") for line in body)
        assert len({line.count(" | ") for line in [lines[i], *body]}) == 1  # same column count
    assert text.count("**Whole model**") == 2
    assert f"`{NAN_TENSOR}`" in text


# --- the table: flags, golden files, narrow terminals ----------------------------------------


def test_blowup_table_flags_the_nan_tensor_and_the_largest_l2(run: Run, samples: Path) -> None:
    out = run("inspect", samples / "blowup.safetensors").stdout
    rows = table_rows(out)
    assert "non-finite!" in rows[NAN_TENSOR]
    assert "max L2" in rows[SCALED_TENSOR]
    assert sum("non-finite!" in line for line in rows.values()) == 1
    assert sum("max L2" in line for line in rows.values()) == 1
    assert "NaN 1" in out


def test_max_marks_refer_to_every_selected_tensor_not_only_the_rows_top_kept(
    run: Run, samples: Path
) -> None:
    path = samples / "base.safetensors"
    total = inspect_json(run, path)["total"]
    shown = {t["name"]: t for t in inspect_json(run, path, "--sort", "l2", "--top", "4")["tensors"]}
    rows = table_rows(run("inspect", path, "--sort", "l2", "--top", "4").stdout)
    for name, line in rows.items():
        if "max Linf" in line:
            assert shown[name]["linf"] == total["linf"], (
                f"{name} is marked max Linf with {shown[name]['linf']}, but the model's is "
                f"{total['linf']}"
            )


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; NORMCLI_UPDATE_GOLDEN=1 rewrites it instead."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    assert path.exists(), f"no golden file {path}; rerun with NORMCLI_UPDATE_GOLDEN=1 to make it"
    expected = path.read_bytes().decode("utf-8")
    assert text == expected, (
        f"table differs from {path} (if the change is intended, rerun with "
        "NORMCLI_UPDATE_GOLDEN=1 and review the diff)"
    )


GOLDEN_CASES = {
    "inspect_blowup.txt": (["blowup.safetensors"], "200"),
    "inspect_blowup_narrow.txt": (["blowup.safetensors"], "80"),
    "inspect_base_groups.txt": (["base.safetensors", "--group-by", "3"], "200"),
    "inspect_two_files_filtered.txt": (
        ["base-bf16.safetensors", "base.npz", "--filter", "model.layers.1.*", "--sort", "name"],
        "200",
    ),
}


@pytest.mark.parametrize("golden", list(GOLDEN_CASES))
def test_table_matches_golden_file(
    run: Run, samples: Path, monkeypatch: pytest.MonkeyPatch, golden: str
) -> None:
    args, columns = GOLDEN_CASES[golden]
    monkeypatch.chdir(samples.parent)  # the paths the table prints are the ones given
    args = [f"sample_checkpoints/{a}" if a.endswith((".safetensors", ".npz")) else a for a in args]
    result = run("inspect", *args, env={"COLUMNS": columns, "NO_COLOR": "1"})
    assert result.stderr == ""
    check_golden(golden, result.stdout)


def _hidden_columns(text: str) -> list[str]:
    flat = " ".join(text.split())
    found = re.search(r"terminal too narrow: (.+?) not shown", flat)
    assert found, "the table does not say which columns it hid"
    return found.group(1).split(", ")


def test_narrow_terminal_hides_columns_and_says_which(run: Run, samples: Path) -> None:
    out = run("inspect", samples / "blowup.safetensors", env={"COLUMNS": "80"}).stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    hidden = _hidden_columns(out)
    header = next(line for line in out.splitlines() if line.startswith("tensor "))
    assert hidden and all(column not in header.split() for column in hidden)
    assert {"L2", "NaN"} <= set(header.split())
    assert "non-finite!" in out and "max L2" in out
    wide = run("inspect", samples / "blowup.safetensors", env={"COLUMNS": "200"}).stdout
    assert "terminal too narrow" not in wide


def test_narrow_group_table_names_only_columns_it_has(run: Run, samples: Path) -> None:
    out = run(
        "inspect", samples / "base.safetensors", "--group-by", "3", env={"COLUMNS": "80"}
    ).stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    header = next(line for line in out.splitlines() if line.startswith("group "))
    hidden = _hidden_columns(out)
    assert "shape" not in hidden  # a group table has no shape column to hide
    assert all(column not in header.split() for column in hidden)


# --- untrusted tensor names ------------------------------------------------------------------

HOSTILE_NAMES = {
    "markup": "[red]x[/red]",
    "markup-group": "[bold]grp.weight",
    "escape": "esc\x1b[31mred",
    "bell": "bell\x07.weight",
    "newline": "two\nlines",
    "osc": "link\x1b]8;;http://x\x07click\x1b]8;;\x07",
}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


@pytest.fixture
def hostile_checkpoint(tmp_path: Path) -> Path:
    return write_safetensors(
        tmp_path / "hostile.safetensors",
        {
            name: np.full(i + 1, float(i + 1), dtype=np.float32)
            for i, name in enumerate(HOSTILE_NAMES.values())
        },
    )


@pytest.mark.parametrize(
    "args",
    [["-f", "table"], ["-f", "table", "--group-by", "1"], ["-f", "md"], ["-f", "csv"]],
    ids=["table", "table-groups", "md", "csv"],
)
def test_hostile_tensor_names_print_literally_and_safely(
    run: Run, hostile_checkpoint: Path, args: list[str]
) -> None:
    out = run("inspect", hostile_checkpoint, *args).stdout
    assert not CONTROL.search(out), f"control character reached stdout: {out!r}"
    # rich markup in a name is text, never interpreted (grouped, the name is cut at its "/")
    assert ("[red]x[" if "--group-by" in args else "[red]x[/red]") in out
    assert ("[bold]grp" if "--group-by" in args else "[bold]grp.weight") in out


def test_hostile_tensor_names_survive_exactly_in_json(run: Run, hostile_checkpoint: Path) -> None:
    result = run("inspect", hostile_checkpoint, "-f", "json")
    assert not CONTROL.search(result.stdout)  # JSON escapes them as \u001b ...
    doc = strict_json(result.stdout)
    validate_json(doc, "inspect.v1")
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(HOSTILE_NAMES.values())


# --- the schema itself -----------------------------------------------------------------------


def _all_objects(schema: Any) -> Iterable[dict[str, Any]]:
    if isinstance(schema, dict):
        if "properties" in schema:
            yield schema
        for value in schema.values():
            yield from _all_objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _all_objects(value)


def test_schema_requires_every_key_forbids_others_and_documents_each() -> None:
    from conftest import load_schema

    schema = load_schema("inspect.v1")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = list(_all_objects(schema))
    assert len(objects) >= 6
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])
        for key, prop in obj["properties"].items():
            assert prop.get("description"), f"{key} has no description"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("groups"),
        lambda d: d["total"].update(surprise=1),
        lambda d: d["tensors"][0].update(l2="12.5"),
        lambda d: d["tensors"][0].update(numel=None),
        lambda d: d["total"]["covers"].update(scope="some"),
        lambda d: d.update(schema="normcli/inspect/v2"),
    ],
    ids=["missing-key", "extra-key", "string-number", "null-count", "bad-scope", "other-version"],
)
def test_schema_rejects_documents_that_break_the_contract(
    run: Run, samples: Path, mutate: Callable[[dict[str, Any]], Any]
) -> None:
    doc = inspect_json(run, samples / "base.safetensors")
    mutate(doc)
    with pytest.raises(pytest.fail.Exception):
        validate_json(doc, "inspect.v1")


# --- found by trying real published files ------------------------------------------------------


def test_a_pytorch_zip_is_read_as_pytorch_not_as_an_empty_npz(run: Run, tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", b"\x00" * 16)
    assert json.loads(run("inspect", path, "-f", "json").stdout)["checkpoint"]["format"] == (
        "pytorch"
    )
    forced = run("inspect", path, "--input-format", "npz", code=2)
    assert_one_error_line(forced, "PyTorch checkpoint")
    other = tmp_path / "docs.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("README.txt", "hello")
    assert_one_error_line(run("inspect", other, code=2), "no .npy arrays")


def test_arrays_written_one_after_another_are_not_one_npy(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "two.eqx"
    with open(path, "wb") as f:
        np.save(f, np.ones(3, np.float32))
        np.save(f, np.ones(5, np.float32))
    line = assert_one_error_line(run("inspect", path, code=2), "belong to no tensor")
    assert str(path) in line


def test_output_never_overwrites_an_input(run: Run, tmp_path: Path, samples: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes((samples / "base.safetensors").read_bytes())
    assert_one_error_line(run("inspect", path, "-f", "csv", "-o", path, code=2), "overwrite")
    assert path.read_bytes() == (samples / "base.safetensors").read_bytes()


def test_a_full_disk_is_a_clear_error_not_an_internal_one(samples: Path) -> None:
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "normcli",
                "inspect",
                str(samples / "base.safetensors"),
                "-f",
                "json",
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.startswith("normcli: error:") and "No space left" in done.stderr
    assert "internal error" not in done.stderr and done.stderr.count("\n") == 1


def test_a_reader_that_goes_away_is_not_a_failed_check(tmp_path: Path) -> None:
    import subprocess
    import sys

    many = {f"layer.{i}.weight": np.full(4, i, np.float32) for i in range(3000)}
    path = tmp_path / "many.safetensors"
    safetensors.numpy.save_file(many, str(path))
    process = subprocess.Popen(
        [sys.executable, "-m", "normcli", "inspect", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert process.stdout is not None and process.stderr is not None
    with process.stdout, process.stderr:
        process.stdout.readline()
        process.stdout.close()  # what `| head -1` does
        assert process.wait(timeout=60) == 0
        assert process.stderr.read() == b""


def test_markdown_code_spans_hold_backticks(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "tick.safetensors"
    safetensors.numpy.save_file({"back`tick.weight": np.ones(2, np.float32)}, str(path))
    out = run("inspect", path, "-f", "md").stdout
    assert "`` back`tick.weight ``" in out


def test_linf_of_no_finite_values_does_not_exist(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    safetensors.numpy.save_file({"w": np.full(3, np.nan, np.float32)}, str(path))
    row = json.loads(run("inspect", path, "-f", "json").stdout)["tensors"][0]
    assert row["linf"] is None and row["rms"] is None and row["nan"] == 3 and row["l2"] == 0.0


def test_group_by_cuts_slash_separated_names_too(run: Run, tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "keras.safetensors",
        {
            "model_weights/dense/kernel:0": np.ones(4, np.float32),
            "model_weights/dense/bias:0": np.ones(2, np.float32),
            "model_weights/conv/kernel:0": np.ones(3, np.float32),
        },
    )
    doc = json.loads(run("inspect", path, "--group-by", "2", "-f", "json").stdout)
    assert [(g["name"], g["tensors"]) for g in doc["groups"]] == [
        ("model_weights/conv", 1),
        ("model_weights/dense", 2),
    ]


def test_an_os_error_is_one_line_and_debug_shows_where(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from normcli import api

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error", "model.safetensors")

    monkeypatch.setattr(api, "inspect_path", failing)
    sample = SAMPLES / "base.safetensors"
    result = run("inspect", sample, code=2)
    assert result.stderr == "normcli: error: model.safetensors: Input/output error\n"
    debugged = run("--debug", "inspect", sample, code=None)
    assert isinstance(debugged.exception, OSError)  # raised through, with its traceback


def test_an_all_nan_tensor_has_no_linf_in_any_output(run: Run, tmp_path: Path) -> None:
    """max|x| over no finite value has none: JSON null, "-" in the table and Markdown (not 0)."""
    path = write_safetensors(
        tmp_path / "nan.safetensors",
        {"model.nan": np.full(3, np.nan, dtype=np.float32), "model.ok": np.ones(2, np.float32)},
    )
    doc = inspect_json(run, path)
    assert [t["linf"] for t in doc["tensors"]] == [None, 1.0]
    cells = table_rows(run("inspect", path).stdout)["model.nan"].split()
    assert cells[3:7] == ["3", "0", "0", "-"]  # numel, L1, L2, Linf
    lone = write_safetensors(tmp_path / "lone.safetensors", {"model.nan": np.full(3, np.nan)})
    text = run("inspect", lone).stdout
    assert "Linf -" in text and "Linf 0" not in text
    assert "| - |" in run("inspect", lone, "-f", "md").stdout
