"""Open a checkpoint of any supported format: detected by content first, then by file suffix."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from ..errors import NormcliError, UnsupportedError, UsageError
from ..formats import DCP, FORMATS, by_content, by_suffix, resolve, what_normcli_reads
from . import remote, sharded
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
        f"unrecognised format (normcli reads {what_normcli_reads()} files, and "
        "torch.distributed.checkpoint folders; "
        "--input-format names one explicitly)",
        path,
    )


def open_checkpoint(
    path: str | os.PathLike[str],
    input_format: str | None = None,
    key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Open `path` (a local path or a URL) lazily: headers are read and validated, tensor data
    is not touched. `key` selects a sub-tree of a nested PyTorch checkpoint (e.g. "model");
    other formats ignore it. `storage_options` go to the filesystem of a URL (fsspec's). Only
    the reader of the format at hand is imported."""
    path = os.fspath(path)
    if not remote.is_url(path):
        return _open(path, input_format, key)
    from .remote_file import session

    # without options of its own, a shard keeps those of the checkpoint that names it
    options = (
        contextlib.nullcontext()
        if storage_options is None
        else remote.storage_options(storage_options)
    )
    with options, session():
        return _open_url(path, input_format, key)


def _open_url(path: str, input_format: str | None, key: str | None) -> Checkpoint:
    if not remote.is_url(path):
        return _open(path, input_format, key)
    from . import hub

    shown = remote.redact(path)
    resolved = remote.local_path(path) or hub.resolve(path)
    try:
        checkpoint = _open(resolved, input_format, key)
    except NormcliError as e:
        if e.path in (resolved, remote.redact(resolved)):
            e.path = shown
        raise
    checkpoint.path = shown
    return checkpoint


def _open(path: str, input_format: str | None, key: str | None) -> Checkpoint:
    if input_format in (None, DCP) and remote.is_dcp(path):
        checkpoint: Checkpoint = resolve("normcli.readers.dcp:open_dcp")(path, key)
        return checkpoint
    if sharded.is_sharded(path):
        return sharded.open_sharded(path, lambda shard: _open_url(shard, input_format, key))
    if not remote.is_url(path):  # the format libraries open files by name: a FIFO would hang
        require_regular(path)
    fmt = input_format or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
    opened: Checkpoint = FORMATS[fmt].open(path, key)
    return opened
