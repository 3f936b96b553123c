"""The Python API: inspect, compare, check and trend with keyword options, and in-memory arrays."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import numpy as np

from .dtypes import from_numpy
from .errors import UnsupportedError, UsageError
from .norms import TensorStats, merge_all
from .readers import Checkpoint, TensorSource
from .readers.base import OptimizerSlot
from .results import (
    CheckResult,
    CompareResult,
    DtypeSummary,
    GroupReport,
    HeaderCounts,
    InspectResult,
    MomentTotal,
    OptimizerState,
    OptimizerTensor,
    TensorReport,
    Total,
    TrendResult,
)
from .scan import Cluster, Progress, scan_tensors
from .select import SORT_KEYS, group_names, natural_key, require_view
from .settings import ReadSettings, Selection
from .sides import checkpoint_info, open_checkpoint_side


class _Row(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> TensorStats: ...


Row = TypeVar("Row", bound=_Row)


def inspect(
    path: str | os.PathLike[str],
    *,
    input_format: str | None = None,
    key: str | None = None,
    include_int: bool = False,
    include_optimizer: bool = False,
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dask: Cluster | None = None,
    header_only: bool = False,
) -> InspectResult:
    """Norms of every tensor in the checkpoint at `path` (a local path, or a URL: s3://,
    gs://, az://, hf://, https://... with fsspec's `storage_options`), and of the model.
    `header_only`: names, dtypes, shapes and counts from the headers, no value read. `dask`
    scans on a Dask cluster instead of threads: a scheduler address ("tcp://host:8786"),
    "local" or "local:N" (N worker processes started here), or a distributed.Client."""
    selection = Selection(
        tuple(filter), tuple(exclude), include_int, include_optimizer=include_optimizer
    )
    read = ReadSettings(input_format, key, threads, progress, _options(storage_options), dask)
    return inspect_path(
        path, selection, read, sort=sort, top=top, group_by=group_by, header_only=header_only
    )


def inspect_path(
    path: str | os.PathLike[str],
    selection: Selection,
    read: ReadSettings,
    *,
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    header_only: bool = False,
) -> InspectResult:
    """`inspect` with its settings already gathered (the command line's way in)."""
    if header_only and sort in _SORT_VALUE and sort != "numel":
        raise UsageError(
            f"--sort {sort} needs the tensors' values, which --header-only does not read "
            "(sort by name or numel)"
        )
    with open_checkpoint_side(path, read) as checkpoint:
        return _inspect_open(checkpoint, selection, read, sort, top, group_by, header_only)


def stats(
    tensors: Mapping[str, Any],
    *,
    include_int: bool = False,
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> InspectResult:
    """The same report for in-memory arrays: numpy arrays, or anything numpy can take
    through `__dlpack__` or `__array__` (a CPU torch tensor, say), without importing torch."""
    sources = [_array_source(name, value) for name, value in tensors.items()]
    nbytes = sum(s.nbytes for s in sources)
    checkpoint = Checkpoint("<memory>", "memory", nbytes, sources)
    selection = Selection(tuple(filter), tuple(exclude), include_int)
    read = ReadSettings(threads=threads, progress=progress)
    return _inspect_open(checkpoint, selection, read, sort, top, group_by)


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    input_format: str | None = None,
    key: str | None = None,
    include_int: bool = False,
    include_optimizer: bool = False,
    strip_prefix: Sequence[str] = (),
    rename: Sequence[str] = (),
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dask: Cluster | None = None,
) -> CompareResult:
    """What changed between checkpoint (or saved inspect report) A and B; either may be a URL
    (fsspec's `storage_options` for its filesystem)."""
    from . import diff

    selection = Selection(
        tuple(filter),
        tuple(exclude),
        include_int,
        tuple(strip_prefix),
        tuple(rename),
        include_optimizer,
    )
    read = ReadSettings(input_format, key, threads, progress, _options(storage_options), dask)
    return diff.compare(a, b, selection, read, sort=sort, top=top, group_by=group_by)


def trend(
    checkpoints: Sequence[str | os.PathLike[str]],
    *,
    metric: str = "l2",
    order: str = "name",
    group_by: int | None = None,
    include_int: bool = False,
    include_optimizer: bool = False,
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    input_format: str | None = None,
    key: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dask: Cluster | None = None,
) -> TrendResult:
    """Every tensor (or group) followed through the checkpoints of a run, in step order:
    files, folders of checkpoints, glob patterns or saved reports; any may be a URL (fsspec's
    `storage_options` for its filesystem)."""
    from . import trends

    if isinstance(checkpoints, (str, os.PathLike)):
        raise TypeError("trend takes a list of checkpoints (or of folders or patterns)")
    selection = Selection(
        tuple(filter), tuple(exclude), include_int, include_optimizer=include_optimizer
    )
    read = ReadSettings(input_format, key, threads, progress, _options(storage_options), dask)
    paths = [os.fspath(c) for c in checkpoints]
    return trends.trend(paths, selection, read, metric=metric, order=order, group_by=group_by)


def check(
    path: str | os.PathLike[str],
    *,
    baseline: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    allow_nonfinite: bool = False,
    allow_unread: bool = False,
    require_same_tensors: bool = False,
    input_format: str | None = None,
    key: str | None = None,
    include_int: bool = False,
    include_optimizer: bool = False,
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    strip_prefix: Sequence[str] = (),
    rename: Sequence[str] = (),
    threads: int | None = None,
    progress: Progress | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dask: Cluster | None = None,
    **limits: float,
) -> CheckResult:
    """The CI gate on the checkpoint at `path`: the result `normcli check` renders.

    Limits are the command's options in Python spelling (`max_rel_update=0.1`,
    `min_cosine=0.9`, ...); `config` names a settings file, read as `--config` reads it (no
    file is looked for unless named). Rules needing a baseline need `baseline`. `path` and
    `baseline` may be URLs (fsspec's `storage_options` for their filesystem)."""
    from .gate import find_config, parse_config, run_check
    from .gate.config import LIMIT_KEYS

    unknown = sorted(k for k in limits if k.replace("_", "-") not in LIMIT_KEYS)
    if unknown:
        raise TypeError(f"unexpected limits: {', '.join(unknown)}")
    settings, source = find_config(os.fspath(config)) if config is not None else ({}, None)
    flags = {
        "allow-nonfinite": allow_nonfinite,
        "allow-unread": allow_unread,
        "require-same-tensors": require_same_tensors,
    }
    overrides = {**{k.replace("_", "-"): v for k, v in limits.items()}, **flags}
    merged = parse_config(settings, source).merged(overrides)
    reference = os.fspath(baseline) if baseline is not None else merged.baseline
    selection = Selection(
        tuple(filter),
        tuple(exclude),
        include_int,
        tuple(strip_prefix),
        tuple(rename),
        include_optimizer,
    )
    read = ReadSettings(input_format, key, threads, progress, _options(storage_options), dask)
    return run_check(os.fspath(path), merged, reference, selection, read)


def _options(given: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((given or {}).items()))


def _array_source(name: str, value: Any) -> TensorSource:
    array = _to_numpy(name, value)
    dtype = from_numpy(array.dtype)
    if dtype is None:
        raise UnsupportedError(f"tensor {name!r}: dtype {array.dtype} is not numeric")
    flat = array.reshape(-1)

    def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
        itemsize = array.dtype.itemsize
        return np.ascontiguousarray(flat[start // itemsize : stop // itemsize]).view(np.uint8)

    return TensorSource(name, dtype, tuple(array.shape), read)


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        if hasattr(value, "__dlpack__"):
            try:
                return np.from_dlpack(value)
            except (TypeError, ValueError, BufferError, RuntimeError):
                pass  # e.g. a dtype DLPack cannot carry into numpy; __array__ may still work
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UnsupportedError(f"tensor {name!r}: cannot be read as an array ({e})") from e


def _inspect_open(
    checkpoint: Checkpoint,
    selection: Selection,
    read: ReadSettings,
    sort: str | None,
    top: int | None,
    group_by: int | None,
    header_only: bool = False,
) -> InspectResult:
    require_view(sort, SORT_KEYS, top, group_by)
    sources = [t for t in checkpoint.tensors if selection.selects(t.name)]
    selection.require_some(len(sources), len(checkpoint.tensors))
    all_stats: Sequence[TensorStats] = (
        [HeaderCounts(numel=s.numel) for s in sources]
        if header_only
        else scan_tensors(sources, read.threads, read.progress, dask=read.dask)
    )
    rows = [
        TensorReport(
            s.name,
            s.dtype.name,
            s.shape,
            s.file_bytes,
            st,
            covered=selection.covers(s.dtype.is_floating, s.optimizer is not None),
            shard=s.shard,
            optimizer=_optimizer_tensor(s.optimizer),
        )
        for s, st in zip(sources, all_stats, strict=True)
    ]
    covered = [r for r in rows if r.covered]
    groups = None
    if group_by is not None:
        groups = _sorted_rows(_groups(covered, group_by), sort, top)
    return InspectResult(
        checkpoint=replace(
            checkpoint_info(checkpoint), selection=(selection.filter, selection.exclude)
        ),
        tensors=_sorted_rows(rows, sort, top if group_by is None else None),
        groups=groups,
        total=_total(rows, covered, selection.scope),
        selected=len(rows),
        header_only=header_only,
        optimizer=_optimizer_state(
            [
                r
                for r, s in zip(rows, sources, strict=True)
                if selection.covers(s.dtype.is_floating)
            ],
            len([s for s in sources if s.optimizer is not None]),
            selection.include_optimizer,
        ),
    )


def _optimizer_tensor(slot: OptimizerSlot | None) -> OptimizerTensor | None:
    return None if slot is None else OptimizerTensor(slot.optimizer, slot.param, slot.moment)


def _optimizer_state(
    rows: Sequence[TensorReport], tensors: int, in_total: bool
) -> OptimizerState | None:
    """The figures of the optimizer's `tensors` among `rows` (those the totals would count were
    they the model's: floating point, or all with --include-int), in all and moment by moment."""
    state = [(r, r.optimizer) for r in rows if r.optimizer is not None]
    if not tensors:
        return None
    by_moment = []
    for moment in dict.fromkeys(slot.moment for _, slot in state):
        same = [r for r, slot in state if slot.moment == moment]
        by_moment.append(
            MomentTotal(
                moment, len(same), sum(r.nbytes for r in same), _combined([r.stats for r in same])
            )
        )
    return OptimizerState(
        optimizers=tuple(dict.fromkeys(slot.optimizer for _, slot in state)),
        tensors=tensors,
        in_total=in_total,
        nbytes=sum(r.nbytes for r, _ in state),
        stats=_combined([r.stats for r, _ in state]),
        by_moment=tuple(by_moment),
    )


_SORT_VALUE: dict[str, Callable[[TensorStats], float]] = {
    "l1": lambda s: s.l1,
    "l2": lambda s: s.l2,
    "linf": lambda s: s.linf,
    "numel": lambda s: float(s.numel),
}


def _sorted_rows(rows: Sequence[Row], sort: str | None, top: int | None) -> tuple[Row, ...]:
    ordered = list(rows)
    if sort == "name":
        ordered.sort(key=lambda r: natural_key(r.name))
    elif sort is not None:
        value = _SORT_VALUE[sort]
        ordered.sort(key=lambda r: value(r.stats), reverse=True)
    return tuple(ordered[:top] if top is not None else ordered)


def _groups(rows: Sequence[TensorReport], depth: int) -> list[GroupReport]:
    result = []
    for name, members in group_names((r.name for r in rows), depth).items():
        chosen = [rows[i] for i in members]
        result.append(
            GroupReport(
                name=name,
                tensors=len(chosen),
                dtypes=tuple(sorted({r.dtype for r in chosen})),
                nbytes=sum(r.nbytes for r in chosen),
                stats=_combined([r.stats for r in chosen]),
            )
        )
    return result


def _total(rows: Sequence[TensorReport], covered: Sequence[TensorReport], scope: str) -> Total:
    by_dtype = []
    for dtype in sorted({r.dtype for r in rows}):
        same = [r for r in rows if r.dtype == dtype]
        by_dtype.append(
            DtypeSummary(
                dtype, len(same), sum(r.nbytes for r in same), _combined([r.stats for r in same])
            )
        )
    return Total(
        stats=_combined([r.stats for r in covered]),
        nbytes=sum(r.nbytes for r in covered),
        scope=scope,
        tensors=len(covered),
        excluded=len(rows) - len(covered),
        optimizer_excluded=sum(1 for r in rows if r.optimizer is not None and not r.covered),
        by_dtype=tuple(by_dtype),
        nonfinite_tensors=tuple(r.name for r in rows if r.stats.nan or r.stats.inf),
        largest_l2=_largest(covered, lambda s: s.l2),
        largest_linf=_largest(covered, lambda s: s.linf),
    )


def _combined(parts: list[TensorStats]) -> TensorStats:
    """Statistics merged; counts added up where only headers were read."""
    if parts and all(isinstance(p, HeaderCounts) for p in parts):
        return HeaderCounts.of(parts)
    return merge_all(parts)


def _largest(rows: Sequence[TensorReport], value: Callable[[TensorStats], float]) -> str | None:
    best = max(rows, key=lambda r: value(r.stats), default=None)
    return best.name if best is not None and value(best.stats) > 0 else None
