"""Markdown output: a table per checkpoint and its whole-model line, for pull requests and wikis."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..results import CompareResult, HeaderCounts, InspectResult, TensorStats
from .text import (
    NOT_COMPUTED,
    covers,
    fmt_float,
    fmt_int,
    fmt_linf,
    fmt_percent,
    fmt_shape,
    outside_totals,
    printable,
    status_text,
    total_label,
)


def _escape(text: str) -> str:
    return printable(text).replace("|", "\\|")


def _code(text: str) -> str:
    """A code span that holds any name: fenced by more backticks than the name has in a row."""
    runs = re.findall(r"`+", text)
    if not runs:
        return f"`{_escape(text)}`"
    fence = "`" * (max(len(r) for r in runs) + 1)
    return f"{fence} {_escape(text)} {fence}"


def _stat_cells(s: TensorStats) -> list[str]:
    if isinstance(s, HeaderCounts):  # --header-only: the count, and no value was read
        return [fmt_int(s.numel), *(["–"] * (len(STAT_HEADER) - 1))]
    return [
        fmt_int(s.numel),
        fmt_float(s.l1),
        fmt_float(s.l2),
        fmt_linf(s),
        fmt_float(s.rms),
        fmt_float(s.mean),
        fmt_percent(s.sparsity),
        fmt_int(s.nan),
        fmt_int(s.inf),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


STAT_HEADER = ["numel", "L1", "L2", "Linf", "RMS", "mean", "sparsity", "NaN", "Inf"]


def render_inspect(results: Sequence[InspectResult]) -> str:
    lines: list[str] = []
    for result in results:
        info = result.checkpoint
        lines += [
            f"### {_code(info.path)}",
            "",
            f"{info.format}, {info.tensors} tensors, {fmt_int(info.nbytes)} bytes",
            "",
        ]
        if result.groups is not None:
            lines += _table(
                ["group", "tensors", *STAT_HEADER],
                [
                    [_escape(g.name), fmt_int(g.tensors), *_stat_cells(g.stats)]
                    for g in result.groups
                ],
            )
        else:
            lines += _table(
                ["tensor", "dtype", "shape", *STAT_HEADER],
                [
                    [_code(t.name), t.dtype, fmt_shape(t.shape), *_stat_cells(t.stats)]
                    for t in result.tensors
                ],
            )
        total = result.total
        s = total.stats
        scope = "floating-point tensors" if total.scope == "floating" else "all tensors"
        figures = (
            "headers only, no value read"
            if result.header_only
            else f"L1 {fmt_float(s.l1, 10)}, L2 {fmt_float(s.l2, 10)}, "
            f"Linf {fmt_linf(s, 10)}, NaN {s.nan}, Inf {s.inf}"
        )
        lines += [
            "",
            f"**{total_label(result.selected, result.checkpoint.tensors)}** "
            f"({scope}: {total.tensors}): {fmt_int(s.numel)} elements, {figures}",
            "",
        ]
        state = result.optimizer
        if state is not None:
            o = state.stats
            lines += [
                f"**Optimizer state** ({state.tensors} tensors, "
                + ("counted in the whole model" if state.in_total else "not in the whole model")
                + f"): L1 {fmt_float(o.l1, 10)}, L2 {fmt_float(o.l2, 10)}, "
                + ", ".join(
                    f"{_code(m.moment)} L2 {fmt_float(m.stats.l2)}" for m in state.by_moment
                ),
                "",
            ]
    return "\n".join(lines)


def render_compare(results: Sequence[CompareResult]) -> str:
    lines: list[str] = []
    for result in results:
        lines += [f"### {_code(result.a.path)} → {_code(result.b.path)}", ""]
        header = ["‖A‖₂", "‖B‖₂", "‖B−A‖₂", "rel", "ratio", "cosine", "NaN A/B"]
        if result.groups is not None:
            lines += _table(
                ["group", "tensors", *header],
                [
                    [
                        _escape(g.name),
                        fmt_int(g.tensors),
                        fmt_float(g.a.l2),
                        fmt_float(g.b.l2),
                        fmt_float(g.pair.diff.l2) if g.pair else "-",
                        fmt_float(g.rel_l2),
                        fmt_float(g.ratio_l2),
                        fmt_float(g.cosine),
                        f"{g.a.nan}/{g.b.nan}",
                    ]
                    for g in result.groups
                ],
            )
        else:
            lines += _table(
                ["tensor", "status", *header],
                [
                    [
                        _code(t.name),
                        status_text(t),
                        fmt_float(t.a.stats.l2) if t.a else "-",
                        fmt_float(t.b.stats.l2) if t.b else "-",
                        fmt_float(t.pair.diff.l2) if t.pair else "-",
                        fmt_float(t.rel_l2),
                        fmt_float(t.ratio_l2),
                        fmt_float(t.cosine),
                        f"{t.a.stats.nan if t.a else '-'}/{t.b.stats.nan if t.b else '-'}",
                    ]
                    for t in result.tensors
                ],
            )
        s, total = result.summary, result.total
        counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in s.items())
        update = (
            f"‖B−A‖₂ {fmt_float(total.pair.diff.l2, 10)}, relative {fmt_float(total.rel_l2)}, "
            f"cosine {fmt_float(total.cosine, 10)}"
            if total.pair is not None
            else NOT_COMPUTED
        )
        over = covers(total.matched, total.added, total.removed, total.reshaped)
        lines += [
            "",
            f"**Tensors**: {counts}{outside_totals(result)}",
            "",
            f"**{total_label(result.selected, result.available)}**: "
            f"‖A‖₂ {fmt_float(total.a.l2, 10)}, ‖B‖₂ {fmt_float(total.b.l2, 10)}, {update}"
            + (f"; {over}" if over else ""),
            "",
        ]
    return "\n".join(lines)
