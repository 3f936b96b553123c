"""Opening and reading checkpoint files, with OS errors turned into clear user errors."""

from __future__ import annotations

import contextlib
import errno
import importlib
import mmap
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from ..errors import CorruptFileError, InputError, UnsupportedError

# Reads the raw bytes [start, stop) of one tensor's data, into `out` (at least that long) when
# it can, and returns them.
ByteReader = Callable[[int, int, np.ndarray], "bytes | memoryview | np.ndarray"]


def open_regular(path: str) -> BinaryIO:
    """Open a regular file for binary reading, or say plainly why it cannot be."""
    if os.path.isdir(path):
        raise InputError("is a directory, not a checkpoint file", path)
    try:
        return open(path, "rb")
    except FileNotFoundError as e:
        raise InputError("no such file", path) from e
    except PermissionError as e:
        raise InputError("permission denied", path) from e
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror or e}", path) from e


# MADV_POPULATE_READ (Linux 5.14): maps a whole range at once, instead of a fault per page
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform == "linux" else None
# what each thread maps ahead at once, and how much it keeps mapped behind before handing back
# (memory grows with the threads, about 20 MiB each, never with the checkpoint)
POPULATE_BYTES = 4 << 20
RELEASE_BYTES = 16 << 20


class DataFile:
    """A checkpoint file whose tensor data is read through a memory map, straight from the page
    cache with no copy (positioned reads where a file cannot be mapped).

    Memory stays flat whatever the file's size: each thread hands back (MADV_DONTNEED) the pages
    it has read, so at most POPULATE_BYTES + RELEASE_BYTES per thread stay mapped; the pages
    stay in the page cache. Pages are mapped a range at a time (MADV_POPULATE_READ) before they
    are read, which is faster than a fault per page and turns a file cut short since it was
    opened into an error rather than a crash (SIGBUS), but for a file cut during the read.
    """

    def __init__(self, path: str) -> None:
        with open_regular(path) as f:
            self.fd = os.dup(f.fileno())
        self.path = path
        self.size = os.fstat(self.fd).st_size
        self._map = self._open_map()
        self._populate = _POPULATE_READ
        self._last = threading.local()

    def _open_map(self) -> mmap.mmap | None:
        if self.size == 0:
            return None
        try:
            return mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError, AttributeError):
            return None  # not mappable here (a pipe-like file, a filesystem without mmap)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        """Small reads (headers): file[start:stop], clipped at the end like a bytes slice."""
        start, stop, _ = span.indices(self.size)
        return os.pread(self.fd, max(0, stop - start), start)

    def reader(self, base: int) -> Callable[[int, int, np.ndarray], np.ndarray]:
        """Reads bytes [start, stop) of a tensor whose data begins at `base`: a view of the
        file's pages, or a copy in `out` (at least that long) where a view cannot serve."""

        def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
            first, last = base + start, base + stop
            if self._map is None or last > self.size:
                return self._read_into(first, last, out)
            view = self._mapped(first, last)
            if first % 8:  # the kernels want aligned values
                np.copyto(out[: last - first], view)
                return out[: last - first]
            return view

        return read

    def _mapped(self, first: int, last: int) -> np.ndarray:
        """The bytes [first, last) as a view of the map. This thread's window of mapped pages
        (read, or mapped ahead) moves along with its reads; what falls behind is handed back
        once it adds up to RELEASE_BYTES, or all of it when the thread reads elsewhere: each
        release interrupts every other thread's CPU to flush its TLB, which cost a third of the
        speed of two threads when done for every chunk."""
        assert self._map is not None
        page = first - first % mmap.PAGESIZE
        low, high = getattr(self._last, "window", (page, page))
        if page < low or page > high:
            self._release(low, high)
            low = high = page
        elif page - low >= RELEASE_BYTES:
            self._release(low, page)
            low = page
        if last > high:
            start = max(page, high - high % mmap.PAGESIZE)
            high = min(self.size, max(last, page + POPULATE_BYTES))
            self._populate_range(start, high)
        self._last.window = (low, high)
        return np.frombuffer(self._map, dtype=np.uint8, count=last - first, offset=first)

    def _release(self, low: int, high: int) -> None:
        assert self._map is not None
        if high > low:
            self._map.madvise(mmap.MADV_DONTNEED, low, high - low)

    def _populate_range(self, start: int, stop: int) -> None:
        assert self._map is not None
        if self._populate is None:
            return
        try:
            self._map.madvise(self._populate, start, stop - start)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise CorruptFileError(
                    f"cannot read the file (cut short while being read?): {e.strerror}",
                    self.path,
                ) from e
            self._populate = None  # a kernel before 5.14: pages fault in one by one

    def _read_into(self, first: int, last: int, out: np.ndarray) -> np.ndarray:
        view = out.data.cast("B")[: last - first]
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], first + done)
            if got <= 0:
                raise CorruptFileError(
                    "the file ended early (truncated while being read?)", self.path
                )
            done += got
        return out[: last - first]

    def close(self) -> None:
        if self._map is not None:
            # a chunk still referenced keeps the map open until it is collected
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def import_optional(package: str, *submodules: str, what: str, extra: str, path: str) -> Any:
    """A format's own library, installed with an extra; its absence said in one line."""
    try:
        module = importlib.import_module(package)
        for submodule in submodules:
            importlib.import_module(submodule)
    except ImportError as e:
        raise UnsupportedError(
            f"{what}: reading it needs the {package} package (pip install 'normcli[{extra}]')",
            path,
        ) from e
    return module
