"""The compare result: every tensor's status and figures on each side, groups and the total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..norms import PairStats, TensorStats, l2_ratio
from .common import number, stats_dict
from .inspect import CheckpointInfo

COMPARE_SCHEMA = "normcli/compare/v2"
STATUSES = ("changed", "unchanged", "added", "removed", "shape_changed")
# tensors with no counterpart of the same shape: in the model vector they meet only zeros
ONE_SIDED = ("added", "removed", "shape_changed")
# what a saved report, holding norms but not values, leaves unknown about the update
UPDATE_FIGURES = ("diff", "rel_l2", "cosine")


# the figures each side of a compared tensor carries (a subset of an inspect row's)
SIDE_FIGURES = ("numel", "l1", "l2", "linf", "rms", "zeros", "nan", "inf")


@dataclass(frozen=True)
class SideFigures:
    """One side of a tensor: its own name in that checkpoint, dtype, shape and statistics."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stats: TensorStats
    shard: str | None = None

    def to_dict(self) -> dict[str, Any]:
        figures = stats_dict(self.stats)
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            **{k: figures[k] for k in SIDE_FIGURES},
            "shard": self.shard,
        }


def _diff_dict(pair: PairStats | None) -> dict[str, Any] | None:
    if pair is None:
        return None
    return {"l1": number(pair.diff.l1), "l2": number(pair.diff.l2), "linf": number(pair.diff.linf)}


@dataclass(frozen=True)
class TensorDiff:
    name: str
    status: str
    dtype_changed: bool
    a: SideFigures | None
    b: SideFigures | None
    # element-wise figures; None unless both sides are checkpoints holding this tensor, same shape
    pair: PairStats | None
    covered: bool

    @property
    def rel_l2(self) -> float | None:
        return self.pair.rel_l2 if self.pair is not None else None

    @property
    def ratio_l2(self) -> float | None:
        if self.a is None or self.b is None or self.status == "shape_changed":
            return None
        return l2_ratio(self.b.stats, self.a.stats)

    @property
    def cosine(self) -> float | None:
        return self.pair.cosine if self.pair is not None else None

    @property
    def nonfinite(self) -> bool:
        return any(s is not None and (s.stats.nan or s.stats.inf) for s in (self.a, self.b))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "dtype_changed": self.dtype_changed,
            "in_total": self.covered,
            "a": None if self.a is None else self.a.to_dict(),
            "b": None if self.b is None else self.b.to_dict(),
            "diff": _diff_dict(self.pair),
            "rel_l2": number(self.rel_l2),
            "ratio_l2": number(self.ratio_l2),
            "cosine": number(self.cosine),
        }


@dataclass(frozen=True)
class Aggregate:
    """A group of tensors, or the whole model, as one vector: each side's totals and the update
    over every tensor, one missing on a side counting as zeros there (`pair` None: the update
    cannot be computed, as a side is a saved report without values)."""

    name: str
    tensors: int
    a: TensorStats
    b: TensorStats
    pair: PairStats | None
    matched: int = 0
    added: int = 0
    removed: int = 0
    reshaped: int = 0

    @property
    def a_l2(self) -> float:
        return self.a.l2

    @property
    def b_l2(self) -> float:
        return self.b.l2

    @property
    def update_l2(self) -> float | None:
        return self.pair.diff.l2 if self.pair is not None else None

    @property
    def rel_l2(self) -> float | None:
        return self.pair.rel_l2 if self.pair is not None else None

    @property
    def ratio_l2(self) -> float | None:
        return l2_ratio(self.b, self.a)

    @property
    def cosine(self) -> float | None:
        return self.pair.cosine if self.pair is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensors": self.tensors,
            "covers": {
                "matched": self.matched,
                "added": self.added,
                "removed": self.removed,
                "reshaped": self.reshaped,
            },
            "a": stats_dict(self.a),
            "b": stats_dict(self.b),
            "diff": _diff_dict(self.pair),
            "rel_l2": number(self.rel_l2),
            "ratio_l2": number(self.ratio_l2),
            "cosine": number(self.cosine),
            "not_computed": [] if self.pair is not None else list(UPDATE_FIGURES),
        }


@dataclass(frozen=True)
class CompareResult:
    a: CheckpointInfo
    b: CheckpointInfo
    tensors: tuple[TensorDiff, ...]
    groups: tuple[Aggregate, ...] | None
    total: Aggregate
    summary: dict[str, int]
    scope: str
    selected: int
    # tensors on either side before --filter/--exclude
    available: int
    # every selected tensor holding NaN or Inf on either side, whatever --top hid
    nonfinite_tensors: tuple[str, ...] = ()
    # tensors of optimizer state left out of the total (without --include-optimizer)
    optimizer_excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "selected": self.selected,
            "available": self.available,
            "tensors": [t.to_dict() for t in self.tensors],
            "groups": None if self.groups is None else [g.to_dict() for g in self.groups],
            "total": {**self.total.to_dict(), "scope": self.scope},
            "summary": dict(self.summary),
            "nonfinite_tensors": list(self.nonfinite_tensors),
            "optimizer_excluded": self.optimizer_excluded,
        }
