"""The optimizer state a training checkpoint holds beside the model: its own total, and one per
moment (exp_avg, exp_avg_sq, step...), apart from the model's unless asked to count it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..norms import TensorStats
from .common import stats_dict


@dataclass(frozen=True)
class OptimizerTensor:
    """Where a tensor of an optimizer's state belongs (a row's `optimizer`)."""

    optimizer: str
    param: str
    moment: str

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "param": self.param, "moment": self.moment}


@dataclass(frozen=True)
class MomentTotal:
    moment: str
    tensors: int
    nbytes: int
    stats: TensorStats

    def to_dict(self) -> dict[str, Any]:
        return {
            "moment": self.moment,
            "tensors": self.tensors,
            "bytes": self.nbytes,
            **stats_dict(self.stats),
        }


@dataclass(frozen=True)
class OptimizerState:
    """The selected optimizer-state tensors whatever their dtype: how many, where they lie, and
    the figures of those the totals would count (floating point, or all with --include-int)."""

    optimizers: tuple[str, ...]
    tensors: int
    # whether the whole-model total counts them (--include-optimizer)
    in_total: bool
    nbytes: int
    stats: TensorStats
    by_moment: tuple[MomentTotal, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizers": list(self.optimizers),
            "tensors": self.tensors,
            "in_total": self.in_total,
            "bytes": self.nbytes,
            **stats_dict(self.stats),
            "by_moment": [m.to_dict() for m in self.by_moment],
        }
