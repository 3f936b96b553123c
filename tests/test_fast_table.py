"""FastTable shows what rich's Table shows: the same characters in the same styles, the same
width, whatever the cells, styles and console width."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.text import Text

from normcli.report.fast_table import FastTable
from normcli.report.names import TailName

STYLES = ["", "bold red", "bold yellow", "dim", "bold", "on blue"]
# letters, digits, the report's punctuation, markup and emoji syntax, and wide characters
WORDS = st.text(st.sampled_from("ab.xZ09 ,-_[]:/()%‖₂→界"), max_size=12)


@st.composite
def tables(draw: st.DrawFn) -> FastTable:
    table = FastTable()
    columns = draw(st.integers(1, 5))
    for i in range(columns):
        table.add_column(
            escape(draw(WORDS)),
            justify=draw(st.sampled_from(["left", "right"])),
            no_wrap=i > 0,
            overflow="fold" if i == 0 else "ellipsis",
        )
    for _ in range(draw(st.integers(0, 6))):
        cells: list[Text | str | TailName] = []
        for _ in range(columns):
            text = draw(WORDS)
            kind = draw(st.sampled_from(["str", "name", "text"]))
            if kind == "str":
                cells.append(escape(text))  # a str cell is markup, which rich must be able to read
            elif kind == "name":
                cells.append(TailName(text, draw(st.sampled_from(STYLES))))
            else:
                cell = Text(text, draw(st.sampled_from(STYLES)))
                if text and draw(st.booleans()):
                    cell.stylize(draw(st.sampled_from(STYLES[1:])), 0, len(text) // 2 + 1)
                cells.append(cell)
        table.add_row(*cells, style=draw(st.sampled_from([None, *STYLES])))
    return table


def drawn(console: Console, renderable: Any) -> list[tuple[str, str]]:
    """Every character drawn, with its style."""
    return [
        (character, str(segment.style or "none"))
        for segment in console.render(renderable)
        for character in segment.text
    ]


@settings(max_examples=150, deadline=None)
@given(tables(), st.integers(10, 120), st.booleans())
def test_fast_table_draws_what_rich_draws(table: FastTable, width: int, colour: bool) -> None:
    console = Console(
        width=width, force_terminal=colour, color_system="truecolor" if colour else None
    )
    assert drawn(console, table) == drawn(console, table.rich_table())
    unbounded = console.options.update_width(1 << 16)
    ours = Measurement.get(console, unbounded, table).maximum
    assert ours == Measurement.get(console, unbounded, table.rich_table()).maximum


def test_a_big_table_is_drawn_by_rows_not_by_rich() -> None:
    # guards the test above against passing because every table went to rich
    table = FastTable()
    table.add_column("name")
    table.add_column("value", justify="right")
    for i in range(50):
        table.add_row(Text(f"t{i}"), f"{i:,}", style="dim" if i % 2 else None)
    console = Console(width=80)
    rendered = list(console.render(table))
    assert not any(
        type(r).__name__ == "Table" for r in table.__rich_console__(console, console.options)
    )
    assert len(rendered) < 4 * 52  # a few segments a line, where rich draws several a cell
