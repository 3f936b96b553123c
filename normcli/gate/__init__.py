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
from ..norms import merge_all
from ..results import RULES, CheckResult, CompareResult, TensorStats
from ..settings import ReadSettings, Selection
from ..sides import StoredTensor, is_report, open_sides
from .config import CheckConfig, Scope, find_config, parse_config
from .rules import Judged, evaluate, from_inspect, outcome, unread_tensors

# why rules of the settings file were not judged
NO_BASELINE = "without a baseline"
REPORT_BASELINE = "against a saved report, which holds norms, not values"

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
    config, skipped, reason = _rules_for(config, baseline)
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
        reason,
    )


def _rules_for(
    config: CheckConfig, baseline: str | None
) -> tuple[CheckConfig, list[str], str | None]:
    """The rules that can be judged with this baseline (or none), those of the file that cannot
    and why; a rule asked for on the command line that this baseline cannot judge is an error.
    So one settings file serves a pre-commit run (no baseline), a CI run against a small saved
    report, and one against the old checkpoint."""
    if baseline is None and config.needs_baseline:
        asked = [k for k in config.needs_baseline if k in config.from_command_line]
        if asked:
            raise UsageError(f"{', '.join(asked)} need{_s(asked)} --baseline")
        skipped = config.needs_baseline
        return config.without(skipped), skipped, NO_BASELINE
    if baseline is not None and is_report(baseline):
        needs_values = [k for k in config.needs_baseline if RULES[k].needs == "checkpoint baseline"]
        asked = [k for k in needs_values if k in config.from_command_line]
        if asked:
            raise UsageError(
                f"{', '.join(asked)} need{_s(asked)} a checkpoint baseline, not a saved report "
                "(a report holds norms, not values)",
                baseline,
            )
        if needs_values:
            return config.without(needs_values), needs_values, REPORT_BASELINE
    return config, [], None


def _s(keys: list[str]) -> str:
    return "s" if len(keys) == 1 else ""


def _scan(
    path: str, baseline: str | None, selection: Selection, read: ReadSettings
) -> tuple[list[Judged], TensorStats, CompareResult | None, tuple[tuple[str, str], ...], int]:
    """The tensors as the rules see them, the whole-model figures, the comparison with the
    baseline if there is one, the tensors that could not be read, and how many tensors the
    checkpoint holds before any selection."""
    if baseline is None and is_report(path):
        return _from_report(path, selection, read)
    if baseline is None:
        inspected = inspect_path(path, selection, read)
        info = inspected.checkpoint
        total = inspected.total.stats
        return from_inspect(inspected), total, None, info.skipped_tensors, info.tensors
    comparison = compare(baseline, path, selection, read, command="check --baseline")
    tensors = [Judged(r.name, r.b.stats if r.b else None, r.covered, r) for r in comparison.tensors]
    b = comparison.b
    return tensors, comparison.total.b, comparison, b.skipped_tensors, b.tensors


def _from_report(
    path: str, selection: Selection, read: ReadSettings
) -> tuple[list[Judged], TensorStats, None, tuple[tuple[str, str], ...], int]:
    """A saved inspect report checked as its checkpoint would be: the rules without a baseline
    need only the norms and counts it holds."""
    with open_sides([path], read, "check") as (side,):
        stored = [e for e in side.entries if isinstance(e, StoredTensor)]
    chosen = [e for e in stored if selection.selects(e.name)]
    selection.require_some(len(chosen), len(stored))
    tensors = [
        Judged(e.name, e.stats, selection.covers(e.floating, e.optimizer), None) for e in chosen
    ]
    total = merge_all([t.stats for t in tensors if t.covered and t.stats is not None])
    return tensors, total, None, (), len(stored)
