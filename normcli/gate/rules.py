"""The rules of the check gate: one small function per kind of rule, each returning the
violations it finds; evaluate() runs those the settings ask for, in the order of their codes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..results import (
    ONE_SIDED,
    RULES,
    CompareResult,
    InspectResult,
    RuleOutcome,
    TensorDiff,
    TensorStats,
    Violation,
)
from .config import LIMIT_KEYS, CheckConfig


@dataclass(frozen=True)
class Judged:
    """What the rules see of one tensor of the checked checkpoint."""

    name: str
    stats: TensorStats | None  # None: removed (present only in the baseline)
    covered: bool
    diff: TensorDiff | None


def from_inspect(result: InspectResult) -> list[Judged]:
    return [Judged(r.name, r.stats, r.covered, None) for r in result.tensors]


def outcome(
    key: str, found: Sequence[Violation], limit: float | None, scoped: bool = False
) -> RuleOutcome:
    return RuleOutcome(RULES[key].code, key, limit, scoped, len(found))


def evaluate(
    config: CheckConfig,
    tensors: Sequence[Judged],
    total: TensorStats,
    comparison: CompareResult | None,
    model: str = "whole-model",
) -> tuple[list[Violation], list[RuleOutcome]]:
    """Every rule the settings ask for; `model` names what the model rules' figures cover."""
    violations: list[Violation] = []
    outcomes: list[RuleOutcome] = []
    for key, found, limit, scoped in _judged(config, tensors, total, comparison, model):
        violations.extend(found)
        outcomes.append(outcome(key, found, limit, scoped))
    return violations, outcomes


def _judged(
    config: CheckConfig,
    tensors: Sequence[Judged],
    total: TensorStats,
    comparison: CompareResult | None,
    label: str,
) -> Iterator[tuple[str, list[Violation], float | None, bool]]:
    if not config.allow_nonfinite:
        yield "nonfinite", nonfinite(tensors), 0.0, False
    model = _model_values(total, comparison, label)
    for key in LIMIT_KEYS:
        limit = config.limits.get(key)
        scoped = any(key in s.limits for s in config.scopes)
        if limit is not None or scoped:
            found = model_limit(key, limit, model) + tensor_limit(key, config, tensors)
            yield key, found, limit, scoped
    if config.require_same_tensors and comparison is not None:
        yield "require-same-tensors", same_tensors(comparison), None, False


# --- one function per kind of rule -------------------------------------------------------------


def nonfinite(tensors: Sequence[Judged]) -> list[Violation]:
    """N001: every NaN or Inf value, counted per tensor."""
    code = RULES["nonfinite"].code
    return [
        Violation(
            code,
            "nonfinite",
            t.name,
            float(t.stats.nan + t.stats.inf),
            0.0,
            f"{t.stats.nan} NaN and {t.stats.inf} Inf values",
        )
        for t in tensors
        if t.stats is not None and (t.stats.nan or t.stats.inf)
    ]


def model_limit(
    key: str, limit: float | None, values: dict[str, tuple[float | None, str]]
) -> list[Violation]:
    """A whole-model limit (N002, N003, N010, N012, N014)."""
    rule = RULES[key]
    if rule.scope not in ("model", "both") or limit is None:
        return []
    value, label = values.get(key, (None, key))
    if value is None or not _breaks(key, value, limit):
        return []
    return [Violation(rule.code, key, None, value, limit, _describe(key, label, value, limit))]


def tensor_limit(key: str, config: CheckConfig, tensors: Sequence[Judged]) -> list[Violation]:
    """A limit on every covered tensor (N004-N006, N011, N013, N014), scopes first."""
    rule = RULES[key]
    if rule.scope not in ("tensor", "both"):
        return []
    read, label = _TENSOR_VALUES[key]
    found = []
    for t in tensors:
        limit = _limit(config, key, t.name)
        value = read(t) if t.covered else None
        if limit is not None and value is not None and _breaks(key, value, limit):
            found.append(
                Violation(rule.code, key, t.name, value, limit, _describe(key, label, value, limit))
            )
    return found


def same_tensors(comparison: CompareResult) -> list[Violation]:
    """N015: no tensor added, removed, reshaped or of another dtype against the baseline; of
    the tensors in scope, as for every tensor rule (integer ones only with --include-int)."""
    code = RULES["require-same-tensors"].code
    return [
        Violation(code, "require-same-tensors", r.name, None, None, _not_same(r))
        for r in comparison.tensors
        if r.covered and (r.status in ONE_SIDED or r.dtype_changed)
    ]


def _not_same(row: TensorDiff) -> str:
    if row.a is None or row.b is None:
        return row.status
    if row.status == "shape_changed":
        return f"shape changed {list(row.a.shape)} → {list(row.b.shape)}"
    return f"dtype changed {row.a.dtype} → {row.b.dtype}"


def unread_tensors(tensors: Sequence[Judged], unread: Sequence[tuple[str, str]]) -> list[Violation]:
    """N016: every tensor read, and at least one."""
    code = RULES["unread"].code
    found = [
        Violation(code, "unread", name, None, None, f"not read: {reason}")
        for name, reason in unread
    ]
    if not any(t.stats is not None for t in tensors):
        found.append(
            Violation(code, "unread", None, 0.0, None, "no tensor was read: nothing to judge")
        )
    return found


# --- the figures the rules compare with their limits -------------------------------------------


def _model_values(
    total: TensorStats, comparison: CompareResult | None, model: str
) -> dict[str, tuple[float | None, str]]:
    """The whole model's figures (the selection's, under --filter/--exclude), as compare
    prints them: the update over every tensor, one missing on a side counting as zeros."""
    values: dict[str, tuple[float | None, str]] = {
        "max-l2": (total.l2, f"{model} L2"),
        "max-l1": (total.l1, f"{model} L1"),
    }
    if comparison is not None:
        whole = comparison.total
        values["max-l2-ratio"] = (whole.ratio_l2, f"{model} ‖B‖₂/‖A‖₂")
        values["max-rel-update"] = (whole.rel_l2, f"{model} ‖B−A‖₂/‖A‖₂")
        values["min-cosine"] = (whole.cosine, f"{model} cosine")
    return values


def _limit(config: CheckConfig, key: str, name: str) -> float | None:
    for scope in config.scopes:
        if key in scope.limits and any(fnmatchcase(name, g) for g in scope.tensors):
            return scope.limits[key]
    return config.limits.get(key)


TensorValue = Callable[[Judged], float | None]

_TENSOR_VALUES: dict[str, tuple[TensorValue, str]] = {
    "max-tensor-l2": (lambda t: t.stats.l2 if t.stats else None, "L2"),
    "max-tensor-linf": (lambda t: t.stats.linf if t.stats else None, "max|x|"),
    "max-tensor-rms": (lambda t: t.stats.rms if t.stats else None, "RMS"),
    "max-tensor-l2-ratio": (lambda t: t.diff.ratio_l2 if t.diff else None, "‖B‖₂/‖A‖₂"),
    "max-tensor-rel-update": (lambda t: t.diff.rel_l2 if t.diff else None, "‖B−A‖₂/‖A‖₂"),
    "min-cosine": (lambda t: t.diff.cosine if t.diff else None, "cosine"),
}


def _breaks(key: str, value: float, limit: float) -> bool:
    if key == "min-cosine":
        return value < limit
    if key.endswith("l2-ratio"):
        return value > limit or value < 1 / limit
    return value > limit


def _describe(key: str, label: str, value: float, limit: float) -> str:
    # enough digits that a value just past its limit never reads as equal to it
    if key == "min-cosine":
        return f"{label} {value:.10g} < {limit:.10g}"
    if key.endswith("l2-ratio"):
        return f"{label} {value:.10g} outside [{1 / limit:.10g}, {limit:.10g}]"
    return f"{label} {value:.10g} > {limit:.10g}"
