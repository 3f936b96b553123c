"""Norms across a training run: many checkpoints in step order, each tensor (or group) followed
through them, with the update between consecutive checkpoints; every file is read once."""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .diff import StoredTensor, is_report, load_report
from .errors import InputError, UsageError
from .norms import PairStats, TensorStats, merge_all, merge_pairs
from .readers import Checkpoint, TensorSource, open_checkpoint
from .readers.dcp_metadata import METADATA
from .readers.sharded import CHECKPOINT_SUFFIXES, INDEX_SUFFIX, SHARD_NAME
from .results import number
from .scan import Progress, scan_many_series
from .select import group_name, group_names, name_selected, natural_key, require_some

TREND_SCHEMA = "normcli/trend/v1"
METRICS = ("l2", "l1", "linf", "rms")
ORDERS = ("name", "mtime", "given")
# a step whose metric moved by more than this factor (either way) makes its row stand out
JUMP_FACTOR = 1.5
# automatic grouping keeps about this many rows
AUTO_GROUPS = 64
# a number not glued to letters, or right after a word that names a step
_STEP = re.compile(
    r"(?:(?<![A-Za-z0-9])|(?<=step)|(?<=steps)|(?<=epoch)|(?<=iter)|(?<=ckpt)|(?<=checkpoint))"
    r"(\d+)(?![A-Za-z0-9])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Point:
    """One checkpoint of the run."""

    path: str
    format: str
    step: int | None
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "step": self.step, "label": self.label}


@dataclass(frozen=True)
class TrendRow:
    """A tensor or a group: its statistics at every checkpoint (None where absent) and the
    update from the previous checkpoint (None at the first, or where shapes differ)."""

    name: str
    tensors: int
    stats: tuple[TensorStats | None, ...]
    updates: tuple[PairStats | None, ...]

    def values(self, metric: str) -> list[float | None]:
        return [_metric(s, metric) for s in self.stats]

    @property
    def update_l2(self) -> list[float | None]:
        return [u.diff.l2 if u is not None else None for u in self.updates]

    @property
    def rel_update(self) -> list[float | None]:
        return [u.rel_l2 if u is not None else None for u in self.updates]

    @property
    def nonfinite(self) -> bool:
        return any(s is not None and (s.nan or s.inf) for s in self.stats)

    def largest_jump(self, metric: str) -> tuple[int, float] | None:
        """(index t, factor v_t / v_(t-1)) of the biggest move between neighbours, either way."""
        values = self.values(metric)
        best: tuple[int, float] | None = None
        for t in range(1, len(values)):
            before, after = values[t - 1], values[t]
            if before is None or after is None or before <= 0 or after <= 0:
                continue
            factor = after / before
            if best is None or abs(math.log(factor)) > abs(math.log(best[1])):
                best = (t, factor)
        return best

    def first_jump(self, metric: str) -> tuple[int, float] | None:
        """The first move by JUMP_FACTOR or more: where a blow-up (or a collapse) began."""
        values = self.values(metric)
        for t in range(1, len(values)):
            before, after = values[t - 1], values[t]
            if before == 0 and after:
                return t, math.inf  # from all zeros to something: no factor is large enough
            if before and after and before > 0 and after > 0:
                factor = after / before
                if abs(math.log(factor)) >= math.log(JUMP_FACTOR):
                    return t, factor
        return None

    def jumped(self, metric: str) -> bool:
        return self.first_jump(metric) is not None

    def to_dict(self, metric: str, points: Sequence[Point]) -> dict[str, Any]:
        values = self.values(metric)
        present = [v for v in values if v is not None]
        first, last = (present[0], present[-1]) if present else (None, None)

        def at(jump: tuple[int, float] | None) -> dict[str, Any] | None:
            if jump is None:
                return None
            point = points[jump[0]]
            return {"step": point.step, "label": point.label, "factor": number(jump[1])}

        return {
            "name": self.name,
            "tensors": self.tensors,
            "values": [number(v) for v in values],
            "nan": [s.nan if s is not None else None for s in self.stats],
            "inf": [s.inf if s is not None else None for s in self.stats],
            "update_l2": [number(v) for v in self.update_l2],
            "rel_update": [number(v) for v in self.rel_update],
            "first": number(first),
            "last": number(last),
            "change": number(last / first) if first and last is not None else None,
            "largest_jump": at(self.largest_jump(metric)),
            "first_jump": at(self.first_jump(metric)),
            "jumped": self.jumped(metric),
            "nonfinite": self.nonfinite,
        }


@dataclass(frozen=True)
class TrendResult:
    points: tuple[Point, ...]
    rows: tuple[TrendRow, ...]
    total: TrendRow
    metric: str
    group_by: int | None
    grouped_automatically: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TREND_SCHEMA,
            "metric": self.metric,
            "group_by": self.group_by,
            "checkpoints": [p.to_dict() for p in self.points],
            "rows": [r.to_dict(self.metric, self.points) for r in self.rows],
            "total": self.total.to_dict(self.metric, self.points),
        }


def _metric(stats: TensorStats | None, metric: str) -> float | None:
    if stats is None or not stats.numel:
        return None
    if metric == "rms":
        return stats.rms
    value: float = getattr(stats, metric)
    return value if stats.finite else None


# --- which checkpoints, in which order ----------------------------------------------------------


def expand_inputs(arguments: Sequence[str], order: str) -> list[str]:
    """Files, folders of checkpoints and glob patterns, as a list of checkpoints in order."""
    if order not in ORDERS:
        raise UsageError(f"--order must be one of {', '.join(ORDERS)}, not {order!r}")
    paths: list[str] = []
    for argument in arguments:
        if any(c in argument for c in "*?[") and not os.path.exists(argument):
            matches = glob.glob(argument)
            if not matches:
                raise InputError("the pattern matches no file", argument)
            paths += matches
        elif os.path.isdir(argument) and not _is_one_checkpoint(argument):
            paths += [
                os.path.join(argument, e)
                for e in os.listdir(argument)
                if _is_run_entry(os.path.join(argument, e))
            ]
        elif not os.path.exists(argument):
            raise InputError("no such file or folder", argument)
        else:
            paths.append(argument)
    paths = list(dict.fromkeys(os.path.normpath(p) for p in paths))  # each checkpoint once
    if order == "name":
        # by step first, wherever the files lie; then by name
        paths.sort(key=lambda p: (step_of(p) is None, step_of(p) or 0, natural_key(p)))
    elif order == "mtime":
        paths.sort(key=lambda p: (os.stat(p).st_mtime, natural_key(p)))
    if len(paths) < 2:
        raise UsageError(f"a trend needs at least two checkpoints, found {len(paths)}")
    return paths


def _is_one_checkpoint(folder: str) -> bool:
    """A folder holding one sharded checkpoint, rather than a run's checkpoints."""
    entries = os.listdir(folder)
    return (
        METADATA in entries  # a torch.distributed.checkpoint folder
        or any(e.endswith(INDEX_SUFFIX) for e in entries)
        or any(SHARD_NAME.match(e) for e in entries)
    )


def _is_run_entry(path: str) -> bool:
    name = os.path.basename(path)
    if name.startswith("."):
        return False
    if os.path.isdir(path):
        return True
    return name.lower().endswith((*CHECKPOINT_SUFFIXES, ".json")) and not name.endswith(
        INDEX_SUFFIX
    )


def step_of(path: str) -> int | None:
    """The training step a checkpoint's name carries: the last number standing on its own in
    the file name (step-100, ckpt_2000, epoch3), else in its folder's name
    (checkpoint-500/model.safetensors). Digits inside a word (bf16, fp8) are no step."""
    parts = os.path.normpath(path).split(os.sep)
    for name in (parts[-1], *(parts[-2:-1])):
        for suffix in (*CHECKPOINT_SUFFIXES, ".json"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        found = _STEP.findall(name)
        if found:
            return int(found[-1])
    return None


# --- the trend ---------------------------------------------------------------------------------


Entry = TensorSource | StoredTensor


def trend(
    arguments: Sequence[str],
    *,
    metric: str = "l2",
    order: str = "name",
    group_by: int | None = None,
    include_int: bool = False,
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    input_format: str | None = None,
    key: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> TrendResult:
    """Follow every tensor (or group, --group-by N; 0 for every tensor) through the checkpoints."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    paths = expand_inputs(arguments, order)
    opened: list[Checkpoint] = []
    points: list[Point] = []
    sides: list[dict[str, Entry]] = []
    try:
        for path in paths:
            if is_report(path):
                _, stored = load_report(path)
                entries: list[Entry] = list(stored)
                fmt = "report"
            else:
                checkpoint = open_checkpoint(path, input_format, key)
                opened.append(checkpoint)
                entries, fmt = list(checkpoint.tensors), checkpoint.format
            step = step_of(path)
            label = str(step) if step is not None else os.path.basename(os.path.normpath(path))
            points.append(Point(path, fmt, step, label))
            sides.append({e.name: e for e in entries})
        names = _names_in_order(sides)
        every = len(names)
        names = [n for n in names if name_selected(n, filter, exclude)]
        names = [n for n in names if include_int or _floating(n, sides)]
        require_some(len(names), every, filter, exclude)
        live = [[_live(side.get(name)) for side in sides] for name in names]
        scanned = scan_many_series(live, threads, progress)
    finally:
        for checkpoint in opened:
            checkpoint.close()
    rows = []
    for name, (stats, updates) in zip(names, scanned, strict=True):
        merged = [_stored_stats(side.get(name)) or s for side, s in zip(sides, stats, strict=True)]
        rows.append(TrendRow(name, 1, tuple(merged), tuple(updates)))
    automatic = group_by is None and len(rows) > AUTO_GROUPS
    depth = _auto_depth(names) if automatic else group_by
    if depth:
        rows = [
            _group(group, [rows[i] for i in members])
            for group, members in group_names(names, depth).items()
        ]
    else:
        rows.sort(key=lambda r: natural_key(r.name))
    total = _group("total", rows)
    return TrendResult(tuple(points), tuple(rows), total, metric, depth or None, automatic)


def _names_in_order(sides: Sequence[dict[str, Entry]]) -> list[str]:
    names: dict[str, None] = {}
    for side in sides:
        names.update(dict.fromkeys(side))
    return list(names)


def _floating(name: str, sides: Sequence[dict[str, Entry]]) -> bool:
    for side in sides:
        entry = side.get(name)
        if isinstance(entry, StoredTensor):
            return entry.floating
        if entry is not None:
            return entry.dtype.is_floating
    return False


def _live(entry: Entry | None) -> TensorSource | None:
    return entry if isinstance(entry, TensorSource) else None


def _stored_stats(entry: Entry | None) -> TensorStats | None:
    return entry.stats if isinstance(entry, StoredTensor) else None


def _auto_depth(names: Sequence[str]) -> int | None:
    """The finest grouping by leading name parts that keeps at most AUTO_GROUPS rows."""
    best = None
    for depth in range(1, 9):
        count = len({group_name(n, depth) for n in names})
        if count > AUTO_GROUPS:
            break
        best = depth
        if count == len(names):
            break
    return best


def _group(name: str, rows: Sequence[TrendRow]) -> TrendRow:
    """Members merged checkpoint by checkpoint: L2 the global norm, updates likewise."""
    width = len(rows[0].stats) if rows else 0
    stats: list[TensorStats | None] = []
    updates: list[PairStats | None] = []
    for t in range(width):
        present = [r.stats[t] for r in rows if r.stats[t] is not None]
        stats.append(merge_all([s for s in present if s is not None]) if present else None)
        moved = [r.updates[t] for r in rows if r.updates[t] is not None]
        updates.append(merge_pairs([u for u in moved if u is not None]) if moved else None)
    return TrendRow(name, sum(r.tensors for r in rows), tuple(stats), tuple(updates))
