"""Renderers, one per output format, chosen by name; they get result objects and a Console."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console

from ..results import InspectResult
from . import csv, json, markdown, table

OUTPUT_FORMATS = ("table", "json", "csv", "md")


def _text(render: Callable[[Sequence[InspectResult]], str]) -> Callable[..., None]:
    def write(results: Sequence[InspectResult], console: Console) -> None:
        console.file.write(render(results))

    return write


INSPECT_RENDERERS: dict[str, Callable[[Sequence[InspectResult], Console], None]] = {
    "table": table.render_inspect,
    "json": _text(json.dumps),
    "csv": _text(csv.render_inspect),
    "md": _text(markdown.render_inspect),
}
