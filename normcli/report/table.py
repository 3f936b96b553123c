"""The inspect report as rich tables for a terminal: tensors (or groups), then the whole model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import GroupReport, InspectResult, OptimizerState, TensorStats, Total
from .fast_table import Cell, FastTable
from .names import TailName
from .text import (
    fmt_bytes,
    fmt_float,
    fmt_int,
    fmt_linf,
    fmt_percent,
    fmt_shape,
    printable,
    total_label,
)

NONFINITE = "bold red"
STANDOUT = "bold yellow"


def render_inspect(results: Sequence[InspectResult], console: Console) -> None:
    for i, result in enumerate(results):
        if i:
            console.print()
        _render_one(result, console)


def _render_one(result: InspectResult, console: Console) -> None:
    info = result.checkpoint
    console.print(
        Text.assemble(
            (printable(info.path), "bold"),
            f"  {info.format}, "
            + (f"{info.shards} shards, " if info.shards > 1 else "")
            + f"{_plural(info.tensors, 'tensor')}, {fmt_bytes(info.nbytes)}"
            + (
                f" ({_plural(info.skipped_values, 'non-tensor value')} left out)"
                if info.skipped_values
                else ""
            ),
        )
    )
    if info.skipped_tensors:
        console.print(skipped_line(info.skipped_tensors))
    # with --header-only, the columns of the values hold nothing
    unread = VALUE_COLUMNS if result.header_only else frozenset()
    if result.groups is not None:
        fit_table(
            console,
            lambda hide: _group_table(result.groups or (), hide),
            GROUP_OPTIONAL_COLUMNS,
            unread,
        )
    elif result.tensors:
        optional = [c for c in OPTIONAL_COLUMNS if c != "shard" or info.shards > 1]
        fit_table(console, lambda hide: _tensor_table(result, hide), optional, unread)
    shown = len(result.groups) if result.groups is not None else len(result.tensors)
    hidden = (result.total.tensors if result.groups is not None else result.selected) - shown
    if result.groups is None and hidden > 0:
        console.print(f"({hidden} more tensors not shown; --top limits the rows)", style="dim")
    _render_total(result, console)


# Dropped in this order when the terminal is too narrow for every column.
OPTIONAL_COLUMNS = ("shard", "mean", "zeros", "numel", "RMS", "shape", "L1")
GROUP_OPTIONAL_COLUMNS = ("mean", "zeros", "numel", "RMS", "L1")


def fit_table(
    console: Console,
    build: Callable[[frozenset[str]], Table | FastTable],
    optional: Sequence[str] = OPTIONAL_COLUMNS,
    never: frozenset[str] = frozenset(),
) -> None:
    """Print the widest table the console fits, hiding the least telling columns first (and
    the columns `never` always)."""
    hidden = never
    table = build(hidden)
    unbounded = console.options.update_width(1 << 16)
    for column in optional:
        if console.measure(table, options=unbounded).maximum <= console.width:
            break
        hidden = hidden | {column}
        table = build(hidden)
    console.print(table)
    if hidden - never:
        console.print(
            f"(terminal too narrow: {', '.join(sorted(hidden - never))} not shown; "
            "-f csv or -f json has every column)",
            style="dim",
        )


def _stat_cells(stats: TensorStats) -> list[Text | str]:
    return [
        fmt_int(stats.numel),
        fmt_float(stats.l1),
        fmt_float(stats.l2),
        fmt_linf(stats),
        fmt_float(stats.rms),
        fmt_float(stats.mean),
        f"{fmt_int(stats.zeros)} ({fmt_percent(stats.sparsity)})" if stats.zeros else "0",
        Text(fmt_int(stats.nan), NONFINITE if stats.nan else ""),
        Text(fmt_int(stats.inf), NONFINITE if stats.inf else ""),
    ]


STAT_COLUMNS = ("numel", "L1", "L2", "Linf", "RMS", "mean", "zeros", "NaN", "Inf")
VALUE_COLUMNS = frozenset(STAT_COLUMNS) - {"numel"}


class _Rows:
    """A table whose hidden columns are left out both of the header and of every row."""

    def __init__(self, first: str, extra: Sequence[str], hidden: frozenset[str]) -> None:
        self.table = FastTable()
        self.keep = [c not in hidden for c in (first, *extra, *STAT_COLUMNS, "")]
        self.table.add_column(first)
        for column in extra:
            if column not in hidden:
                self.table.add_column(
                    column, justify="right" if column == "tensors" else "left", no_wrap=True
                )
        for column in STAT_COLUMNS:
            if column not in hidden:
                self.table.add_column(column, justify="right", no_wrap=True)
        self.table.add_column("", no_wrap=True)

    def add(self, cells: Sequence[Cell], style: str | None) -> None:
        self.table.add_row(
            *(c for c, keep in zip(cells, self.keep, strict=True) if keep), style=style
        )


def _notes(stats: TensorStats, max_l2: bool, max_linf: bool) -> tuple[str, str]:
    """The remark and row style that make a non-finite or largest row stand out."""
    if stats.nan or stats.inf:
        return "non-finite!", NONFINITE
    marks = [mark for mark, on in (("max L2", max_l2), ("max Linf", max_linf)) if on]
    return ", ".join(marks), STANDOUT if marks else ""


def _tensor_table(result: InspectResult, hidden: frozenset[str]) -> FastTable:
    sharded = result.checkpoint.shards > 1
    table = _Rows("tensor", ["dtype", "shape", *(["shard"] if sharded else [])], hidden)
    total = result.total
    for row in result.tensors:
        note, style = (
            _notes(row.stats, row.name == total.largest_l2, row.name == total.largest_linf)
            if row.covered
            else ("optimizer, not in total" if row.optimizer else "not in total", "dim")
        )
        table.add(
            [
                TailName(row.name),
                row.dtype,
                fmt_shape(row.shape),
                *([Text(printable(row.shard or ""))] if sharded else []),
                *_stat_cells(row.stats),
                Text(note, style),
            ],
            style=style if style != STANDOUT else None,
        )
    return table.table


def _group_table(groups: Sequence[GroupReport], hidden: frozenset[str]) -> FastTable:
    table = _Rows("group", ["tensors"], hidden)
    top_l2 = max((g.stats.l2 for g in groups), default=0.0)
    top_linf = max((g.stats.linf for g in groups), default=0.0)
    for group in groups:
        note, style = _notes(
            group.stats,
            max_l2=top_l2 > 0 and group.stats.l2 == top_l2,
            max_linf=top_linf > 0 and group.stats.linf == top_linf,
        )
        table.add(
            [
                TailName(group.name),
                fmt_int(group.tensors),
                *_stat_cells(group.stats),
                Text(note, style),
            ],
            style=style if style == NONFINITE else None,
        )
    return table.table


def skipped_line(skipped: Sequence[tuple[str, str]], shown: int = 3) -> Text:
    """Tensors the file holds but normcli cannot read: never silently dropped from a report."""
    listed = "; ".join(f"{printable(n)} ({printable(r)})" for n, r in skipped[:shown])
    more = f"; and {len(skipped) - shown} more (-f json lists them)" if len(skipped) > shown else ""
    return Text(f"  not read, so in no figure: {listed}{more}", STANDOUT)


def nonfinite_line(names: Sequence[str], shown: int = 5) -> Text:
    """Names every tensor holding NaN or Inf (the first few), whatever --top hid."""
    listed = ", ".join(printable(n) for n in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return Text(f"  non-finite values in: {listed}{more}", NONFINITE)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _render_total(result: InspectResult, console: Console) -> None:
    total = result.total
    stats = total.stats
    kind = "floating-point " if total.scope == "floating" else ""
    integers = total.excluded - total.optimizer_excluded
    reasons = [
        f"{_plural(integers, 'integer/bool tensor')} left out; --include-int adds them"
        if integers
        else "",
        f"{_plural(total.optimizer_excluded, 'optimizer-state tensor')} set apart; "
        "--include-optimizer adds them"
        if total.optimizer_excluded
        else "",
    ]
    left_out = "; ".join(r for r in reasons if r)
    left_out = f" ({left_out})" if left_out else ""
    label = total_label(result.selected, result.checkpoint.tensors)
    console.print(
        Text.assemble((label, "bold"), f": {_plural(total.tensors, kind + 'tensor')}{left_out}")
    )
    values = not result.header_only
    if values:
        _render_values(total, console)
    else:
        console.print(
            f"  elements {fmt_int(stats.numel)}  bytes {fmt_bytes(total.nbytes)}  "
            "(headers only: no value was read)"
        )
    _print_breakdown(
        console,
        "By dtype:",
        [(d.dtype, d.tensors, d.nbytes, d.stats) for d in total.by_dtype],
        values=values,
    )
    if result.optimizer is not None:
        _render_optimizer(result.optimizer, console, values=values)


def _render_values(total: Total, console: Console) -> None:
    """The whole model's figures of its values."""
    stats = total.stats
    nonfinite = NONFINITE if stats.nan or stats.inf else ""
    console.print(
        Text.assemble(
            f"  elements {fmt_int(stats.numel)}  bytes {fmt_bytes(total.nbytes)}  ",
            (f"NaN {fmt_int(stats.nan)}  Inf {fmt_int(stats.inf)}", nonfinite),
        )
    )
    if total.nonfinite_tensors:
        console.print(nonfinite_line(total.nonfinite_tensors))
    console.print(
        f"  L1 {fmt_float(stats.l1, 10)}  L2 {fmt_float(stats.l2, 10)}  "
        f"Linf {fmt_linf(stats, 10)}  RMS {fmt_float(stats.rms, 10)}"
    )


def _render_optimizer(state: OptimizerState, console: Console, values: bool) -> None:
    where = ", ".join(repr(printable(o)) if o else "the whole file" for o in state.optimizers)
    counted = "counted in the whole model" if state.in_total else "not in the whole model"
    console.print(
        Text.assemble(
            ("Optimizer state", "bold"),
            f": {_plural(state.tensors, 'tensor')}"
            + (f" in {where}" if where else "")
            + f", {counted}",
        )
    )
    stats = state.stats
    figures = (
        f"L1 {fmt_float(stats.l1, 10)}  L2 {fmt_float(stats.l2, 10)}  Linf {fmt_linf(stats, 10)}"
        if values
        else "(headers only)"
    )
    console.print(f"  elements {fmt_int(stats.numel)}  bytes {fmt_bytes(state.nbytes)}  {figures}")
    _print_breakdown(
        console,
        "By moment:",
        [(printable(m.moment), m.tensors, m.nbytes, m.stats) for m in state.by_moment],
        values=values,
    )


def _print_breakdown(
    console: Console,
    title: str,
    lines: Sequence[tuple[str, int, int, TensorStats]],
    values: bool = True,
) -> None:
    """Totals line by line (by dtype, by moment): tensors, elements, bytes, and unless only
    headers were read, L2 and Linf."""
    if not lines:
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    for _ in range(3):
        grid.add_column(justify="right")
    for _ in range(3 if values else 0):
        grid.add_column(justify="left")
    for label, tensors, nbytes, stats in lines:
        counts = (label, _plural(tensors, "tensor"), f"{fmt_int(stats.numel)} elements")
        if not values:
            grid.add_row(*counts, fmt_bytes(nbytes))
            continue
        bad = stats.nan or stats.inf
        grid.add_row(
            *counts,
            fmt_bytes(nbytes),
            f"L2 {fmt_float(stats.l2)}",
            f"Linf {fmt_linf(stats)}",
            Text(f"NaN {stats.nan}  Inf {stats.inf}", NONFINITE) if bad else "",
        )
    console.print(Text(title, "bold"))
    console.print(grid)
