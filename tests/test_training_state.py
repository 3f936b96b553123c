"""Optimizer state told apart from the model's weights, in checkpoints torch wrote (training.pt,
Lightning's layout, Hugging Face's optimizer.pt, a DCP folder) and in crafted trees."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import Run, validate_json

from normcli.readers import open_checkpoint
from normcli.readers.base import OptimizerSlot
from normcli.readers.torch_pickle import StorageStub, TensorStub
from normcli.readers.training import tree_slots

TRAINING = Path(__file__).resolve().parent / "fixtures" / "pytorch" / "training"
PARAMS = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
ADAM = ["step", "exp_avg", "exp_avg_sq"]


def slots(path: Path, key: str | None = None) -> dict[str, OptimizerSlot | None]:
    with open_checkpoint(path, key=key) as checkpoint:
        return {t.name: t.optimizer for t in checkpoint.tensors}


@pytest.mark.parametrize(
    ("name", "model", "optimizer"),
    [
        ("training.pt", "model", "optimizer"),
        ("lightning.ckpt", "state_dict.net", "optimizer_states.0"),
    ],
)
def test_adam_state_maps_to_the_parameters_it_belongs_to(
    name: str, model: str, optimizer: str
) -> None:
    found = slots(TRAINING / name)
    assert all(found[f"{model}.{p}"] is None for p in PARAMS)
    for index, param in enumerate(PARAMS):
        for moment in ADAM:
            assert found[f"{optimizer}.state.{index}.{moment}"] == OptimizerSlot(
                optimizer, f"{model}.{param}", moment
            )
    assert sum(s is not None for s in found.values()) == len(PARAMS) * len(ADAM)


def test_a_dcp_folder_names_its_optimizer_state_by_parameter() -> None:
    found = slots(TRAINING / "dcp")
    assert all(found[f"model.{p}"] is None for p in PARAMS)
    assert found["optim.state.3.weight.exp_avg_sq"] == OptimizerSlot(
        "optim", "model.3.weight", "exp_avg_sq"
    )
    assert found["optim.state.0.bias.step"] == OptimizerSlot("optim", "model.0.bias", "step")
    assert sum(s is not None for s in found.values()) == 18


def test_optimizer_state_alone_is_read_as_it_is() -> None:
    # nothing to set it apart from: its figures are what was asked for
    assert set(slots(TRAINING / "optimizer.pt").values()) == {None}
    assert set(slots(TRAINING / "training.pt", key="optimizer").values()) == {None}
    assert set(slots(TRAINING / "dcp", key="optim").values()) == {None}


def test_key_model_reads_weights_only() -> None:
    assert set(slots(TRAINING / "training.pt", key="model").values()) == {None}
    assert set(slots(TRAINING / "dcp", key="model").values()) == {None}


# --- crafted trees -------------------------------------------------------------------------------


def stub(*shape: int, dtype: str = "float32") -> TensorStub:
    storage = StorageStub("0", dtype, 0, 4)
    stride = tuple(1 for _ in shape)
    return TensorStub(storage, 0, tuple(shape), stride, dtype, None)


def flat(tree: Any, prefix: str = "") -> list[tuple[str, TensorStub]]:
    if isinstance(tree, TensorStub):
        return [(prefix, tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = []
    for key, value in items:
        if isinstance(value, (dict, list, TensorStub)):
            out += flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def adam(shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    return {
        "state": {i: {"step": stub(), "exp_avg": stub(*s)} for i, s in enumerate(shapes)},
        "param_groups": [{"lr": 0.1, "params": list(range(len(shapes)))}],
    }


def test_buffers_between_parameters_are_skipped_when_mapping() -> None:
    model = {
        "bn.weight": stub(4),
        "bn.bias": stub(4),
        "bn.running_mean": stub(4),
        "bn.running_var": stub(4),
        "bn.num_batches_tracked": stub(dtype="int64"),
        "norm.weight": stub(4),
    }
    tree = {"model": model, "optimizer": adam([(4,), (4,), (4,)])}
    found = tree_slots(tree, flat(tree))
    assert found["optimizer.state.2.exp_avg"].param == "model.norm.weight"


def test_state_whose_shapes_disagree_keeps_its_indices() -> None:
    tree = {"model": {"a": stub(3), "b": stub(5)}, "optimizer": adam([(5,), (3,)])}
    found = tree_slots(tree, flat(tree))
    assert found["optimizer.state.0.exp_avg"] == OptimizerSlot("optimizer", "0", "exp_avg")


def test_optimizer_keys_set_state_apart_in_other_layouts() -> None:
    # DeepSpeed's optimizer files: fp32 master copies beside the base optimizer's state
    tree = {
        "optimizer_state_dict": {
            "base_optimizer_state": adam([(8,)]),
            "single_partition_of_fp32_groups": [stub(8)],
        },
        "module": {"w": stub(8)},
    }
    found = tree_slots(tree, flat(tree))
    assert found["optimizer_state_dict.single_partition_of_fp32_groups.0"] is not None
    assert found["optimizer_state_dict.base_optimizer_state.state.0.exp_avg"] == OptimizerSlot(
        "optimizer_state_dict.base_optimizer_state", "module.w", "exp_avg"
    )
    assert "module.w" not in found


# --- the model's totals, and the optimizer's apart ------------------------------------------------

EXPECTED: dict[str, Any] = json.loads((TRAINING / "expected.json").read_text())["files"]


def torch_l2(file: str, names: Iterable[str]) -> float:
    """The global L2 norm over `names`, from the per-tensor norms torch computed."""
    figures = EXPECTED[file]["tensors"]
    return math.sqrt(math.fsum(figures[n]["l2"] ** 2 for n in names))


def inspected(run: Run, path: Path, *options: str) -> dict[str, Any]:
    doc = json.loads(run("inspect", path, "-f", "json", *options).stdout)
    validate_json(doc, "inspect.v1")
    return doc


@pytest.mark.parametrize(
    ("file", "model", "optimizer"),
    [
        ("training.pt", "model.", "optimizer."),
        ("lightning.ckpt", "state_dict.", "optimizer_states."),
        ("dcp", "model.", "optim."),
    ],
)
def test_whole_model_totals_cover_the_weights_alone(
    file: str, model: str, optimizer: str, run: Run
) -> None:
    names = list(EXPECTED[file]["tensors"])
    weights = [n for n in names if n.startswith(model)]
    state = [n for n in names if n.startswith(optimizer)]
    doc = inspected(run, TRAINING / file)
    assert math.isclose(doc["total"]["l2"], torch_l2(file, weights), rel_tol=1e-12)
    assert doc["total"]["covers"]["tensors"] == len(weights) == 6
    assert doc["total"]["covers"]["optimizer_excluded"] == len(state) == 18
    section = doc["optimizer"]
    assert section["tensors"] == 18 and section["in_total"] is False
    assert math.isclose(section["l2"], torch_l2(file, state), rel_tol=1e-12)
    moments = {m["moment"]: m for m in section["by_moment"]}
    assert sorted(moments) == sorted(ADAM)
    exp_avg = [n for n in state if n.endswith(".exp_avg")]
    assert moments["exp_avg"]["tensors"] == len(exp_avg) == 6
    assert math.isclose(moments["exp_avg"]["l2"], torch_l2(file, exp_avg), rel_tol=1e-12)
    rows = {t["name"]: t for t in doc["tensors"]}
    assert all(not rows[n]["in_total"] and rows[n]["optimizer"] for n in state)
    assert all(rows[n]["in_total"] and rows[n]["optimizer"] is None for n in weights)

    everything = inspected(run, TRAINING / file, "--include-optimizer")
    assert math.isclose(everything["total"]["l2"], torch_l2(file, names), rel_tol=1e-12)
    assert everything["optimizer"]["in_total"] is True
    assert everything["total"]["covers"]["optimizer_excluded"] == 0


def test_key_model_gives_the_same_totals(run: Run) -> None:
    default = inspected(run, TRAINING / "training.pt")
    model = inspected(run, TRAINING / "training.pt", "--key", "model")
    assert model["total"]["l2"] == default["total"]["l2"] and model["optimizer"] is None


def test_the_table_says_what_was_set_apart(run: Run) -> None:
    out = run("inspect", TRAINING / "training.pt").stdout
    assert "Whole model: 6 floating-point tensors (18 optimizer-state tensors set apart; " in out
    assert "--include-optimizer adds them)" in out
    assert "Optimizer state: 18 tensors in 'optimizer', not in the whole model" in out
    assert "optimizer, not in total" in out
    markdown = run("inspect", TRAINING / "training.pt", "-f", "md").stdout
    assert "**Optimizer state** (18 tensors, not in the whole model)" in markdown


def test_compare_and_trend_leave_optimizer_state_out(run: Run, tmp_path: Path) -> None:
    a, b = TRAINING / "training.pt", TRAINING / "lightning.ckpt"
    renames = [
        "--rename",
        r"^state_dict\.net\.=model.",
        "--rename",
        "^optimizer_states.0.=optimizer.",
    ]
    doc = json.loads(run("compare", a, b, *renames, "-f", "json").stdout)
    validate_json(doc, "compare.v2")
    assert doc["optimizer_excluded"] == 18 and doc["total"]["tensors"] == 6
    assert doc["summary"]["unchanged"] == 24  # the same training state, relaid by Lightning
    both = json.loads(run("compare", a, b, *renames, "--include-optimizer", "-f", "json").stdout)
    assert both["optimizer_excluded"] == 0 and both["total"]["tensors"] == 24
    assert "18 optimizer-state tensors set apart" in run("compare", a, b, *renames).stdout

    trend = json.loads(run("trend", a, TRAINING / "dcp_consolidated.pt", "-f", "json").stdout)
    validate_json(trend, "trend.v2")
    assert not any(r["name"].startswith("optim") for r in trend["rows"])
    assert trend["optimizer_excluded"] == 36  # named by index in one, by parameter in the other
    assert "36 optimizer-state tensors set apart" in run("trend", a, TRAINING / "dcp").stdout

    # a saved report keeps its optimizer rows out of a later comparison too
    saved = tmp_path / "training.json"
    run("inspect", a, "-f", "json", "-o", saved)
    assert json.loads(run("compare", saved, a, "-f", "json").stdout)["optimizer_excluded"] == 18


def test_check_judges_the_weights_unless_told(run: Run) -> None:
    # the step counters (2.0) break the limit; the weights (Linf 1.01) keep it
    path = TRAINING / "training.pt"
    run("check", path, "--max-tensor-linf", "1.5", code=0)
    result = run("check", path, "--max-tensor-linf", "1.5", "--include-optimizer", code=1)
    assert "6 violations" in result.stdout + result.stderr


def test_the_library_sets_optimizer_state_apart_too() -> None:
    import normcli

    default = normcli.inspect(TRAINING / "dcp")
    everything = normcli.inspect(TRAINING / "dcp", include_optimizer=True)
    assert default.optimizer is not None and everything.optimizer is not None
    assert [m.moment for m in default.optimizer.by_moment] == ["exp_avg", "exp_avg_sq", "step"]
    assert default.total.tensors == 6 and everything.total.tensors == 24
    assert everything.optimizer.in_total and not default.optimizer.in_total
    both = normcli.compare(TRAINING / "dcp", TRAINING / "dcp", include_optimizer=True)
    assert both.optimizer_excluded == 0 and both.total.tensors == 24
    run = normcli.trend([TRAINING / "dcp", TRAINING / "dcp_consolidated.pt"])
    assert run.optimizer_excluded == 18  # the same names in both
