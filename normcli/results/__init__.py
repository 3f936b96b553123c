"""Every result normcli computes, as frozen dataclasses whose to_dict() is the documented JSON.

Results depend on the statistics types only: renderers and tests can build them by hand.
"""

from __future__ import annotations

from ..norms import PairStats, TensorStats
from .check import CHECK_SCHEMA, RULES, CheckResult, Rule, RuleOutcome, Violation
from .common import VALUE_KEYS, HeaderCounts, number, stats_dict
from .compare import (
    COMPARE_SCHEMA,
    ONE_SIDED,
    SIDE_FIGURES,
    STATUSES,
    Aggregate,
    CompareResult,
    SideFigures,
    TensorDiff,
)
from .inspect import (
    INSPECT_SCHEMA,
    CheckpointInfo,
    DtypeSummary,
    GroupReport,
    InspectResult,
    TensorReport,
    Total,
)
from .optimizer import MomentTotal, OptimizerState, OptimizerTensor
from .trend import JUMP_FACTOR, TREND_SCHEMA, Point, SetChange, TrendResult, TrendRow

__all__ = [
    "CHECK_SCHEMA",
    "COMPARE_SCHEMA",
    "INSPECT_SCHEMA",
    "JUMP_FACTOR",
    "ONE_SIDED",
    "RULES",
    "SIDE_FIGURES",
    "STATUSES",
    "TREND_SCHEMA",
    "VALUE_KEYS",
    "Aggregate",
    "CheckResult",
    "CheckpointInfo",
    "CompareResult",
    "DtypeSummary",
    "GroupReport",
    "HeaderCounts",
    "InspectResult",
    "MomentTotal",
    "OptimizerState",
    "OptimizerTensor",
    "PairStats",
    "Point",
    "Rule",
    "RuleOutcome",
    "SetChange",
    "SideFigures",
    "TensorDiff",
    "TensorReport",
    "TensorStats",
    "Total",
    "TrendResult",
    "TrendRow",
    "Violation",
    "number",
    "stats_dict",
]
