"""Open a checkpoint of any supported format: detected by content first, then by file suffix."""

from __future__ import annotations

import os
from dataclasses import replace

from ..errors import CorruptFileError, UnsupportedError, UsageError
from ..formats import FORMATS, by_content, by_suffix, what_normcli_reads
from . import sharded
from .base import Checkpoint, Origin, TensorSource
from .files import open_regular

__all__ = [
    "FORMATS",
    "Checkpoint",
    "Origin",
    "TensorSource",
    "detect_format",
    "find",
    "open_checkpoint",
    "reopen",
]


def detect_format(path: str) -> str:
    """The format of the file at `path`, from its first bytes, else from its suffix."""
    with open_regular(path) as f:
        head = f.read(64)
        size = f.seek(0, 2)
    found = by_content(head, path, size) or by_suffix(path)
    if found is not None:
        return found
    if size == 0:
        raise UnsupportedError("file is empty", path)
    raise UnsupportedError(
        f"unrecognised format (normcli reads {what_normcli_reads()} files; "
        "--input-format names one explicitly)",
        path,
    )


def open_checkpoint(
    path: str | os.PathLike[str], input_format: str | None = None, key: str | None = None
) -> Checkpoint:
    """Open `path` lazily: headers are read and validated, tensor data is not touched. `key`
    selects a sub-tree of a nested PyTorch checkpoint (e.g. "model"); other formats ignore it.
    Only the reader of the format at hand is imported."""
    path = os.fspath(path)
    if sharded.is_sharded(path):
        return sharded.open_sharded(path, lambda shard: open_checkpoint(shard, input_format, key))
    fmt = input_format or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
    checkpoint: Checkpoint = FORMATS[fmt].open(path, key)
    # a path as every process can name it (a worker's folder is not ours); a URL as it is
    where = path if "://" in path else os.path.abspath(path)
    key = key if FORMATS[fmt].takes_key else None
    checkpoint.tensors = [
        replace(t, origin=Origin(where, fmt, key, i)) for i, t in enumerate(checkpoint.tensors)
    ]
    return checkpoint


def reopen(origin: Origin) -> Checkpoint:
    """The file an Origin names, opened again (in another process, say): headers only."""
    return open_checkpoint(origin.location, origin.format, origin.key)


def find(checkpoint: Checkpoint, wanted: TensorSource) -> TensorSource:
    """`wanted` (read from this file elsewhere) in the reopened `checkpoint`, which must still
    describe it the same way."""
    origin = wanted.origin
    if origin is None:
        raise UsageError(f"tensor {wanted.name!r} is in memory: no other process can read it")
    found = checkpoint.tensors[origin.index] if origin.index < len(checkpoint.tensors) else None
    if found is None or (found.name, found.dtype, found.shape) != (
        wanted.name,
        wanted.dtype,
        wanted.shape,
    ):
        raise CorruptFileError(
            f"tensor {wanted.name!r} is not where it was when the run began (the file changed "
            "while it was read, or this machine sees another file under that name)",
            origin.location,
        )
    return found
