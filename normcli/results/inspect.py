"""The inspect result: one checkpoint's tensors, groups and whole-model total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..norms import TensorStats
from .common import Figures, HeaderCounts, stats_dict
from .optimizer import OptimizerState, OptimizerTensor

INSPECT_SCHEMA = "normcli/inspect/v1"


@dataclass(frozen=True)
class TensorReport(Figures):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    stats: TensorStats
    # whether whole-model totals count this tensor (floating point, or all with --include-int)
    covered: bool = True
    # the file holding it, in a sharded checkpoint
    shard: str | None = None
    # where it belongs, for a tensor of an optimizer's state
    optimizer: OptimizerTensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "bytes": self.nbytes,
            **stats_dict(self.stats),
            "in_total": self.covered,
            "shard": self.shard,
            "optimizer": None if self.optimizer is None else self.optimizer.to_dict(),
        }


@dataclass(frozen=True)
class GroupReport(Figures):
    """Tensors whose names share their first N dot-separated parts, aggregated like the model."""

    name: str
    tensors: int
    dtypes: tuple[str, ...]
    nbytes: int
    stats: TensorStats

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensors": self.tensors,
            "dtypes": list(self.dtypes),
            "bytes": self.nbytes,
            **stats_dict(self.stats),
        }


@dataclass(frozen=True)
class DtypeSummary(Figures):
    dtype: str
    tensors: int
    nbytes: int
    stats: TensorStats

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "tensors": self.tensors,
            "bytes": self.nbytes,
            **stats_dict(self.stats),
        }


@dataclass(frozen=True)
class Total(Figures):
    """Whole-model figures: L1 and counts add up, L2 is the global norm √Σ‖t‖₂², Linf the max."""

    stats: TensorStats
    nbytes: int
    scope: str  # "floating" or "all"
    tensors: int
    excluded: int
    by_dtype: tuple[DtypeSummary, ...]
    # every selected tensor holding NaN or Inf, in file order (covered by the total or not)
    nonfinite_tensors: tuple[str, ...] = ()
    # the covered tensors with the largest L2 and Linf, whatever --top hides
    largest_l2: str | None = None
    largest_linf: str | None = None
    # optimizer-state tensors left out (the rest of `excluded` are integer/bool tensors)
    optimizer_excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **stats_dict(self.stats),
            "bytes": self.nbytes,
            "covers": {
                "scope": self.scope,
                "tensors": self.tensors,
                "excluded": self.excluded,
                "optimizer_excluded": self.optimizer_excluded,
            },
            "by_dtype": [d.to_dict() for d in self.by_dtype],
            "nonfinite_tensors": (
                None if isinstance(self.stats, HeaderCounts) else list(self.nonfinite_tensors)
            ),
            "largest": {"l2": self.largest_l2, "linf": self.largest_linf},
        }


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    format: str
    nbytes: int
    tensors: int
    shards: int = 1
    # values of a PyTorch checkpoint that are not tensors (numbers, strings...), left out
    skipped_values: int = 0
    # (name, reason) of tensors normcli cannot read (a type it cannot dequantize, say)
    skipped_tensors: tuple[tuple[str, str], ...] = ()
    # the --filter and --exclude globs the tensors were chosen by (a saved report's, as saved)
    selection: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "bytes": self.nbytes,
            "tensors": self.tensors,
            "shards": self.shards,
            "skipped_values": self.skipped_values,
            "skipped_tensors": [
                {"name": name, "reason": reason} for name, reason in self.skipped_tensors
            ],
        }


@dataclass(frozen=True)
class InspectResult:
    """One checkpoint's report: the selected tensor rows (or groups) and the whole-model total."""

    checkpoint: CheckpointInfo
    tensors: tuple[TensorReport, ...]
    groups: tuple[GroupReport, ...] | None
    total: Total
    # tensors that passed --filter/--exclude; `tensors` may hold fewer after --top
    selected: int
    # read from the headers alone (--header-only): counts, and no figure of the values
    header_only: bool = False
    # the optimizer state among them, in a training checkpoint
    optimizer: OptimizerState | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": INSPECT_SCHEMA,
            "header_only": self.header_only,
            "checkpoint": self.checkpoint.to_dict(),
            "selected": self.selected,
            "selection": {
                "filter": list(self.checkpoint.selection[0]),
                "exclude": list(self.checkpoint.selection[1]),
            },
            "tensors": [t.to_dict() for t in self.tensors],
            "groups": None if self.groups is None else [g.to_dict() for g in self.groups],
            "total": self.total.to_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.to_dict(),
        }
