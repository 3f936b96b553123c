"""The Python API: inspect a checkpoint on disk, or a mapping of in-memory arrays."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from .dtypes import from_numpy
from .errors import UnsupportedError, UsageError
from .norms import TensorStats, merge_all
from .readers import Checkpoint, TensorSource, open_checkpoint
from .results import (
    DtypeSummary,
    GroupReport,
    InspectResult,
    TensorReport,
    Total,
    checkpoint_info,
)
from .scan import Progress, scan_tensors
from .select import SORT_KEYS, group_names, name_selected, natural_key, require_some


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
    filter: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sort: str | None = None,
    top: int | None = None,
    group_by: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> InspectResult:
    """Norms of every tensor in the checkpoint at `path` (a local path, or a URL: s3://,
    gs://, az://, hf://, https://... with its fsspec `storage_options`), and of the model."""
    with open_checkpoint(path, input_format, key, storage_options) as checkpoint:
        return _inspect_open(
            checkpoint, include_int, filter, exclude, sort, top, group_by, threads, progress
        )


def stats(tensors: Mapping[str, Any], **options: Any) -> InspectResult:
    """The same report for in-memory arrays: numpy arrays, or anything numpy can take
    through `__dlpack__` or `__array__` (a CPU torch tensor, say), without importing torch."""
    sources = [_array_source(name, value) for name, value in tensors.items()]
    nbytes = sum(s.nbytes for s in sources)
    checkpoint = Checkpoint("<memory>", "memory", nbytes, sources)
    return _inspect_open(checkpoint, **_inspect_options(options))


def _inspect_options(options: dict[str, Any]) -> dict[str, Any]:
    allowed = {"include_int", "filter", "exclude", "sort", "top", "group_by", "threads", "progress"}
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unexpected options: {', '.join(sorted(unknown))}")
    defaults: dict[str, Any] = {
        "include_int": False,
        "filter": (),
        "exclude": (),
        "sort": None,
        "top": None,
        "group_by": None,
        "threads": None,
        "progress": None,
    }
    return {**defaults, **options}


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
    include_int: bool,
    filter: Sequence[str],
    exclude: Sequence[str],
    sort: str | None,
    top: int | None,
    group_by: int | None,
    threads: int | None,
    progress: Progress | None,
) -> InspectResult:
    _check_selection(sort, top, group_by)
    sources = [t for t in checkpoint.tensors if name_selected(t.name, filter, exclude)]
    require_some(len(sources), len(checkpoint.tensors), filter, exclude)
    all_stats = scan_tensors(sources, threads=threads, progress=progress)
    rows = [
        TensorReport(
            s.name,
            s.dtype.name,
            s.shape,
            s.file_bytes,
            st,
            covered=include_int or s.dtype.is_floating,
            shard=s.shard,
        )
        for s, st in zip(sources, all_stats, strict=True)
    ]
    covered = [r for r in rows if r.covered]
    groups = None
    if group_by is not None:
        groups = _sorted_rows(_groups(covered, group_by), sort, top)
    return InspectResult(
        checkpoint=checkpoint_info(checkpoint),
        tensors=_sorted_rows(rows, sort, top if group_by is None else None),
        groups=groups,
        total=_total(rows, covered, include_int),
        selected=len(rows),
    )


def _check_selection(sort: str | None, top: int | None, group_by: int | None) -> None:
    if sort is not None and sort not in SORT_KEYS:
        raise UsageError(f"cannot sort by {sort!r} (choose from {', '.join(SORT_KEYS)})")
    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if group_by is not None and group_by < 1:
        raise UsageError(f"--group-by must be at least 1, not {group_by}")


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
                stats=merge_all([r.stats for r in chosen]),
            )
        )
    return result


def _total(
    rows: Sequence[TensorReport], covered: Sequence[TensorReport], include_int: bool
) -> Total:
    by_dtype = []
    for dtype in sorted({r.dtype for r in rows}):
        same = [r for r in rows if r.dtype == dtype]
        by_dtype.append(
            DtypeSummary(
                dtype, len(same), sum(r.nbytes for r in same), merge_all([r.stats for r in same])
            )
        )
    return Total(
        stats=merge_all([r.stats for r in covered]),
        nbytes=sum(r.nbytes for r in covered),
        scope="all" if include_int else "floating",
        tensors=len(covered),
        excluded=len(rows) - len(covered),
        by_dtype=tuple(by_dtype),
        nonfinite_tensors=tuple(r.name for r in rows if r.stats.nan or r.stats.inf),
        largest_l2=_largest(covered, lambda s: s.l2),
        largest_linf=_largest(covered, lambda s: s.linf),
    )


def _largest(rows: Sequence[TensorReport], value: Callable[[TensorStats], float]) -> str | None:
    best = max(rows, key=lambda r: value(r.stats), default=None)
    return best.name if best is not None and value(best.stats) > 0 else None
