"""The compare report as a rich table: largest relative update first, every status visible."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from ..results import Aggregate, CompareResult, TensorDiff
from .fast_table import Cell, FastTable
from .names import TailName
from .table import NONFINITE, STANDOUT, fit_table, nonfinite_line, skipped_line
from .text import (
    NOT_COMPUTED,
    covers,
    fmt_float,
    outside_totals,
    printable,
    saved_selection_line,
    scoped_total_label,
    status_text,
)

STATUS_STYLE = {
    "changed": "",
    "unchanged": "dim",
    "added": "bold green",
    "removed": "bold red",
    "shape_changed": "bold magenta",
}
COLUMNS = (
    "status",
    "dtype",
    "‖A‖₂",
    "‖B‖₂",
    "‖B−A‖₂",
    "rel",
    "ratio",
    "cosine",
    "max|B−A|",
    "NaN A/B",
    "Inf A/B",
)
OPTIONAL = ("max|B−A|", "Inf A/B", "‖A‖₂", "dtype", "cosine", "ratio")
# against a saved report these have no values: drop them first
ELEMENT_WISE = ("‖B−A‖₂", "rel", "cosine", "max|B−A|")


def render_compare(results: Sequence[CompareResult], console: Console) -> None:
    for i, result in enumerate(results):
        if i:
            console.print()
        _render_one(result, console)


def _render_one(result: CompareResult, console: Console) -> None:
    console.print(
        Text.assemble(
            ("A ", "bold"),
            printable(result.a.path),
            f"  ({result.a.format}, {result.a.tensors} tensors)\n",
            ("B ", "bold"),
            printable(result.b.path),
            f"  ({result.b.format}, {result.b.tensors} tensors)",
        )
    )
    for letter, side in (("A", result.a), ("B", result.b)):
        if any(side.selection):
            console.print(Text(saved_selection_line(letter, side.selection), STANDOUT))
        if side.skipped_tensors:
            console.print(skipped_line(side.skipped_tensors))
    optional: tuple[str, ...] = OPTIONAL
    if result.total.pair is None:
        optional = (*ELEMENT_WISE, *(c for c in OPTIONAL if c not in ELEMENT_WISE))
    if result.groups is not None:
        fit_table(console, lambda hide: _group_table(result.groups or (), hide), optional)
    elif result.tensors:
        fit_table(console, lambda hide: _tensor_table(result.tensors, hide), optional)
        hidden = result.selected - len(result.tensors)
        if hidden > 0:
            console.print(f"({hidden} more tensors not shown; --top limits the rows)", style="dim")
    s = result.summary
    parts = [
        f"{s[k]} {k.replace('_', ' ')}"
        for k in ("changed", "unchanged", "added", "removed", "shape_changed")
    ]
    if s["dtype_changed"]:
        parts.append(f"{s['dtype_changed']} dtype changed")
    console.print(Text.assemble(("Tensors: ", "bold"), ", ".join(parts) + outside_totals(result)))
    total = result.total
    apart = ""
    if result.optimizer_excluded:
        apart = (
            f"; {result.optimizer_excluded} optimizer-state tensors set apart, "
            "--include-optimizer adds them"
        )
    console.print(
        Text.assemble(
            (scoped_total_label(result.selected, result.available, result.scope, apart), "bold"),
            ": ",
            f"‖A‖₂ {fmt_float(total.a.l2, 10)}  ‖B‖₂ {fmt_float(total.b.l2, 10)}  "
            f"ratio {fmt_float(total.ratio_l2)}",
        )
    )
    if total.pair is not None:
        console.print(
            f"  update ‖B−A‖₂ {fmt_float(total.pair.diff.l2, 10)}  "
            f"relative {fmt_float(total.rel_l2)}  cosine {fmt_float(total.cosine, 10)}  "
            f"max|B−A| {fmt_float(total.pair.diff.linf)}  ‖B−A‖₁ {fmt_float(total.pair.diff.l1)}"
        )
    else:
        console.print(Text(f"  {NOT_COMPUTED}", STANDOUT))
    over = covers(total.matched, total.added, total.removed, total.reshaped)
    if over:
        console.print(Text(f"  {over}", STANDOUT))
    nonfinite = total.a.nan + total.a.inf + total.b.nan + total.b.inf
    console.print(
        Text(
            f"  non-finite values: A NaN {total.a.nan} Inf {total.a.inf}, "
            f"B NaN {total.b.nan} Inf {total.b.inf}",
            NONFINITE if nonfinite else "",
        )
    )
    if result.nonfinite_tensors:
        console.print(nonfinite_line(result.nonfinite_tensors))


def _dtype(row: TensorDiff) -> Text:
    a = row.a.dtype if row.a else None
    b = row.b.dtype if row.b else None
    if row.dtype_changed:
        return Text(f"{b}", STANDOUT)  # the status cell says from what
    return Text(a or b or "")


def _counts(a: int | None, b: int | None) -> Text:
    text = f"{'-' if a is None else a}/{'-' if b is None else b}"
    return Text(text, NONFINITE if (a or b) else "")


def _new_table(first: str, hidden: frozenset[str]) -> tuple[FastTable, list[bool]]:
    table = FastTable()
    table.add_column(first)
    keep = [True]
    for column in COLUMNS:
        keep.append(column not in hidden)
        if column in hidden:
            continue
        left = column in ("status", "dtype")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    return table, keep


def _tensor_table(rows: Sequence[TensorDiff], hidden: frozenset[str]) -> FastTable:
    table, keep = _new_table("tensor", hidden)
    for row in rows:
        pair = row.pair
        cells: list[Cell] = [
            TailName(row.name),
            Text(status_text(row), STATUS_STYLE[row.status]),
            _dtype(row),
            fmt_float(row.a.stats.l2) if row.a else "-",
            fmt_float(row.b.stats.l2) if row.b else "-",
            fmt_float(pair.diff.l2) if pair else "-",
            fmt_float(row.rel_l2),
            fmt_float(row.ratio_l2),
            fmt_float(row.cosine),
            fmt_float(pair.diff.linf) if pair else "-",
            _counts(row.a.stats.nan if row.a else None, row.b.stats.nan if row.b else None),
            _counts(row.a.stats.inf if row.a else None, row.b.stats.inf if row.b else None),
        ]
        table.add_row(
            *(c for c, k in zip(cells, keep, strict=True) if k),
            style=NONFINITE if row.nonfinite else None,
        )
    return table


def _group_table(groups: Sequence[Aggregate], hidden: frozenset[str]) -> FastTable:
    table, keep = _new_table("group", hidden | {"status", "dtype"})
    for group in groups:
        pair = group.pair
        cells: list[Cell] = [
            TailName(group.name),
            "",
            "",
            fmt_float(group.a.l2),
            fmt_float(group.b.l2),
            fmt_float(pair.diff.l2) if pair else "-",
            fmt_float(group.rel_l2),
            fmt_float(group.ratio_l2),
            fmt_float(group.cosine),
            fmt_float(pair.diff.linf) if pair else "-",
            _counts(group.a.nan, group.b.nan),
            _counts(group.a.inf, group.b.inf),
        ]
        bad = group.a.nan or group.a.inf or group.b.nan or group.b.inf
        table.add_row(
            *(c for c, k in zip(cells, keep, strict=True) if k), style=NONFINITE if bad else None
        )
    return table
