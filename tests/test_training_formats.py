"""Checkpoints as training writes them, read without torch: TorchScript archives and
torch.distributed.checkpoint folders (tests/fixtures/pytorch/training, made by torch itself with
make_training_fixtures.py) give the figures torch computed; damaged and hostile ones are refused."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Run
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pytorch_reader import NAMES, close, head, same, values

import normcli
from normcli.api import trend
from normcli.dtypes import SAFETENSORS_DTYPES
from normcli.errors import CorruptFileError, UnsupportedError, UsageError
from normcli.readers import detect_format, open_checkpoint
from normcli.readers.base import Checkpoint, TensorSource
from normcli.readers.dcp import _Grid
from normcli.readers.dcp_metadata import Chunk, TensorEntry
from normcli.readers.torchscript import open_torchscript
from normcli.scan import scan_tensor

TRAINING = Path(__file__).resolve().parent / "fixtures" / "pytorch" / "training"
EXPECTED: dict[str, Any] = json.loads((TRAINING / "expected.json").read_text())["files"]
DCP = TRAINING / "dcp"
HOSTILE_MARKER = "normcli-hostile-pickle-ran"


def assert_matches_torch(checkpoint: Checkpoint, expected: dict[str, Any]) -> None:
    assert sorted(t.name for t in checkpoint.tensors) == sorted(expected["tensors"])
    for source in checkpoint.tensors:
        want = expected["tensors"][source.name]
        assert source.dtype.name == NAMES[want["dtype"]], source.name
        assert list(source.shape) == want["shape"], source.name
        stats = scan_tensor(source, chunk_elements=7)  # reads that cross the chunks' seams
        got = {k: getattr(stats, k) for k in ("numel", "zeros", "nan", "inf")}
        assert got == {k: want[k] for k in got}, source.name
        for figure in ("l1", "l2", "linf"):
            assert close(getattr(stats, figure), want[figure]), (source.name, figure)
        first = values(source, chunk=3)[: len(want["head"])]
        assert all(map(same, first, head(want["head"]))), (source.name, first, want["head"])


# --- TorchScript ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scripted_net.pt", "traced.pt"])
def test_torchscript_gives_torchs_figures(name: str) -> None:
    path = str(TRAINING / name)
    assert detect_format(path) == "torchscript"
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "torchscript"
        assert_matches_torch(checkpoint, EXPECTED[name])


def test_tensor_attributes_and_constants_are_named_as_the_archive_records_them() -> None:
    with open_checkpoint(TRAINING / "scripted_net.pt") as checkpoint:
        names = {t.name for t in checkpoint.tensors}
    # a buffer, a plain tensor attribute, a batch norm's counter, all by module path
    assert {"layers.1.gain", "layers.1.offset", "stem.1.num_batches_tracked"} <= names
    with open_checkpoint(TRAINING / "traced.pt") as checkpoint:
        assert [t.name for t in checkpoint.tensors][-2:] == ["CONSTANTS.c0", "CONSTANTS.c1"]


def test_key_reads_one_submodule_of_an_archive() -> None:
    with open_checkpoint(TRAINING / "scripted_net.pt", key="layers.0") as checkpoint:
        names = [t.name for t in checkpoint.tensors]
    assert "conv.weight" in names and "bn.running_var" in names and len(names) == 8
    with pytest.raises(UsageError, match=r"no key 'encoder'.*'stem', 'layers', 'head'"):
        open_checkpoint(TRAINING / "scripted_net.pt", key="encoder")


def test_the_older_scripted_fixture_reads_too() -> None:
    fixtures = TRAINING.parent
    expected = json.loads((fixtures / "expected.json").read_text())["files"]["scripted.pt"]
    with open_torchscript(str(fixtures / "scripted.pt")) as checkpoint:
        assert_matches_torch(checkpoint, expected)


def test_a_quantized_archive_is_refused_as_needing_its_code(run: Run) -> None:
    path = TRAINING / "scripted_quantized.pt"
    with pytest.raises(UnsupportedError, match="TorchScript archive") as error:
        open_checkpoint(path)
    assert "quantized" in str(error.value)
    result = run("inspect", path, code=2)
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr


def script_archive(pickled: bytes, folder: str = "model") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", pickled)
        z.writestr(f"{folder}/code/__torch__.py", "class M(Module):\n  pass\n")
        z.writestr(f"{folder}/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr(f"{folder}/byteorder", "little")
    return out.getvalue()


def test_an_object_rebuilt_by_its_own_setstate_is_refused(tmp_path: Path) -> None:
    # GLOBAL '__torch__ M', NEWOBJ, then BUILD with a tuple: only M.__setstate__ knows it
    raw = b"\x80\x02c__torch__\nM\n)\x81K\x01K\x02\x86b."
    path = tmp_path / "custom.pt"
    path.write_bytes(script_archive(raw))
    assert detect_format(str(path)) == "torchscript"
    with pytest.raises(UnsupportedError, match=r"__torch__\.M is rebuilt by running its own"):
        open_checkpoint(path)


class Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {HOSTILE_MARKER}",))


def test_a_hostile_torchscript_archive_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hostile.pt"
    path.write_bytes(script_archive(pickle.dumps({"weight": Hostile()}, protocol=2)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UnsupportedError, match=r"posix\.system"):
        open_checkpoint(path)
    assert list(work.iterdir()) == []


# --- torch.distributed.checkpoint ----------------------------------------------------------------


def test_dcp_folder_gives_the_consolidated_figures() -> None:
    expected = EXPECTED["dcp"]
    with open_checkpoint(DCP) as checkpoint:
        assert checkpoint.format == "dcp"
        assert checkpoint.shards == len(expected["files"]) - 1  # all but .metadata
        assert checkpoint.skipped_values == expected["skipped"]
        assert_matches_torch(checkpoint, expected)


def test_the_fixture_really_splits_tensors_across_files() -> None:
    chunks = EXPECTED["dcp"]["chunks"]
    assert chunks["model.0.weight"] == 2 and chunks["model.3.weight"] == 2  # rows; columns
    with open_checkpoint(DCP) as checkpoint:
        shards = {t.name: t.shard for t in checkpoint.tensors}
    assert shards["model.3.weight"] is not None and "," in shards["model.3.weight"]


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 16])
def test_dcp_values_come_in_the_consolidated_order(chunk: int) -> None:
    with (
        open_checkpoint(DCP) as sharded,
        open_checkpoint(TRAINING / "dcp_consolidated.pt") as whole,
    ):
        reference = {t.name: t for t in whole.tensors}
        for source in sharded.tensors:
            np.testing.assert_array_equal(values(source, chunk), values(reference[source.name]))


def test_compare_a_dcp_folder_with_its_consolidated_file() -> None:
    result = normcli.compare(DCP, TRAINING / "dcp_consolidated.pt").to_dict()
    statuses = {t["status"] for t in result["tensors"]}
    assert statuses == {"unchanged"} and len(result["tensors"]) == len(EXPECTED["dcp"]["tensors"])


def test_trend_over_dcp_folders(tmp_path: Path, run: Run) -> None:
    for step in (100, 200):
        shutil.copytree(DCP, tmp_path / f"step-{step}")
    result = trend([str(tmp_path)])
    assert [os.path.basename(p.path) for p in result.points] == ["step-100", "step-200"]
    assert {p.format for p in result.points} == {"dcp"}
    model = [r for r in result.rows if r.name == "model.0.weight"]
    assert model and model[0].update_l2 == [None, 0.0]
    run("trend", tmp_path / "step-100", tmp_path / "step-200", "-f", "json")


def test_the_metadata_file_names_its_folder() -> None:
    with open_checkpoint(DCP / ".metadata") as checkpoint:
        assert checkpoint.path == str(DCP) and len(checkpoint.tensors) == 24


def test_key_selects_the_entries_under_it() -> None:
    with open_checkpoint(DCP, key="model") as checkpoint:
        assert sorted(t.name for t in checkpoint.tensors) == sorted(
            n[len("model.") :] for n in EXPECTED["dcp"]["tensors"] if n.startswith("model.")
        )
        assert checkpoint.skipped_values == 0
    with pytest.raises(UsageError, match="'epoch', 'model', 'optim', 'scheduler'"):
        open_checkpoint(DCP, key="encoder")


def broken_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(DCP, folder)
    return folder


def test_a_missing_distcp_file_is_named(tmp_path: Path, run: Run) -> None:
    folder = broken_copy(tmp_path)
    (folder / "__1_0.distcp").unlink()
    with pytest.raises(CorruptFileError, match="missing") as error:
        open_checkpoint(folder)
    assert error.value.path == str(folder / "__1_0.distcp")
    result = run("inspect", folder, code=2)
    assert "__1_0.distcp: missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_truncated_distcp_file_is_named(tmp_path: Path, run: Run) -> None:
    folder = broken_copy(tmp_path)
    data = (folder / "__0_1.distcp").read_bytes()
    (folder / "__0_1.distcp").write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptFileError, match="truncated") as error:
        open_checkpoint(folder)
    assert error.value.path == str(folder / "__0_1.distcp")
    result = run("compare", folder, DCP, code=2)
    assert "__0_1.distcp: truncated" in result.stderr


def test_damaged_chunk_bytes_are_reported(tmp_path: Path) -> None:
    folder = broken_copy(tmp_path)
    data = bytearray((folder / "__0_0.distcp").read_bytes())
    data[:4] = b"\0\0\0\0"  # the first chunk's archive no longer starts as one
    (folder / "__0_0.distcp").write_bytes(bytes(data))
    with pytest.raises(UnsupportedError, match=r"not a torch\.save archive") as error:
        open_checkpoint(folder)
    assert error.value.path == str(folder / "__0_0.distcp")


def patched_metadata(tmp_path: Path, old: bytes, new: bytes) -> Path:
    """A copy of the folder whose .metadata says `new` where torch wrote `old` (same length,
    so the pickle stays well-formed)."""
    folder = broken_copy(tmp_path)
    raw = (folder / ".metadata").read_bytes()
    assert len(old) == len(new) and raw.count(old) == 1
    (folder / ".metadata").write_bytes(raw.replace(old, new))
    return folder


def test_a_chunk_file_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = patched_metadata(tmp_path, b"__1_0.distcp", b"../_0.distcp")
    with pytest.raises(CorruptFileError, match="not a file of the folder") as error:
        open_checkpoint(folder)
    assert error.value.path == str(folder / ".metadata")


def test_a_metadata_lying_about_the_dtype_is_caught(tmp_path: Path) -> None:
    folder = patched_metadata(tmp_path, b"float32", b"float64")
    with pytest.raises(
        CorruptFileError, match=r"F32 values; the metadata declares \[3, 6\] torch\.float64"
    ):
        open_checkpoint(folder)


def test_a_hostile_metadata_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = broken_copy(tmp_path)
    (folder / ".metadata").write_bytes(pickle.dumps({"x": Hostile()}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UnsupportedError, match=r"posix\.system") as error:
        open_checkpoint(folder)
    assert error.value.path == str(folder / ".metadata")
    assert list(work.iterdir()) == []


def test_a_metadata_of_another_kind_is_refused(tmp_path: Path) -> None:
    folder = broken_copy(tmp_path)
    (folder / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    with pytest.raises(CorruptFileError, match="not torch's checkpoint Metadata"):
        open_checkpoint(folder)
    (folder / ".metadata").write_bytes(pickle.dumps({"x": 1})[:-3])
    with pytest.raises(CorruptFileError, match=r"truncated|not a valid pickle"):
        open_checkpoint(folder)


# --- putting boxes back in place -----------------------------------------------------------------

F64 = SAFETENSORS_DTYPES["F64"]


def array_source(name: str, array: np.ndarray) -> TensorSource:
    raw = np.ascontiguousarray(array, dtype="<f8").view(np.uint8).reshape(-1)

    def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
        out[: stop - start] = raw[start:stop]
        return out[: stop - start]

    return TensorSource(name, F64, tuple(array.shape), read)


def grid_of(full: np.ndarray, cuts: list[list[int]]) -> tuple[TensorEntry, list[TensorSource]]:
    """`full` cut into boxes at `cuts` (per dimension), in shuffled order."""
    bounds = [[0, *c, n] for c, n in zip(cuts, full.shape, strict=True)]
    chunks, pieces = [], []
    for cell in np.ndindex(*(len(b) - 1 for b in bounds)):
        lo = tuple(b[i] for b, i in zip(bounds, cell, strict=True))
        hi = tuple(b[i + 1] for b, i in zip(bounds, cell, strict=True))
        box = full[tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))]
        sizes = tuple(z - a for a, z in zip(lo, hi, strict=True))
        chunks.append(Chunk(lo, sizes, "f", 0, 0))
        pieces.append(array_source("x", box))
    order = np.random.default_rng(len(chunks)).permutation(len(chunks))
    entry = TensorEntry("x", F64, "float64", full.shape, [chunks[i] for i in order])
    return entry, [pieces[i] for i in order]


@st.composite
def boxed(draw: st.DrawFn) -> tuple[np.ndarray, list[list[int]]]:
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    cuts = [
        sorted(draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else [] for n in shape
    ]
    full = np.arange(math.prod(shape), dtype=np.float64).reshape(shape) * 1.5 - 7
    return full, cuts


@settings(max_examples=200, deadline=None)
@given(boxed(), st.data())
def test_boxes_put_back_give_the_tensor_in_c_order(
    case: tuple[np.ndarray, list[list[int]]], data: st.DataObject
) -> None:
    full, cuts = case
    entry, pieces = grid_of(full, cuts)
    source = TensorSource("x", F64, full.shape, _Grid(entry, pieces).read)
    flat = full.reshape(-1)
    first = data.draw(st.integers(0, flat.size - 1))
    last = data.draw(st.integers(first + 1, flat.size))
    chunk = data.draw(st.integers(1, flat.size))
    got = np.concatenate([c.copy() for c in source.chunks(chunk, first, last)])
    np.testing.assert_array_equal(got, flat[first:last])


def test_boxes_that_overlap_or_leave_a_gap_are_refused() -> None:
    full = np.arange(12.0).reshape(3, 4)
    entry, pieces = grid_of(full, [[1], [2]])
    overlapping = [*entry.chunks[:-1], Chunk((0, 0), (3, 4), "f", 0, 0)]
    with pytest.raises(CorruptFileError, match="overlap"):
        _Grid(TensorEntry("x", F64, "float64", (3, 4), overlapping), pieces)
    with pytest.raises(CorruptFileError, match="lie in no chunk"):
        _Grid(TensorEntry("x", F64, "float64", (3, 4), entry.chunks[:-1]), pieces[:-1])
    outside = [*entry.chunks[:-1], Chunk((2, 2), (2, 2), "f", 0, 0)]
    with pytest.raises(CorruptFileError, match="outside"):
        _Grid(TensorEntry("x", F64, "float64", (3, 4), outside), pieces)


def test_compare_and_trend_take_torchscript_archives(tmp_path: Path, run: Run) -> None:
    for step in (1, 2):
        shutil.copy(TRAINING / "scripted_net.pt", tmp_path / f"step-{step}.pt")
    result = normcli.compare(tmp_path / "step-1.pt", tmp_path / "step-2.pt").to_dict()
    assert {t["status"] for t in result["tensors"]} == {"unchanged"}
    assert len(result["tensors"]) == len(EXPECTED["scripted_net.pt"]["tensors"])
    doc = json.loads(run("trend", tmp_path, "-f", "json").stdout)
    assert [c["format"] for c in doc["checkpoints"]] == ["torchscript", "torchscript"]
