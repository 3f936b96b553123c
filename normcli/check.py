"""The CI gate: rules (from options and a config file) evaluated over an inspect or compare result.

Every rule has a stable code. Limits apply to the whole model or to every tensor; tensor limits may
be scoped to name globs in the config file, the first matching scope winning over the global one.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from .diff import CompareResult, TensorDiff, compare, is_report
from .errors import InputError, UsageError
from .norms import PairStats, TensorStats
from .readers.files import open_regular
from .results import InspectResult, number
from .scan import Progress

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CHECK_SCHEMA = "normcli/check/v1"


@dataclass(frozen=True)
class Rule:
    code: str
    key: str
    scope: str  # "model", "tensor" or "both"
    needs: str  # "", "baseline" or "checkpoint baseline"
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
            "no tensor added, removed or reshaped",
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
FLAG_RULES = ("nonfinite", "require-same-tensors", "unread")
LIMIT_KEYS = [k for k in RULES if k not in FLAG_RULES]
TENSOR_KEYS = [k for k in LIMIT_KEYS if RULES[k].scope in ("tensor", "both")]


@dataclass(frozen=True)
class Scope:
    """Tensor limits for the tensors whose names match any of `tensors` (globs)."""

    tensors: tuple[str, ...]
    limits: Mapping[str, float]


@dataclass(frozen=True)
class CheckConfig:
    limits: Mapping[str, float] = field(default_factory=dict)
    scopes: tuple[Scope, ...] = ()
    allow_nonfinite: bool = False
    require_same_tensors: bool = False
    source: str | None = None  # the config file the settings came from, if any
    allow_unread: bool = False
    # the file's `baseline`, resolved against the file's folder
    baseline: str | None = None
    # the keys set on the command line, not by the file
    from_command_line: frozenset[str] = frozenset()

    def merged(self, overrides: Mapping[str, Any]) -> CheckConfig:
        """Command-line values (None: not given) take precedence over the file's."""
        given = {k: v for k, v in overrides.items() if k in LIMIT_KEYS and v is not None}
        CheckConfig(given).validate()  # a bad option is the command line's fault, not the file's
        flags = {
            k
            for k in ("allow-nonfinite", "allow-unread", "require-same-tensors")
            if overrides.get(k)
        }
        return replace(
            self,
            limits={**self.limits, **given},
            allow_nonfinite="allow-nonfinite" in flags or self.allow_nonfinite,
            allow_unread="allow-unread" in flags or self.allow_unread,
            require_same_tensors="require-same-tensors" in flags or self.require_same_tensors,
            from_command_line=frozenset(given) | flags,
        )

    def without(self, keys: Sequence[str]) -> CheckConfig:
        """The same settings less the rules `keys` (from the file) that cannot be judged."""
        return replace(
            self,
            limits={k: v for k, v in self.limits.items() if k not in keys},
            scopes=tuple(
                Scope(s.tensors, {k: v for k, v in s.limits.items() if k not in keys})
                for s in self.scopes
            ),
            require_same_tensors=self.require_same_tensors and "require-same-tensors" not in keys,
        )

    def validate(self) -> None:
        where = self.source
        for scope in (Scope(("*",), self.limits), *self.scopes):
            for key, value in scope.limits.items():
                if not math.isfinite(value) or value < 0:
                    raise UsageError(f"{key} must be a finite number >= 0, not {value}", where)
                if key.endswith("l2-ratio") and value < 1:
                    raise UsageError(
                        f"{key} must be at least 1 (a band [1/R, R]), not {value}", where
                    )
                if key == "min-cosine" and value > 1:
                    raise UsageError(f"min-cosine must be at most 1, not {value}", where)

    @property
    def needs_baseline(self) -> list[str]:
        keys = [k for k in self.limits if RULES[k].needs]
        keys += [k for s in self.scopes for k in s.limits if RULES[k].needs]
        keys += ["require-same-tensors"] if self.require_same_tensors else []
        return list(dict.fromkeys(keys))


# --- the config file ---------------------------------------------------------------------------


def find_config(explicit: str | None, folder: str = ".") -> tuple[dict[str, Any], str | None]:
    """The [check] settings: --config FILE, else normcli.toml, else pyproject.toml's
    [tool.normcli.check]; nothing found is an empty config."""
    if explicit is not None:
        return _table(_check_section(_read_toml(explicit), explicit), explicit), explicit
    own = os.path.join(folder, "normcli.toml")
    if os.path.isfile(own):
        return _table(_check_section(_read_toml(own), own), own), own
    project = os.path.join(folder, "pyproject.toml")
    if os.path.isfile(project):
        section = _section(_read_toml(project), ("tool", "normcli", "check"), project)
        if section is not None:
            return _table(section, project), project
    return {}, None


def _check_section(doc: dict[str, Any], path: str) -> Any:
    """In a file of normcli's own: [tool.normcli.check], else [check], else the top level."""
    section = _section(doc, ("tool", "normcli", "check"), path)
    if section is not None:
        return section
    if "check" in doc:
        beside = [k for k in doc if k not in ("check", "tool")]
        if beside:
            raise UsageError(f"key {beside[0]!r} stands outside the [check] table", path)
        return doc["check"]
    return {k: v for k, v in doc.items() if k != "tool"}


def _section(doc: dict[str, Any], keys: tuple[str, ...], path: str) -> Any:
    """doc[keys[0]][keys[1]]..., None where absent; a non-table on the way is an error."""
    node: Any = doc
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise UsageError(f"{'.'.join(keys[:depth])} must be a TOML table", path)
        if key not in node:
            return None
        node = node[key]
    return node


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open_regular(path) as f:
            doc: dict[str, Any] = tomllib.load(f)
            return doc
    except InputError as e:
        raise UsageError(f"config file: {e.message}", path) from e
    except OSError as e:
        raise UsageError(f"cannot read config file: {e.strerror or e}", path) from e
    except RecursionError as e:
        raise UsageError("config file nests too deeply", path) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file is not valid TOML: {e}", path) from e


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError("the check settings must be a TOML table", path)
    return value


def parse_config(settings: Mapping[str, Any], source: str | None) -> CheckConfig:
    """Validate the settings table key by key, naming any key that is wrong."""
    limits: dict[str, float] = {}
    flags = {"allow-nonfinite": False, "allow-unread": False, "require-same-tensors": False}
    scopes: list[Scope] = []
    baseline = None
    for key, value in settings.items():
        if key == "baseline":
            if not isinstance(value, str) or not value:
                raise UsageError("baseline must be a path", source)
            folder = os.path.dirname(source) if source else ""
            baseline = os.path.normpath(os.path.join(folder, value))
        elif key in flags:
            if not isinstance(value, bool):
                raise UsageError(f"{key} must be true or false", source)
            flags[key] = value
        elif key in LIMIT_KEYS:
            limits[key] = _number(key, value, source)
        elif key == "rules":
            if not isinstance(value, list):
                raise UsageError("rules must be an array of tables ([[...rules]])", source)
            scopes += [_scope(i, rule, source) for i, rule in enumerate(value)]
        else:
            known = ", ".join(["baseline", *flags, *LIMIT_KEYS, "rules"])
            raise UsageError(f"unknown key {key!r} in the check settings (known: {known})", source)
    config = CheckConfig(
        limits,
        tuple(scopes),
        flags["allow-nonfinite"],
        flags["require-same-tensors"],
        source,
        flags["allow-unread"],
        baseline,
    )
    config.validate()
    return config


def _number(key: str, value: Any, source: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{key} must be a number, not {value!r}", source)
    return float(value)


def _scope(index: int, rule: Any, source: str | None) -> Scope:
    where = f"rules[{index}]"
    if not isinstance(rule, dict):
        raise UsageError(f"{where} must be a table", source)
    globs = rule.get("tensors")
    if isinstance(globs, str):
        globs = [globs]
    if not (isinstance(globs, list) and globs and all(isinstance(g, str) for g in globs)):
        raise UsageError(f"{where}.tensors must be a glob or a list of globs", source)
    limits = {}
    for key, value in rule.items():
        if key == "tensors":
            continue
        if key not in TENSOR_KEYS:
            raise UsageError(
                f"{where}: {key!r} cannot be scoped to tensors (choose from "
                f"{', '.join(TENSOR_KEYS)})",
                source,
            )
        limits[key] = _number(f"{where}.{key}", value, source)
    return Scope(tuple(globs), limits)


# --- evaluation --------------------------------------------------------------------------------


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
                "config": self.config,
                "rules": [r.to_dict() for r in self.rules],
                "skipped_rules": list(self.skipped_rules),
            },
        }


@dataclass(frozen=True)
class _Tensor:
    """What the rules see of one tensor of the checked checkpoint."""

    name: str
    stats: TensorStats | None  # None: removed (present only in the baseline)
    covered: bool
    diff: TensorDiff | None


def run_check(
    path: str,
    config: CheckConfig,
    baseline: str | None = None,
    *,
    input_format: str | None = None,
    key: str | None = None,
    include_int: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> CheckResult:
    """Scan `path` (against `baseline`, a checkpoint or a saved report) and judge every rule."""
    from .api import inspect

    skipped: list[str] = []
    if baseline is None and config.needs_baseline:
        asked = [k for k in config.needs_baseline if k in config.from_command_line]
        if asked:
            raise UsageError(f"{', '.join(asked)} need{'s' if len(asked) == 1 else ''} --baseline")
        # the file's drift rules wait for a baseline: a pre-commit run without one judges the rest
        skipped = config.needs_baseline
        config = config.without(skipped)
    if baseline is not None and is_report(baseline):
        needs_values = [k for k in config.needs_baseline if RULES[k].needs == "checkpoint baseline"]
        if needs_values:
            raise UsageError(
                f"{', '.join(needs_values)} need{'s' if len(needs_values) == 1 else ''} a "
                "checkpoint baseline, not a saved report (a report has norms, not values)",
                baseline,
            )
    if baseline is None:
        inspected = inspect(
            path,
            input_format=input_format,
            key=key,
            include_int=include_int,
            threads=threads,
            progress=progress,
        )
        tensors, comparison = _from_inspect(inspected), None
        total = inspected.total.stats
        unread = inspected.checkpoint.skipped_tensors
    else:
        comparison = compare(
            baseline,
            path,
            input_format=input_format,
            key=key,
            include_int=include_int,
            threads=threads,
            progress=progress,
        )
        tensors = [
            _Tensor(r.name, r.b.stats if r.b else None, r.covered, r) for r in comparison.tensors
        ]
        total = comparison.total.b
        unread = comparison.b.skipped_tensors
    violations, outcomes = _evaluate(config, tensors, total, comparison)
    if not config.allow_unread:
        rule = RULES["unread"]
        found = [
            Violation(rule.code, rule.key, name, None, None, f"not read: {reason}")
            for name, reason in unread
        ]
        if not any(t.stats is not None for t in tensors):
            found.append(
                Violation(
                    rule.code, rule.key, None, 0.0, None, "no tensor was read: nothing to judge"
                )
            )
        if found:  # a guard on the input rather than a figure: listed only when it fires
            violations.extend(found)
            outcomes.append(RuleOutcome(rule.code, rule.key, None, False, len(found)))
    return CheckResult(
        path,
        baseline,
        tuple(violations),
        tuple(outcomes),
        sum(t.stats is not None for t in tensors),
        config.source,
        tuple(skipped),
    )


def _from_inspect(result: InspectResult) -> list[_Tensor]:
    return [_Tensor(r.name, r.stats, r.covered, None) for r in result.tensors]


def _limit(config: CheckConfig, key: str, name: str) -> float | None:
    for scope in config.scopes:
        if key in scope.limits and any(fnmatchcase(name, g) for g in scope.tensors):
            return scope.limits[key]
    return config.limits.get(key)


TensorValue = Callable[[_Tensor], float | None]

_TENSOR_VALUES: dict[str, tuple[TensorValue, str]] = {
    "max-tensor-l2": (lambda t: t.stats.l2 if t.stats else None, "L2"),
    "max-tensor-linf": (lambda t: t.stats.linf if t.stats else None, "max|x|"),
    "max-tensor-rms": (lambda t: t.stats.rms if t.stats else None, "RMS"),
    "max-tensor-l2-ratio": (
        lambda t: (
            _ratio(t.diff.a.stats, t.diff.b.stats)
            if t.diff and t.diff.a and t.diff.b and t.diff.status != "shape_changed"
            else None
        ),
        "‖B‖₂/‖A‖₂",
    ),
    "max-tensor-rel-update": (
        lambda t: _rel_update(t.diff.pair) if t.diff and t.diff.pair else None,
        "‖B−A‖₂/‖A‖₂",
    ),
    "min-cosine": (lambda t: t.diff.cosine if t.diff else None, "cosine"),
}


def _ratio(a: TensorStats, b: TensorStats) -> float | None:
    """‖B‖₂/‖A‖₂, where a zero baseline that became non-zero has grown without bound (inf, which
    breaks any limit) rather than having no ratio at all."""
    if a.sumsq:
        return b.l2 / a.l2
    return math.inf if b.sumsq else None


def _rel_update(pair: PairStats) -> float | None:
    if pair.a.sumsq:
        return pair.diff.l2 / pair.a.l2
    return math.inf if pair.diff.sumsq else 0.0


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


def _evaluate(
    config: CheckConfig,
    tensors: Sequence[_Tensor],
    total: TensorStats,
    comparison: CompareResult | None,
) -> tuple[list[Violation], list[RuleOutcome]]:
    violations: list[Violation] = []
    outcomes: list[RuleOutcome] = []

    def judge(key: str, found: list[Violation], limit: float | None, scoped: bool = False) -> None:
        violations.extend(found)
        outcomes.append(RuleOutcome(RULES[key].code, key, limit, scoped, len(found)))

    if not config.allow_nonfinite:
        rule = RULES["nonfinite"]
        judge(
            "nonfinite",
            [
                Violation(
                    rule.code,
                    rule.key,
                    t.name,
                    float(t.stats.nan + t.stats.inf),
                    0.0,
                    f"{t.stats.nan} NaN and {t.stats.inf} Inf values",
                )
                for t in tensors
                if t.stats is not None and (t.stats.nan or t.stats.inf)
            ],
            0.0,
        )

    model_values: dict[str, tuple[float | None, str]] = {
        "max-l2": (total.l2, "whole-model L2"),
        "max-l1": (total.l1, "whole-model L1"),
    }
    if comparison is not None:
        total_pair = comparison.total.pair
        model_values["max-l2-ratio"] = (
            _ratio(comparison.total.a, comparison.total.b),
            "whole-model ‖B‖₂/‖A‖₂",
        )
        model_values["max-rel-update"] = (
            _rel_update(total_pair) if total_pair else None,
            "whole-model ‖B−A‖₂/‖A‖₂",
        )
        model_values["min-cosine"] = (comparison.total.cosine, "whole-model cosine")

    for key in LIMIT_KEYS:
        rule = RULES[key]
        found: list[Violation] = []
        limit = config.limits.get(key)
        if rule.scope in ("model", "both") and limit is not None:
            value, label = model_values.get(key, (None, key))
            if value is not None and _breaks(key, value, limit):
                found.append(
                    Violation(
                        rule.code, key, None, value, limit, _describe(key, label, value, limit)
                    )
                )
        scoped = any(key in s.limits for s in config.scopes)
        if rule.scope in ("tensor", "both") and (limit is not None or scoped):
            read, label = _TENSOR_VALUES[key]
            for t in tensors:
                tensor_limit = _limit(config, key, t.name)
                value = read(t) if t.covered else None
                if (
                    tensor_limit is not None
                    and value is not None
                    and _breaks(key, value, tensor_limit)
                ):
                    found.append(
                        Violation(
                            rule.code,
                            key,
                            t.name,
                            value,
                            tensor_limit,
                            _describe(key, label, value, tensor_limit),
                        )
                    )
        if limit is not None or scoped:
            judge(key, found, limit, scoped)

    if config.require_same_tensors and comparison is not None:
        rule = RULES["require-same-tensors"]
        judge(
            "require-same-tensors",
            [
                Violation(
                    rule.code,
                    rule.key,
                    r.name,
                    None,
                    None,
                    r.status.replace("_", " ")
                    + (f" {list(r.a.shape)} → {list(r.b.shape)}" if r.a and r.b else ""),
                )
                for r in comparison.tensors
                if r.status in ("added", "removed", "shape_changed")
            ],
            None,
        )
    return violations, outcomes
