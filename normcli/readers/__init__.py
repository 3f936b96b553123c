"""Open a checkpoint of any supported format: detected by content first, then by file suffix."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import UnsupportedError, UsageError
from . import gguf as gguf_reader
from . import hdf5 as hdf5_reader
from . import numpy as numpy_reader
from . import onnx as onnx_reader
from . import pytorch as pytorch_reader
from . import safetensors as safetensors_reader
from . import sharded
from .base import Checkpoint, TensorSource
from .files import open_regular, require_regular
from .zipped import ZIP_MAGIC

__all__ = ["FORMATS", "Checkpoint", "TensorSource", "detect_format", "open_checkpoint"]

FORMATS: dict[str, Callable[[str], Checkpoint]] = {
    "safetensors": safetensors_reader.open_safetensors,
    "npz": numpy_reader.open_npz,
    "npy": numpy_reader.open_npy,
    "pytorch": pytorch_reader.open_pytorch,
    "gguf": gguf_reader.open_gguf,
    "onnx": onnx_reader.open_onnx,
    "hdf5": hdf5_reader.open_hdf5,
    "keras": hdf5_reader.open_hdf5,
}

# .bin says too little to guess from: a PyTorch .bin is recognised by its content
_SUFFIXES = {
    ".safetensors": "safetensors",
    ".npz": "npz",
    ".npy": "npy",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".gguf": "gguf",
    ".onnx": "onnx",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".keras": "keras",
}


def detect_format(path: str) -> str:
    """The format of the file at `path`, from its first bytes, else from its suffix."""
    with open_regular(path) as f:
        head = f.read(64)
        size = f.seek(0, 2)
    if head.startswith(numpy_reader.NPY_MAGIC):
        return "npy"
    if gguf_reader.looks_like_gguf(head):
        return "gguf"
    if hdf5_reader.looks_like_hdf5(head):
        return "hdf5"
    if hdf5_reader.looks_like_keras(head, path):
        return "keras"
    if pytorch_reader.looks_like_pytorch(head, path):
        return "pytorch"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if safetensors_reader.looks_like(head, size):
        return "safetensors"
    if onnx_reader.looks_like_onnx(head, path):
        return "onnx"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if size == 0:
        raise UnsupportedError("file is empty", path)
    raise UnsupportedError(
        "unrecognised format (normcli reads safetensors, npz, npy, PyTorch, GGUF, ONNX and "
        "Keras/HDF5 files; "
        "--input-format names one explicitly)",
        path,
    )


def open_checkpoint(
    path: str | os.PathLike[str], input_format: str | None = None, key: str | None = None
) -> Checkpoint:
    """Open `path` lazily: headers are read and validated, tensor data is not touched. `key`
    selects a sub-tree of a nested PyTorch checkpoint (e.g. "model"); other formats ignore it."""
    path = os.fspath(path)
    if sharded.is_sharded(path):
        return sharded.open_sharded(path, lambda shard: open_checkpoint(shard, input_format, key))
    require_regular(path)  # the format libraries open files by name, and would wait on a FIFO
    fmt = input_format or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "pytorch":
        return pytorch_reader.open_pytorch(path, key)
    # other formats hold flat tensors: --key is for the PyTorch side of a compare or a run
    return FORMATS[fmt](path)
