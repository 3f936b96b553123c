"""The checkpoint formats normcli reads: one entry each, the only place a format is declared.

An entry names the format (--input-format), the suffixes that identify it when its content
does not, how to recognise its first bytes, the extra that installs its library, and its opener
as "module:function", imported only when a file of that format is opened. This module imports
nothing heavy: the command line builds its --input-format choices from it before numpy loads.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NPY_MAGIC = b"\x93NUMPY"
GGUF_MAGIC = b"GGUF"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

# (first bytes, path, file size) -> whether a file looks like the format
Sniff = Callable[[bytes, str, int], bool]


def resolve(target: str) -> Any:
    """The object `target` names as "module:attribute", its module imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _in_module(target: str, *arguments: str, worth_asking: Sniff | None = None) -> Sniff:
    """A sniffer of a reader module, which needs more than magic bytes (a header to parse);
    its module is imported only for a file that passes the cheap test `worth_asking`."""
    chosen = {"head": 0, "path": 1, "size": 2}

    def sniff(head: bytes, path: str, size: int) -> bool:
        if worth_asking is not None and not worth_asking(head, path, size):
            return False
        given = (head, path, size)
        return bool(resolve(target)(*(given[chosen[a]] for a in arguments)))

    return sniff


@dataclass(frozen=True)
class Format:
    name: str
    label: str  # as the list of what normcli reads names it
    suffixes: tuple[str, ...]
    sniff: Sniff
    opener: str  # "module:function", called with the path (and the --key, if takes_key)
    extra: str | None = None  # pip install 'normcli[extra]' brings its library
    takes_key: bool = False

    def open(self, path: str, key: str | None) -> Any:
        opener = resolve(self.opener)
        # other formats hold flat tensors: --key is for the PyTorch side of a compare or a run
        return opener(path, key) if self.takes_key else opener(path)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "safetensors",
            "safetensors",
            (".safetensors",),
            _in_module("normcli.readers.safetensors:looks_like", "head", "size"),
            "normcli.readers.safetensors:open_safetensors",
        ),
        Format(
            "npz",
            "npz",
            (".npz",),
            lambda head, path, size: head.startswith(ZIP_MAGIC),
            "normcli.readers.numpy:open_npz",
        ),
        Format(
            "npy",
            "npy",
            (".npy",),
            lambda head, path, size: head.startswith(NPY_MAGIC),
            "normcli.readers.numpy:open_npy",
        ),
        # .bin says too little to guess from: a PyTorch .bin is recognised by its content
        Format(
            "pytorch",
            "PyTorch",
            (".pt", ".pth"),
            _in_module(
                "normcli.readers.pytorch:looks_like_pytorch",
                "head",
                "path",
                # a zip archive, or a pickle stream (its PROTO opcode first)
                worth_asking=lambda head, path, size: (
                    head.startswith(ZIP_MAGIC) or head[:1] == b"\x80"
                ),
            ),
            "normcli.readers.pytorch:open_pytorch",
            takes_key=True,
        ),
        # a torch.save-like zip that holds code or constants: checked before PyTorch's
        Format(
            "torchscript",
            "TorchScript",
            (".jit",),
            _in_module(
                "normcli.readers.torchscript:looks_like_torchscript",
                "head",
                "path",
                worth_asking=lambda head, path, size: head.startswith(ZIP_MAGIC),
            ),
            "normcli.readers.torchscript:open_torchscript",
            takes_key=True,
        ),
        Format(
            "gguf",
            "GGUF",
            (".gguf",),
            lambda head, path, size: head[:4] == GGUF_MAGIC,
            "normcli.readers.gguf:open_gguf",
            extra="gguf",
        ),
        Format(
            "onnx",
            "ONNX",
            (".onnx",),
            _in_module(
                "normcli.readers.onnx:looks_like_onnx",
                "head",
                "path",
                worth_asking=lambda head, path, size: path.lower().endswith(".onnx"),
            ),
            "normcli.readers.onnx:open_onnx",
            extra="onnx",
        ),
        Format(
            "hdf5",
            "Keras/HDF5",
            (".h5", ".hdf5"),
            # a file with a user block keeps its signature at 512, 1024, ...: read as unknown
            lambda head, path, size: head.startswith(HDF5_MAGIC),
            "normcli.readers.hdf5:open_hdf5",
            extra="h5",
        ),
        Format(
            "keras",
            "Keras/HDF5",
            (".keras",),
            # a Keras 3 file is a zip archive that only its name tells from an npz
            lambda head, path, size: head.startswith(ZIP_MAGIC) and path.lower().endswith(".keras"),
            "normcli.readers.hdf5:open_hdf5",
            extra="h5",
        ),
    )
}

# The order content is tried in: the most specific first. A PyTorch file and a .keras file are
# zip archives too, so they are asked before npz takes any zip; safetensors and ONNX, whose
# first bytes are a length or a protobuf field, come last.
DETECTION_ORDER = (
    *("npy", "gguf", "hdf5", "keras", "torchscript", "pytorch"),
    *("npz", "safetensors", "onnx"),
)

# torch.distributed.checkpoint writes a folder, not a file: recognised by its metadata file
DCP = "dcp"
DCP_METADATA = ".metadata"


def is_dcp(path: str) -> bool:
    """A torch.distributed.checkpoint folder (one holding a .metadata file), or that file."""
    if os.path.basename(path) == DCP_METADATA:
        return os.path.isfile(path)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, DCP_METADATA))


def by_content(head: bytes, path: str, size: int) -> str | None:
    return next((n for n in DETECTION_ORDER if FORMATS[n].sniff(head, path, size)), None)


def by_suffix(path: str) -> str | None:
    suffix = os.path.splitext(path)[1].lower()
    return next((f.name for f in FORMATS.values() if suffix in f.suffixes), None)


def what_normcli_reads() -> str:
    """'safetensors, npz, ... and Keras/HDF5', for the message about a file it cannot read."""
    labels = list(dict.fromkeys(f.label for f in FORMATS.values()))
    return f"{', '.join(labels[:-1])} and {labels[-1]}"
