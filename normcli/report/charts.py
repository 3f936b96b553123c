"""Self-contained SVG charts (no network, no JavaScript): lines over checkpoints and bars per
tensor, with a tooltip on every point. Used for .svg and .html pictures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from .text import fmt_float, printable

PALETTE = (
    "#4e79a7",
    "#59a14f",
    "#9c755f",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#bab0ac",
    "#86bcb6",
    "#8cd17d",
    "#a0cbe8",
    "#f1ce63",
)
ALERT = "#e15759"
Series = tuple[str, Sequence[float | None]]


def _log_scale(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and len(positive) == len(values) and max(positive) / min(positive) > 100


def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        return [
            10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        ]
    if high == low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / 4))
    for multiple in (1, 2, 5, 10):
        if (high - low) / (step * multiple) <= 6:
            step *= multiple
            break
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2)]


def line_chart(
    title: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    alert: frozenset[str] = frozenset(),
    width: int = 960,
    height: int = 420,
    log: bool | None = None,
) -> str:
    """One line per series over the checkpoints; series named in `alert` drawn thick and red.
    The y axis is logarithmic if `log`, or (None) when the values span more than a factor of
    100."""
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    legend_width = 260
    left, right, top, bottom = 70, width - legend_width, 36, height - 48
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    if not values:
        parts.append(f'<text x="{left}" y="{top + 20}">no values</text></svg>')
        return "".join(parts)
    if log is None or not all(v > 0 for v in values):
        log = _log_scale(values)
    low, high = min(values), max(values)
    ticks = _ticks(low, high, log)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    transform = math.log10 if log else (lambda v: v)
    span = (transform(high) - transform(low)) or 1.0

    def x(i: int) -> float:
        return left + (right - left) * (i / max(len(x_labels) - 1, 1))

    def y(v: float) -> float:
        return bottom - (bottom - top) * (transform(v) - transform(low)) / span

    for tick in ticks:
        parts.append(
            f'<line x1="{left}" x2="{right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{escape(fmt_float(tick, 3))}</text>"
        )
    every = max(1, math.ceil(len(x_labels) / 12))
    for i, label in enumerate(x_labels):
        if i % every == 0 or i == len(x_labels) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{bottom + 16}" text-anchor="middle">'
                f"{escape(printable(label))}</text>"
            )
    parts.append(
        f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#333"/>'
    )
    if log:
        parts.append(f'<text x="{left}" y="{height - 8}" fill="#666">log scale</text>')
    ordered = sorted(series, key=lambda s: s[0] in alert)  # alerts drawn last, on top
    for n, (name, vs) in enumerate(ordered):
        colour = ALERT if name in alert else PALETTE[n % len(PALETTE)]
        stroke = 3 if name in alert else 1.2
        points = [
            (x(i), y(v), v, i)
            for i, v in enumerate(vs)
            if v is not None and math.isfinite(v) and (v > 0 or not log)
        ]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke}" points="{path}"/>'
            )
        for px, py, v, i in points:
            tip = f"{printable(name)} @ {printable(x_labels[i])}: {fmt_float(v, 8)}"
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{stroke + 1}" '
                f'fill="{colour}"><title>{escape(tip)}</title></circle>'
            )
    parts.append(_legend(ordered, alert, right + 16, top, height - top - 8))
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Sequence[Series], alert: frozenset[str], left: int, top: int, room: int) -> str:
    """Names beside the chart, alerts first; as many as fit, then a count of the rest."""
    ordered = sorted(series, key=lambda s: s[0] not in alert)
    fits = max(1, room // 14)
    parts = []
    for n, (name, _) in enumerate(ordered[:fits]):
        colour = ALERT if name in alert else PALETTE[series.index((name, _)) % len(PALETTE)]
        weight = ' font-weight="bold"' if name in alert else ""
        label = printable(name)
        label = label if len(label) <= 34 else "…" + label[-33:]
        parts.append(
            f'<rect x="{left}" y="{top + n * 14}" width="10" height="10" '
            f'fill="{colour}"/><text x="{left + 14}" y="{top + n * 14 + 9}"{weight}>'
            f"{escape(label)}</text>"
        )
    if len(ordered) > fits:
        parts.append(
            f'<text x="{left}" y="{top + fits * 14 + 9}" fill="#666">'
            f"… and {len(ordered) - fits} more (hover a point)</text>"
        )
    return "".join(parts)


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    alert: frozenset[str] = frozenset(),
    width: int = 960,
) -> str:
    """Horizontal bars, one row per label and one bar per series; log scale for wide ranges."""
    row_height = 6 + 10 * len(series)
    height = 76 + row_height * len(labels)
    label_width = 300
    left, right, top = label_width + 10, width - 90, 58
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v) and v > 0]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    if not values:
        parts.append('<text x="10" y="50">no values</text></svg>')
        return "".join(parts)
    log = _log_scale(values)
    low = min(values) / 2 if log else 0.0
    high = max(values)

    def length(v: float) -> float:
        if log:
            return (
                (right - left)
                * (math.log10(v) - math.log10(low))
                / (math.log10(high) - math.log10(low) or 1)
            )
        return (right - left) * v / (high or 1)

    bottom = top + row_height * len(labels)
    for tick in _ticks(low if log else 0.0, high, log):
        if not (low <= tick <= high) or (log and tick <= 0):
            continue
        x = left + (length(tick) if tick > 0 else 0.0)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{bottom}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{top - 8}" text-anchor="middle" fill="#666">'
            f"{escape(fmt_float(tick, 3))}</text>"
        )
    for s, (name, _) in enumerate(series):
        parts.append(
            f'<rect x="{left + 200 * s}" y="26" width="10" height="10" '
            f'fill="{PALETTE[s % len(PALETTE)]}"/><text x="{left + 14 + 200 * s}" '
            f'y="35">{escape(name)}{" (log scale)" if log and s == 0 else ""}</text>'
        )
    for i, label in enumerate(labels):
        row_top = top + i * row_height
        shown = printable(label)
        shown = shown if len(shown) <= 48 else "…" + shown[-47:]
        weight = ' font-weight="bold" fill="#e15759"' if label in alert else ""
        parts.append(
            f'<text x="{label_width}" y="{row_top + row_height / 2 + 4:.1f}" '
            f'text-anchor="end"{weight}>{escape(shown)}</text>'
        )
        for s, (name, vs) in enumerate(series):
            v = vs[i]
            if v is None or not math.isfinite(v) or v <= 0:
                continue
            colour = ALERT if label in alert else PALETTE[s % len(PALETTE)]
            tip = f"{printable(label)} {name}: {fmt_float(v, 8)}"
            bar = max(length(v), 1)
            parts.append(
                f'<rect x="{left}" y="{row_top + 3 + 10 * s}" '
                f'width="{bar:.1f}" height="8" fill="{colour}">'
                f"<title>{escape(tip)}</title></rect>"
                f'<text x="{left + bar + 4:.1f}" y="{row_top + 10 + 10 * s}" font-size="9" '
                f'fill="#444">{escape(fmt_float(v, 4))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
