"""The trend result: the checkpoints of a run, and each tensor or group followed through them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..norms import PairStats, TensorStats
from .common import number

TREND_SCHEMA = "normcli/trend/v2"
# a step whose metric moved by more than this factor (either way) makes its row stand out
JUMP_FACTOR = 1.5


@dataclass(frozen=True)
class SetChange:
    """How the selected tensors of a checkpoint differ from the previous checkpoint's."""

    added: int
    removed: int
    reshaped: int

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.reshaped)

    def to_dict(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "reshaped": self.reshaped}


@dataclass(frozen=True)
class Point:
    """One checkpoint of the run."""

    path: str
    format: str
    step: int | None
    label: str
    # against the previous checkpoint; None at the first
    change: SetChange | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "step": self.step,
            "label": self.label,
            "tensor_set": None if self.change is None else self.change.to_dict(),
        }


@dataclass(frozen=True)
class TrendRow:
    """A tensor or a group: its statistics at every checkpoint (None where absent) and the
    update from the previous checkpoint (None at the first; for a tensor, where it is absent
    on a side or shapes differ; for a group, only where a side is a saved report, as a group's
    members missing on a side count as zeros there)."""

    name: str
    tensors: int
    stats: tuple[TensorStats | None, ...]
    updates: tuple[PairStats | None, ...]
    # the row's part of its group's update at each step (a group's own update)
    moves: tuple[PairStats | None, ...] = ()
    # how many of its tensors each checkpoint holds
    present: tuple[int, ...] = ()
    # how many of its tensors each checkpoint holds in another shape than the previous one
    reshaped: tuple[int, ...] = ()

    def values(self, metric: str) -> list[float | None]:
        return [_metric(s, metric) for s in self.stats]

    @property
    def update_l2(self) -> list[float | None]:
        return [u.diff.l2 if u is not None else None for u in self.updates]

    @property
    def rel_update(self) -> list[float | None]:
        return [u.rel_l2 if u is not None else None for u in self.updates]

    @property
    def nonfinite(self) -> bool:
        return any(s is not None and (s.nan or s.inf) for s in self.stats)

    def largest_jump(self, metric: str) -> tuple[int, float] | None:
        """(index t, factor v_t / v_(t-1)) of the biggest move between neighbours, either way."""
        values = self.values(metric)
        best: tuple[int, float] | None = None
        for t in range(1, len(values)):
            before, after = values[t - 1], values[t]
            if before is None or after is None or before <= 0 or after <= 0:
                continue
            factor = after / before
            if best is None or abs(math.log(factor)) > abs(math.log(best[1])):
                best = (t, factor)
        return best

    def first_jump(self, metric: str) -> tuple[int, float] | None:
        """The first move by JUMP_FACTOR or more: where a blow-up (or a collapse) began."""
        values = self.values(metric)
        for t in range(1, len(values)):
            before, after = values[t - 1], values[t]
            if before == 0 and after:
                return t, math.inf  # from all zeros to something: no factor is large enough
            if before and after == 0:
                return t, 0.0  # down to all zeros: no factor is small enough
            if before and after and before > 0 and after > 0:
                factor = after / before
                if abs(math.log(factor)) >= math.log(JUMP_FACTOR):
                    return t, factor
        return None

    def set_changed(self, t: int) -> bool:
        """Whether checkpoint t holds other tensors of the row than t-1: more, fewer, or some
        in another shape."""
        if not 0 < t < len(self.present):
            return False
        return self.present[t] != self.present[t - 1] or bool(self.reshaped and self.reshaped[t])

    def jumped(self, metric: str) -> bool:
        return self.first_jump(metric) is not None

    def to_dict(self, metric: str, points: Sequence[Point]) -> dict[str, Any]:
        values = self.values(metric)
        present = [v for v in values if v is not None]
        first, last = (present[0], present[-1]) if present else (None, None)

        def at(jump: tuple[int, float] | None) -> dict[str, Any] | None:
            if jump is None:
                return None
            point = points[jump[0]]
            return {"step": point.step, "label": point.label, "factor": number(jump[1])}

        return {
            "name": self.name,
            "tensors": self.tensors,
            "values": [number(v) for v in values],
            "nan": [s.nan if s is not None else None for s in self.stats],
            "inf": [s.inf if s is not None else None for s in self.stats],
            "update_l2": [number(v) for v in self.update_l2],
            "rel_update": [number(v) for v in self.rel_update],
            "first": number(first),
            "last": number(last),
            "change": number(last / first) if first and last is not None else None,
            "largest_jump": at(self.largest_jump(metric)),
            "first_jump": at(self.first_jump(metric)),
            "jumped": self.jumped(metric),
            "nonfinite": self.nonfinite,
            "present": list(self.present),
        }


@dataclass(frozen=True)
class TrendResult:
    points: tuple[Point, ...]
    rows: tuple[TrendRow, ...]
    total: TrendRow
    metric: str
    group_by: int | None
    grouped_automatically: bool
    # tensor names that --filter/--exclude kept, of all the checkpoints hold
    selected: int = 0
    available: int = 0
    # tensors of optimizer state left out (without --include-optimizer)
    optimizer_excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TREND_SCHEMA,
            "metric": self.metric,
            "group_by": self.group_by,
            "selected": self.selected,
            "available": self.available,
            "checkpoints": [p.to_dict() for p in self.points],
            "rows": [r.to_dict(self.metric, self.points) for r in self.rows],
            "total": self.total.to_dict(self.metric, self.points),
            "optimizer_excluded": self.optimizer_excluded,
        }


def _metric(stats: TensorStats | None, metric: str) -> float | None:
    if stats is None or not stats.numel:
        return None
    if metric == "rms":
        return stats.rms
    value: float = getattr(stats, metric)
    return value if stats.finite else None


# --- which checkpoints, in which order ----------------------------------------------------------
