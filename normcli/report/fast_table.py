"""The reports' tables: drawn line by line where every column fits at its natural width (the
usual case, however many rows), and by rich's Table, which can squeeze columns, where it does not.

rich lays out every cell as a renderable of its own, measured once and drawn once: about 0.2 ms a
cell, 2 s for a checkpoint of 900 tensors. Here a row is one line of text with its styles, and
what it shows is the same, character for character and style for style (a test draws both)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from .names import TailName

# a name from a file is whole wherever the table fits (TailName shortens it only when squeezed)
Cell = Text | str | TailName


@dataclass(frozen=True)
class _Column:
    header: str
    justify: str
    no_wrap: bool
    overflow: str


class FastTable:
    """The few features of rich's Table the reports use: a SIMPLE_HEAD box without edges or
    edge padding, columns justified left or right, and a style per row."""

    def __init__(self) -> None:
        self.columns: list[_Column] = []
        self.rows: list[tuple[Sequence[Cell], str | None]] = []
        self._laid_out: tuple[Console, tuple[list[list[Text]], list[int]] | None] | None = None

    def add_column(
        self,
        header: str = "",
        justify: str = "left",
        no_wrap: bool = False,
        overflow: str = "ellipsis",
    ) -> None:
        self.columns.append(_Column(header, justify, no_wrap, overflow))

    def add_row(self, *cells: Cell, style: str | None = None) -> None:
        self.rows.append((cells, style))

    def rich_table(self) -> Table:
        """The same table as rich draws it."""
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in self.columns:
            table.add_column(
                column.header,
                justify=column.justify,  # type: ignore[arg-type]
                no_wrap=column.no_wrap,
                overflow=column.overflow,  # type: ignore[arg-type]
            )
        for cells, style in self.rows:
            table.add_row(*cells, style=style)
        return table

    def _layout(self, console: Console) -> tuple[list[list[Text]], list[int]] | None:
        """Header and rows as Text, as rich would make them, and each column's natural width
        (its padding included; none at the table's edges); None if a cell spans lines.
        Measured once, then drawn: kept for the console that asked."""
        if self._laid_out is not None and self._laid_out[0] is console:
            return self._laid_out[1]
        rows = [[_as_text(c.header, console) for c in self.columns]]
        rows += [[_as_text(cell, console) for cell in cells] for cells, _ in self.rows]
        last = len(self.columns) - 1
        widths = [int(i > 0) + int(i < last) for i in range(len(self.columns))]
        layout: tuple[list[list[Text]], list[int]] | None = (rows, widths)
        for row in rows:
            for i, text in enumerate(row):
                plain = text.plain
                if "\n" in plain or "\t" in plain:
                    layout = None
                    break
                widths[i] = max(widths[i], _width(plain) + int(i > 0) + int(i < last))
        if sum(widths) == 2 * last:  # nothing in any cell: rich draws such a table its own way
            layout = None
        self._laid_out = (console, layout)
        return layout

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        layout = self._layout(console)
        if layout is None:
            return Measurement.get(console, options, self.rich_table())
        width = sum(layout[1]) + len(self.columns) - 1
        return Measurement(width, width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        layout = self._layout(console)
        if layout is None or sum(layout[1]) + len(layout[1]) - 1 > options.max_width:
            yield self.rich_table()
            return
        texts, widths = layout
        header_style = console.get_style("table.header")
        yield from self._line(console, texts[0], widths, header_style, Style.null())
        yield Segment("─" * (sum(widths) + len(widths) - 1))
        yield Segment.line()
        for row, (_, style) in zip(texts[1:], self.rows, strict=True):
            row_style = console.get_style(style) if style else Style.null()
            yield from self._line(console, row, widths, Style.null(), row_style)

    def _line(
        self,
        console: Console,
        texts: Sequence[Text],
        widths: Sequence[int],
        cell_style: Style,
        row_style: Style,
    ) -> Iterable[Segment]:
        """One row, styled as rich styles a cell: the row's style under the whole cell, the
        text's own under its text and the spaces that justify it. Neighbours of one style are
        joined: drawing goes by segments, and most of a row has none."""
        region = cell_style + row_style
        # rich gives a blank divider the row's background: none, in every row of the reports
        divider = row_style.background_style if row_style.bgcolor else Style.null()
        pieces: list[tuple[str, Style]] = []
        last = len(texts) - 1
        for i, (cell, column, width) in enumerate(zip(texts, self.columns, widths, strict=True)):
            text = _justifiable(cell, column.justify)
            plain = text.plain
            room = width - int(i > 0) - int(i < last) - _width(plain)
            if i > 0:
                pieces.append((" ", region))
            own = region + console.get_style(text.style) if text.style else region
            if room and column.justify == "right":
                pieces.append((" " * room, own))
            if text.spans:  # the text's own style is then in every segment's
                pieces.extend((s.text, region + s.style) for s in text.render(console))
            else:
                pieces.append((plain, own))
            if room and column.justify != "right":
                pieces.append((" " * room, own))
            if i < last:
                pieces.append((" ", region))
                pieces.append((" ", divider))
        yield from _joined(pieces)
        yield Segment.line()


def _joined(pieces: Sequence[tuple[str, Style]]) -> Iterable[Segment]:
    text, style = pieces[0]
    parts = [text]
    for piece, piece_style in pieces[1:]:
        if piece_style is not style and piece_style != style:
            yield Segment("".join(parts), style)
            parts, style = [], piece_style
        parts.append(piece)
    yield Segment("".join(parts), style)


def _justifiable(text: Text, justify: str) -> Text:
    """rich drops trailing spaces before it justifies a cell to the right."""
    if justify != "right" or not text.plain.endswith(" "):
        return text
    stripped = text.copy()
    stripped.rstrip()
    return stripped


def _width(plain: str) -> int:
    return len(plain) if plain.isascii() else cell_len(plain)


def _as_text(cell: Cell, console: Console) -> Text:
    """A cell as the Text rich draws for it where its column is wide enough; a str read as rich
    reads it (markup and emoji codes), without the cost where there can be neither."""
    if isinstance(cell, Text):
        return cell
    if isinstance(cell, TailName):
        return Text(cell.name, cell.style)
    if "[" in cell or ":" in cell:
        return console.render_str(cell, highlight=False)
    return Text(cell)
