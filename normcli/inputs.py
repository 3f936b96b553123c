"""The files a run has read, by identity (device, inode): no output may replace one, whatever
name it is given (a link, a member of a folder, an index or a glob, a baseline, a settings file,
ONNX external data). Standard library only: the command line installs it before any import."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# identity -> the name the run read it under; None while no run records
_reads: dict[tuple[int, int], str] | None = None


@contextlib.contextmanager
def recording_reads() -> Iterator[None]:
    """Note each file opened for reading from here on (a command line run: one at a time)."""
    global _reads
    previous, _reads = _reads, {}
    try:
        yield
    finally:
        _reads = previous


def note_read(status: os.stat_result, path: str) -> None:
    """A file was opened for reading (`status` from fstat on it)."""
    if _reads is not None:
        _reads.setdefault((status.st_dev, status.st_ino), path)


def read_by_this_run(path: str) -> str | None:
    """The name under which this run read the file at `path` (links followed), if it did."""
    if _reads is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    return _reads.get((status.st_dev, status.st_ino))
