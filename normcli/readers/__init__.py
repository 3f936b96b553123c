"""Open a checkpoint of any supported format: detected by content first, then by file suffix."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..errors import CorruptFileError, NormcliError, UnsupportedError, UsageError
from ..formats import DCP, FORMATS, by_content, by_suffix, resolve, what_normcli_reads
from . import remote, sharded
from .base import Checkpoint, Origin, TensorSource
from .files import open_regular, require_regular

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
        return _located(resolve("normcli.readers.dcp:open_dcp")(path, key), path, DCP, key)
    if sharded.is_sharded(path):
        return sharded.open_sharded(path, lambda shard: _open_url(shard, input_format, key))
    if not remote.is_url(path):  # the format libraries open files by name: a FIFO would hang
        require_regular(path)
    fmt = input_format or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
    opened = FORMATS[fmt].open(path, key)
    return _located(opened, path, fmt, key if FORMATS[fmt].takes_key else None)


def _located(checkpoint: Checkpoint, path: str, fmt: str, key: str | None) -> Checkpoint:
    """The checkpoint, each tensor told where it lies so that another process can open it: a
    local path made absolute (a worker's folder is not ours), a URL with its storage options."""
    if remote.is_url(path):
        where, options = path, remote.spec_for(path).options
    else:
        where, options = os.path.abspath(path), ()
    file = Origin(where, fmt, key, 0, options)
    checkpoint.tensors = [
        replace(t, origin=replace(file, index=i)) for i, t in enumerate(checkpoint.tensors)
    ]
    return checkpoint


def reopen(origin: Origin) -> Checkpoint:
    """The file an Origin names, opened again (in another process, say): headers only."""
    return open_checkpoint(origin.location, origin.format, origin.key, dict(origin.storage_options))


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
            remote.redact(origin.location),
        )
    return found
