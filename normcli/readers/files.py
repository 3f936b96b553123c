"""Opening and memory-mapping checkpoint files, with OS errors turned into clear user errors."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from ..errors import InputError


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


Mapped = mmap.mmap | bytes


def slice_reader(buffer: Mapped, base: int) -> Callable[[int, int], np.ndarray]:
    """Reads bytes [start, stop) of a tensor whose data begins at `base` in a mapped file."""

    def read(start: int, stop: int) -> np.ndarray:
        # a view for just this chunk: once the chunk is dropped, nothing pins the map open
        return np.frombuffer(buffer, dtype=np.uint8, count=stop - start, offset=base + start)

    return read


def map_file(path: str, size: int) -> tuple[Mapped, Callable[[], None]]:
    """The whole file as a read-only memory map, and how to unmap it."""
    if size == 0:
        return b"", lambda: None
    with open_regular(path) as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def close() -> None:
        # arrays may still view the map; it is then unmapped when the last of them is freed
        with contextlib.suppress(BufferError):
            mapped.close()

    return mapped, close
