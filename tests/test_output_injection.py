"""Tensor names and paths are untrusted: each output carries them escaped for its medium (the
terminal, a workflow command, a spreadsheet, XML), while JSON keeps them exact."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import Run
from rich.console import Console
from safetensors.numpy import save_file

from normcli.report import console as console_module

FORMULA = '=HYPERLINK("http://example.com/x","click")'
CONTROL = "esc\x1b[31mred\x07bell\x00nul\x9bcsi\x85nel"
NAMES = [FORMULA, "+1", "-2", "@sum", CONTROL, "::error::injected", "x\r\n::warning::y", "a\ufffeb"]


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.safetensors"
    tensors = {name: np.array([np.nan, -1.5], np.float32) for name in NAMES}
    save_file(tensors, str(path))
    return path


def test_json_keeps_every_name_exact(run: Run, hostile: Path) -> None:
    doc = json.loads(run("inspect", hostile, "-f", "json").stdout)
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(NAMES)


def test_csv_cells_are_never_formulas(run: Run, hostile: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(run("inspect", hostile, "-f", "csv").stdout)))
    names = {row["name"] for row in rows}
    assert f"'{FORMULA}" in names and {"'+1", "'-2", "'@sum"} <= names
    assert not any(n.startswith(("=", "+", "-", "@", "\t", "\r")) for n in names)
    assert all(n.isprintable() for n in names)
    # numbers are still numbers: a negative mean is not a formula to neutralise
    assert {row["mean"] for row in rows} == {"-1.5"}


def test_trend_csv_cells_are_never_formulas(
    run: Run, hostile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(hostile.parent)
    hostile.with_name("=cmd.safetensors").write_bytes(hostile.read_bytes())
    result = run("trend", hostile.name, "=cmd.safetensors", "--order", "given", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["checkpoint"] for row in rows} == {hostile.name, "'=cmd.safetensors"}
    assert f"'{FORMULA}" in {row["name"] for row in rows}


def test_github_annotations_cannot_start_a_command_or_drive_a_terminal(
    run: Run, hostile: Path
) -> None:
    result = run("check", hostile, "-f", "github", code=1)
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("::error ")]
    assert len(errors) == len(NAMES)  # one per tensor with a NaN, none split or injected
    assert all(line.startswith(("::error ", "::notice ")) for line in lines), lines
    assert all(line.isprintable() for line in lines), [ln for ln in lines if not ln.isprintable()]
    assert any("x%0D%0A::warning::y" in line for line in errors)


def test_junit_stays_well_formed_for_any_name(run: Run, hostile: Path, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    run("check", hostile, "--junit", report, code=1)
    failure = ET.parse(report).find("testsuite/testcase/failure")
    assert failure is not None and failure.text is not None
    assert FORMULA in failure.text and "\x1b" not in failure.text


def test_the_progress_bar_label_is_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """File names in the label were read as rich markup (bold, OSC 8 links) and passed raw
    escape sequences through; tables and errors escaped them already."""
    monkeypatch.setattr(console_module, "PROGRESS_DELAY_S", 0.0)
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=160, color_system=None)
    label = "inspect [bold]x[/bold] [link=http://example.com]y[/link]\x1b]8;;http://e\x07z\x9b"
    bar = console_module.ProgressBar(label, terminal)
    bar.start(100)
    bar.advance(50)
    bar.stop()
    shown = out.getvalue()
    assert "[bold]x[/bold]" in shown and "[link=http://example.com]y[/link]" in shown
    assert "\x1b]8;;" not in shown and "\x9b" not in shown and "\x07" not in shown
