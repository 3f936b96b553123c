"""A remote file read in place, behind the interface of a local DataFile: headers from a small
prefix fetched once, tensor data in large blocks fetched ahead of the readers, several at a time,
each block once and dropped once read through, so memory stays bounded whatever the file."""

from __future__ import annotations

import contextlib
import contextvars
import io
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import CorruptFileError, InputError, NormcliError
from . import remote
from .files import DataSlice
from .remote import RemoteSpec

T = TypeVar("T")

# One range request per block: large enough that a request's round trip is small beside its
# transfer, small enough that a few in flight per reader keep memory modest.
BLOCK_BYTES = 16 << 20
# Blocks fetched ahead of the block being read.
AHEAD = 4
# Blocks held or in flight, over every remote file of the process; a block being read is
# fetched beyond this if it must be, prefetching waits. Two threads, four blocks ahead each.
BUDGET_BYTES = 128 << 20
# How long a file no thread reads keeps the block where its readers stopped (release_thread).
IDLE_SECONDS = 0.25
# Headers are read from the file's first bytes, fetched once (grown if a header is larger).
HEAD_BYTES = 64 << 10
MAX_HEAD_BYTES = 16 << 20
# A range request that fails part way (a dropped connection) is tried this many times in all.
TRIES = 3
RETRY_PAUSE = 0.25

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_budget_lock = threading.Lock()
_held_bytes = 0
_reading: weakref.WeakSet[RemoteFile] = weakref.WeakSet()


def _fetch_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(2 * AHEAD, thread_name_prefix="normcli-fetch")
        return _pool


@dataclass
class _Known:
    """What one opening of a checkpoint learnt of a remote file: its size and first bytes."""

    size: int
    head: bytes = b""


_known: contextvars.ContextVar[dict[RemoteSpec, _Known] | None] = contextvars.ContextVar(
    "normcli_remote_known", default=None
)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Within, a remote file opened again (to detect its format, then to read its header, then
    its data) is not asked for its size or its first bytes again."""
    if _known.get() is not None:
        yield
        return
    token = _known.set({})
    try:
        yield
    finally:
        _known.reset(token)


def release_thread() -> None:
    """The calling thread is done with what it was reading, in every remote file. A file no
    thread has read for IDLE_SECONDS drops the blocks where its readers stopped (the next job
    usually starts where the last ended, a moment later): the tail of a file (a zip's
    directory) is never read through, and a sharded model must not keep one block per shard."""
    with _budget_lock:
        files = list(_reading)
    now = time.monotonic()
    for data in files:
        data.leave()
        if data.idle_since is not None and now - data.idle_since > IDLE_SECONDS:
            data.drop_passed()


def any_open() -> bool:
    """Whether a remote file is open: scans then read in storage order, which reads ahead."""
    return len(_reading) > 0


@dataclass
class _Block:
    future: Future[bytes]
    size: int
    read: int = 0


@dataclass
class Traffic:
    """Range requests made and bytes received, for tests and the benchmark."""

    requests: int = 0
    received: int = 0


class RemoteFile:
    """A file named by a URL: random access by range requests, never a whole-file download."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.path = spec.shown
        fs, inner = remote.filesystem(spec)
        known = _known.get()
        if known is not None and spec in known:
            self.size, self._head = known[spec].size, known[spec].head
        else:
            self.size, self._head = _size(fs, inner, self.path), b""
        size = self.size
        self._file = remote.call(
            lambda: (
                fs.open(inner, "rb", block_size=BLOCK_BYTES, cache_type="none", size=size)
                if remote.protocol_of(spec.url) in ("http", "https")
                else fs.open(inner, "rb", block_size=BLOCK_BYTES, cache_type="none")
            ),
            self.path,
            "cannot open",
        )
        self.traffic = Traffic()
        self._blocks: dict[int, _Block] = {}
        self._lock = threading.Lock()
        self._head_lock = threading.Lock()
        self._closed = False
        # where each thread reading the file is (the start of its last read)
        self._positions: dict[int, int] = {}
        # the blocks read through or passed by every reader: never fetched ahead again
        self._finished: set[int] = set()
        # when and where the last thread reading the file stopped (None: being read, or not yet)
        self.idle_since: float | None = None
        self._stopped = 0
        with _budget_lock:
            _reading.add(self)

    def __reduce__(self) -> tuple[type[RemoteFile], tuple[RemoteSpec]]:
        """Pickled as its description (a URL and storage options): another process, a Dask
        worker, opens the file again itself."""
        return RemoteFile, (self.spec,)

    # --- the interface readers use (as files.DataFile) ------------------------------------------

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        """Small reads (headers): file[start:stop], clipped at the end like a bytes slice."""
        start, stop, _ = span.indices(self.size)
        if stop <= start:
            return b""
        if stop <= MAX_HEAD_BYTES:
            with self._head_lock:
                if stop > len(self._head):
                    grown = max(stop, min(MAX_HEAD_BYTES, max(HEAD_BYTES, 2 * len(self._head))))
                    self._head += self._fetch(len(self._head), min(self.size, grown))
                    known = _known.get()
                    if known is not None:
                        known[self.spec] = _Known(self.size, self._head)
                return self._head[start:stop]
        return self._fetch(start, stop)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Copy the bytes from `offset` into `buffer`, as many as the file holds; their count."""
        stop = min(self.size, offset + len(buffer))
        if stop <= offset:
            return 0
        data = self[offset:stop]
        buffer[: len(data)] = data
        return len(data)

    def reader(self, base: int) -> Callable[[int, int, np.ndarray], np.ndarray]:
        """Reads bytes [start, stop) of a tensor whose data begins at `base` into `out`."""

        def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
            first, last = base + start, base + stop
            if last > self.size:
                raise CorruptFileError("the file ended early (truncated?)", self.path)
            self._copy(first, last, out.data.cast("B"))
            return out[: last - first]

        return read

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _budget_lock:
            _reading.discard(self)
        with self._lock:
            blocks = list(self._blocks.values())
            self._blocks.clear()
        for block in blocks:
            block.future.cancel()
            _release(block.size)
        self._head = b""

    # --- blocks ---------------------------------------------------------------------------------

    def _copy(self, first: int, last: int, view: memoryview) -> None:
        with self._lock:
            self.idle_since = None
            self._positions[threading.get_ident()] = first
            self._drop_below(min(self._positions.values()) // BLOCK_BYTES)
        position = first
        index = first // BLOCK_BYTES
        while position < last:
            index = position // BLOCK_BYTES
            low = index * BLOCK_BYTES
            data = self._block(index)
            take = min(last, low + len(data)) - position
            if take <= 0:
                raise CorruptFileError("the file ended early (truncated?)", self.path)
            view[position - first : position - first + take] = data[
                position - low : position - low + take
            ]
            self._done_with(index, take)
            position += take
        self._read_ahead(index + 1)

    def _block(self, index: int) -> bytes:
        with self._lock:
            block = self._blocks.get(index) or self._start(index, demanded=True)
            assert block is not None  # a demanded block is always started
        try:
            return block.future.result()
        except BaseException:
            self._forget(index)
            raise

    def _start(self, index: int, demanded: bool) -> _Block | None:
        """Start fetching block `index` (the lock held); None if prefetching must wait."""
        low = index * BLOCK_BYTES
        size = min(BLOCK_BYTES, self.size - low)
        if not _reserve(size, force=demanded):
            return None
        block = _Block(_fetch_pool().submit(self._fetch_block, low, low + size), size)
        self._blocks[index] = block
        return block

    def _read_ahead(self, index: int) -> None:
        last = min(index + AHEAD, -(-self.size // BLOCK_BYTES))
        with self._lock:
            for ahead in range(index, last):
                if ahead in self._blocks or ahead in self._finished:
                    continue
                if self._start(ahead, demanded=False) is None:
                    break

    def _done_with(self, index: int, count: int) -> None:
        with self._lock:
            block = self._blocks.get(index)
            if block is None:
                return
            block.read += count
            if block.read >= block.size:
                del self._blocks[index]
                self._finished.add(index)
                _release(block.size)

    def _forget(self, index: int) -> None:
        with self._lock:
            block = self._blocks.pop(index, None)
        if block is not None:
            _release(block.size)

    def _drop_below(self, below: int) -> None:
        """Drop the fetched blocks before block `below`, which every reader of the file has
        passed (the lock held): reads go forward, in storage order, and part of such a block
        lay outside every tensor read (a header, the gap between two zip members), so it was
        never read through."""
        for index in [i for i, b in self._blocks.items() if i < below and b.future.done()]:
            _release(self._blocks.pop(index).size)
            self._finished.add(index)

    def leave(self) -> None:
        """This thread is done reading (a scan job ended): what lies behind where it read goes,
        unless another reader is behind it still."""
        with self._lock:
            position = self._positions.pop(threading.get_ident(), None)
            if position is not None:
                self._drop_below(min(self._positions.values(), default=position) // BLOCK_BYTES)
                if not self._positions:
                    self.idle_since, self._stopped = time.monotonic(), position

    def drop_passed(self) -> None:
        """Drop the blocks up to where the last reader stopped, blocks fetched ahead kept."""
        with self._lock:
            if not self._positions:  # no reader came back meanwhile
                self._drop_below(self._stopped // BLOCK_BYTES + 1)

    # --- range requests -------------------------------------------------------------------------

    def _fetch_block(self, start: int, stop: int) -> bytes:
        """A block; the part of it that the first bytes (read for the header) hold is not
        fetched again."""
        held = self._head[start:stop]
        if not held:
            return self._fetch(start, stop)
        rest = self._fetch(start + len(held), stop) if start + len(held) < stop else b""
        return held + rest

    def _fetch(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop), all of them or an error: a request cut short is tried again a
        bounded number of times, never taken for the file's contents."""
        problem = ""
        for attempt in range(TRIES):
            if self._closed and attempt:
                break
            try:
                data = bytes(self._file._fetch_range(start, stop))
            except ValueError as e:
                if "range" in str(e).lower():
                    raise InputError(
                        "the server ignores Range requests, and normcli reads remote files "
                        "by ranges (never a whole large body into memory)",
                        self.path,
                    ) from e
                raise remote.describe(e, self.path) from e
            except NormcliError:
                raise
            except Exception as e:
                error = remote.describe(e, self.path)
                if "404" in error.message or "403" in error.message:
                    raise error from e
                problem = error.message
            else:
                self.traffic.requests += 1
                self.traffic.received += len(data)
                if len(data) == stop - start:
                    return data
                problem = f"the server sent {len(data)} of {stop - start} bytes"
            time.sleep(RETRY_PAUSE * (attempt + 1))
        raise InputError(
            f"reading bytes {start}-{stop} failed {TRIES} times ({problem}); no figures "
            "are given from a partial read",
            self.path,
        )


# Remote files opened at once (the shards of a checkpoint): their headers' requests overlap.
OPENING = 8


def open_concurrently(
    open_one: Callable[[str], T], urls: list[str], close: Callable[[T], None]
) -> list[T]:
    """open_one(url) for each URL, several at once, in this context (the run's storage
    options); if one fails, those opened are closed and the first failure in order raised."""
    with ThreadPoolExecutor(min(OPENING, len(urls)), thread_name_prefix="normcli-open") as pool:
        futures = [pool.submit(contextvars.copy_context().run, open_one, url) for url in urls]
        outcomes = [f.exception() for f in futures]
    failed = next((e for e in outcomes if e is not None), None)
    if failed is None:
        return [f.result() for f in futures]
    for future, error in zip(futures, outcomes, strict=True):
        if error is None:
            close(future.result())
    raise failed


def _size(fs: Any, inner: str, shown: str) -> int:
    found = remote.call(lambda: fs.info(inner), shown, "cannot open")
    if found.get("type") == "directory":
        raise InputError("is a folder, not a checkpoint file", shown)
    size = found.get("size")
    if not isinstance(size, int):
        raise InputError(
            "the server does not say how large the file is; normcli reads remote files by ranges",
            shown,
        )
    return size


def _reserve(size: int, force: bool) -> bool:
    global _held_bytes
    with _budget_lock:
        if not force and _held_bytes + size > BUDGET_BYTES:
            return False
        _held_bytes += size
        return True


def _release(size: int) -> None:
    global _held_bytes
    with _budget_lock:
        _held_bytes -= size


def open_stream(spec: RemoteSpec) -> io.BufferedReader:
    """A buffered file object over the remote file (closing it closes the file)."""
    return io.BufferedReader(DataSlice(RemoteFile(spec), owned=True), buffer_size=HEAD_BYTES)
