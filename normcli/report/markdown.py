"""Markdown output: a table per checkpoint and its whole-model line, for pull requests and wikis."""

from __future__ import annotations

from collections.abc import Sequence

from ..results import InspectResult
from ..stats import TensorStats
from .text import fmt_float, fmt_int, fmt_percent, fmt_shape, printable


def _escape(text: str) -> str:
    return printable(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")


def _stat_cells(s: TensorStats) -> list[str]:
    return [fmt_int(s.numel), fmt_float(s.l1), fmt_float(s.l2), fmt_float(s.linf),
            fmt_float(s.rms), fmt_float(s.mean), fmt_percent(s.sparsity), fmt_int(s.nan),
            fmt_int(s.inf)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


STAT_HEADER = ["numel", "L1", "L2", "Linf", "RMS", "mean", "sparsity", "NaN", "Inf"]


def render_inspect(results: Sequence[InspectResult]) -> str:
    lines: list[str] = []
    for result in results:
        info = result.checkpoint
        lines += [f"### `{_escape(info.path)}`", "",
                  f"{info.format}, {info.tensors} tensors, {fmt_int(info.nbytes)} bytes", ""]
        if result.groups is not None:
            lines += _table(["group", "tensors", *STAT_HEADER],
                            [[_escape(g.name), fmt_int(g.tensors), *_stat_cells(g.stats)]
                             for g in result.groups])
        else:
            lines += _table(["tensor", "dtype", "shape", *STAT_HEADER],
                            [[f"`{_escape(t.name)}`", t.dtype, fmt_shape(t.shape),
                              *_stat_cells(t.stats)] for t in result.tensors])
        total = result.total
        s = total.stats
        scope = "floating-point tensors" if total.scope == "floating" else "all tensors"
        lines += ["", f"**Whole model** ({scope}: {total.tensors}): {fmt_int(s.numel)} elements, "
                  f"L1 {fmt_float(s.l1, 10)}, L2 {fmt_float(s.l2, 10)}, "
                  f"Linf {fmt_float(s.linf, 10)}, NaN {s.nan}, Inf {s.inf}", ""]
    return "\n".join(lines)
