"""Optimizer state told apart from the model's weights, in checkpoints torch wrote (training.pt,
Lightning's layout, Hugging Face's optimizer.pt, a DCP folder) and in crafted trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
