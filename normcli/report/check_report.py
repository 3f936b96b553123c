"""The check gate's outputs: a readable report, GitHub annotations, Markdown and JUnit XML."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import RULES, CheckResult
from .names import TailName
from .text import printable

FAILED = "bold red"
PASSED = "green"
# the table lists this many violations; JSON, JUnit and annotations keep every one
SHOWN_VIOLATIONS = 20


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _whole(result: CheckResult) -> str:
    """Where a model rule's finding lies: the whole model, or the selection it covered."""
    return "(selected tensors)" if result.tensors < result.available else "(whole model)"


def verdict(result: CheckResult) -> str:
    """The one-line verdict, for stderr."""
    where = printable(result.checkpoint)
    if result.passed:
        seen = _plural(result.tensors, "tensor")
        if result.tensors < result.available:
            seen = f"{result.tensors} of {result.available} tensors selected"
        return f"normcli check: passed {where} ({_plural(len(result.rules), 'rule')}, {seen})"
    codes = sorted({v.code for v in result.violations})
    return (
        f"normcli check: FAILED {where}, {_plural(len(result.violations), 'violation')} "
        f"({', '.join(codes)})"
    )


def _limit_text(rule: str, limit: float | None, scoped: bool) -> str:
    if limit is None:
        return "scoped" if scoped else "-"
    text = f"[{1 / limit:.10g}, {limit:.10g}]" if rule.endswith("l2-ratio") else f"{limit:.10g}"
    return text + (" + scoped" if scoped else "")


def render_table(results: Sequence[CheckResult], console: Console) -> None:
    for result in results:
        console.print(
            Text.assemble(
                ("check ", "bold"),
                printable(result.checkpoint),
                f"  against {printable(result.baseline)}" if result.baseline else "",
            )
        )
        if result.violations:
            table = Table(
                box=box.SIMPLE_HEAD,
                pad_edge=False,
                show_edge=False,
                title="Violations",
                title_justify="left",
                title_style="bold red",
            )
            for column in ("code", "rule", "tensor", "finding"):
                table.add_column(column, overflow="fold")
            whole = _whole(result)
            for v in result.violations[:SHOWN_VIOLATIONS]:
                table.add_row(
                    v.code,
                    v.rule,
                    TailName(v.tensor) if v.tensor else whole,
                    Text(printable(v.message)),
                    style=FAILED,
                )
            console.print(table)
            rest = len(result.violations) - SHOWN_VIOLATIONS
            if rest > 0:
                console.print(
                    Text(
                        f"… and {_plural(rest, 'more violation')} (-f json, -f github and "
                        "--junit list every one)",
                        FAILED,
                    )
                )
        rules = Table(
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            show_edge=False,
            title="Rules",
            title_justify="left",
            title_style="bold",
        )
        for column in ("code", "rule", "limit", "result"):
            rules.add_column(column)
        for outcome in result.rules:
            bad = outcome.violations
            rules.add_row(
                outcome.code,
                outcome.rule,
                _limit_text(outcome.rule, outcome.limit, outcome.scoped),
                Text(
                    f"{bad} violation{'s' if bad != 1 else ''}" if bad else "pass",
                    FAILED if bad else PASSED,
                ),
            )
        console.print(rules)
        if result.config:
            console.print(Text(f"settings from {printable(result.config)}", "dim"))
        if result.skipped_rules:
            hint = "" if result.baseline else " (--baseline, or `baseline` in the settings)"
            console.print(
                Text(
                    f"not judged {result.skipped_reason}: {', '.join(result.skipped_rules)}{hint}",
                    "yellow",
                )
            )


def _escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub documents (so a name cannot end the line
    and start a command of its own), with every other control character made visible."""
    return printable(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(results: Sequence[CheckResult]) -> str:
    """Workflow commands that GitHub Actions shows as error annotations."""
    lines = []
    for result in results:
        for v in result.violations:
            where = v.tensor if v.tensor is not None else _whole(result)
            lines.append(
                f"::error file={_escape_property(result.checkpoint)},"
                f"title={_escape_property(f'normcli {v.code} {v.rule}')}::"
                f"{_escape_data(f'{where}: {v.message}')}"
            )
        lines.append(f"::notice title=normcli check::{_escape_data(verdict(result))}")
    return "\n".join(lines) + "\n"


def render_markdown(results: Sequence[CheckResult]) -> str:
    """A summary for pull requests and $GITHUB_STEP_SUMMARY."""
    lines = []
    for result in results:
        mark = "✅ passed" if result.passed else "❌ failed"
        lines += [
            f"### normcli check: {mark}",
            "",
            f"`{printable(result.checkpoint)}`"
            + (f" against `{printable(result.baseline)}`" if result.baseline else ""),
            "",
        ]
        if result.violations:
            lines += ["| code | rule | tensor | finding |", "|---|---|---|---|"]
            lines += [
                f"| {v.code} | {v.rule} | `{_cell(v.tensor or _whole(result))}` | "
                f"{_cell(v.message)} |"
                for v in result.violations
            ]
            lines.append("")
        lines += ["| code | rule | limit | result |", "|---|---|---|---|"]
        lines += [
            f"| {o.code} | {o.rule} | {_limit_text(o.rule, o.limit, o.scoped)} | "
            f"{_plural(o.violations, 'violation') if o.violations else 'pass'} |"
            for o in result.rules
        ]
        lines.append("")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return printable(text).replace("|", "\\|").replace("`", "'")


def render_junit(results: Sequence[CheckResult]) -> str:
    """One test suite per checked checkpoint, one test case per rule, a failure per breach."""
    suites = ET.Element("testsuites", name="normcli check")
    for result in results:
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=printable(f"normcli check {result.checkpoint}"),
            tests=str(len(result.rules)),
            failures=str(sum(1 for o in result.rules if o.violations)),
            errors="0",
        )
        for outcome in result.rules:
            case = ET.SubElement(
                suite, "testcase", classname="normcli.check", name=f"{outcome.code} {outcome.rule}"
            )
            # XML 1.0 cannot carry control characters, which tensor names from files may hold
            breaches = [v for v in result.violations if v.code == outcome.code]
            if breaches:
                failure = ET.SubElement(
                    case,
                    "failure",
                    message=f"{len(breaches)} violation(s) of {RULES[outcome.rule].summary}",
                    type=outcome.code,
                )
                failure.text = "\n".join(
                    printable(f"{v.tensor or _whole(result)}: {v.message}") for v in breaches
                )
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def print_verdicts(results: Sequence[CheckResult]) -> None:
    """One line per checked checkpoint on stderr, whatever the output format."""
    from .console import error_console

    errors = error_console()
    # the verdict repeats what the exit code says: a stderr that cannot take it changes nothing
    with contextlib.suppress(OSError):
        for result in results:
            errors.print(
                Text(verdict(result)),
                style="green" if result.passed else "bold red",
                highlight=False,
                soft_wrap=True,
            )
