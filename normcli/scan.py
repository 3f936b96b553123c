"""Runs the statistics over the tensors of a checkpoint (or pairs from two), chunk by chunk, on a
pool of threads. The only module that knows about threads."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol, TypeVar

import numpy as np

from . import kernels
from .errors import UnsupportedError
from .norms import PairStats, TensorStats, merge_all, merge_pairs, reduce_chunk, reduce_pair
from .readers import TensorSource, files

# 256 Ki elements, a multiple of every packed group size (1, 2 and 4 elements), so two tensors
# of different dtypes split into chunks of the same lengths and can be walked in lockstep; small
# enough for a chunk's float64 work to stay in cache, large enough to drown per-chunk overhead.
CHUNK_ELEMENTS = 1 << 18
# A tensor larger than this is cut into pieces of about this size, scanned on separate threads.
PIECE_BYTES = 64 << 20
# Below this many elements the exact numpy path finishes before numba is imported and its
# kernels loaded (0.3-0.45 s on 2 cores). Measured end to end, page cache warm, on float32 and
# bfloat16 files (numpy's cost goes by elements, not bytes): the two paths took the same time
# between 2^26 and 2^27 elements; the larger bound keeps the many small CI jobs clear of numba.
COMPILED_MIN_ELEMENTS = 1 << 27
# The compiled kernels keep no float64 copies that must stay in cache, so they take chunks four
# times larger, which cuts the per-chunk work in Python (a sixth of a scan) to a few per cent.
COMPILED_CHUNK_ELEMENTS = 1 << 20

T = TypeVar("T")
Reduce = Callable[[np.ndarray], TensorStats]
ReducePair = Callable[[np.ndarray, np.ndarray], PairStats]


class Progress(Protocol):
    """Told the bytes to scan once, then each chunk's bytes as it is done (from any thread).
    One that also has a `compiling()` method is told when the scan waits for the kernels to
    compile (the first big job after an install or an upgrade)."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, done_bytes: int) -> None: ...


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class Plan(NamedTuple):
    reduce: Reduce
    reduce_pair: ReducePair
    chunk_elements: int


def choose_kernels(total_elements: int, progress: Progress | None = None) -> Plan:
    """The compiled kernels for big jobs (or when NORMCLI_KERNELS=numba), else plain numpy;
    a chunk the compiled ones decline (NaN, Inf, other dtypes) goes to numpy all the same.

    The kernels are loaded before the scan starts (about 0.3 s). Scanning with numpy while they
    loaded in the background got little done (the import holds the GIL), and made the last
    bits of a figure depend on which chunks happened to go which way: the same file could give
    two different JSON documents."""
    mode = kernels.wanted()
    if mode == "numpy" or (mode == "auto" and total_elements < COMPILED_MIN_ELEMENTS):
        return Plan(reduce_chunk, reduce_pair, CHUNK_ELEMENTS)
    compiled = kernels.load(getattr(progress, "compiling", None))
    if compiled is None:
        return Plan(reduce_chunk, reduce_pair, CHUNK_ELEMENTS)

    def reduce(values: np.ndarray) -> TensorStats:
        return compiled.reduce(values) or _in_numpy_parts(reduce_chunk, merge_all, values)

    def pair(a: np.ndarray, b: np.ndarray) -> PairStats:
        return compiled.reduce_pair(a, b) or _in_numpy_parts(reduce_pair, merge_pairs, a, b)

    return Plan(reduce, pair, COMPILED_CHUNK_ELEMENTS)


def _in_numpy_parts(
    reduce: Callable[..., T], merge: Callable[[list[T]], T], *arrays: np.ndarray
) -> T:
    """A chunk sized for the kernels that goes to numpy after all, reduced in parts of numpy's
    size (whose float64 copies then stay in cache and small) and merged."""
    size = arrays[0].size
    if size <= CHUNK_ELEMENTS:
        return reduce(*arrays)
    return merge(
        [
            reduce(*(x[i : i + CHUNK_ELEMENTS] for x in arrays))
            for i in range(0, size, CHUNK_ELEMENTS)
        ]
    )


def _file_share(source: TensorSource, start: int, stop: int) -> int:
    """The file bytes of elements [start, stop): progress counts what is read from disk, which
    for quantized blocks is far less than the values they decode to. Cumulative, so the
    shares of consecutive chunks add up to the tensor's bytes exactly."""
    if not source.numel:
        return 0
    return (stop * source.file_bytes) // source.numel - (start * source.file_bytes) // source.numel


def _progress_total(sources: Iterable[TensorSource | None]) -> int:
    return sum(s.file_bytes for s in sources if s is not None)


def _pieces(source: TensorSource) -> list[tuple[int, int]]:
    """Element ranges [first, last) to scan separately: whole groups, about PIECE_BYTES each."""
    if not source.seekable or source.nbytes <= PIECE_BYTES:
        return [(0, source.numel)]
    step = max(
        CHUNK_ELEMENTS, PIECE_BYTES * 8 // source.dtype.bits // CHUNK_ELEMENTS * CHUNK_ELEMENTS
    )
    return [(first, min(first + step, source.numel)) for first in range(0, source.numel, step)]


def scan_tensor(
    source: TensorSource,
    chunk_elements: int = CHUNK_ELEMENTS,
    progress: Progress | None = None,
    reduce: Reduce = reduce_chunk,
    first: int = 0,
    last: int | None = None,
) -> TensorStats:
    """Statistics of one tensor (or of its elements [first, last)), read in chunks so memory
    stays flat whatever its size."""
    parts = []
    done = first
    for chunk in source.chunks(chunk_elements, first, last):
        parts.append(reduce(chunk))
        if progress is not None:
            progress.advance(_file_share(source, done, done + chunk.size))
        done += chunk.size
    return _as_kind(merge_all(parts), source)


def _as_kind(stats: TensorStats, source: TensorSource) -> TensorStats:
    if source.dtype.kind == "complex" and stats.total is not None:
        return TensorStats.of_complex().merge(stats)
    return stats


def scan_pair(
    a: TensorSource,
    b: TensorSource,
    chunk_elements: int = CHUNK_ELEMENTS,
    progress: Progress | None = None,
    first: int = 0,
    last: int | None = None,
    reduce: ReducePair = reduce_pair,
) -> PairStats:
    """A and B (same shape) walked in lockstep, one chunk of each at a time."""
    if a.fortran_order != b.fortran_order and len(a.shape) > 1:
        raise UnsupportedError(
            f"tensor {a.name!r}: cannot compare column-major (Fortran-order) storage "
            "with row-major storage"
        )
    parts = []
    chunks = zip(
        a.chunks(chunk_elements, first, last), b.chunks(chunk_elements, first, last), strict=True
    )
    done = first
    for a_chunk, b_chunk in chunks:
        parts.append(reduce(a_chunk, b_chunk))
        if progress is not None:
            end = done + a_chunk.size
            progress.advance(_file_share(a, done, end) + _file_share(b, done, end))
        done += a_chunk.size
    return _pair_as_kind(merge_pairs(parts) if parts else _empty_pair(), a, b)


def _pair_as_kind(pair: PairStats, a: TensorSource, b: TensorSource) -> PairStats:
    if a.dtype.kind != "complex" and b.dtype.kind != "complex":
        return pair
    return PairStats(
        a=_as_kind(pair.a, a),
        b=_as_kind(pair.b, b),
        diff=TensorStats.of_complex().merge(pair.diff),
        dot=pair.dot,
        identical=pair.identical,
    )


def _empty_pair() -> PairStats:
    return PairStats(TensorStats(), TensorStats(), TensorStats(), 0.0, True)


def _parallel(
    jobs: Sequence[Callable[[], T]], sizes: Sequence[int], threads: int | None
) -> list[T]:
    """Run the jobs, largest first so one big piece does not start last and run alone;
    results come back in the order given."""
    workers = min(threads or default_threads(), max(1, len(jobs)))
    files.set_readers(workers)
    if workers == 1:
        return [_releasing(job) for job in jobs]
    # a remote file is fetched ahead in storage order, the order the jobs come in
    order = (
        list(range(len(jobs)))
        if files.reading_remote()
        else sorted(range(len(jobs)), key=lambda i: -sizes[i])
    )
    with ThreadPoolExecutor(workers, thread_name_prefix="normcli-scan") as pool:
        futures = {i: pool.submit(_releasing, jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


def _releasing(job: Callable[[], T]) -> T:
    """A job, after which its thread hands back the pages it mapped to read it."""
    try:
        return job()
    finally:
        files.release_windows()


def scan_tensors(
    sources: Sequence[TensorSource],
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_elements: int | None = None,
) -> list[TensorStats]:
    """Statistics of every tensor, in the order given."""
    return scan_all(sources, (), threads, progress, chunk_elements)[0]


def scan_all(
    singles: Sequence[TensorSource],
    pairs: Sequence[tuple[TensorSource, TensorSource]],
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_elements: int | None = None,
) -> tuple[list[TensorStats], list[PairStats]]:
    """Single tensors and aligned pairs, scanned as one stream of pieces on one pool, largest
    first: every byte is read once, and a big tensor keeps every core busy. Chunks are of
    `chunk_elements` if given, else the size that suits the kernels chosen."""
    if progress is not None:
        progress.start(_progress_total([*singles, *(s for pair in pairs for s in pair)]))
    elements = sum(s.numel for s in singles) + sum(a.numel + b.numel for a, b in pairs)
    reduce, reduce_two, chosen_chunk = choose_kernels(elements, progress)
    chunk_elements = chunk_elements or chosen_chunk
    jobs: list[Callable[[], TensorStats | PairStats]] = []
    sizes: list[int] = []
    owners: list[tuple[str, int]] = []
    for i, source in enumerate(singles):
        for first, last in _pieces(source):
            jobs.append(
                functools.partial(
                    scan_tensor, source, chunk_elements, progress, reduce, first, last
                )
            )
            sizes.append((last - first) * source.dtype.bits // 8)
            owners.append(("single", i))
    for i, (a, b) in enumerate(pairs):
        ranges = _pieces(a) if b.seekable else [(0, a.numel)]
        for first, last in ranges:
            jobs.append(
                functools.partial(
                    scan_pair, a, b, chunk_elements, progress, first, last, reduce_two
                )
            )
            sizes.append((last - first) * (a.dtype.bits + b.dtype.bits) // 8)
            owners.append(("pair", i))
    results = _parallel(jobs, sizes, threads)
    single_parts: list[list[TensorStats]] = [[] for _ in singles]
    pair_parts: list[list[PairStats]] = [[] for _ in pairs]
    for (kind, i), result in zip(owners, results, strict=True):
        if kind == "single" and isinstance(result, TensorStats):
            single_parts[i].append(result)
        elif isinstance(result, PairStats):
            pair_parts[i].append(result)
    return (
        [_as_kind(merge_all(parts), s) for parts, s in zip(single_parts, singles, strict=True)],
        [
            _pair_as_kind(merge_pairs(parts), a, b)
            for parts, (a, b) in zip(pair_parts, pairs, strict=True)
        ],
    )


def _series_chunk(count: int) -> int:
    """Chunk length for reading `count` checkpoints in lockstep: a buffer each, kept to about
    8 ordinary chunks in all, in whole packed groups (a multiple of 4 elements)."""
    return max(1 << 14, min(CHUNK_ELEMENTS, CHUNK_ELEMENTS * 8 // max(count, 1)) // 4 * 4)


def scan_series(
    sources: Sequence[TensorSource | None],
    progress: Progress | None = None,
    reduce: Reduce = reduce_chunk,
    reduce_two: ReducePair = reduce_pair,
) -> tuple[list[TensorStats | None], list[PairStats | None]]:
    """One tensor across checkpoints (None where a checkpoint lacks it), every file read once:
    all are walked in lockstep, chunk by chunk. Returns each checkpoint's statistics and, for
    each consecutive pair of the same shape, the update (index t: from t-1 to t)."""
    chunk = _series_chunk(sum(s is not None for s in sources))
    iterators = [iter(s.chunks(chunk)) if s is not None else None for s in sources]
    aligned = [
        t > 0
        and a is not None
        and b is not None
        and a.shape == b.shape
        and (a.fortran_order == b.fortran_order or len(a.shape) < 2)
        for t, (a, b) in enumerate(zip([None, *sources[:-1]], sources, strict=True))
    ]
    parts: list[list[TensorStats]] = [[] for _ in sources]
    done = [0] * len(sources)
    pair_parts: list[list[PairStats]] = [[] for _ in sources]
    while True:
        chunks = [next(it, None) if it is not None else None for it in iterators]
        if all(c is None for c in chunks):
            break
        # a checkpoint's figures come from the update into it, or else from the update out of
        # it, or else on their own: each chunk is reduced once alone or in one pair, not both
        paired = [aligned[t] and chunks[t - 1] is not None for t in range(len(chunks))]
        for t, values in enumerate(chunks):
            if values is None:
                continue
            if paired[t]:
                pair = reduce_two(chunks[t - 1], values)  # type: ignore[arg-type]
                pair_parts[t].append(pair)
                parts[t].append(pair.b)
                if not paired[t - 1]:
                    parts[t - 1].append(pair.a)
            elif not (t + 1 < len(chunks) and paired[t + 1]):
                parts[t].append(reduce(values))
            if progress is not None:
                share = _file_share(sources[t], done[t], done[t] + values.size)  # type: ignore[arg-type]
                progress.advance(share)
            done[t] += values.size
    stats = [
        _as_kind(merge_all(p), s) if s is not None else None
        for p, s in zip(parts, sources, strict=True)
    ]
    updates: list[PairStats | None] = [None] * len(sources)
    for t, ok in enumerate(aligned):
        a, b = sources[t - 1], sources[t]
        if ok and a is not None and b is not None:
            updates[t] = _pair_as_kind(
                merge_pairs(pair_parts[t]) if pair_parts[t] else _empty_pair(), a, b
            )
    return stats, updates


def scan_many_series(
    series: Sequence[Sequence[TensorSource | None]],
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[tuple[list[TensorStats | None], list[PairStats | None]]]:
    """Every tensor's series, in parallel over tensors."""
    sizes = [sum(s.nbytes for s in row if s is not None) for row in series]
    if progress is not None:
        progress.start(sum(_progress_total(row) for row in series))
    elements = sum(s.numel for row in series for s in row if s is not None)
    reduce, reduce_two, _ = choose_kernels(elements, progress)
    jobs = [functools.partial(scan_series, row, progress, reduce, reduce_two) for row in series]
    return _parallel(jobs, sizes, threads)
