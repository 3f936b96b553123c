"""Import hygiene: the core never pulls in the CLI's libraries, and `import normcli` stays light."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from normcli.errors import NormcliError

# The core (readers, statistics, scanning, the API and compare) uses only the standard library,
# numpy and format libraries; click and rich belong to cli.py and report/.
CORE_MODULES = [
    "normcli.readers",
    "normcli.norms",
    "normcli.scan",
    "normcli.api",
    "normcli.diff",
    "normcli.trends",
    "normcli.gate",
    "normcli.sides",
    "normcli.results",
]
# what renderers must not need: they get results, not files or the machinery that reads them
READING_MODULES = [
    "normcli.readers",
    "normcli.readers.safetensors",
    "normcli.readers.pytorch",
    "normcli.scan",
    "normcli.kernels",
    "normcli.compiled",
    "normcli.sides",
    "normcli.diff",
    "normcli.trends",
    "normcli.gate",
]


def loaded_after(statement: str, watch: list[str]) -> list[str]:
    """Which of `watch` are in sys.modules after running `statement` in a fresh interpreter."""
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps([m for m in {watch!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_core_imports_neither_click_nor_rich() -> None:
    statement = "\n".join(f"import {m}" for m in CORE_MODULES)
    assert loaded_after(statement, ["click", "rich"]) == []


def test_core_really_was_imported() -> None:
    # guards the test above against passing because nothing was imported
    statement = "\n".join(f"import {m}" for m in CORE_MODULES)
    assert loaded_after(statement, ["numpy", *CORE_MODULES]) == ["numpy", *CORE_MODULES]


def test_import_normcli_does_not_import_numpy() -> None:
    assert loaded_after("import normcli", ["numpy", "click", "rich"]) == []


def test_lazy_api_still_resolves() -> None:
    statement = "import normcli\nassert callable(normcli.inspect) and callable(normcli.stats)"
    assert loaded_after(statement, ["numpy"]) == ["numpy"]


def test_cli_module_starts_without_numpy_or_rich() -> None:
    # `normcli --version` and `--help` should not pay for numpy or rich
    assert loaded_after("import normcli.cli", ["numpy", "rich"]) == []


def test_report_loads_no_reader_scan_or_kernel() -> None:
    statement = "import normcli.report, normcli.report.check_report, normcli.report.plots"
    assert loaded_after(statement, READING_MODULES) == []


def test_report_really_was_imported() -> None:
    # guards the test above: the same statement does load the renderers and the results
    statement = "import normcli.report, normcli.report.check_report, normcli.report.plots"
    watch = ["normcli.report", "normcli.report.check_report", "normcli.results", "rich"]
    assert loaded_after(statement, watch) == watch


OTHER_READERS = [
    "normcli.readers.pytorch",
    "normcli.readers.onnx",
    "normcli.readers.gguf",
    "normcli.readers.hdf5",
    "normcli.readers.numpy",
    "normcli.readers.torchscript",
    "normcli.readers.dcp",
]


def test_opening_a_file_imports_only_its_own_reader(samples: Path) -> None:
    path = str(samples / "base.safetensors")
    statement = f"from normcli.readers import open_checkpoint\nopen_checkpoint({path!r}).close()"
    watch = ["normcli.readers.safetensors", *OTHER_READERS]
    assert loaded_after(statement, watch) == ["normcli.readers.safetensors"]


def test_input_format_choices_and_detection_come_from_the_registry(
    samples: Path, tmp_path: Path
) -> None:
    from normcli.cli import cli
    from normcli.formats import FORMATS, by_suffix
    from normcli.readers import detect_format

    option = next(p for p in cli.commands["inspect"].params if p.name == "input_format")
    assert list(option.type.choices) == list(FORMATS)  # type: ignore[attr-defined]
    for fmt in FORMATS.values():
        for suffix in fmt.suffixes:
            assert by_suffix(f"model{suffix.upper()}") == fmt.name
    assert detect_format(str(samples / "base.npz")) == "npz"
    unknown = tmp_path / "model.weights"
    unknown.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        NormcliError, match="reads safetensors, npz, npy, PyTorch, TorchScript, GGUF"
    ):
        detect_format(str(unknown))


def test_every_extra_the_registry_names_is_declared() -> None:
    from normcli.formats import FORMATS

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text("utf-8"))["project"]["optional-dependencies"]
    named = {f.extra for f in FORMATS.values() if f.extra is not None}
    assert named == {"gguf", "onnx", "h5"}
    assert named <= set(extras)


def small_safetensors(path: Path, dtypes: list[str]) -> Path:
    """One tensor of four elements per dtype, every byte 0x3C (a finite value in each)."""
    header: dict[str, object] = {}
    offset = 0
    for name in dtypes:
        size = 4 * {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "F8_E4M3": 1}[name]
        header[name] = {"dtype": name, "shape": [4], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\x3c" * offset)
    return path


def test_everyday_dtypes_are_read_without_ml_dtypes_or_numba(tmp_path: Path) -> None:
    # ml_dtypes takes up to half a second to import: float32, float16, bfloat16 and integers,
    # which fill nearly every checkpoint, need none of it; nor does a small job need numba
    path = small_safetensors(tmp_path / "t.safetensors", ["F32", "F16", "BF16", "I64"])
    statement = f"import normcli\nassert normcli.inspect({str(path)!r}).total.stats.l1 > 0"
    assert loaded_after(statement, ["ml_dtypes", "numba", "click", "rich"]) == []


def test_a_float8_tensor_brings_ml_dtypes_in(tmp_path: Path) -> None:
    # guards the test above against passing because nothing would ever import ml_dtypes
    path = small_safetensors(tmp_path / "t.safetensors", ["F32", "F8_E4M3"])
    statement = f"import normcli\nassert normcli.inspect({str(path)!r}).total.stats.l1 > 0"
    assert loaded_after(statement, ["ml_dtypes", "numba"]) == ["ml_dtypes"]


def cli_run(*args: str) -> str:
    """A statement running the command line in-process, its output set aside."""
    return (
        "import contextlib, io\n"
        "from normcli.cli import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        cli.main({list(args)!r})\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
    )


def test_text_output_of_a_small_file_needs_no_rich_numba_or_ml_dtypes(samples: Path) -> None:
    # rich is for drawing tables, numba for big jobs, ml_dtypes for float8/6/4
    path = str(samples / "base.safetensors")
    for output in ("json", "csv", "md"):
        statement = cli_run("inspect", path, "-f", output)
        assert loaded_after(statement, ["rich", "numba", "ml_dtypes"]) == [], output


def test_a_table_brings_rich_in(samples: Path) -> None:
    # guards the test above against passing because the command did nothing
    statement = cli_run("inspect", str(samples / "base.safetensors"))
    assert loaded_after(statement, ["rich", "numba"]) == ["rich"]
