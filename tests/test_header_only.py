"""inspect --header-only: names, dtypes, shapes and counts from the headers, with no value read,
for every format (local and remote); figures of the values are null in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import normcli
from normcli.results import VALUE_KEYS
from tests.conftest import Run
from tests.servers import serve_folder
from tests.test_remote import CHECKPOINTS, zoo  # noqa: F401  (the fixture of every format)

COUNT_KEYS = ("name", "dtype", "shape", "bytes", "numel", "in_total", "shard")


def _counts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: t[k] for k in COUNT_KEYS} for t in doc["tensors"]]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_format_gives_the_counts_of_a_full_read_and_no_figure(
    zoo: Path,  # noqa: F811
    name: str,
    validate_json: Any,
) -> None:
    full = normcli.inspect(zoo / name, group_by=1).to_dict()
    header = normcli.inspect(zoo / name, group_by=1, header_only=True).to_dict()
    validate_json(header, "inspect.v1")
    assert header["header_only"] is True and full["header_only"] is False
    assert _counts(header) == _counts(full)
    for rows in (header["tensors"], header["groups"], header["total"]["by_dtype"]):
        assert all(row[k] is None for row in rows for k in VALUE_KEYS)
    assert [g["numel"] for g in header["groups"]] == [g["numel"] for g in full["groups"]]
    assert header["total"]["numel"] == full["total"]["numel"]
    assert header["total"]["bytes"] == full["total"]["bytes"]
    assert header["total"]["nonfinite_tensors"] is None
    assert header["total"]["largest"] == {"l2": None, "linf": None}


def test_no_value_is_read(zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from normcli.readers import base

    def refuse(*args: Any) -> Any:
        raise AssertionError("a value was read")

    monkeypatch.setattr(base.TensorSource, "chunks", refuse)
    result = normcli.inspect(zoo / "model.safetensors", header_only=True)
    assert result.total.stats.numel == 3225


def test_a_remote_sharded_model_costs_a_few_small_requests_per_shard(
    tmp_path: Path, run: Run
) -> None:
    rng = np.random.default_rng(7)
    weight_map, header_bytes, shards = {}, 0, 4
    for part in range(1, shards + 1):
        shard = f"model-{part:05d}-of-{shards:05d}.safetensors"
        arrays = {
            f"l{part}.w{i}": rng.standard_normal(1 << 17).astype(np.float32) for i in range(4)
        }
        save_file(arrays, str(tmp_path / shard))
        weight_map.update(dict.fromkeys(arrays, shard))
        with open(tmp_path / shard, "rb") as f:
            header_bytes += 8 + int.from_bytes(f.read(8), "little")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for server in serve_folder(str(tmp_path)):
        url = f"{server.url}/model.safetensors.index.json"
        doc = json.loads(run("inspect", url, "--header-only", "-f", "json").stdout)
        assert doc["total"]["numel"] == shards * 4 * (1 << 17)
        assert server.served.requests <= 2 + 2 * shards
        # each shard's first bytes (headers within them), and nothing of 8 MiB of values
        assert server.served.bytes < header_bytes + shards * (1 << 20)
        assert server.served.bytes < (tmp_path / "model-00001-of-00004.safetensors").stat().st_size


def test_sorting_by_a_figure_or_plotting_is_refused(zoo: Path, run: Run) -> None:  # noqa: F811
    result = run("inspect", zoo / "model.safetensors", "--header-only", "--sort", "l2", code=2)
    assert "--header-only" in result.stderr
    result = run("inspect", zoo / "model.safetensors", "--header-only", "--plot", "x.svg", code=2)
    assert "--header-only" in result.stderr
    ordered = run("inspect", zoo / "model.safetensors", "--header-only", "--sort", "numel")
    assert "headers only" in ordered.stdout


def test_a_header_only_report_is_no_baseline(zoo: Path, run: Run, tmp_path: Path) -> None:  # noqa: F811
    saved = tmp_path / "header.json"
    saved.write_text(
        run("inspect", zoo / "model.safetensors", "--header-only", "-f", "json").stdout
    )
    result = run("compare", saved, zoo / "model.safetensors", code=2)
    assert "--header-only report" in result.stderr


TRAINING = Path(__file__).resolve().parent / "fixtures" / "pytorch" / "training"


@pytest.mark.parametrize(
    "name", ["scripted_net.pt", "traced.pt", "dcp", "training.pt", "lightning.ckpt"]
)
def test_training_checkpoints_give_counts_and_optimizer_state_unread(
    name: str, validate_json: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = normcli.inspect(TRAINING / name).to_dict()
    from normcli.readers import base

    def refuse(*args: Any) -> Any:
        raise AssertionError("a value was read")

    monkeypatch.setattr(base.TensorSource, "chunks", refuse)
    header = normcli.inspect(TRAINING / name, header_only=True).to_dict()
    validate_json(header, "inspect.v1")
    assert _counts(header) == _counts(full)
    assert header["total"]["numel"] == full["total"]["numel"] > 0
    assert header["total"]["l2"] is None
    if full["optimizer"] is None:
        return
    state, counted = header["optimizer"], full["optimizer"]
    assert (state["tensors"], state["bytes"], state["numel"]) == (
        counted["tensors"],
        counted["bytes"],
        counted["numel"],
    )
    assert [(m["moment"], m["numel"]) for m in state["by_moment"]] == [
        (m["moment"], m["numel"]) for m in counted["by_moment"]
    ]
    assert all(m[k] is None for m in [state, *state["by_moment"]] for k in VALUE_KEYS)


def test_the_table_shows_optimizer_state_counts_alone(run: Run) -> None:
    out = run("inspect", TRAINING / "training.pt", "--header-only").stdout
    assert "Optimizer state" in out and "By moment:" in out
    assert "exp_avg_sq" in out and "L2" not in out.split("Optimizer state", 1)[1]
