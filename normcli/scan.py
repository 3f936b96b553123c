"""Runs the statistics over the tensors of a checkpoint (or pairs from two), chunk by chunk, on a
pool of threads. The only module that knows about threads."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from .errors import UnsupportedError
from .norms import PairStats, TensorStats, merge_all, merge_pairs, reduce_chunk, reduce_pair
from .readers import TensorSource

# 1 Mi elements, a multiple of every packed group size (1, 2 and 4 elements), so two tensors
# of different dtypes split into chunks of the same lengths and can be walked in lockstep.
CHUNK_ELEMENTS = 1 << 20

T = TypeVar("T")


class Progress(Protocol):
    """Told the bytes to scan once, then each chunk's bytes as it is done (from any thread)."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, done_bytes: int) -> None: ...


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _chunk_bytes(chunk_size: int, source: TensorSource) -> int:
    return chunk_size * source.dtype.bits // 8


def scan_tensor(
    source: TensorSource, chunk_elements: int = CHUNK_ELEMENTS, progress: Progress | None = None
) -> TensorStats:
    """Statistics of one tensor, read in chunks so memory stays flat whatever its size."""
    parts = []
    for chunk in source.chunks(chunk_elements):
        parts.append(reduce_chunk(chunk))
        if progress is not None:
            progress.advance(_chunk_bytes(chunk.size, source))
    stats = merge_all(parts)
    if source.dtype.kind == "complex" and stats.total is not None:
        stats = TensorStats.of_complex().merge(stats)
    return stats


def scan_pair(
    a: TensorSource,
    b: TensorSource,
    chunk_elements: int = CHUNK_ELEMENTS,
    progress: Progress | None = None,
) -> PairStats:
    """A and B (same shape) walked in lockstep, one chunk of each at a time."""
    if a.fortran_order != b.fortran_order and len(a.shape) > 1:
        raise UnsupportedError(
            f"tensor {a.name!r}: cannot compare column-major (Fortran-order) storage "
            "with row-major storage"
        )
    parts = []
    for a_chunk, b_chunk in zip(a.chunks(chunk_elements), b.chunks(chunk_elements), strict=True):
        parts.append(reduce_pair(a_chunk, b_chunk))
        if progress is not None:
            progress.advance(_chunk_bytes(a_chunk.size, a) + _chunk_bytes(b_chunk.size, b))
    pair = merge_pairs(parts) if parts else merge_pairs([_empty_pair()])
    if a.dtype.kind == "complex" or b.dtype.kind == "complex":
        pair = PairStats(
            a=TensorStats.of_complex().merge(pair.a) if a.dtype.kind == "complex" else pair.a,
            b=TensorStats.of_complex().merge(pair.b) if b.dtype.kind == "complex" else pair.b,
            diff=TensorStats.of_complex().merge(pair.diff),
            dot=pair.dot,
            identical=pair.identical,
        )
    return pair


def _empty_pair() -> PairStats:
    return PairStats(TensorStats(), TensorStats(), TensorStats(), 0.0, True)


def _parallel(
    jobs: Sequence[Callable[[], T]], sizes: Sequence[int], threads: int | None
) -> list[T]:
    """Run the jobs, largest first so one big tensor does not start last and run alone;
    results come back in the order given."""
    workers = min(threads or default_threads(), max(1, len(jobs)))
    if workers == 1:
        return [job() for job in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -sizes[i])
    with ThreadPoolExecutor(workers, thread_name_prefix="normcli-scan") as pool:
        futures = {i: pool.submit(jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


def scan_tensors(
    sources: Sequence[TensorSource],
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> list[TensorStats]:
    """Statistics of every tensor, in the order given."""
    return scan_all(sources, (), threads, progress, chunk_elements)[0]


def scan_all(
    singles: Sequence[TensorSource],
    pairs: Sequence[tuple[TensorSource, TensorSource]],
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[list[TensorStats], list[PairStats]]:
    """Single tensors and aligned pairs, scanned on one pool: every byte is read once."""
    sizes = [s.nbytes for s in singles] + [a.nbytes + b.nbytes for a, b in pairs]
    if progress is not None:
        progress.start(sum(sizes))
    jobs: list[Callable[[], TensorStats | PairStats]] = [
        functools.partial(scan_tensor, s, chunk_elements, progress) for s in singles
    ]
    jobs += [functools.partial(scan_pair, a, b, chunk_elements, progress) for a, b in pairs]
    results = _parallel(jobs, sizes, threads)
    single_stats = [r for r in results[: len(singles)] if isinstance(r, TensorStats)]
    pair_stats = [r for r in results[len(singles) :] if isinstance(r, PairStats)]
    return single_stats, pair_stats
