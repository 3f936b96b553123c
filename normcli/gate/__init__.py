"""The CI gate: rules (from options and a config file) judged over an inspect or compare result.

Every rule has a stable code. Limits apply to the whole model or to every tensor; tensor limits may
be scoped to name globs in the config file, the first matching scope winning over the global one.
config.py reads and validates the settings; rules.py holds one small function per kind of rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import inspect_path
from ..diff import compare
from ..errors import UsageError
from ..results import RULES, CheckResult, CompareResult, TensorStats
from ..settings import ReadSettings, Selection
from ..sides import is_report
from .config import CheckConfig, Scope, find_config, parse_config
from .rules import Judged, evaluate, from_inspect, outcome, unread_tensors

__all__ = ["CheckConfig", "Scope", "find_config", "load_config", "parse_config", "run_check"]


def load_config(explicit: str | None, limits: Mapping[str, Any]) -> CheckConfig:
    """The settings of a run: the config file's (--config FILE, or the one found here), with
    the command line's limits and flags (None: not given; underscores for dashes) over them."""
    settings, source = find_config(explicit)
    overrides = {key.replace("_", "-"): value for key, value in limits.items()}
    return parse_config(settings, source).merged(overrides)


def run_check(
    path: str,
    config: CheckConfig,
    baseline: str | None,
    selection: Selection,
    read: ReadSettings,
) -> CheckResult:
    """Scan `path` (against `baseline`, a checkpoint or a saved report) and judge every rule."""
    if baseline is None and (selection.strip_prefix or selection.rename):
        raise UsageError("--strip-prefix and --rename match names to a baseline: give --baseline")
    config, skipped = _rules_for(config, baseline)
    tensors, total, comparison, unread, available = _scan(path, baseline, selection, read)
    seen = sum(t.stats is not None for t in tensors)
    # figures over a selection are not the whole model's, and the findings say so
    model = "selected tensors'" if seen < available else "whole-model"
    violations, outcomes = evaluate(config, tensors, total, comparison, model)
    if not config.allow_unread:
        found = unread_tensors(tensors, unread)
        if found:  # a guard on the input rather than a figure: listed only when it fires
            violations.extend(found)
            outcomes.append(outcome("unread", found, None))
    return CheckResult(
        path,
        baseline,
        tuple(violations),
        tuple(outcomes),
        seen,
        config.source,
        tuple(skipped),
        available,
    )


def _rules_for(config: CheckConfig, baseline: str | None) -> tuple[CheckConfig, list[str]]:
    """The rules that can be judged with this baseline (or none), and those of the file that
    wait for one; a drift rule asked for on the command line without its baseline is an error."""
    if baseline is None and config.needs_baseline:
        asked = [k for k in config.needs_baseline if k in config.from_command_line]
        if asked:
            raise UsageError(f"{', '.join(asked)} need{_s(asked)} --baseline")
        # the file's drift rules wait for a baseline: a pre-commit run without one judges the rest
        skipped = config.needs_baseline
        return config.without(skipped), skipped
    if baseline is not None and is_report(baseline):
        needs_values = [k for k in config.needs_baseline if RULES[k].needs == "checkpoint baseline"]
        if needs_values:
            raise UsageError(
                f"{', '.join(needs_values)} need{_s(needs_values)} a "
                "checkpoint baseline, not a saved report (a report has norms, not values)",
                baseline,
            )
    return config, []


def _s(keys: list[str]) -> str:
    return "s" if len(keys) == 1 else ""


def _scan(
    path: str, baseline: str | None, selection: Selection, read: ReadSettings
) -> tuple[list[Judged], TensorStats, CompareResult | None, tuple[tuple[str, str], ...], int]:
    """The tensors as the rules see them, the whole-model figures, the comparison with the
    baseline if there is one, the tensors that could not be read, and how many tensors the
    checkpoint holds before any selection."""
    if baseline is None:
        inspected = inspect_path(path, selection, read)
        info = inspected.checkpoint
        total = inspected.total.stats
        return from_inspect(inspected), total, None, info.skipped_tensors, info.tensors
    comparison = compare(baseline, path, selection, read)
    tensors = [Judged(r.name, r.b.stats if r.b else None, r.covered, r) for r in comparison.tensors]
    b = comparison.b
    return tensors, comparison.total.b, comparison, b.skipped_tensors, b.tensors
