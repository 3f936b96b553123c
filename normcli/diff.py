"""Comparing two checkpoints: names matched (never positions), every tensor given a status, and the
update B−A measured element by element; either side may be a saved inspect JSON report."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CorruptFileError, NormcliError, UsageError
from .norms import PairStats, TensorStats, merge_all, merge_pairs, squares_of_l2
from .readers import Checkpoint, TensorSource, open_checkpoint
from .readers.files import load_json, open_regular
from .readers.sharded import is_sharded
from .results import INSPECT_SCHEMA, CheckpointInfo, checkpoint_info, number, stats_dict
from .scan import Progress, scan_all
from .select import group_names, name_selected, natural_key, require_some

COMPARE_SCHEMA = "normcli/compare/v1"
STATUSES = ("changed", "unchanged", "added", "removed", "shape_changed")
SORT_KEYS = ("rel", "diff", "ratio", "cosine", "name", "l2")


# the figures each side of a compared tensor carries (a subset of an inspect row's)
SIDE_FIGURES = ("numel", "l1", "l2", "linf", "rms", "zeros", "nan", "inf")


@dataclass(frozen=True)
class SideFigures:
    """One side of a tensor: its own name in that checkpoint, dtype, shape and statistics."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stats: TensorStats
    shard: str | None = None

    def to_dict(self) -> dict[str, Any]:
        figures = stats_dict(self.stats)
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            **{k: figures[k] for k in SIDE_FIGURES},
            "shard": self.shard,
        }


def _diff_dict(pair: PairStats | None) -> dict[str, Any] | None:
    if pair is None:
        return None
    return {"l1": number(pair.diff.l1), "l2": number(pair.diff.l2), "linf": number(pair.diff.linf)}


@dataclass(frozen=True)
class TensorDiff:
    name: str
    status: str
    dtype_changed: bool
    a: SideFigures | None
    b: SideFigures | None
    # element-wise figures; None unless both sides are checkpoints holding this tensor, same shape
    pair: PairStats | None
    covered: bool

    @property
    def rel_l2(self) -> float | None:
        return self.pair.rel_l2 if self.pair is not None else None

    @property
    def ratio_l2(self) -> float | None:
        if self.a is None or self.b is None or self.status == "shape_changed":
            return None
        return self.b.stats.l2 / self.a.stats.l2 if self.a.stats.sumsq else None

    @property
    def cosine(self) -> float | None:
        return self.pair.cosine if self.pair is not None else None

    @property
    def nonfinite(self) -> bool:
        return any(s is not None and (s.stats.nan or s.stats.inf) for s in (self.a, self.b))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "dtype_changed": self.dtype_changed,
            "in_total": self.covered,
            "a": None if self.a is None else self.a.to_dict(),
            "b": None if self.b is None else self.b.to_dict(),
            "diff": _diff_dict(self.pair),
            "rel_l2": number(self.rel_l2),
            "ratio_l2": number(self.ratio_l2),
            "cosine": number(self.cosine),
        }


@dataclass(frozen=True)
class Aggregate:
    """A group of tensors, or the whole model: each side's own totals, and the update over the
    tensors compared element by element (`matched_a` is ‖A‖ over just those)."""

    name: str
    tensors: int
    a: TensorStats
    b: TensorStats
    pair: PairStats | None

    @property
    def rel_l2(self) -> float | None:
        return self.pair.rel_l2 if self.pair is not None else None

    @property
    def ratio_l2(self) -> float | None:
        return self.b.l2 / self.a.l2 if self.a.sumsq else None

    @property
    def cosine(self) -> float | None:
        return self.pair.cosine if self.pair is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensors": self.tensors,
            "a": stats_dict(self.a),
            "b": stats_dict(self.b),
            "diff": _diff_dict(self.pair),
            "rel_l2": number(self.rel_l2),
            "ratio_l2": number(self.ratio_l2),
            "cosine": number(self.cosine),
        }


@dataclass(frozen=True)
class CompareResult:
    a: CheckpointInfo
    b: CheckpointInfo
    tensors: tuple[TensorDiff, ...]
    groups: tuple[Aggregate, ...] | None
    total: Aggregate
    summary: dict[str, int]
    scope: str
    selected: int
    # every selected tensor holding NaN or Inf on either side, whatever --top hid
    nonfinite_tensors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "selected": self.selected,
            "tensors": [t.to_dict() for t in self.tensors],
            "groups": None if self.groups is None else [g.to_dict() for g in self.groups],
            "total": {**self.total.to_dict(), "scope": self.scope},
            "summary": dict(self.summary),
            "nonfinite_tensors": list(self.nonfinite_tensors),
        }


# --- one side: a checkpoint on disk, or a saved report ------------------------------------------


@dataclass(frozen=True)
class StoredTensor:
    """A tensor known only from a saved inspect report: figures, but no values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stats: TensorStats
    floating: bool


Entry = TensorSource | StoredTensor


def is_report(path: str) -> bool:
    """A saved JSON report rather than a checkpoint (a folder or an index file is a checkpoint)."""
    if is_sharded(path):
        return False
    with open_regular(path) as f:
        head = f.read(64).lstrip()
    return head[:1] in (b"{", b"[")


def load_report(path: str) -> tuple[CheckpointInfo, list[StoredTensor]]:
    """A JSON document written by `normcli inspect -f json`, as the figures of one checkpoint."""
    doc = load_json(path, "report")
    if isinstance(doc, list):
        raise UsageError(
            f"holds {len(doc)} reports; compare needs a report of one checkpoint", path
        )
    if not isinstance(doc, dict) or doc.get("schema") != INSPECT_SCHEMA:
        raise CorruptFileError(
            f"not a normcli inspect report (expected schema {INSPECT_SCHEMA})", path
        )
    try:
        info = doc["checkpoint"]
        if len(doc["tensors"]) < doc["selected"]:
            raise UsageError(
                f"the report lists only {len(doc['tensors'])} of {doc['selected']} tensors "
                "(saved with --top); save a full report to compare against",
                path,
            )
        tensors = [_stored_tensor(t) for t in doc["tensors"]]
        # named by the report itself: the checkpoint it describes may be long gone
        checkpoint = CheckpointInfo(path, "report", _count(info["bytes"]), len(tensors))
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise CorruptFileError(f"report is missing or has a malformed field: {e}", path) from e
    return checkpoint, tensors


def _stored_tensor(t: dict[str, Any]) -> StoredTensor:
    numel, nan, inf = _count(t["numel"]), _count(t["nan"]), _count(t["inf"])
    l1, l2, linf = (_figure(t[key], 0.0) for key in ("l1", "l2", "linf"))
    mean = _figure(t["mean"])
    # null norms: L1 and L2 overflowed float64; Linf, the max of no finite value at all
    sumsq, scale = squares_of_l2(l2) if l2 is not None else (math.inf, 0)
    stats = TensorStats(
        numel=numel,
        l1=l1 if l1 is not None else math.inf,
        sumsq=sumsq,
        scale=scale,
        linf=linf if linf is not None else 0.0,
        total=None if mean is None else mean * (numel - nan - inf),
        zeros=_count(t["zeros"]),
        nan=nan,
        inf=inf,
    )
    return StoredTensor(
        str(t["name"]),
        str(t["dtype"]),
        tuple(_count(d) for d in t["shape"]),
        stats,
        bool(t["in_total"]),
    )


def _count(value: Any) -> int:
    """A count or a dimension as a report stores it: a whole number that fits an int64."""
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValueError(f"{value!r:.40} is not a count")
    return value


def _figure(value: Any, least: float = -math.inf) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not least <= value < math.inf:
        raise ValueError(f"{value!r:.40} is not a finite number of at least {least}")
    return float(value)


# --- names -----------------------------------------------------------------------------------


def parse_rename(rule: str) -> tuple[re.Pattern[str], str]:
    """REGEX=REPLACEMENT, split at the first '=' not escaped as '\\='."""
    parts = re.split(r"(?<!\\)=", rule, maxsplit=1)
    if len(parts) != 2:
        raise UsageError(f"--rename {rule!r}: expected REGEX=REPLACEMENT")
    try:
        return re.compile(parts[0]), parts[1]
    except re.error as e:
        raise UsageError(f"--rename {rule!r}: bad regular expression: {e}") from e


def normalizer(strip_prefix: Sequence[str], rename: Sequence[str]) -> Callable[[str], str]:
    rules = [parse_rename(r) for r in rename]

    def normalize(name: str) -> str:
        for prefix in strip_prefix:
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
                break
        for pattern, replacement in rules:
            try:
                name = pattern.sub(replacement, name)
            except (re.error, IndexError) as e:
                raise UsageError(f"--rename {pattern.pattern!r}: bad replacement: {e}") from e
        return name

    return normalize


def _by_name(
    entries: Sequence[Entry], normalize: Callable[[str], str], where: str
) -> dict[str, Entry]:
    named: dict[str, Entry] = {}
    for entry in entries:
        key = normalize(entry.name)
        if key in named:
            raise UsageError(
                f"tensors {named[key].name!r} and {entry.name!r} both become {key!r} after "
                "--strip-prefix/--rename",
                where,
            )
        named[key] = entry
    return named


# --- the comparison --------------------------------------------------------------------------


def compare(
    a_path: str | os.PathLike[str],
    b_path: str | os.PathLike[str],
    *,
    input_format: str | None = None,
    key: str | None = None,
    include_int: bool = False,
    strip_prefix: Sequence[str] = (),
    rename: Sequence[str] = (),
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> CompareResult:
    """What changed between checkpoint (or saved report) A and B."""
    if sort is not None and sort not in SORT_KEYS:
        raise UsageError(f"cannot sort by {sort!r} (choose from {', '.join(SORT_KEYS)})")
    normalize = normalizer(strip_prefix, rename)
    opened: list[Checkpoint] = []
    try:
        sides: list[tuple[CheckpointInfo, list[Entry]]] = []
        for path in (os.fspath(a_path), os.fspath(b_path)):
            if is_report(path):
                info, stored = load_report(path)
                sides.append((info, list[Entry](stored)))
            else:
                checkpoint = open_checkpoint(path, input_format, key)
                opened.append(checkpoint)
                sides.append((checkpoint_info(checkpoint), list[Entry](checkpoint.tensors)))
        (a_info, a_entries), (b_info, b_entries) = sides
        a_named = _by_name(a_entries, normalize, a_info.path)
        b_named = _by_name(b_entries, normalize, b_info.path)
        every = _union_order(a_named, b_named)
        names = [n for n in every if name_selected(n, filter, exclude)]
        require_some(len(names), len(every), filter, exclude)
        try:
            rows = _diff_rows(names, a_named, b_named, include_int, threads, progress)
        except NormcliError as e:  # a pair of tensors that cannot be compared: name both files
            e.path = e.path or f"{a_info.path} and {b_info.path}"
            raise
    finally:
        for checkpoint in opened:
            checkpoint.close()
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
        a=a_info,
        b=b_info,
        tensors=tuple(_sort(rows, sort))[: top if group_by is None else None],
        groups=groups,
        total=_aggregate("total", covered),
        summary=summary,
        scope="all" if include_int else "floating",
        selected=len(rows),
        nonfinite_tensors=tuple(r.name for r in rows if r.nonfinite),
    )


def _union_order(a: dict[str, Entry], b: dict[str, Entry]) -> list[str]:
    return list(a) + [n for n in b if n not in a]


def _is_floating(entry: Entry) -> bool:
    return entry.floating if isinstance(entry, StoredTensor) else entry.dtype.is_floating


def _dtype_name(entry: Entry) -> str:
    return entry.dtype if isinstance(entry, StoredTensor) else entry.dtype.name


def _diff_rows(
    names: Sequence[str],
    a_named: dict[str, Entry],
    b_named: dict[str, Entry],
    include_int: bool,
    threads: int | None,
    progress: Progress | None,
) -> list[TensorDiff]:
    singles: list[TensorSource] = []
    pairs: list[tuple[TensorSource, TensorSource]] = []
    for name in names:
        a, b = a_named.get(name), b_named.get(name)
        if isinstance(a, TensorSource) and isinstance(b, TensorSource) and a.shape == b.shape:
            pairs.append((a, b))
        else:
            singles.extend(e for e in (a, b) if isinstance(e, TensorSource))
    single_stats, pair_stats = scan_all(singles, pairs, threads, progress)
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
        return SideFigures(entry.name, _dtype_name(entry), entry.shape, stats, shard)

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
                covered=include_int or any(_is_floating(e) for e in (a, b) if e is not None),
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
    if pair is not None:
        return "unchanged" if pair.identical else "changed"
    # against a saved report only the figures it stores can be compared
    return "unchanged" if _stored_figures(a.stats) == _stored_figures(b.stats) else "changed"


def _stored_figures(stats: TensorStats) -> tuple[Any, ...]:
    figures = stats_dict(stats)
    return tuple(figures[k] for k in ("numel", "l1", "l2", "linf", "zeros", "nan", "inf"))


def _aggregate(name: str, rows: Sequence[TensorDiff]) -> Aggregate:
    pairs = [r.pair for r in rows if r.pair is not None]
    return Aggregate(
        name=name,
        tensors=len(rows),
        a=merge_all([r.a.stats for r in rows if r.a is not None]),
        b=merge_all([r.b.stats for r in rows if r.b is not None]),
        pair=merge_pairs(pairs) if pairs else None,
    )


def _sort_value(sort: str) -> Callable[[TensorDiff | Aggregate], float | None]:
    values: dict[str, Callable[[TensorDiff | Aggregate], float | None]] = {
        "rel": lambda r: r.rel_l2,
        "diff": lambda r: r.pair.diff.l2 if r.pair is not None else None,
        "ratio": _ratio_distance,
        # least similar first
        "cosine": lambda r: None if r.cosine is None else -r.cosine,
        "l2": lambda r: _b_l2(r),
    }
    return values[sort]


def _ratio_distance(row: TensorDiff | Aggregate) -> float | None:
    """How far ‖B‖₂/‖A‖₂ is from 1, either way; a zero A that became non-zero is infinitely far."""
    if row.ratio_l2 is not None:
        return abs(math.log(row.ratio_l2 or 1e-300))
    a, b = (
        (row.a, row.b)
        if isinstance(row, Aggregate)
        else (row.a.stats if row.a else None, row.b.stats if row.b else None)
    )
    reshaped = isinstance(row, TensorDiff) and row.status == "shape_changed"
    if a is not None and b is not None and not a.sumsq and b.sumsq and not reshaped:
        return math.inf
    return None


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
