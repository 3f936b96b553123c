"""The trend report: a table with a sparkline per row (terminal, Markdown) and long-form CSV."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import TrendResult, TrendRow
from .names import TailName
from .table import NONFINITE, STANDOUT, fit_table
from .text import fmt_float, printable, sparkline, spreadsheet_cell, total_label

METRIC_NAMES = {"l2": "L2", "l1": "L1", "linf": "Linf", "rms": "RMS"}


def jump_text(row: TrendRow, result: TrendResult) -> str:
    """Where the row first moved by JUMP_FACTOR or more; nothing for a row that never did."""
    jump = row.first_jump(result.metric)
    if jump is None:
        return "-"
    cause = ", tensors changed" if row.set_changed(jump[0]) else ""
    return f"{result.points[jump[0]].label} (×{jump[1]:.3g}{cause})"


def row_note(row: TrendRow, metric: str) -> str:
    if row.nonfinite:
        return "non-finite!"
    jump = row.first_jump(metric)
    notes = ["jumped"] if jump is not None and not row.set_changed(jump[0]) else []
    if row.tensors == 1 and any(row.reshaped):
        notes.append("reshaped")  # its update is one of shapes, which no element-wise figure has
    elif any(row.set_changed(t) for t in range(len(row.present))):
        notes.append("tensors changed")
    return ", ".join(notes)


def run_notes(result: TrendResult) -> list[str]:
    """Where the selected tensors differ from the previous checkpoint's (the figures from there
    on cover other tensors, which no training step explains), and where no update exists."""
    lines = []
    for point in result.points:
        change = point.change
        if change:
            counts = [
                f"{n} {what}"
                for n, what in (
                    (change.added, "added"),
                    (change.removed, "removed"),
                    (change.reshaped, "reshaped"),
                )
                if n
            ]
            lines.append(f"tensor set changed at {printable(point.label)}: {', '.join(counts)}")
    reports = [printable(p.label) for p in result.points if p.format == "report"]
    if reports:
        lines.append(
            f"no update into or out of {', '.join(reports)}: a saved report holds norms, not values"
        )
    return lines


def change_text(row: TrendRow, metric: str) -> str:
    present = [v for v in row.values(metric) if v is not None]
    if len(present) < 2 or not present[0]:
        return "-"
    return f"×{present[-1] / present[0]:.3g}"


def _style(row: TrendRow, metric: str) -> str | None:
    if row.nonfinite:
        return NONFINITE
    return STANDOUT if row.jumped(metric) else None


# Dropped in this order when the terminal is too narrow for every column.
OPTIONAL = ("max rel. update", "first", "change", "last")


def _table(result: TrendResult, hidden: frozenset[str]) -> Table:
    columns = [
        c for c in ("first", "last", "change", "jump at", "max rel. update") if c not in hidden
    ]
    names = [printable(r.name) for r in result.rows]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column(
        "group" if result.group_by else "tensor",
        min_width=min(28, max(map(len, names), default=11)),
    )
    table.add_column(METRIC_NAMES[result.metric], no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for row in (*result.rows, result.total):
        values = row.values(result.metric)
        present = [v for v in values if v is not None]
        cells = {
            "first": fmt_float(present[0] if present else None),
            "last": fmt_float(present[-1] if present else None),
            "change": change_text(row, result.metric),
            "jump at": jump_text(row, result),
            "max rel. update": max_update_text(row),
        }
        note = row_note(row, result.metric)
        table.add_row(
            TailName(row.name) if row is not result.total else Text(total_name(result), "bold"),
            sparkline(values),
            *(cells[c] for c in columns),
            Text(note),
            style=_style(row, result.metric),
            end_section=row is result.rows[-1] if result.rows else False,
        )
    return table


def total_name(result: TrendResult) -> str:
    return total_label(result.selected, result.available).lower()


def max_update_text(row: TrendRow) -> str:
    updates = [u for u in row.rel_update if u is not None]
    return fmt_float(max(updates) if updates else None)


def render_table(results: Sequence[TrendResult], console: Console) -> None:
    for result in results:
        name = METRIC_NAMES[result.metric]
        first, last = result.points[0], result.points[-1]
        grouping = (
            f"grouped by {result.group_by} name parts"
            + (
                " (automatically; --group-by 0 shows every tensor)"
                if result.grouped_automatically
                else ""
            )
            if result.group_by
            else "every tensor"
        )
        console.print(
            Text.assemble(
                ("Trend", "bold"),
                f" of {name} over {len(result.points)} checkpoints, "
                f"{printable(first.label)} → {printable(last.label)}; {grouping}",
            )
        )
        fit_table(console, functools.partial(_table, result), OPTIONAL)
        steps = "  ".join(printable(p.label) for p in result.points)
        console.print(Text(f"checkpoints: {steps}", "dim"))
        if result.optimizer_excluded:
            console.print(
                f"({result.optimizer_excluded} optimizer-state tensors set apart; "
                "--include-optimizer adds them)",
                style="dim",
            )
        for line in run_notes(result):
            console.print(Text(line, STANDOUT))


def render_markdown(results: Sequence[TrendResult]) -> str:
    lines: list[str] = []
    for result in results:
        name = METRIC_NAMES[result.metric]
        lines += [
            f"### Trend of {name} over {len(result.points)} checkpoints",
            "",
            f"| {'group' if result.group_by else 'tensor'} | {name} | first | last | "
            "change | jump at | max rel. update | |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for row in (*result.rows, result.total):
            present = [v for v in row.values(result.metric) if v is not None]
            note = row_note(row, result.metric)
            note = f"**{note}**" if note else ""
            label = total_name(result) if row is result.total else printable(row.name)
            label = label.replace("|", "\\|")
            cells = [
                label,
                sparkline(row.values(result.metric)),
                fmt_float(present[0] if present else None),
                fmt_float(present[-1] if present else None),
                change_text(row, result.metric),
                jump_text(row, result),
                max_update_text(row),
                note,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *(f"**{line}**" for line in run_notes(result)), ""]
    return "\n".join(lines)


def render_csv(results: Sequence[TrendResult]) -> str:
    """Long form: one line per row and checkpoint, for spreadsheets and plotting tools."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "row",
            "name",
            "tensors",
            "checkpoint",
            "step",
            "metric",
            "value",
            "update_l2",
            "rel_update",
            "nan",
            "inf",
            "tensors_present",
        ]
    )
    for result in results:
        kind = "group" if result.group_by else "tensor"
        for row in (*result.rows, result.total):
            values = row.values(result.metric)
            for t, point in enumerate(result.points):
                stats = row.stats[t]
                cells = [
                    "total" if row is result.total else kind,
                    spreadsheet_cell(row.name),
                    row.tensors,
                    spreadsheet_cell(point.path),
                    point.step,
                    result.metric,
                    values[t],
                    row.update_l2[t],
                    row.rel_update[t],
                    stats.nan if stats else None,
                    stats.inf if stats else None,
                    row.present[t],
                ]
                writer.writerow(["" if c is None else c for c in cells])
    return out.getvalue()
