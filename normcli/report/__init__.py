"""Renderers, one per output format, chosen by name; they get result objects and the run's
Output. The modules that draw tables with rich are imported only when a table is drawn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..results import CheckResult, CompareResult, InspectResult, TrendResult
from . import csv, json, markdown

if TYPE_CHECKING:
    from .console import Output

Renderer = Callable[[Sequence[Any], "Output"], None]


def _text(render: Callable[[Sequence[Any]], str]) -> Renderer:
    def write(results: Sequence[Any], out: Output) -> None:
        out.file.write(render(results))

    return write


def _later(module: str, name: str) -> Callable[..., Any]:
    """`name` of the report module `module`, imported when called."""

    def call(*args: Any) -> Any:
        return getattr(import_module(f"{__name__}.{module}"), name)(*args)

    return call


def _drawn(module: str, name: str) -> Renderer:
    """A renderer that draws on a rich Console: `name` of the report module `module`."""
    draw = _later(module, name)

    def render(results: Sequence[Any], out: Output) -> None:
        draw(results, out.console())

    return render


INSPECT_RENDERERS: dict[str, Callable[[Sequence[InspectResult], Output], None]] = {
    "table": _drawn("table", "render_inspect"),
    "json": _text(json.dumps),
    "csv": _text(csv.render_inspect),
    "md": _text(markdown.render_inspect),
}

COMPARE_RENDERERS: dict[str, Callable[[Sequence[CompareResult], Output], None]] = {
    "table": _drawn("compare_table", "render_compare"),
    "json": _text(json.dumps),
    "csv": _text(csv.render_compare),
    "md": _text(markdown.render_compare),
}

TREND_RENDERERS: dict[str, Callable[[Sequence[TrendResult], Output], None]] = {
    "table": _drawn("trend_report", "render_table"),
    "json": _text(json.dumps),
    "csv": _text(_later("trend_report", "render_csv")),
    "md": _text(_later("trend_report", "render_markdown")),
}

CHECK_RENDERERS: dict[str, Callable[[Sequence[CheckResult], Output], None]] = {
    "table": _drawn("check_report", "render_table"),
    "json": _text(json.dumps),
    "github": _text(_later("check_report", "render_github")),
    "md": _text(_later("check_report", "render_markdown")),
}
