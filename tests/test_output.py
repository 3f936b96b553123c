"""Outputs: written atomically, never over an input; and the exit code of a bug in normcli."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Run

from normcli import output
from normcli.errors import UsageError


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("old report\n")
    with pytest.raises(RuntimeError), output.replacing(str(target)) as f:
        f.write("half of a new rep")
        raise RuntimeError("the renderer failed")
    assert target.read_text() == "old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_a_write_replaces_the_file_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("old\n")
    target.chmod(0o640)
    output.write_text(str(target), "new\n", [], "-o")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_a_new_output_gets_the_mode_the_umask_gives(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        output.write_bytes(str(tmp_path / "plot.svg"), b"<svg/>", [], "--plot")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "plot.svg").stat().st_mode) == 0o644


def test_a_link_keeps_pointing_at_the_output_it_names(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    output.write_text(str(link), "new\n", [], "-o")
    assert link.is_symlink() and real.read_text() == "new\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_written_directly(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    output.write_text(str(fifo), "through the pipe\n", [], "-o")
    reader.join(timeout=10)
    assert received == [b"through the pipe\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_an_input_is_never_an_output(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"weights")
    with pytest.raises(UsageError, match="--junit would overwrite an input file"):
        output.write_text(str(source), "<xml/>", [str(source)], "--junit")
    assert source.read_bytes() == b"weights"


def test_check_junit_refuses_to_overwrite_the_checkpoint(
    run: Run, tmp_path: Path, samples: Path
) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes((samples / "base.safetensors").read_bytes())
    result = run("check", path, "--junit", path, code=2)
    assert "--junit would overwrite an input file" in result.stderr
    assert path.read_bytes() == (samples / "base.safetensors").read_bytes()


def test_a_failed_render_leaves_the_existing_report(
    run: Run, tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normcli.report import INSPECT_RENDERERS

    def half(results: Any, console: Any) -> None:
        console.file.write("half a table")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(INSPECT_RENDERERS, "csv", half)
    report = tmp_path / "report.csv"
    report.write_text("yesterday's report\n")
    result = run("inspect", samples / "base.safetensors", "-f", "csv", "-o", report, code=2)
    assert "No space left" in result.stderr
    assert report.read_text() == "yesterday's report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_a_bug_exits_3_and_bad_input_2(
    run: Run, tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normcli import api

    def buggy(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    missing = run("inspect", tmp_path / "missing.safetensors", code=2)
    assert "internal error" not in missing.stderr
    monkeypatch.setattr(api, "inspect_path", buggy)
    result = run("inspect", samples / "base.safetensors", code=3)
    assert result.stderr.startswith("normcli: error: internal error: ZeroDivisionError")
    assert result.stderr.count("\n") == 1


def test_the_exit_codes_are_documented() -> None:
    # the README's table is the user's contract: each code has its row
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| ")]
    for code, meaning in [("0", "success"), ("1", "check"), ("2", "bad input"), ("3", "internal")]:
        assert any(row.startswith(f"| {code} |") and meaning in row for row in rows), code
