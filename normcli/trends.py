"""Norms across a training run: many checkpoints in step order, each tensor (or group) followed
through them, with the update between consecutive checkpoints; every file is read once."""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .diff import StoredTensor, is_report, load_report
from .errors import InputError, UsageError
from .norms import PairStats, TensorStats, merge_all
from .readers import Checkpoint, TensorSource, open_checkpoint
from .readers.sharded import CHECKPOINT_SUFFIXES, INDEX_SUFFIX, SHARD_NAME
from .results import number
from .scan import Progress, scan_many_series
from .select import group_name, group_names, name_selected, natural_key, require_some
from .update import model_update, one_sided

TREND_SCHEMA = "normcli/trend/v2"
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
class SetChange:
    """How the selected tensors of a checkpoint differ from the previous checkpoint's."""

    added: int
    removed: int
    reshaped: int

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.reshaped)

    def to_dict(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "reshaped": self.reshaped}


@dataclass(frozen=True)
class Point:
    """One checkpoint of the run."""

    path: str
    format: str
    step: int | None
    label: str
    # against the previous checkpoint; None at the first
    change: SetChange | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "step": self.step,
            "label": self.label,
            "tensor_set": None if self.change is None else self.change.to_dict(),
        }


@dataclass(frozen=True)
class TrendRow:
    """A tensor or a group: its statistics at every checkpoint (None where absent) and the
    update from the previous checkpoint (None at the first; for a tensor, where it is absent
    on a side or shapes differ; for a group, only where a side is a saved report, as a group's
    members missing on a side count as zeros there)."""

    name: str
    tensors: int
    stats: tuple[TensorStats | None, ...]
    updates: tuple[PairStats | None, ...]
    # the row's part of its group's update at each step (a group's own update)
    moves: tuple[PairStats | None, ...] = ()
    # how many of its tensors each checkpoint holds
    present: tuple[int, ...] = ()

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

    def set_changed(self, t: int) -> bool:
        """Whether checkpoint t holds a different number of the row's tensors than t-1."""
        return 0 < t < len(self.present) and self.present[t] != self.present[t - 1]

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
            "present": list(self.present),
        }


@dataclass(frozen=True)
class TrendResult:
    points: tuple[Point, ...]
    rows: tuple[TrendRow, ...]
    total: TrendRow
    metric: str
    group_by: int | None
    grouped_automatically: bool
    # tensor names that --filter/--exclude kept, of all the checkpoints hold
    selected: int = 0
    available: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TREND_SCHEMA,
            "metric": self.metric,
            "group_by": self.group_by,
            "selected": self.selected,
            "available": self.available,
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
        paths.sort(key=lambda p: (step_of(p) is None, step_of(p) or 0, _path_key(p)))
    elif order == "mtime":
        paths.sort(key=lambda p: (os.stat(p).st_mtime, _path_key(p)))
    if len(paths) < 2:
        raise UsageError(f"a trend needs at least two checkpoints, found {len(paths)}")
    return paths


def _is_one_checkpoint(folder: str) -> bool:
    """A folder holding one sharded checkpoint, rather than a run's checkpoints."""
    entries = os.listdir(folder)
    return any(e.endswith(INDEX_SUFFIX) for e in entries) or any(
        SHARD_NAME.match(e) for e in entries
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
    for name in (_stem(parts[-1]), *(parts[-2:-1])):
        found = _STEP.findall(name)
        if found:
            return int(found[-1])
    return None


def _stem(name: str) -> str:
    for suffix in (*CHECKPOINT_SUFFIXES, ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _path_key(path: str) -> tuple[tuple[tuple[int, int | str], ...], ...]:
    """Natural order folder by folder, names without their suffix: `x` before `x-step` (a
    separator or a suffix would otherwise decide, '-' sorting before '.' and '/')."""
    *folders, name = os.path.normpath(path).split(os.sep)
    return tuple(natural_key(part) for part in (*folders, _stem(name)))


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
            sides.append({e.name: e for e in entries})
            points.append(Point(path, fmt, step, label))
        names = _names_in_order(sides)
        every = len(names)
        names = [n for n in names if name_selected(n, filter, exclude)]
        selected = len(names)
        names = [n for n in names if include_int or _floating(n, sides)]
        require_some(len(names), every, filter, exclude)
        points = _with_set_changes(points, sides, names)
        live = [[_live(side.get(name)) for side in sides] for name in names]
        scanned = scan_many_series(live, threads, progress)
    finally:
        for checkpoint in opened:
            checkpoint.close()
    rows = []
    for name, (stats, updates) in zip(names, scanned, strict=True):
        merged = [_stored_stats(side.get(name)) or s for side, s in zip(sides, stats, strict=True)]
        shapes = [_shape(side.get(name)) for side in sides]
        rows.append(
            TrendRow(
                name,
                1,
                tuple(merged),
                tuple(updates),
                _moves(merged, updates, shapes),
                tuple(int(s is not None) for s in shapes),
            )
        )
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
    return TrendResult(
        tuple(points), tuple(rows), total, metric, depth or None, automatic, selected, every
    )


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
    """Members merged checkpoint by checkpoint as one vector: L2 the global norm, the update
    over every member, one missing on a side counting as zeros there."""
    width = len(rows[0].stats) if rows else 0
    stats: list[TensorStats | None] = []
    updates: list[PairStats | None] = [None]
    for t in range(width):
        present = [r.stats[t] for r in rows if r.stats[t] is not None]
        stats.append(merge_all([s for s in present if s is not None]) if present else None)
        if t:
            updates.append(model_update([r.moves[t] for r in rows]))
    return TrendRow(
        name,
        sum(r.tensors for r in rows),
        tuple(stats),
        tuple(updates[:width]),
        tuple(updates[:width]),
        tuple(sum(r.present[t] for r in rows) for t in range(width)),
    )


def _moves(
    stats: Sequence[TensorStats | None],
    updates: Sequence[PairStats | None],
    shapes: Sequence[tuple[int, ...] | None],
) -> tuple[PairStats | None, ...]:
    """A tensor's part of the model's update at each step: its own update where it kept its
    shape, else its values against the zeros of the side that lacks them."""
    moves: list[PairStats | None] = [None]
    for t in range(1, len(stats)):
        kept = shapes[t - 1] is not None and shapes[t - 1] == shapes[t]
        moves.append(updates[t] if kept else one_sided(stats[t - 1], stats[t]))
    return tuple(moves)


def _shape(entry: Entry | None) -> tuple[int, ...] | None:
    return None if entry is None else entry.shape


def _with_set_changes(
    points: Sequence[Point], sides: Sequence[dict[str, Entry]], names: Sequence[str]
) -> list[Point]:
    """Each checkpoint told how its selected tensors differ from the previous one's."""
    changed = [points[0]]
    for t in range(1, len(points)):
        before = [_shape(sides[t - 1].get(n)) for n in names]
        after = [_shape(sides[t].get(n)) for n in names]
        pairs = list(zip(before, after, strict=True))
        change = SetChange(
            added=sum(b is None and a is not None for b, a in pairs),
            removed=sum(b is not None and a is None for b, a in pairs),
            reshaped=sum(b is not None and a is not None and a != b for b, a in pairs),
        )
        changed.append(replace(points[t], change=change))
    return changed
