"""Training state beside a model's weights: which tensors of a checkpoint are an optimizer's
(moments, step counters, master copies), and which parameter each belongs to. Found by structure
(a torch optimizer state dict, {"state": ..., "param_groups": [...]}, wherever it is nested) and
by the keys frameworks store optimizer state under."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .base import OptimizerSlot
from .torch_pickle import TORCH_DTYPES, TensorStub

# top-level keys under which trainers store optimizer state (torch examples, Lightning,
# DeepSpeed, Accelerate, timm...), set apart even when not laid out as torch's state dict
OPTIMIZER_KEYS = frozenset(
    [
        "optimizer",
        "optimizers",
        "optimizer_state_dict",
        "optimizer_states",
        "optimizer_state",
        "optim",
        "optim_state",
        "opt",
        "opt_state",
    ]
)
# buffers a model's state dict holds between its parameters, which an optimizer never sees
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class _Optimizer:
    """An optimizer's state at dotted `prefix`; its state keys, and the parameter of each."""

    prefix: str
    keys: tuple[str, ...] = ()
    params: tuple[Any, ...] = ()
    shapes: tuple[frozenset[tuple[int, ...]], ...] = ()


def tree_slots(root: Any, tensors: list[tuple[str, TensorStub]]) -> dict[str, OptimizerSlot]:
    """The optimizer slot of each tensor of a torch.save tree that is an optimizer's."""
    found = list(_tree_optimizers(root, "", 0))
    return _slots(found, tensors)


def flat_slots(
    tensors: list[tuple[str, tuple[int, ...], str]], values: Iterable[str]
) -> dict[str, OptimizerSlot]:
    """The same for flattened names (a DCP folder's): `tensors` as (name, shape, torch dtype),
    `values` the names of the other entries."""
    names = [name for name, _, _ in tensors] + list(values)
    prefixes = {n.split(".state.", 1)[0] for n in names if ".state." in n}
    found = [
        _Optimizer(p)
        for p in sorted(prefixes)
        if any(n.startswith(f"{p}.param_groups.") for n in names)
    ]
    found += [
        _Optimizer(top)
        for top in sorted({n.split(".", 1)[0] for n in names} & OPTIMIZER_KEYS)
        if all(o.prefix != top for o in found)
    ]
    stubs = [(name, _Shaped(shape, dtype)) for name, shape, dtype in tensors]
    return _slots(found, stubs)


@dataclass(frozen=True)
class _Shaped:
    shape: tuple[int, ...]
    dtype: str


def _tree_optimizers(node: Any, prefix: str, depth: int) -> Iterable[_Optimizer]:
    if depth > 8:
        return
    if _is_torch_optimizer(node):
        yield _torch_optimizer(node, prefix)
        return
    items: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        items = [(_text(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    for key, child in items:
        name = f"{prefix}.{key}" if prefix else key
        inner = list(_tree_optimizers(child, name, depth + 1))
        if depth == 0 and key in OPTIMIZER_KEYS and all(o.prefix != name for o in inner):
            inner.append(_Optimizer(name))  # what lies beside a nested state dict is state too
        yield from inner


def _is_torch_optimizer(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and isinstance(node.get("state"), dict)
        and isinstance(node.get("param_groups"), list)
        and all(isinstance(g, dict) and "params" in g for g in node["param_groups"])
    )


def _torch_optimizer(node: dict[Any, Any], prefix: str) -> _Optimizer:
    params = tuple(p for group in node["param_groups"] for p in group.get("params") or ())
    shapes = []
    for key in params:
        entry = node["state"].get(key)
        values = entry.values() if isinstance(entry, dict) else ()
        shapes.append(frozenset(v.shape for v in values if isinstance(v, TensorStub) and v.shape))
    keys = tuple(_text(k) for k in node["state"])
    return _Optimizer(prefix, keys, params, tuple(shapes))


def _text(key: Any) -> str:
    return key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else str(key)


def _slots(found: list[_Optimizer], tensors: list[tuple[str, Any]]) -> dict[str, OptimizerSlot]:
    if not found:
        return {}
    slots: dict[str, OptimizerSlot] = {}
    owners = sorted(found, key=lambda o: -len(o.prefix))
    for name, _ in tensors:
        owner = next((o for o in owners if _under(name, o.prefix)), None)
        if owner is not None:
            slots[name] = _slot(name, owner)
    model = [(n, t) for n, t in tensors if n not in slots]
    if not model:
        return {}  # optimizer state alone (a trainer's optimizer.pt, --key optimizer): read as is
    for optimizer in found:
        keys = {s.param for s in slots.values() if s.optimizer == optimizer.prefix and s.param}
        names = _parameter_names(optimizer, keys, model)
        for name, slot in list(slots.items()):
            if slot.optimizer == optimizer.prefix and slot.param in names:
                slots[name] = OptimizerSlot(slot.optimizer, names[slot.param], slot.moment)
    return slots


def _under(name: str, prefix: str) -> bool:
    return not prefix or name.startswith(f"{prefix}.")


def _slot(name: str, optimizer: _Optimizer) -> OptimizerSlot:
    rest = name[len(optimizer.prefix) + 1 :] if optimizer.prefix else name
    if not rest.startswith("state."):
        return OptimizerSlot(optimizer.prefix, "", rest)
    within = rest[len("state.") :]
    key = next((k for k in optimizer.keys if within.startswith(f"{k}.")), None)
    if key is None:
        key = within.rsplit(".", 1)[0] if "." in within else ""
    return OptimizerSlot(optimizer.prefix, key, within[len(key) + 1 :] if key else within)


def _parameter_names(
    optimizer: _Optimizer, keys: set[str], model: list[tuple[str, Any]]
) -> dict[str, str]:
    """State key -> the model tensor it is the state of, where the checkpoint tells. Index keys
    (torch's state dicts) follow the parameters' order, which is the model's tensors in order less
    its buffers, when every shape agrees; keys that are parameter names (FQN-keyed state, DCP)
    name the one model tensor that ends so."""
    if not (optimizer.params and all(type(p) is int for p in optimizer.params)):
        ends: dict[str, list[str]] = {}
        for name, _ in model:
            parts = name.split(".")
            for i in range(len(parts)):
                ends.setdefault(".".join(parts[i:]), []).append(name)
        return {k: ends[k][0] for k in keys if len(ends.get(k, ())) == 1}
    parameters = [
        (name, tensor)
        for name, tensor in model
        if _is_float(tensor.dtype) and not name.endswith(_BUFFERS)
    ]
    if len(parameters) != len(optimizer.params):
        return {}
    for (_, tensor), shapes in zip(parameters, optimizer.shapes, strict=True):
        if shapes and shapes != {tuple(tensor.shape)}:
            return {}
    return {str(p): name for p, (name, _) in zip(optimizer.params, parameters, strict=True)}


def _is_float(torch_dtype: Any) -> bool:
    dtype = TORCH_DTYPES.get(torch_dtype) if isinstance(torch_dtype, str) else None
    return dtype is not None and dtype.kind == "float"
