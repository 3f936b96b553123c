"""Nothing a user owns is overwritten: no output (-o, --junit, --plot, the step summary) may be a
file the run reads, by identity, after folders, indexes, globs, baselines, settings files and
ONNX external data are expanded; outputs are validated before any is written, and written
atomically, so a failed or concurrent run never leaves a half-written or foreign report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLES, Run
from safetensors.numpy import save_file
from test_sharded import shard_folder

BASE = SAMPLES / "base.safetensors"
BLOWUP = SAMPLES / "blowup.safetensors"


def copy(folder: Path, source: Path = BASE, name: str = "model.safetensors") -> Path:
    target = folder / name
    shutil.copyfile(source, target)
    return target


def refused(run: Run, *args: Any, kept: Path, reads: Path | None = None) -> str:
    """Exit 2 and one line naming the output and the input it is; the input unchanged."""
    before = kept.read_bytes()
    result = run(*args, code=2)
    (line,) = result.stderr.splitlines()
    assert "overwrite" in line, line
    assert str(reads or kept) in line, line
    assert kept.read_bytes() == before
    return line


def test_junit_onto_the_checkpoint_is_refused(run: Run, tmp_path: Path) -> None:
    model = copy(tmp_path)
    refused(run, "check", model, "--junit", model, kept=model)


def test_junit_onto_the_baseline_is_refused(run: Run, tmp_path: Path) -> None:
    base, new = copy(tmp_path, BASE, "base.safetensors"), copy(tmp_path, BLOWUP, "new.safetensors")
    refused(run, "check", new, "--baseline", base, "--junit", base, kept=base)


@pytest.mark.parametrize("target", ["folder", "index"])
def test_output_onto_a_shard_is_refused(run: Run, tmp_path: Path, target: str) -> None:
    shard_folder(tmp_path, parts=2)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    source = tmp_path if target == "folder" else tmp_path / "model.safetensors.index.json"
    refused(run, "inspect", source, "-o", shard, kept=shard)


def _run_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run2"
    folder.mkdir()
    for step in (1, 2):
        copy(folder, BASE if step == 1 else BLOWUP, f"step-{step}.safetensors")
    return folder


def test_trend_output_onto_a_member_of_its_folder_or_glob_is_refused(
    run: Run, tmp_path: Path
) -> None:
    folder = _run_folder(tmp_path)
    refused(
        run,
        "trend",
        folder,
        "-o",
        folder / "step-2.safetensors",
        kept=folder / "step-2.safetensors",
    )
    member = folder / "step-1.safetensors"
    refused(run, "trend", f"{folder}/*.safetensors", "-o", member, kept=member)


def test_output_onto_the_settings_file_is_refused(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text("max-l2 = 1e9\n")
    refused(run, "check", BASE, "--config", config, "-o", config, kept=config)


def test_output_onto_the_saved_report_compared_is_refused(run: Run, tmp_path: Path) -> None:
    report = tmp_path / "base.json"
    run("inspect", BASE, "-f", "json", "-o", report)
    refused(run, "compare", report, BASE, "-f", "json", "-o", report, kept=report)


def test_a_link_to_an_input_is_the_input(run: Run, tmp_path: Path) -> None:
    model = copy(tmp_path)
    (tmp_path / "soft.json").symlink_to(model)
    os.link(model, tmp_path / "hard.json")
    for output in ("soft.json", "hard.json"):
        refused(run, "inspect", model, "-f", "json", "-o", tmp_path / output, kept=model)


def test_a_file_url_is_the_file_it_names(run: Run, tmp_path: Path) -> None:
    model = copy(tmp_path)
    refused(run, "inspect", f"file://{model}", "-f", "json", "-o", model, kept=model)


def test_the_step_summary_pointing_at_an_input_is_refused(run: Run, tmp_path: Path) -> None:
    model = copy(tmp_path, BLOWUP)
    before = model.read_bytes()
    result = run("check", model, "-f", "github", env={"GITHUB_STEP_SUMMARY": str(model)}, code=2)
    assert "GITHUB_STEP_SUMMARY" in result.stderr and str(model) in result.stderr
    assert model.read_bytes() == before


def test_output_onto_onnx_external_data_is_refused(run: Run, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from test_more_formats import external_model

    model = external_model(onnx, tmp_path, location="weights.bin")
    data = tmp_path / "weights.bin"
    refused(run, "inspect", model, "-f", "json", "-o", data, kept=data, reads=data)


def test_every_output_is_checked_before_any_is_written(run: Run, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("the report of an earlier run\n")
    result = run(
        "check", BLOWUP, "-f", "json", "-o", report, "--junit", tmp_path / "no" / "x.xml", code=2
    )
    assert str(tmp_path / "no" / "x.xml") in result.stderr
    assert report.read_text() == "the report of an earlier run\n"


@pytest.mark.parametrize("where", ["missing folder", "read-only folder", "full device"])
def test_an_output_that_cannot_be_written_is_a_clear_error(
    run: Run, tmp_path: Path, where: str
) -> None:
    if where == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    if where == "full device" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    target = {
        "missing folder": tmp_path / "missing" / "r.json",
        "read-only folder": tmp_path / "locked" / "r.json",
        "full device": Path("/dev/full"),
    }[where]
    if where == "read-only folder":
        target.parent.mkdir()
        target.parent.chmod(0o500)
    result = run("inspect", BASE, "-f", "json", "-o", target, code=2)
    (line,) = result.stderr.splitlines()
    assert str(target) in line and "internal error" not in line


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_run_that_fails_while_writing_leaves_the_old_output(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """A full disk, Ctrl-C or SIGTERM half way through a large table left a stub in place of
    the existing report."""
    report = tmp_path / "report.csv"
    report.write_text("kept\n")
    from normcli import report as renderers

    def half_then_fail(results: Any, console: Any) -> None:
        console.file.write("checkpoint,name,dtype\n")
        raise failure

    monkeypatch.setitem(renderers.INSPECT_RENDERERS, "csv", half_then_fail)
    result = run("inspect", BASE, "-f", "csv", "-o", report, code=None)
    assert result.exit_code in (2, 130)
    assert report.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]  # no temporary left


def test_a_fifo_output_is_written_directly(run: Run, tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    run("inspect", BASE, "-f", "json", "-o", fifo)
    reader.join(30)
    assert json.loads(got[0])["checkpoint"]["path"] == str(BASE)


def _normcli(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "normcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_runs_at_once_never_corrupt_anything(run: Run, tmp_path: Path) -> None:
    """Eight runs inspecting one file, and several writing one report at once: each output is
    one complete report (four runs writing one -o path left a file that was none of them)."""
    model = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file({f"t{i}": rng.standard_normal(20_000).astype(np.float32) for i in range(64)}, model)
    readers = [_normcli("inspect", model, "-f", "json", "--no-progress") for _ in range(8)]
    report = tmp_path / "report.csv"
    tops = ["1", "2", "3", "64"]  # each writer's report differs from the others'
    writers = [
        _normcli("inspect", model, "-f", "csv", "--no-progress", "--top", top, "-o", report)
        for top in tops
    ]
    outputs = [p.communicate(timeout=120) for p in readers + writers]
    assert all(p.returncode == 0 for p in readers + writers), outputs
    assert len({out for out, _ in outputs[:8]}) == 1
    expected = {run("inspect", model, "-f", "csv", "--top", top).stdout for top in tops}
    assert report.read_text() in expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "report.csv"]


def test_sigterm_at_any_moment_leaves_the_old_report_or_a_whole_new_one(tmp_path: Path) -> None:
    """A cancelled CI job: SIGTERM while a large table was being written left a 60-byte stub.
    Sent at several moments of a run; whenever it lands, the old report or a whole new one."""
    import time

    model = tmp_path / "model.safetensors"
    save_file({f"layer.{i}.w": np.full(4, i, np.float32) for i in range(10_000)}, model)
    report = tmp_path / "report.csv"
    began = time.monotonic()
    complete = _normcli("inspect", model, "-f", "csv", "--no-progress").communicate()[0]
    took = time.monotonic() - began
    for share in (0.3, 0.5, 0.8, 0.95):
        report.write_text("kept\n")
        child = _normcli("inspect", model, "-f", "csv", "--no-progress", "-o", report)
        time.sleep(took * share)
        child.send_signal(signal.SIGTERM)
        try:
            # a stop that unwound the run once hung it at exit, on a lock the scan pool shares
            child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        # 0: done before the signal; -SIGTERM: stopped before normcli had started at all
        assert child.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), child.returncode
        assert report.read_text() in ("kept\n", complete), share
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "report.csv"]


def test_a_stop_while_a_temporary_output_is_made_removes_it(tmp_path: Path) -> None:
    """A stop that lands between making a temporary file and registering it is held until the
    file is registered, then removes it: nothing half-written is left beside the report."""
    temporary = tmp_path / ".report.csv.tmp"
    script = (
        "import os, signal, sys\n"
        "from normcli import stopping\n"
        "stopping.install()\n"
        "with stopping.held():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    open(sys.argv[1], 'w').close()\n"
        "    stopping.remove_if_stopped(sys.argv[1])\n"
        "    print('still inside', flush=True)\n"
        "print('went on')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(temporary)], capture_output=True, text=True
    )
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stdout == "still inside\n"
    assert done.stderr == "normcli: error: interrupted\n"
    assert not temporary.exists()
