"""Norms across a training run: many checkpoints in step order, each tensor (or group) followed
through them, with the update between consecutive checkpoints; every file is read once."""

from __future__ import annotations

import glob
import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import replace

from .errors import InputError, UsageError
from .formats import DCP_METADATA
from .norms import PairStats, TensorStats, merge_all
from .readers import TensorSource
from .readers.remote import is_url
from .readers.sharded import CHECKPOINT_SUFFIXES, INDEX_SUFFIX, SHARD_NAME
from .results import Point, SetChange, TrendResult, TrendRow
from .scan import scan_many_series
from .select import group_name, group_names, natural_key, require_view
from .settings import ReadSettings, Selection
from .sides import Entry, Side, StoredTensor, is_floating, is_optimizer, open_sides
from .update import model_update, one_sided

METRICS = ("l2", "l1", "linf", "rms")
ORDERS = ("name", "mtime", "given")
# automatic grouping keeps about this many rows
AUTO_GROUPS = 64
# a number not glued to letters, or right after a word that names a step
_STEP = re.compile(
    r"(?:(?<![A-Za-z0-9])|(?<=step)|(?<=steps)|(?<=epoch)|(?<=iter)|(?<=ckpt)|(?<=checkpoint))"
    r"(\d+)(?![A-Za-z0-9])",
    re.IGNORECASE,
)


def expand_inputs(arguments: Sequence[str], order: str) -> list[str]:
    """Files, folders of checkpoints and glob patterns, as a list of checkpoints in order."""
    if order not in ORDERS:
        raise UsageError(f"--order must be one of {', '.join(ORDERS)}, not {order!r}")
    paths: list[str] = []
    for argument in arguments:
        if is_url(argument):
            paths.append(argument)  # a remote checkpoint, file or folder, named as it is
        elif any(c in argument for c in "*?[") and not os.path.exists(argument):
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
    # each checkpoint once
    paths = list(dict.fromkeys(p if is_url(p) else os.path.normpath(p) for p in paths))
    if order == "name":
        # by step first, wherever the files lie; then by name
        paths.sort(key=lambda p: (step_of(p) is None, step_of(p) or 0, _path_key(p)))
    elif order == "mtime":
        if any(map(is_url, paths)):
            raise UsageError(
                "--order mtime needs local files; give URLs in order with --order given"
            )
        paths.sort(key=lambda p: (os.stat(p).st_mtime, _path_key(p)))
    if len(paths) < 2:
        raise UsageError(f"a trend needs at least two checkpoints, found {len(paths)}")
    return paths


def _is_one_checkpoint(folder: str) -> bool:
    """A folder holding one sharded checkpoint, rather than a run's checkpoints."""
    entries = os.listdir(folder)
    return (
        DCP_METADATA in entries  # a torch.distributed.checkpoint folder
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


def trend(
    arguments: Sequence[str],
    selection: Selection,
    read: ReadSettings,
    *,
    metric: str = "l2",
    order: str = "name",
    group_by: int | None = None,
) -> TrendResult:
    """Follow every tensor (or group, --group-by N; 0 for every tensor) through the checkpoints."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    require_view(None, (), None, group_by, least=0)  # 0: every tensor
    paths = expand_inputs(arguments, order)
    with open_sides(paths, read, "trend") as opened:
        points = [_point(path, side) for path, side in zip(paths, opened, strict=True)]
        sides = [{e.name: e for e in side.entries} for side in opened]
        names = _names_in_order(sides)
        every = len(names)
        names = [n for n in names if selection.selects(n)]
        selected = len(names)
        kinds = {n: _kind(n, sides) for n in names}
        names = [n for n in names if selection.covers(*kinds[n])]
        set_apart = sum(1 for f, o in kinds.values() if o and not selection.covers(f, o))
        selection.require_some(len(names), every)
        points = _with_set_changes(points, sides, names)
        live = [[_live(side.get(name)) for side in sides] for name in names]
        scanned = scan_many_series(live, read.threads, read.progress, read.dask)
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
                _reshaped(shapes),
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
        tuple(points),
        tuple(rows),
        total,
        metric,
        depth or None,
        automatic,
        selected,
        every,
        optimizer_excluded=set_apart,
    )


def _point(path: str, side: Side) -> Point:
    step = step_of(path)
    label = str(step) if step is not None else os.path.basename(os.path.normpath(path))
    return Point(path, side.info.format, step, label)


def _names_in_order(sides: Sequence[dict[str, Entry]]) -> list[str]:
    names: dict[str, None] = {}
    for side in sides:
        names.update(dict.fromkeys(side))
    return list(names)


def _kind(name: str, sides: Sequence[dict[str, Entry]]) -> tuple[bool, bool]:
    """Whether the tensor is floating point, and whether it is optimizer state."""
    for side in sides:
        entry = side.get(name)
        if entry is not None:
            return is_floating(entry), is_optimizer(entry)
    return False, False


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
        tuple(sum(r.reshaped[t] for r in rows) for t in range(width)),
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


def _reshaped(shapes: Sequence[tuple[int, ...] | None]) -> tuple[int, ...]:
    """1 where the tensor is present in another shape than at the checkpoint before."""
    return (
        0,
        *(
            int(before is not None and after is not None and before != after)
            for before, after in itertools.pairwise(shapes)
        ),
    )


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
