"""The check result: the rules judged, their stable codes, and every violation found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .common import number

CHECK_SCHEMA = "normcli/check/v1"

# what a rule judges: the whole model, every tensor, or both
RuleScope = Literal["model", "tensor", "both"]
# what it needs besides the checkpoint: nothing, a baseline (a saved report will do), or a
# baseline checkpoint whose values can be compared element by element
RuleNeeds = Literal["", "baseline", "checkpoint baseline"]


@dataclass(frozen=True)
class Rule:
    code: str
    key: str
    scope: RuleScope
    needs: RuleNeeds
    summary: str


RULES: dict[str, Rule] = {
    r.key: r
    for r in (
        Rule("N001", "nonfinite", "tensor", "", "no NaN or Inf anywhere (--allow-nonfinite: off)"),
        Rule("N002", "max-l2", "model", "", "whole-model L2 at most the limit"),
        Rule("N003", "max-l1", "model", "", "whole-model L1 at most the limit"),
        Rule("N004", "max-tensor-l2", "tensor", "", "every tensor's L2 at most the limit"),
        Rule("N005", "max-tensor-linf", "tensor", "", "every tensor's max|x| at most the limit"),
        Rule("N006", "max-tensor-rms", "tensor", "", "every tensor's RMS at most the limit"),
        Rule("N010", "max-l2-ratio", "model", "baseline", "whole-model ‖B‖₂/‖A‖₂ within [1/R, R]"),
        Rule(
            "N011",
            "max-tensor-l2-ratio",
            "tensor",
            "baseline",
            "every tensor's ‖B‖₂/‖A‖₂ within [1/R, R]",
        ),
        Rule(
            "N012",
            "max-rel-update",
            "model",
            "checkpoint baseline",
            "whole-model ‖B−A‖₂/‖A‖₂ at most the limit",
        ),
        Rule(
            "N013",
            "max-tensor-rel-update",
            "tensor",
            "checkpoint baseline",
            "every tensor's ‖B−A‖₂/‖A‖₂ at most the limit",
        ),
        Rule(
            "N014",
            "min-cosine",
            "both",
            "checkpoint baseline",
            "cosine(A, B) of the model and of every tensor at least the limit",
        ),
        Rule(
            "N015",
            "require-same-tensors",
            "tensor",
            "baseline",
            "no tensor added, removed, reshaped or of another dtype",
        ),
        Rule(
            "N016",
            "unread",
            "tensor",
            "",
            "every tensor read, and at least one (--allow-unread: off)",
        ),
    )
}


@dataclass(frozen=True)
class Violation:
    code: str
    rule: str
    tensor: str | None  # None: the whole model
    value: float | None
    limit: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "rule": self.rule,
            "tensor": self.tensor,
            "value": number(self.value),
            "limit": number(self.limit),
            "message": self.message,
        }


@dataclass(frozen=True)
class RuleOutcome:
    """One rule as evaluated: its limit (or the loosest and tightest where scoped), and how many
    breaches it found."""

    code: str
    rule: str
    limit: float | None
    scoped: bool
    violations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "rule": self.rule,
            "limit": number(self.limit),
            "scoped": self.scoped,
            "violations": self.violations,
        }


@dataclass(frozen=True)
class CheckResult:
    checkpoint: str
    baseline: str | None
    violations: tuple[Violation, ...]
    rules: tuple[RuleOutcome, ...]
    tensors: int
    config: str | None
    # rules of the settings file left unjudged for want of a baseline
    skipped_rules: tuple[str, ...] = ()
    # the checkpoint's tensors before --filter/--exclude
    available: int = 0
    # why skipped_rules were not judged: no baseline, or a saved report as the baseline
    skipped_reason: str | None = None

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": CHECK_SCHEMA,
            "passed": self.passed,
            "checkpoint": self.checkpoint,
            "baseline": self.baseline,
            "violations": [v.to_dict() for v in self.violations],
            "checked": {
                "tensors": self.tensors,
                "available": self.available,
                "config": self.config,
                "rules": [r.to_dict() for r in self.rules],
                "skipped_rules": list(self.skipped_rules),
                "skipped_reason": self.skipped_reason,
            },
        }
