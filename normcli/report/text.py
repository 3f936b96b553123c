"""Turning numbers and untrusted names into short, safe text for people to read."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..results import CompareResult, TensorDiff, TensorStats


def printable(name: str) -> str:
    """Tensor names come from untrusted files: control characters must not reach the terminal."""
    return "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in name)


# what a spreadsheet takes for the start of a formula (=HYPERLINK(...) runs when opened)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """Untrusted text for a CSV cell: printable, and never read as a formula (OWASP's way: a
    leading apostrophe). Numbers are written as numbers, never through here."""
    text = printable(text)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def fmt_float(value: float | None, digits: int = 6) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if 1e-4 <= magnitude < 1e15:
        # plain digits, as many decimals as `digits` significant figures need (1,003,914)
        decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
        text = f"{value:,.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:.{digits}g}"


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fmt_percent(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    return f"{100 * fraction:.1f}%" if fraction >= 0.001 or fraction == 0 else "<0.1%"


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    """One block character per value, low to high; on a log scale when the values span more
    than a factor of 10 (an exponential blow-up then reads as a straight ramp). The scale spans
    at least a quarter of the largest value, so a row that barely moves stays flat instead of
    stretching its noise over every block. A missing value is a middle dot."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return "·" * len(values)
    low, high = min(present), max(present)
    logarithmic = low > 0 and high / low > 10
    scale = math.log if logarithmic else (lambda v: v)
    lo, hi = scale(low), scale(high)
    if not logarithmic:
        hi = max(hi, lo + 0.25 * abs(high))
    marks = []
    for v in values:
        if v is None or not math.isfinite(v) or (logarithmic and v <= 0):
            marks.append("·")
        elif hi == lo:
            marks.append(SPARK[len(SPARK) // 2])
        else:
            marks.append(SPARK[round((scale(v) - lo) / (hi - lo) * (len(SPARK) - 1))])
    return "".join(marks)


def saved_selection_line(letter: str, selection: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    """A saved report that holds only a selection: the tensors outside it are not compared."""
    globs = [f"--filter {g!r}" for g in selection[0]] + [f"--exclude {g!r}" for g in selection[1]]
    return (
        f"{letter} is a report saved with {printable(' '.join(globs))}: only the tensors those "
        "select are compared"
    )


def fmt_linf(stats: TensorStats, digits: int = 6) -> str:
    """max|x| over the finite values: with none (an all-NaN tensor) it has no value, "-" as
    null in JSON, not the 0 it is stored as."""
    return fmt_float(stats.linf if stats.finite else None, digits)


def total_label(selected: int, available: int) -> str:
    """What the totals cover: the whole model, or only what --filter/--exclude left."""
    if selected >= available:
        return "Whole model"
    return f"Selected ({selected} of {available} tensors)"


def scoped_total_label(selected: int, available: int, scope: str, note: str = "") -> str:
    """total_label with the kind of tensors the totals cover (and a `note`), in one pair of
    brackets."""
    floating = scope == "floating"
    if selected >= available:
        return f"Whole model ({'floating-point' if floating else 'all'} tensors{note})"
    kind = "floating-point" if floating else "integer ones included"
    return f"Selected ({selected} of {available} tensors, {kind}{note})"


# a saved report holds norms, not values: these have no honest value against one
NOT_COMPUTED = (
    "update, relative update and cosine: cannot be computed against a saved report (no values)"
)


def covers(matched: int, added: int, removed: int, reshaped: int) -> str:
    """Which tensors the whole-model figures cover, where the tensor sets differ."""
    if not (added or removed or reshaped):
        return ""
    parts = [f"{matched} matched"] + [
        f"{n} {what}"
        for n, what in ((added, "added"), (removed, "removed"), (reshaped, "reshaped"))
        if n
    ]
    return f"over {', '.join(parts)} tensors; one missing on a side counts as zeros there"


def outside_totals(result: CompareResult) -> str:
    """Where the status counts (every selected tensor) and the totals' `over ...` line (the
    tensors in scope) disagree: integer tensors added, removed or reshaped without --include-int."""
    s, total = result.summary, result.total
    one_sided = s["added"] + s["removed"] + s["shape_changed"]
    outside = one_sided - (total.added + total.removed + total.reshaped)
    if not outside:
        return ""
    these = "tensor is" if outside == 1 else "tensors are"
    return (
        f" ({outside} added, removed or reshaped {these} integer/bool, outside the totals; "
        "--include-int adds them)"
    )


def status_text(row: TensorDiff) -> str:
    """A compared tensor's status as every output shows it, a reshape or a cast included: a
    dtype change is never hidden behind a column a narrow terminal drops."""
    text = row.status.replace("_", " ")
    if row.a is None or row.b is None:
        return text
    if row.status == "shape_changed":
        text += f" {fmt_shape(row.a.shape)}→{fmt_shape(row.b.shape)}"
    if row.dtype_changed:
        text += f" {row.a.dtype}→{row.b.dtype}"
    return text
