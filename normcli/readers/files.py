"""Opening and reading checkpoint files, with OS errors turned into clear user errors."""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import json
import math
import mmap
import os
import stat
import sys
import threading
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import numpy as np

from ..errors import CorruptFileError, InputError, UnsupportedError
from ..inputs import note_read
from . import remote

# Reads the raw bytes [start, stop) of one tensor's data, into `out` (at least that long) when
# it can, and returns them.
ByteReader = Callable[[int, int, np.ndarray], "bytes | memoryview | np.ndarray"]


class Data(Protocol):
    """A checkpoint file's bytes, wherever they lie: a local DataFile or a remote file."""

    path: str
    size: int

    def __len__(self) -> int: ...

    def __getitem__(self, span: slice) -> bytes: ...

    def readinto(self, buffer: memoryview, offset: int) -> int: ...

    def reader(self, base: int) -> Callable[[int, int, np.ndarray], np.ndarray]: ...

    def close(self) -> None: ...


class DataSlice(io.RawIOBase):
    """Bytes [start, start + length) of a file's Data (the whole file by default) as a seekable
    binary file object, for the libraries that read one (zipfile, h5py, onnx, the unpickler).
    `owned`: closing the slice closes the Data too."""

    def __init__(
        self, data: Data, start: int = 0, length: int | None = None, owned: bool = False
    ) -> None:
        super().__init__()
        self.data, self.start, self.owned, self.position = data, start, owned, 0
        self.length = data.size - start if length is None else length
        self.name = data.path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, origin + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = max(0, min(len(view), self.length - self.position))
        got = self.data.readinto(view[:wanted], self.start + self.position)
        self.position += got
        return got

    def close(self) -> None:
        if not self.closed and self.owned:
            self.data.close()
        super().close()


def open_data(path: str) -> Data:
    """The file at `path` (a local path or a URL), for reading tensor data in place."""
    if remote.is_url(path) and remote.local_path(path) is None:
        from .remote_file import RemoteFile

        return RemoteFile(remote.spec_for(path))
    return DataFile(remote.local_path(path) or path)


def reading_remote() -> bool:
    """Whether a remote file is open: reads then follow storage order, which it fetches ahead."""
    opened = sys.modules.get(f"{__package__}.remote_file")  # none unless a URL was read
    return opened is not None and bool(opened.any_open())


# what zipfile raises on a damaged archive: NotImplementedError for a "version needed to
# extract" or a compression method it does not know
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    NotImplementedError,
    OSError,
    EOFError,
    ValueError,
)


def open_zip(path: str) -> zipfile.ZipFile:
    """A zip archive (its directory read, members not): closing it closes what it opened. A
    damaged one is a CorruptFileError."""
    if not remote.is_url(path) or remote.local_path(path) is not None:
        local = remote.local_path(path) or path
        try:
            return zipfile.ZipFile(local)
        except ZIP_ERRORS as e:
            raise CorruptFileError(f"not a readable zip archive: {e}", path) from e
    stream = open_regular(path)
    try:
        archive = _OwningZipFile(stream)
    except ZIP_ERRORS as e:
        stream.close()
        raise CorruptFileError(f"not a readable zip archive: {e}", path) from e
    except BaseException:
        stream.close()
        raise
    archive.owned = stream
    return archive


class _OwningZipFile(zipfile.ZipFile):
    owned: BinaryIO | None = None

    def close(self) -> None:
        super().close()
        if self.owned is not None:
            self.owned.close()
            self.owned = None


def open_regular(path: str) -> BinaryIO:
    """Open a regular file for binary reading, or say plainly why it cannot be. A FIFO or a
    device is refused before anything waits on it: opening one for reading could block forever
    or read without end."""
    if remote.is_url(path):
        local = remote.local_path(path)
        if local is None:
            from .remote_file import open_stream

            return open_stream(remote.spec_for(path))
        path = local
    if os.path.isdir(path):
        raise InputError("is a directory, not a checkpoint file", path)
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise InputError("no such file", path) from e
    except PermissionError as e:
        raise InputError("permission denied", path) from e
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror or e}", path) from e
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise InputError(f"is {_kind(status.st_mode)}, not a regular file", path)
        note_read(status, path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def require_regular(path: str) -> None:
    """Refuse `path` unless it is a regular file, for the libraries that open files by name."""
    open_regular(path).close()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def load_json(path: str, what: str) -> Any:
    """A JSON document written by a program (a report, an index), read strictly: NaN, Infinity
    and numbers past float64 are refused, and so is nesting deeper than any such file needs."""
    with open_regular(path) as f:
        raw = f.read()
    try:
        return json.loads(raw, parse_constant=refuse_constant, parse_float=finite_float)
    except RecursionError as e:
        raise CorruptFileError(f"{what} nests too deeply to be valid", path) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{what} is not valid JSON: {e}", path) from e


def refuse_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token} is out of range")
    return value


# MADV_POPULATE_READ (Linux 5.14): maps a whole range at once, instead of a fault per page
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform == "linux" else None
# The pages all threads keep mapped, shared among the threads reading; each thread's share is
# kept within [WINDOW_MIN, WINDOW_MAX]. Releasing pages interrupts every other thread's CPU to
# flush its TLB: windows much smaller than WINDOW_MAX cost two threads a sixth of their speed.
WINDOWS_BYTES = 48 << 20
WINDOW_MIN = 6 << 20
WINDOW_MAX = 20 << 20
# Windows are counted and handed back in whole grains: the kernel maps a large page-cache folio
# (up to 2 MiB) whole when any of its pages is asked for.
GRAIN = 2 << 20
# A thread reading more files than this at once (trend, in lockstep) copies from the others.
MAX_WINDOWS = 4
_readers = 1
# the SIGBUS handler that makes reading through maps safe (normcli.sigbus, installed with the
# compiled kernels); until it is in place files are read with positioned reads
_guard: Any = None


def map_safely(guard: Any) -> None:
    """Read through memory maps from now on. `guard` (normcli.sigbus) answers for the maps it
    registers: a page that cannot be read there reads as zeros, and it counts the faults."""
    global _guard
    _guard = guard


_windows = threading.local()


@dataclass
class _Window:
    """The pages of one file that one thread keeps mapped: the grains [low, high), of which the
    bytes [start, stop) are mapped already; and the grain where its last read began."""

    low: int
    high: int
    start: int
    stop: int
    last_read: int


Windows = weakref.WeakKeyDictionary["DataFile", _Window]  # per thread; a file collected drops out


def set_readers(count: int) -> None:
    """How many threads are about to read at once, to size each one's share of WINDOWS_BYTES."""
    global _readers
    _readers = max(1, count)


def release_windows() -> None:
    """Hand back every page this thread keeps mapped: it is done with what it was reading.
    Raises if a page it read could not be (the values read there were zeros)."""
    remote_reads = sys.modules.get(f"{__package__}.remote_file")  # none unless a URL was read
    if remote_reads is not None:
        remote_reads.release_thread()
    windows = _thread_windows()
    for data, window in list(windows.items()):
        data._release(window.low, window.high)
    files = list(windows)
    windows.clear()
    if files:
        files[0]._check_faults(files)


def _window_bytes() -> int:
    return min(WINDOW_MAX, max(WINDOW_MIN, WINDOWS_BYTES // _readers))


def _thread_windows() -> Windows:
    found: Windows | None = getattr(_windows, "files", None)
    if found is None:
        found = _windows.files = weakref.WeakKeyDictionary()
    return found


def _grain_below(offset: int) -> int:
    return offset - offset % GRAIN


class DataFile:
    """A checkpoint file whose tensor data is read through a memory map, straight from the page
    cache with no copy, once a SIGBUS handler makes that safe (see map_safely); before that, and
    where a file cannot be mapped, with positioned reads.

    Memory stays flat whatever the file's size, and whatever the number of files: each thread
    keeps a window of mapped pages that moves along with its reads, and hands back
    (MADV_DONTNEED) what lies behind once its windows, over every file it reads, pass its share
    of WINDOWS_BYTES; the pages stay in the page cache. Ranges are mapped in whole
    (MADV_POPULATE_READ) before they are read, faster than a fault per page. A page that
    cannot be read (the file cut short while it is read, a read error) reads as zeros and is
    counted by the handler: the next read, or the end of the job, raises an error for it.
    """

    def __init__(self, path: str) -> None:
        with open_regular(path) as f:
            try:
                self.fd = os.dup(f.fileno())
            except OSError as e:
                raise InputError(f"cannot open: {e.strerror}", path) from e
        self.path = path
        self.size = os.fstat(self.fd).st_size
        self._map: mmap.mmap | None = None
        self._slot: int | None = None
        self._mappable = self.size > 0
        self._map_lock = threading.Lock()
        self._populate = _POPULATE_READ

    def _current_map(self) -> mmap.mmap | None:
        """The file's map, made on the first read once mapping is safe."""
        if self._map is None and self._mappable and _guard is not None:
            with self._map_lock:
                if self._map is None and self._mappable:
                    self._map = self._open_map()
                    self._mappable = self._map is not None
        return self._map

    def _open_map(self) -> mmap.mmap | None:
        try:
            mapped = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError, AttributeError):
            return None  # not mappable here (a pipe-like file, a filesystem without mmap)
        start = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
        self._slot = _guard.register(start, len(mapped))
        if self._slot is None:  # the handler's table is full: no map
            mapped.close()
            return None
        return mapped

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        """Small reads (headers): file[start:stop], clipped at the end like a bytes slice."""
        start, stop, _ = span.indices(self.size)
        return os.pread(self.fd, max(0, stop - start), start)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Copy the bytes from `offset` into `buffer`, as many as the file holds; their count."""
        return os.preadv(self.fd, [buffer], offset) if offset < self.size else 0

    def reader(self, base: int) -> Callable[[int, int, np.ndarray], np.ndarray]:
        """Reads bytes [start, stop) of a tensor whose data begins at `base`: a view of the
        file's pages, or a copy in `out` (at least that long) where a view cannot serve."""

        def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
            first, last = base + start, base + stop
            mapped = self._current_map()
            if mapped is None or last > self.size:
                return self._read_into(first, last, out)
            if last > len(mapped):  # mapped after the file was cut short
                raise CorruptFileError(self._cut_short() or "the file ended early", self.path)
            windows = _thread_windows()
            self._check_faults(windows)  # what this thread read before
            if self not in windows and len(windows) >= MAX_WINDOWS:
                return self._copied(first, last, out)  # one file too many mapped at once
            view = self._mapped(first, last, windows)
            if first % 8:  # the kernels want aligned values
                np.copyto(out[: last - first], view)
                return out[: last - first]
            return view

        return read

    def _copied(self, first: int, last: int, out: np.ndarray) -> np.ndarray:
        """The bytes [first, last) copied into `out`, and their pages handed back at once."""
        self._populate_range(first - first % mmap.PAGESIZE, last)
        np.copyto(out[: last - first], self._view(first, last))
        self._release(_grain_below(first), min(self.size, _grain_below(last - 1) + GRAIN))
        return out[: last - first]

    def _view(self, first: int, last: int) -> np.ndarray:
        assert self._map is not None
        return np.frombuffer(self._map, dtype=np.uint8, count=last - first, offset=first)

    def _mapped(self, first: int, last: int, windows: Windows) -> np.ndarray:
        """The bytes [first, last) as a view of the map, this thread's window moved over them.
        While it reads this file alone, a thread maps a quarter of its share ahead at once."""
        grain = _grain_below(first)
        window = windows.get(self)
        if window is None or not window.low <= grain <= window.high:
            if window is not None:
                self._release(window.low, window.high)
            window = windows[self] = _Window(grain, grain, first, first, grain)
        alone = len(windows) == 1
        wanted = max(last, min(self.size, first + _window_bytes() // 4)) if alone else last
        start = first if first < window.start else max(first, window.stop)
        if wanted > start:
            self._populate_range(start - start % mmap.PAGESIZE, wanted)
            window.start, window.stop = min(window.start, first), max(window.stop, wanted)
        window.high = max(window.high, min(self.size, -(-window.stop // GRAIN) * GRAIN))
        window.last_read = grain
        self._trim(windows)
        return self._view(first, last)

    @staticmethod
    def _trim(windows: Windows) -> None:
        """Hand back what lies behind each window's last read, once this thread's windows pass
        its share."""
        if sum(w.high - w.low for w in windows.values()) <= _window_bytes():
            return
        for data, window in list(windows.items()):
            data._release(window.low, window.last_read)
            window.low = window.last_read
            window.start = max(window.start, window.low)

    def _release(self, low: int, high: int) -> None:
        if self._map is not None and high > low:
            self._map.madvise(mmap.MADV_DONTNEED, low, high - low)

    def _populate_range(self, start: int, stop: int) -> None:
        """Map [start, stop): an error here, not a SIGBUS later, when the file has been cut
        short."""
        assert self._map is not None
        if self._populate is None:
            return
        try:
            self._map.madvise(self._populate, start, stop - start)
        except OSError as e:
            if e.errno == errno.EINVAL:
                self._populate = None  # a kernel before 5.14: pages fault in one by one
                return
            raise CorruptFileError(self._why_unreadable(e), self.path) from e

    def _check_faults(self, files: Iterable[DataFile]) -> None:
        """Raise if a page of this file's map, or of `files` (those this thread reads), could
        not be read, naming the file and, when it was cut short, saying so."""
        for data in [self, *files]:
            if data._faults():
                raise CorruptFileError(
                    data._cut_short()
                    or "a page of the file could not be read (a disk or network read error, "
                    "or a file changed while it was read)",
                    data.path,
                )

    def _faults(self) -> int:
        """Pages of this file's map that could not be read: counted by the SIGBUS handler for
        this map alone, so another scan running at once neither sees nor clears them."""
        slot = self._slot
        return 0 if _guard is None or slot is None else int(_guard.faults(slot))

    def _cut_short(self) -> str | None:
        now = os.fstat(self.fd).st_size if self.fd >= 0 else self.size
        if now < self.size:
            return f"the file was cut short while being read ({now} bytes, {self.size} at first)"
        return None

    def _why_unreadable(self, error: OSError) -> str:
        return self._cut_short() or f"cannot read the file: {error.strerror or error}"

    def _read_into(self, first: int, last: int, out: np.ndarray) -> np.ndarray:
        view = out.data.cast("B")[: last - first]
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], first + done)
            if got <= 0:
                raise CorruptFileError(
                    self._cut_short() or "the file ended early (truncated while being read?)",
                    self.path,
                )
            done += got
        return out[: last - first]

    def close(self) -> None:
        self._mappable = False
        if self._map is not None:
            # a chunk still referenced keeps the map open until it is collected (and the
            # handler answering for it: the range stays registered)
            with contextlib.suppress(BufferError):
                self._map.close()
                if self._slot is not None:
                    _guard.unregister(self._slot)
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
