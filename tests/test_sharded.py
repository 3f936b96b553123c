"""Sharded checkpoints: an index file or a folder of shards read as one model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, Run, validate_json
from safetensors.numpy import load_file, save_file

import normcli

BASE = SAMPLES / "base.safetensors"


def shard_folder(folder: Path, parts: int = 3, index: bool = True) -> dict[str, str]:
    """Split the base sample into `parts` shards the way Hugging Face does; the weight map."""
    tensors = load_file(str(BASE))
    names = sorted(tensors)
    weight_map = {}
    for part in range(parts):
        shard = f"model-{part + 1:05d}-of-{parts:05d}.safetensors"
        chosen = names[part::parts]
        save_file({n: tensors[n] for n in chosen}, str(folder / shard))
        weight_map.update(dict.fromkeys(chosen, shard))
    if index:
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        )
    return weight_map


@pytest.mark.parametrize("how", ["folder with index", "index file", "folder of shards"])
def test_a_sharded_checkpoint_is_one_model(how: str, tmp_path: Path, run: Run) -> None:
    weight_map = shard_folder(tmp_path, index=how != "folder of shards")
    target = tmp_path / "model.safetensors.index.json" if how == "index file" else tmp_path
    doc = json.loads(run("inspect", target, "-f", "json").stdout)
    validate_json(doc, "inspect.v1")
    whole = json.loads(run("inspect", BASE, "-f", "json").stdout)
    assert doc["checkpoint"]["shards"] == 3 and doc["checkpoint"]["tensors"] == 20
    # every figure the same as the single file; the totals exactly, whatever the shard order
    assert {k: v for k, v in doc["total"].items() if k != "bytes"} == {
        k: v for k, v in whole["total"].items() if k != "bytes"
    }
    rows = {t["name"]: t for t in doc["tensors"]}
    for t in whole["tensors"]:
        assert {k: v for k, v in rows[t["name"]].items() if k != "shard"} == {
            k: v for k, v in t.items() if k != "shard"
        }
        assert rows[t["name"]]["shard"] == weight_map[t["name"]]


def test_the_table_names_each_tensors_shard(tmp_path: Path, run: Run) -> None:
    shard_folder(tmp_path)
    out = run("inspect", tmp_path, env={"COLUMNS": "320"}).stdout
    assert "safetensors, 3 shards, 20 tensors" in out
    assert "model-00002-of-00003.safetensors" in out


def test_compare_a_sharded_model_with_its_single_file(tmp_path: Path) -> None:
    shard_folder(tmp_path)
    result = normcli.compare(BASE, tmp_path)
    assert result.summary["unchanged"] == 20 and result.total.cosine == 1.0


def broken(tmp_path: Path, edit: str) -> Path:
    weight_map = shard_folder(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    if edit == "missing shard file":
        (tmp_path / "model-00003-of-00003.safetensors").unlink()
    elif edit == "tensor not in its shard":
        weight_map["model.ghost.weight"] = "model-00001-of-00003.safetensors"
    elif edit == "mapped to the wrong shard":
        name = next(n for n, s in weight_map.items() if s.startswith("model-00001"))
        weight_map[name] = "model-00002-of-00003.safetensors"
    elif edit == "tensor the index does not map":
        del weight_map[next(iter(weight_map))]
    elif edit == "tensor in two shards":
        save_file(
            {"lm_head.weight": np.zeros(2, np.float32)},
            str(tmp_path / "model-00003-of-00003.safetensors"),
        )
        weight_map = {n: s for n, s in weight_map.items() if not s.startswith("model-00003")}
        weight_map["lm_head.weight"] = "model-00003-of-00003.safetensors"
    elif edit == "shard outside the folder":
        weight_map["lm_head.weight"] = "../elsewhere.safetensors"
    elif edit == "not an index":
        index.write_text("[1, 2]")
        return tmp_path
    index.write_text(json.dumps({"weight_map": weight_map}))
    return tmp_path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing shard file", "which does not exist"),
        ("tensor not in its shard", "'model.ghost.weight' is not in its shard"),
        (
            "mapped to the wrong shard",
            "is mapped to 'model-00002-of-00003.safetensors' but found in",
        ),
        ("tensor the index does not map", "which the index does not map"),
        ("tensor in two shards", "appears in two shards"),
        ("shard outside the folder", "outside its folder"),
        ("not an index", "no weight_map"),
    ],
)
def test_an_index_that_does_not_match_its_shards_is_refused(
    edit: str, message: str, tmp_path: Path, run: Run
) -> None:
    target = broken(tmp_path, edit)
    result = run("inspect", target, code=2)
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_shard_set_with_a_part_missing_is_refused(tmp_path: Path, run: Run) -> None:
    shard_folder(tmp_path, index=False)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    assert "missing part(s) 2" in run("inspect", tmp_path, code=2).stderr


def test_a_folder_of_unrelated_checkpoints_asks_which(tmp_path: Path, run: Run) -> None:
    shutil.copy(BASE, tmp_path / "model.safetensors")
    (tmp_path / "optimizer.pt").write_bytes(b"\x80\x02}q\x00.")
    err = run("inspect", tmp_path, code=2).stderr
    assert "several checkpoints (model.safetensors, optimizer.pt)" in err and "name" in err


def test_a_folder_with_one_checkpoint_reads_it(tmp_path: Path, run: Run) -> None:
    shutil.copy(BASE, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    doc = json.loads(run("inspect", tmp_path, "-f", "json").stdout)
    assert doc["checkpoint"]["tensors"] == 20 and doc["checkpoint"]["shards"] == 1


def test_an_empty_folder_is_a_clear_error(tmp_path: Path, run: Run) -> None:
    assert "holds no checkpoint file" in run("inspect", tmp_path, code=2).stderr


def test_one_part_of_a_shard_set_alone_is_not_the_model(tmp_path: Path, run: Run) -> None:
    shard_folder(tmp_path, parts=2, index=False)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    assert "missing part(s) 2" in run("inspect", tmp_path, code=2).stderr
