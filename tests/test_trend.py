"""trend: a run of checkpoints in step order, every figure against a float64 fsum reference."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import Run, validate_json
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from normcli.api import _array_source
from normcli.api import trend as api_trend
from normcli.readers import files
from normcli.scan import choose_kernels, scan_series, scan_tensor

BLOCKS, STEPS, ONSET = 8, 10, 5  # block 5 grows 1.8x a step from the 6th checkpoint on
GROWING = "model.layers.5"


def make_run(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    state = {
        f"model.layers.{i}.{part}.weight": rng.standard_normal((16, 16)).astype(np.float32)
        for i in range(BLOCKS)
        for part in ("attn", "mlp")
    }
    state["model.embed.weight"] = rng.standard_normal((32, 16)).astype(np.float32)
    paths = []
    for step in range(STEPS):
        for name in state:
            state[name] = (state[name] + 0.01 * rng.standard_normal(state[name].shape)).astype(
                np.float32
            )
            if step >= ONSET and name.startswith(GROWING + "."):
                state[name] = (state[name] * np.float32(1.8)).astype(np.float32)
        path = folder / f"checkpoint-{(step + 1) * 100}.safetensors"
        save_file(state, str(path))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    make_run(folder)
    return folder


def l2(arrays: list[np.ndarray]) -> float:
    return math.sqrt(math.fsum(float(v) ** 2 for a in arrays for v in a.astype(np.float64).ravel()))


def test_the_growing_block_and_the_step_stand_out(run_folder: Path, run: Run) -> None:
    doc = json.loads(run("trend", run_folder, "--group-by", "3", "-f", "json").stdout)
    validate_json(doc, "trend.v2")
    assert [p["step"] for p in doc["checkpoints"]] == [100 * (i + 1) for i in range(STEPS)]
    rows = {r["name"]: r for r in doc["rows"]}
    assert [name for name, r in rows.items() if r["jumped"]] == [GROWING]
    assert rows[GROWING]["first_jump"]["step"] == (ONSET + 1) * 100
    assert rows[GROWING]["first_jump"]["factor"] == pytest.approx(1.8, rel=0.02)
    table = run("trend", run_folder, "--group-by", "3", env={"COLUMNS": "200"}).stdout
    line = next(line for line in table.splitlines() if line.startswith(GROWING + " "))
    assert "jumped" in line and "600 (×1.8)" in line


def test_every_value_and_update_matches_the_reference(run_folder: Path) -> None:
    result = api_trend([str(run_folder)], group_by=3)
    paths = sorted(run_folder.iterdir(), key=lambda p: int(p.stem.split("-")[1]))
    loaded = [load_file(str(p)) for p in paths]
    row = next(r for r in result.rows if r.name == GROWING)
    members = [n for n in loaded[0] if n.startswith(GROWING + ".")]
    for t, tensors in enumerate(loaded):
        assert row.values("l2")[t] == pytest.approx(l2([tensors[n] for n in members]), rel=1e-12)
        if t:
            diffs = [
                tensors[n].astype(np.float64) - loaded[t - 1][n].astype(np.float64) for n in members
            ]
            assert row.update_l2[t] == pytest.approx(l2(diffs), rel=1e-12)
    assert row.update_l2[0] is None
    total = result.total.values("l2")
    assert total[-1] == pytest.approx(l2(list(loaded[-1].values())), rel=1e-12)


def test_each_file_is_read_once(run_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    original = files.DataFile.reader

    def counting(self: files.DataFile, base: int):  # type: ignore[no-untyped-def]
        inner = original(self, base)

        def read_bytes(start: int, stop: int, out: np.ndarray) -> np.ndarray:
            read.append(stop - start)
            return inner(start, stop, out)

        return read_bytes

    monkeypatch.setattr(files.DataFile, "reader", counting)
    api_trend([str(run_folder)], group_by=0)
    data = sum(sum(a.nbytes for a in load_file(str(p)).values()) for p in run_folder.iterdir())
    assert sum(read) == data


def test_saved_reports_make_the_same_trend_without_updates(
    run_folder: Path, tmp_path: Path, run: Run
) -> None:
    for path in sorted(run_folder.iterdir()):
        run("inspect", path, "-f", "json", "-o", tmp_path / (path.stem + ".json"))
    from_files = api_trend([str(run_folder)], group_by=3)
    from_reports = api_trend([str(tmp_path)], group_by=3)
    for a, b in zip(from_files.rows, from_reports.rows, strict=True):
        assert a.name == b.name
        assert b.values("l2") == pytest.approx(a.values("l2"), rel=1e-12)
        assert all(u is None for u in b.update_l2)
    assert next(r for r in from_reports.rows if r.name == GROWING).jumped("l2")


def test_order_by_name_is_numeric_and_by_mtime_follows_the_clock(tmp_path: Path) -> None:
    for i, step in enumerate((1000, 200, 30)):
        path = tmp_path / f"step-{step}.safetensors"
        save_file({"w": np.full(4, step, np.float32)}, str(path))
        os.utime(path, (i, i))
    by_name = api_trend([str(tmp_path)], group_by=0)
    assert [p.step for p in by_name.points] == [30, 200, 1000]
    by_time = api_trend([str(tmp_path)], group_by=0, order="mtime")
    assert [p.step for p in by_time.points] == [1000, 200, 30]


def test_big_models_are_grouped_automatically(tmp_path: Path) -> None:
    tensors = {
        f"model.layers.{i}.{p}.weight": np.ones(2, np.float32)
        for i in range(40)
        for p in ("q", "k", "v")
    }
    for step in (1, 2):
        save_file(tensors, str(tmp_path / f"c-{step}.safetensors"))
    result = api_trend([str(tmp_path)])
    assert result.grouped_automatically and result.group_by == 3 and len(result.rows) == 40
    assert len(api_trend([str(tmp_path)], group_by=0).rows) == 120


@pytest.mark.parametrize("suffix", [".svg", ".html", ".png"])
def test_pictures(suffix: str, run_folder: Path, tmp_path: Path, run: Run) -> None:
    if suffix == ".png":
        pytest.importorskip("matplotlib")
    picture = tmp_path / f"trend{suffix}"
    run("trend", run_folder, "--group-by", "3", "--plot", picture, "-o", tmp_path / "t.txt")
    data = picture.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    elif suffix == ".svg":
        root = ET.fromstring(data)
        assert GROWING in data.decode() and root.tag.endswith("svg")
    else:
        text = data.decode()
        assert (
            "<svg" in text
            and "<table>" in text
            and "http" not in text.replace("http://www.w3.org/2000/svg", "")
        )


@pytest.mark.parametrize("command", ["inspect", "compare"])
def test_inspect_and_compare_draw_their_bars(command: str, tmp_path: Path, run: Run) -> None:
    from conftest import SAMPLES

    picture = tmp_path / "bars.svg"
    paths = (
        [SAMPLES / "blowup.safetensors"]
        if command == "inspect"
        else [SAMPLES / "base.safetensors", SAMPLES / "blowup.safetensors"]
    )
    run(command, *paths, "--group-by", "3", "--plot", picture)
    text = picture.read_text()
    ET.fromstring(text)
    assert "model.layers.1" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["one.safetensors"], "at least two checkpoints"),
        (["nothing-*.safetensors"], "matches no file"),
        (["--plot", "x.gif"], "--plot writes"),
    ],
)
def test_bad_trend_input_is_one_line(
    args: list[str], message: str, run_folder: Path, run: Run, tmp_path: Path
) -> None:
    if args == ["one.safetensors"]:
        save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "one.safetensors"))
        args = [str(tmp_path / "one.safetensors")]
    elif args[0] == "--plot":
        args = [str(run_folder), "--plot", str(tmp_path / "x.gif")]
    else:
        args = [str(tmp_path / args[0])]
    result = run("trend", *args, code=2)
    assert result.stdout == "" and result.stderr.count("\n") == 1 and message in result.stderr


def test_a_tensor_that_leaves_zero_stands_out(tmp_path: Path) -> None:
    for step, value in ((1, 0.0), (2, 0.0), (3, 1.0)):
        save_file(
            {"w": np.full(4, value, np.float32), "v": np.ones(4, np.float32)},
            str(tmp_path / f"c-{step}.safetensors"),
        )
    result = api_trend([str(tmp_path)], group_by=0)
    row = next(r for r in result.rows if r.name == "w")
    assert row.jumped("l2") and row.first_jump("l2") == (2, math.inf)
    assert not next(r for r in result.rows if r.name == "v").jumped("l2")
    assert row.to_dict("l2", result.points)["first_jump"] == {
        "step": 3,
        "label": "3",
        "factor": None,
    }


def test_a_tensor_that_falls_to_zero_stands_out(tmp_path: Path) -> None:
    for step, value in ((1, 1.0), (2, 1.0), (3, 0.0)):
        save_file(
            {"w": np.full(4, value, np.float32), "v": np.ones(4, np.float32)},
            str(tmp_path / f"c-{step}.safetensors"),
        )
    result = api_trend([str(tmp_path)], group_by=0)
    row = next(r for r in result.rows if r.name == "w")
    assert row.jumped("l2") and row.first_jump("l2") == (2, 0.0)
    assert row.to_dict("l2", result.points)["first_jump"] == {
        "step": 3,
        "label": "3",
        "factor": 0.0,
    }


@st.composite
def series(draw: st.DrawFn) -> list[np.ndarray | None]:
    """One tensor across checkpoints: some lack it, some change its shape or dtype."""
    count = draw(st.integers(1, 5))
    out: list[np.ndarray | None] = []
    for _ in range(count):
        if draw(st.booleans()) and draw(st.booleans()):
            out.append(None)
            continue
        size = draw(st.sampled_from([3000, 3000, 1500]))
        dtype = draw(st.sampled_from([np.float32, np.float64, ml_dtypes.bfloat16]))
        seed = draw(st.integers(0, 3))
        values = np.random.default_rng(seed).standard_normal(size) * draw(st.floats(0.5, 2.0))
        out.append(values.astype(dtype))
    return out


@settings(max_examples=60, deadline=None)
@given(series(), st.sampled_from(["numpy", "numba"]))
def test_a_series_gives_each_checkpoint_and_update_as_if_read_alone(
    arrays: list[np.ndarray | None], kernels: str
) -> None:
    """Each chunk is reduced once, alone or within an update: the figures must not depend on
    which, whatever the gaps and the shape changes in the series."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMCLI_KERNELS", kernels)
        reduce, reduce_two, _ = choose_kernels(0)
        sources = [None if a is None else _array_source("w", a) for a in arrays]
        stats, updates = scan_series(sources, reduce=reduce, reduce_two=reduce_two)
    for t, values in enumerate(arrays):
        if values is None:
            assert stats[t] is None and updates[t] is None
            continue
        alone = scan_tensor(_array_source("w", values))
        got = stats[t]
        assert got is not None
        assert (got.numel, got.zeros, got.linf) == (alone.numel, alone.zeros, alone.linf)
        assert got.sumsq == pytest.approx(alone.sumsq, rel=1e-12)
        assert got.l1 == pytest.approx(alone.l1, rel=1e-12)
        previous = arrays[t - 1] if t else None
        if previous is None or previous.shape != values.shape:
            assert updates[t] is None
        else:
            update = updates[t]
            assert update is not None
            step = values.astype(np.float64) - previous.astype(np.float64)
            assert update.diff.sumsq == pytest.approx(math.fsum(step * step), rel=1e-12, abs=1e-300)


def test_a_reshaped_tensor_is_noted_on_its_row_and_its_group(tmp_path: Path, run: Run) -> None:
    """A reshape changes the tensor set as an addition or a removal does: its row says so, and
    its group's 'tensors changed' counts it, though every tensor is present throughout."""
    w = np.arange(12, dtype=np.float32)
    shapes = ((3, 4), (4, 3), (4, 3))
    for step, shape in enumerate(shapes, start=1):
        save_file(
            {"model.w": w.reshape(shape), "model.v": np.ones(4, np.float32) * step},
            str(tmp_path / f"c-{step}.safetensors"),
        )
    result = api_trend([str(tmp_path)], group_by=0)
    row = next(r for r in result.rows if r.name == "model.w")
    assert row.present == (1, 1, 1) and row.reshaped == (0, 1, 0)
    assert row.set_changed(1) and not row.set_changed(2)
    assert result.points[1].change is not None and result.points[1].change.reshaped == 1
    table = run("trend", tmp_path, "--group-by", "0", env={"COLUMNS": "200"}).stdout
    line = next(line for line in table.splitlines() if line.startswith("model.w "))
    assert line.rstrip().endswith("reshaped")
    grouped = run("trend", tmp_path, "--group-by", "1", env={"COLUMNS": "200"}).stdout
    line = next(line for line in grouped.splitlines() if line.startswith("model "))
    assert "tensors changed" in line
    assert "tensor set changed at 2: 1 reshaped" in grouped
