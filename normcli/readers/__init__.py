"""Open a checkpoint of any supported format: detected by content first, then by file suffix."""

from __future__ import annotations

import os

from ..errors import UnsupportedError, UsageError
from ..formats import FORMATS, by_content, by_suffix, what_normcli_reads
from . import sharded
from .base import Checkpoint, TensorSource
from .files import open_regular, require_regular

__all__ = ["FORMATS", "Checkpoint", "TensorSource", "detect_format", "open_checkpoint"]


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
    require_regular(path)  # the format libraries open files by name, and would wait on a FIFO
    fmt = input_format or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
    checkpoint: Checkpoint = FORMATS[fmt].open(path, key)
    return checkpoint
