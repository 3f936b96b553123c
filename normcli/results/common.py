"""What every result shares: JSON-safe numbers and the figures of one set of statistics, as a dict
and as attributes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..norms import TensorStats


def number(value: float | None) -> float | None:
    """A JSON-safe number: NaN and infinities (only from overflow) have no JSON form, so null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class HeaderCounts(TensorStats):
    """What a header tells of a set of tensors (inspect --header-only): the element count; no
    value was read, so every figure of the values is unknown (null in JSON)."""

    @staticmethod
    def of(parts: Sequence[TensorStats]) -> HeaderCounts:
        return HeaderCounts(numel=sum(p.numel for p in parts))


# the keys of stats_dict that come from the values
VALUE_KEYS = ("l1", "l2", "linf", "rms", "mean", "zeros", "sparsity", "nan", "inf")


def stats_dict(stats: TensorStats) -> dict[str, Any]:
    if isinstance(stats, HeaderCounts):
        return {"numel": stats.numel, **dict.fromkeys(VALUE_KEYS)}
    return {
        "numel": stats.numel,
        "l1": number(stats.l1),
        "l2": number(stats.l2),
        # the max of no values does not exist (an empty or all-NaN tensor)
        "linf": number(stats.linf) if stats.finite else None,
        "rms": number(stats.rms),
        "mean": number(stats.mean),
        "zeros": stats.zeros,
        "sparsity": number(stats.sparsity),
        "nan": stats.nan,
        "inf": stats.inf,
    }


class Figures:
    """A row's statistics as its own attributes: `result.total.l2`, `row.linf`."""

    stats: TensorStats

    @property
    def numel(self) -> int:
        return self.stats.numel

    @property
    def l1(self) -> float:
        return self.stats.l1

    @property
    def l2(self) -> float:
        return self.stats.l2

    @property
    def linf(self) -> float:
        return self.stats.linf

    @property
    def rms(self) -> float | None:
        return self.stats.rms

    @property
    def nan(self) -> int:
        return self.stats.nan

    @property
    def inf(self) -> int:
        return self.stats.inf
