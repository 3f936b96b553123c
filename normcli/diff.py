"""Comparing two checkpoints: names matched (never positions), every tensor given a status, and the
update B−A measured element by element; either side may be a saved inspect JSON report."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from .errors import NormcliError, UsageError
from .norms import PairStats, TensorStats, merge_all
from .readers import TensorSource
from .results import (
    ONE_SIDED,
    STATUSES,
    Aggregate,
    CompareResult,
    SideFigures,
    TensorDiff,
    stats_dict,
)
from .scan import scan_all
from .select import group_names, name_selected, natural_key, require_view
from .settings import ReadSettings, Selection
from .sides import (
    Entry,
    Side,
    StoredTensor,
    by_name,
    dtype_name,
    is_floating,
    is_optimizer,
    open_sides,
)
from .update import model_update, one_sided

SORT_KEYS = ("rel", "diff", "ratio", "cosine", "name", "l2")
# figures of B−A, which need the values of both sides
ELEMENT_WISE_SORTS = ("rel", "diff", "cosine")


def compare(
    a_path: str | os.PathLike[str],
    b_path: str | os.PathLike[str],
    selection: Selection,
    read: ReadSettings,
    *,
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    command: str = "compare",
) -> CompareResult:
    """What changed between checkpoint (or saved report) A and B; `command` is the one running,
    as its messages name it."""
    require_view(sort, SORT_KEYS, top, group_by)
    normalize = selection.normalizer()
    with open_sides([a_path, b_path], read, command) as (a_side, b_side):
        _require_sortable(sort, (a_side, b_side))
        a_named = by_name(a_side.entries, normalize, a_side.info.path)
        b_named = by_name(b_side.entries, normalize, b_side.info.path)
        every = _union_order(a_named, b_named)
        # a report saved with --filter/--exclude knows nothing of the other tensors: they are
        # not compared, rather than all 'added' or 'removed'
        saved = [s.info.selection for s in (a_side, b_side) if any(s.info.selection)]
        names = [
            n
            for n in every
            if selection.selects(n) and all(name_selected(n, *globs) for globs in saved)
        ]
        selection.require_some(len(names), len(every))
        try:
            rows = _diff_rows(names, a_named, b_named, selection, read)
        except NormcliError as e:  # a pair of tensors that cannot be compared: name both files
            e.path = e.path or f"{a_side.info.path} and {b_side.info.path}"
            raise
        optimizer = {
            n for n in names for e in (a_named.get(n), b_named.get(n)) if e and is_optimizer(e)
        }
    covered = [r for r in rows if r.covered]
    summary = {status: sum(r.status == status for r in rows) for status in STATUSES}
    summary["dtype_changed"] = sum(r.dtype_changed for r in rows)
    groups = None
    if group_by is not None:
        groups = tuple(
            _sort(
                [
                    _aggregate(g, [covered[i] for i in idx])
                    for g, idx in group_names((r.name for r in covered), group_by).items()
                ],
                sort,
            )
        )[:top]
    return CompareResult(
        a=a_side.info,
        b=b_side.info,
        tensors=tuple(_sort(rows, sort))[: top if group_by is None else None],
        groups=groups,
        total=_aggregate("total", covered),
        summary=summary,
        scope=selection.scope,
        selected=len(rows),
        available=len(every),
        nonfinite_tensors=tuple(r.name for r in rows if r.nonfinite),
        optimizer_excluded=sum(1 for r in rows if r.name in optimizer and not r.covered),
    )


def _union_order(a: dict[str, Entry], b: dict[str, Entry]) -> list[str]:
    return list(a) + [n for n in b if n not in a]


def _diff_rows(
    names: Sequence[str],
    a_named: dict[str, Entry],
    b_named: dict[str, Entry],
    selection: Selection,
    read: ReadSettings,
) -> list[TensorDiff]:
    singles: list[TensorSource] = []
    pairs: list[tuple[TensorSource, TensorSource]] = []
    for name in names:
        a, b = a_named.get(name), b_named.get(name)
        if isinstance(a, TensorSource) and isinstance(b, TensorSource) and a.shape == b.shape:
            pairs.append((a, b))
        else:
            singles.extend(e for e in (a, b) if isinstance(e, TensorSource))
    single_stats, pair_stats = scan_all(singles, pairs, read.threads, read.progress, dask=read.dask)
    scanned = {id(s): st for s, st in zip(singles, single_stats, strict=True)}
    paired: dict[int, PairStats] = {id(p[0]): st for p, st in zip(pairs, pair_stats, strict=True)}

    def figures(entry: Entry | None, pair: PairStats | None, side: str) -> SideFigures | None:
        if entry is None:
            return None
        if isinstance(entry, StoredTensor):
            stats = entry.stats
        elif pair is not None:
            stats = pair.a if side == "a" else pair.b
        else:
            stats = scanned[id(entry)]
        shard = entry.shard if isinstance(entry, TensorSource) else None
        return SideFigures(entry.name, dtype_name(entry), entry.shape, stats, shard)

    rows = []
    for name in names:
        a, b = a_named.get(name), b_named.get(name)
        pair = paired.get(id(a)) if a is not None else None
        a_fig, b_fig = figures(a, pair, "a"), figures(b, pair, "b")
        rows.append(
            TensorDiff(
                name=name,
                status=_status(a_fig, b_fig, pair),
                dtype_changed=a_fig is not None
                and b_fig is not None
                and a_fig.dtype != b_fig.dtype,
                a=a_fig,
                b=b_fig,
                pair=pair,
                covered=selection.covers(
                    any(is_floating(e) for e in (a, b) if e is not None),
                    any(is_optimizer(e) for e in (a, b) if e is not None),
                ),
            )
        )
    return rows


def _status(a: SideFigures | None, b: SideFigures | None, pair: PairStats | None) -> str:
    if a is None:
        return "added"
    if b is None:
        return "removed"
    if a.shape != b.shape:
        return "shape_changed"
    if a.dtype != b.dtype:
        return "changed"  # the stored bits differ even where every value survived the cast
    if pair is not None:
        return "unchanged" if pair.identical else "changed"
    # against a saved report only the figures it stores can be compared
    return "unchanged" if _stored_figures(a.stats) == _stored_figures(b.stats) else "changed"


def _stored_figures(stats: TensorStats) -> tuple[Any, ...]:
    figures = stats_dict(stats)
    return tuple(figures[k] for k in ("numel", "l1", "l2", "linf", "zeros", "nan", "inf"))


def _aggregate(name: str, rows: Sequence[TensorDiff]) -> Aggregate:
    """The rows as one vector: the update over every tensor, never over a subset of them."""
    count = {status: sum(r.status == status for r in rows) for status in ONE_SIDED}
    return Aggregate(
        name=name,
        tensors=len(rows),
        a=merge_all([r.a.stats for r in rows if r.a is not None]),
        b=merge_all([r.b.stats for r in rows if r.b is not None]),
        pair=model_update([_update_part(r) for r in rows]),
        matched=len(rows) - sum(count.values()),
        added=count["added"],
        removed=count["removed"],
        reshaped=count["shape_changed"],
    )


def _update_part(row: TensorDiff) -> PairStats | None:
    """A tensor's part of the model's update: element by element where matched, else its values
    against the zeros of the side that lacks them; None where values are known on neither
    basis (a side that is a saved report)."""
    if row.pair is not None or row.status not in ONE_SIDED:
        return row.pair
    return one_sided(*(None if s is None else s.stats for s in (row.a, row.b)))


def _require_sortable(sort: str | None, sides: Sequence[Side]) -> None:
    """Sorting by a figure of B−A against a saved report would keep file order unannounced."""
    reports = [s.info.path for s in sides if s.info.format == "report"]
    if sort in ELEMENT_WISE_SORTS and reports:
        raise UsageError(
            f"--sort {sort} needs the values of both sides, and a saved report holds norms, not "
            "values (--sort ratio, l2 or name work against it)",
            reports[0],
        )


def _sort_value(sort: str) -> Callable[[TensorDiff | Aggregate], float | None]:
    values: dict[str, Callable[[TensorDiff | Aggregate], float | None]] = {
        "rel": lambda r: r.rel_l2,
        "diff": lambda r: r.pair.diff.l2 if r.pair is not None else None,
        "ratio": _ratio_distance,
        # least similar first: 1 − cosine is 0 where nothing turned, so orthogonal (cosine 0)
        # counts as moved rather than as unchanged
        "cosine": lambda r: None if r.cosine is None else 1 - r.cosine,
        "l2": lambda r: _b_l2(r),
    }
    return values[sort]


def _ratio_distance(row: TensorDiff | Aggregate) -> float | None:
    """How far ‖B‖₂/‖A‖₂ is from 1, either way; a zero A that became non-zero is infinitely far."""
    ratio = row.ratio_l2
    return None if ratio is None else abs(math.log(ratio or 1e-300))


def _b_l2(row: TensorDiff | Aggregate) -> float | None:
    if isinstance(row, Aggregate):
        return row.b.l2
    return row.b.stats.l2 if row.b is not None else None


def _sort(rows: Sequence[Any], sort: str | None) -> list[Any]:
    """Largest first for figures; rows without the figure (added, removed, reshaped) follow the
    ones that moved and come before the ones that did not."""
    if sort == "name":
        return sorted(rows, key=lambda r: natural_key(r.name))
    if sort is None:
        # the relative update where values were compared; against a saved report, the ratio
        sort = "rel" if any(r.pair is not None for r in rows) else "ratio"
    value = _sort_value(sort)
    scored = [(value(r), r) for r in rows]
    moved = sorted(((v, r) for v, r in scored if v), key=lambda vr: vr[0], reverse=True)
    rest = [r for v, r in scored if not v]
    # a NaN or Inf that appeared moves no norm (they cover finite values) but must be seen
    alarming = [r for r in rest if _nonfinite(r)]
    missing = [r for v, r in scored if v is None and not _nonfinite(r)]
    still = [r for v, r in scored if v is not None and not v and not _nonfinite(r)]
    return [r for _, r in moved] + alarming + missing + still


def _nonfinite(row: TensorDiff | Aggregate) -> bool:
    if isinstance(row, TensorDiff):
        return row.nonfinite
    return bool(row.a.nan or row.a.inf or row.b.nan or row.b.inf)
