"""Renderers, one per output format, chosen by name; they get result objects and a Console."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from ..results import CheckResult, CompareResult, InspectResult, TrendResult
from . import check_report, compare_table, csv, json, markdown, table, trend_report


def _text(render: Callable[[Sequence[Any]], str]) -> Callable[[Sequence[Any], Console], None]:
    def write(results: Sequence[Any], console: Console) -> None:
        console.file.write(render(results))

    return write


INSPECT_RENDERERS: dict[str, Callable[[Sequence[InspectResult], Console], None]] = {
    "table": table.render_inspect,
    "json": _text(json.dumps),
    "csv": _text(csv.render_inspect),
    "md": _text(markdown.render_inspect),
}

COMPARE_RENDERERS: dict[str, Callable[[Sequence[CompareResult], Console], None]] = {
    "table": compare_table.render_compare,
    "json": _text(json.dumps),
    "csv": _text(csv.render_compare),
    "md": _text(markdown.render_compare),
}

TREND_RENDERERS: dict[str, Callable[[Sequence[TrendResult], Console], None]] = {
    "table": trend_report.render_table,
    "json": _text(json.dumps),
    "csv": _text(trend_report.render_csv),
    "md": _text(trend_report.render_markdown),
}

CHECK_RENDERERS: dict[str, Callable[[Sequence[CheckResult], Console], None]] = {
    "table": check_report.render_table,
    "json": _text(json.dumps),
    "github": _text(check_report.render_github),
    "md": _text(check_report.render_markdown),
}
