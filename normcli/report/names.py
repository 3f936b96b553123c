"""Tensor names in a table cell: on a narrow terminal cut from the left, never wrapped."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

from .text import printable

# a name column gives way down to this many cells before the table crops
NARROWEST = 16


def shorten(name: str, width: int) -> str:
    """`name` in at most `width` cells: "…" and its tail, which tells one layer from the next
    (model.layers.7.mlp.down_proj.weight → …7.mlp.down_proj.weight)."""
    if cell_len(name) <= width:
        return name
    if width < 2:
        return "…"[:width]
    tail = ""
    for char in reversed(name):
        if cell_len(char + tail) > width - 1:
            break
        tail = char + tail
    return "…" + tail


class TailName:
    """A table cell holding a name from a file: printable, whole where it fits, else shortened
    to the column's width from the left; never folded mid-word over several lines."""

    def __init__(self, name: str, style: str = "") -> None:
        self.name = printable(name)
        self.style = style

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.name)
        return Measurement(min(width, NARROWEST), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(shorten(self.name, options.max_width), self.style, no_wrap=True)
