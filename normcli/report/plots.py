"""Pictures of results: .svg and .html drawn here (self-contained), .png through matplotlib (the
optional extra normcli[plot]). Returned as bytes; the command line writes them."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from ..errors import UnsupportedError, UsageError
from ..results import CompareResult, InspectResult, TrendResult
from .charts import ALERT, PALETTE, Series, bar_chart, line_chart
from .text import fmt_float, printable, sparkline, status_text
from .trend_report import change_text, jump_text, max_update_text, row_note, total_name

PLOT_SUFFIXES = (".png", ".svg", ".html")


# --- what each picture shows --------------------------------------------------------------------


def _trend_panels(
    result: TrendResult,
) -> tuple[str, list[str], list[Series], list[Series], frozenset[str]]:
    labels = [p.label for p in result.points]
    norms: list[Series] = [(r.name, r.values(result.metric)) for r in result.rows]
    updates: list[Series] = [(r.name, r.update_l2) for r in result.rows]
    alert = frozenset(r.name for r in result.rows if r.jumped(result.metric) or r.nonfinite)
    title = f"{result.metric.upper() if result.metric != 'linf' else 'Linf'} per " + (
        "group" if result.group_by else "tensor"
    )
    return title, labels, norms, updates, alert


def _inspect_bars(result: InspectResult) -> tuple[list[str], list[Series], frozenset[str]]:
    rows: Sequence[Any] = result.groups if result.groups is not None else result.tensors
    labels: list[str] = [r.name for r in rows]
    series: list[Series] = [
        ("L2", [r.stats.l2 for r in rows]),
        ("Linf", [r.stats.linf for r in rows]),
    ]
    alert = frozenset(r.name for r in rows if r.stats.nan or r.stats.inf)
    return labels, series, alert


def _compare_bars(result: CompareResult) -> tuple[list[str], list[Series], frozenset[str]]:
    rows: Sequence[Any] = result.groups if result.groups is not None else result.tensors
    labels: list[str] = [r.name for r in rows]
    series: list[Series] = [("relative update ‖B−A‖₂/‖A‖₂", [r.rel_l2 for r in rows])]
    # the largest update, and every row holding NaN or Inf on either side
    alert = frozenset(
        [r.name for r in rows[:1] if r.rel_l2]
        + [r.name for r in rows if r.a.nan or r.a.inf or r.b.nan or r.b.inf]
        if result.groups is not None
        else [r.name for r in rows[:1] if r.rel_l2] + [r.name for r in rows if r.nonfinite]
    )
    return labels, series, alert


# --- SVG and HTML --------------------------------------------------------------------------------


def _stack(svgs: Sequence[str]) -> str:
    """Several SVG pictures one above the other, as one SVG."""
    heights = [int(s.split('height="', 1)[1].split('"', 1)[0]) for s in svgs]
    width = max(int(s.split('width="', 1)[1].split('"', 1)[0]) for s in svgs)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{sum(heights)}">']
    offset = 0
    for svg, height in zip(svgs, heights, strict=True):
        parts.append(svg.replace("<svg ", f'<svg y="{offset}" ', 1))
        offset += height
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, svgs: Sequence[str], table: str) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;font-size:12px}"
        "td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
        ".alert{color:#c0392b;font-weight:bold}.spark{font-family:monospace}"
        f"</style></head><body><h2>{escape(title)}</h2>"
        + "".join(f"<div>{svg}</div>" for svg in svgs)
        + table
        + "<p style='color:#888'>normcli; hover a point or a bar for its value.</p></body></html>"
    )


def _html_table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], bool]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        ("<tr class='alert'>" if alert else "<tr>")
        + "".join(f"<td>{escape(cell)}</td>" for cell in cells)
        + "</tr>"
        for cells, alert in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def trend_svg(result: TrendResult) -> list[str]:
    title, labels, norms, updates, alert = _trend_panels(result)
    return [
        line_chart(title, labels, norms, alert),
        line_chart(
            "update ‖θₜ−θₜ₋₁‖₂ from the previous checkpoint", labels, updates, alert, log=True
        ),
    ]


def trend_html(result: TrendResult) -> str:
    rows = []
    for row in (*result.rows, result.total):
        values = row.values(result.metric)
        present = [v for v in values if v is not None]
        alert = row.nonfinite or row.jumped(result.metric)
        rows.append(
            (
                [
                    total_name(result) if row is result.total else printable(row.name),
                    sparkline(values),
                    fmt_float(present[0] if present else None),
                    fmt_float(present[-1] if present else None),
                    change_text(row, result.metric),
                    jump_text(row, result),
                    max_update_text(row),
                    row_note(row, result.metric),
                ],
                alert,
            )
        )
    header = ["name", result.metric, "first", "last", "change", "jump at", "max rel. update", ""]
    table = _html_table(header, rows)
    return _page(f"normcli trend over {len(result.points)} checkpoints", trend_svg(result), table)


# --- PNG through matplotlib ----------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UnsupportedError(
            "PNG pictures need matplotlib: pip install 'normcli[plot]' (or use .svg or .html)"
        ) from e
    return plt


def _png(draw: Callable[[Any], Any]) -> bytes:
    plt = _pyplot()
    figure = draw(plt)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return out.getvalue()


def _lines(
    axes: Any,
    labels: Sequence[str],
    series: Sequence[Series],
    alert: frozenset[str],
    title: str,
    log: bool = False,
) -> None:
    values = [v for _, vs in series for v in vs if v is not None and v > 0 and math.isfinite(v)]
    for n, (name, vs) in enumerate(sorted(series, key=lambda s: s[0] in alert)):
        ys = [v if v is not None and math.isfinite(v) else float("nan") for v in vs]
        hot = name in alert
        axes.plot(
            range(len(labels)),
            ys,
            marker="o" if hot else None,
            markersize=3,
            linewidth=2.6 if hot else 1.0,
            color=ALERT if hot else PALETTE[n % len(PALETTE)],
            label=printable(name),
            zorder=3 if hot else 2,
        )
    if values and (log or max(values) / min(values) > 100):
        axes.set_yscale("log")
    axes.set_title(title, loc="left", fontsize=11)
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, rotation=45 if len(labels) > 12 else 0, fontsize=8)
    axes.grid(alpha=0.3)


def trend_png(result: TrendResult) -> bytes:
    title, labels, norms, updates, alert = _trend_panels(result)

    def draw(plt: Any) -> Any:
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
        _lines(top, labels, norms, alert, title)
        _lines(
            bottom,
            labels,
            updates,
            alert,
            "update ‖θₜ−θₜ₋₁‖₂ from the previous checkpoint",
            log=True,
        )
        bottom.set_xlabel("checkpoint (step)")
        for row in result.rows:
            jump = row.first_jump(result.metric)
            if jump is not None:
                for axes in (top, bottom):
                    axes.axvline(jump[0], color=ALERT, linestyle="--", linewidth=0.8, alpha=0.6)
                top.annotate(
                    f"{printable(row.name)} ×{jump[1]:.3g} at {labels[jump[0]]}",
                    (jump[0], row.values(result.metric)[jump[0]] or 0),
                    textcoords="offset points",
                    xytext=(-8, 10),
                    ha="right",
                    fontsize=8,
                    color=ALERT,
                )
        handles, names = top.get_legend_handles_labels()
        # the alerts first: with 64 groups they are the names to find
        order = sorted(range(len(names)), key=lambda i: names[i] not in alert)
        columns = 1 if len(names) <= 20 else 2 if len(names) <= 44 else 3
        top.legend(
            [handles[i] for i in order],
            [names[i] for i in order],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            ncol=columns,
            frameon=False,
        )
        figure.tight_layout()
        return figure

    return _png(draw)


def _bars_png(
    title: str, labels: Sequence[str], series: Sequence[Series], alert: frozenset[str]
) -> bytes:
    def draw(plt: Any) -> Any:
        height = max(3.0, 0.22 * len(labels) * len(series) + 1.5)
        figure, axes = plt.subplots(figsize=(11, height))
        width = 0.8 / len(series)
        values = [v for _, vs in series for v in vs if v is not None and v > 0]
        for s, (name, vs) in enumerate(series):
            positions = [i + s * width for i in range(len(labels))]
            colours = [ALERT if label in alert else PALETTE[s] for label in labels]
            axes.barh(
                positions,
                [v if v is not None and math.isfinite(v) else 0 for v in vs],
                height=width,
                color=colours,
                label=name,
            )
        axes.set_yticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))])
        axes.set_yticklabels([printable(label) for label in labels], fontsize=7)
        for tick, label in zip(axes.get_yticklabels(), labels, strict=True):
            if label in alert:  # a NaN may move no norm: its name must stand out all the same
                tick.set_color(ALERT)
                tick.set_fontweight("bold")
        axes.invert_yaxis()
        if values and max(values) / min(values) > 100:
            axes.set_xscale("log")
        axes.set_title(title, loc="left", fontsize=11)
        from matplotlib.patches import Patch

        # the legend shows each series' own colour; red marks the rows to look at
        handles = [Patch(color=PALETTE[s], label=name) for s, (name, _) in enumerate(series)]
        if alert:
            handles.append(Patch(color=ALERT, label="largest, or holding NaN/Inf"))
        axes.legend(handles=handles, fontsize=8)
        axes.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        return figure

    return _png(draw)


# --- entry points ---------------------------------------------------------------------------


def _suffix(path: str) -> str:
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in PLOT_SUFFIXES:
        raise UsageError(f"--plot writes {', '.join(PLOT_SUFFIXES)} files, not {suffix or path!r}")
    return suffix


def plot_trend(result: TrendResult, path: str) -> bytes:
    suffix = _suffix(path)
    if suffix == ".png":
        return trend_png(result)
    if suffix == ".svg":
        return _stack(trend_svg(result)).encode()
    return trend_html(result).encode()


def _plot_bars(
    title: str,
    labels: list[str],
    series: list[Series],
    alert: frozenset[str],
    table: str,
    path: str,
) -> bytes:
    suffix = _suffix(path)
    if suffix == ".png":
        return _bars_png(title, labels, series, alert)
    svg = bar_chart(title, labels, series, alert)
    if suffix == ".svg":
        return svg.encode()
    return _page(title, [svg], table).encode()


def plot_inspect(result: InspectResult, path: str) -> bytes:
    labels, series, alert = _inspect_bars(result)
    table = _html_table(
        ["name", "L2", "Linf"],
        [
            (
                [printable(label), fmt_float(series[0][1][i]), fmt_float(series[1][1][i])],
                label in alert,
            )
            for i, label in enumerate(labels)
        ],
    )
    title = f"L2 and Linf per {'group' if result.groups is not None else 'tensor'}: " + _short(
        result.checkpoint.path
    )
    return _plot_bars(title, labels, series, alert, table, path)


def _short(path: str) -> str:
    """A file's name for a title: the folders rarely fit."""
    return printable(os.path.basename(os.path.normpath(path)) or path)


def plot_compare(result: CompareResult, path: str) -> bytes:
    labels, series, alert = _compare_bars(result)
    statuses = [""] * len(labels) if result.groups is not None else map(status_text, result.tensors)
    table = _html_table(
        ["name", "status", "relative update"],
        [
            ([printable(label), status, fmt_float(series[0][1][i])], label in alert)
            for i, (label, status) in enumerate(zip(labels, statuses, strict=True))
        ],
    )
    title = (
        f"Relative update per {'group' if result.groups is not None else 'tensor'}: "
        f"{_short(result.a.path)} → {_short(result.b.path)}"
    )
    return _plot_bars(title, labels, series, alert, table, path)
