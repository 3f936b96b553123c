"""Runs the statistics over every tensor of a checkpoint, chunk by chunk, on a pool of threads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .readers import TensorSource
from .stats import TensorStats, merge_all, reduce_chunk

# 1 Mi elements: a few MiB per chunk, large enough that per-chunk Python overhead is noise
CHUNK_ELEMENTS = 1 << 20



class Progress(Protocol):
    """Told the bytes to scan once, then each chunk's bytes as it is done (from any thread)."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, done_bytes: int) -> None: ...


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def scan_tensor(
    source: TensorSource, chunk_elements: int = CHUNK_ELEMENTS, progress: Progress | None = None
) -> TensorStats:
    """Statistics of one tensor, read in chunks so memory stays flat whatever its size."""
    parts = []
    for chunk in source.chunks(chunk_elements):
        parts.append(reduce_chunk(chunk))
        if progress is not None:
            progress.advance(chunk.size * source.dtype.bits // 8)
    stats = merge_all(parts)
    if source.dtype.kind == "complex" and stats.total is not None:
        stats = TensorStats.of_complex().merge(stats)
    return stats


def scan_tensors(
    sources: Sequence[TensorSource],
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> list[TensorStats]:
    """Statistics of every tensor, in the order given."""
    if progress is not None:
        progress.start(sum(s.nbytes for s in sources))
    workers = min(threads or default_threads(), max(1, len(sources)))
    if workers == 1:
        return [scan_tensor(s, chunk_elements, progress) for s in sources]
    # largest first, so one big tensor does not start last and run alone
    order = sorted(range(len(sources)), key=lambda i: -sources[i].nbytes)
    with ThreadPoolExecutor(workers, thread_name_prefix="normcli-scan") as pool:
        futures = {i: pool.submit(scan_tensor, sources[i], chunk_elements, progress) for i in order}
        return [futures[i].result() for i in range(len(sources))]
