"""The .metadata file of a torch.distributed.checkpoint folder, read without torch: a pickle of
torch's metadata dataclasses, unpickled with inert records standing in for them (as the tensor
checkpoints' restricted unpickler does), then checked and turned into plain descriptions."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from ..dtypes import DType
from ..errors import CorruptFileError, UnsupportedError
from ..formats import DCP_METADATA
from .torch_pickle import TORCH_DTYPES, RestrictedUnpickler, is_size, unpickle

# torch moved these classes from _shard to checkpoint (2.2); old folders name the old modules
_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed._shard.sharded_tensor.metadata",
)
_RECORDS = {
    "Metadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "MetadataIndex",
    "StorageMeta",
    "_StorageInfo",
}
# TensorProperties pickles a tuple (torch.memory_format cannot be pickled): these, in order
_PROPERTIES = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")


@dataclass(frozen=True)
class Chunk:
    """A box of a tensor, [offsets, offsets + sizes), stored as the tensor torch.save wrote at
    bytes [offset, offset + length) of `file` (a name in the checkpoint's folder)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: DType
    torch_dtype: str
    shape: tuple[int, ...]
    chunks: list[Chunk]


@dataclass(frozen=True)
class Contents:
    tensors: list[TensorEntry]
    # entries stored as pickled bytes (step counters, settings): never unpickled, only counted
    values: list[str]


class _Record(dict):  # type: ignore[type-arg]
    """One of torch's metadata dataclasses: its fields only."""

    __slots__ = ()
    kind = ""
    # a MetadataIndex is a dict key: records are told apart by identity, as unpickled
    __hash__ = object.__hash__  # type: ignore[assignment]
    __eq__ = object.__eq__

    def __setstate__(self, state: object) -> None:
        if self.kind == "TensorProperties" and isinstance(state, tuple):
            if len(state) != len(_PROPERTIES):
                raise CorruptFileError(f"TensorProperties of {len(state)} values")
            state = dict(zip(_PROPERTIES, state, strict=True))
        elif isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CorruptFileError(f"{self.kind} is pickled with malformed state")
        self.update(state)


class _Tag:
    """A value the metadata names only to describe (a layout, a memory format, a path)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: object) -> None:
        raise CorruptFileError(f"the metadata sets state on {self.name}")


def _tagger(kind: str) -> Any:
    def tag(*args: Any) -> _Tag:
        if not all(isinstance(a, (str, int)) for a in args):
            raise CorruptFileError(f"{kind} is rebuilt from malformed arguments")
        return _Tag(f"{kind}{args!r}")

    return tag


_TAGS = {
    "torch.serialization._get_layout": _tagger("layout"),
    "pathlib.PosixPath": _tagger("path"),
    "pathlib.WindowsPath": _tagger("path"),
    "pathlib.PurePosixPath": _tagger("path"),
    "pathlib.PureWindowsPath": _tagger("path"),
    **{f"{m}._MEM_FORMAT_ENCODING": _tagger("memory format") for m in _MODULES},
    **{f"{m}.MEM_FORMAT_ENCODING": _tagger("memory format") for m in _MODULES},
}


class MetadataUnpickler(RestrictedUnpickler):
    """The restricted unpickler, with inert records for torch's checkpoint metadata classes."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw))
        self.records: dict[str, type[_Record]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _TAGS:
            return _TAGS[full]
        if module in _MODULES and (name in _RECORDS or name == "TensorProperties"):
            if name not in self.records:
                self.records[name] = type(name, (_Record,), {"__slots__": (), "kind": name})
            return self.records[name]
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptFileError("the metadata refers to a storage; torch writes none there")


def read_metadata(raw: bytes) -> Contents:
    """The tensors and other entries a .metadata pickle describes, checked for consistency."""
    root = unpickle(MetadataUnpickler(raw), DCP_METADATA)
    if not _is(root, "Metadata"):
        raise CorruptFileError(f"holds a {type(root).__name__}, not torch's checkpoint Metadata")
    entries = root.get("state_dict_metadata")
    storage = root.get("storage_data")
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise UnsupportedError(
            "the metadata has no state_dict_metadata and storage_data of FileSystemWriter's "
            "kind (written by another storage writer?)"
        )
    where = _storage_index(storage)
    tensors, values = [], []
    for name, entry in entries.items():
        if not isinstance(name, str):
            raise CorruptFileError(f"an entry is named by a {type(name).__name__}")
        if _is(entry, "BytesStorageMetadata"):
            values.append(name)
        elif _is(entry, "TensorStorageMetadata"):
            tensors.append(_tensor(name, entry, where))
        else:
            raise UnsupportedError(f"entry {name!r} is a {type(entry).__name__}")
    return Contents(tensors, values)


def _is(value: Any, kind: str) -> bool:
    return isinstance(value, _Record) and value.kind == kind


def _storage_index(storage: dict[Any, Any]) -> dict[tuple[str, tuple[int, ...]], _Record]:
    """The storage info of each chunk, by tensor name and chunk offsets."""
    index: dict[tuple[str, tuple[int, ...]], _Record] = {}
    for key, info in storage.items():
        if not _is(key, "MetadataIndex") or not _is(info, "_StorageInfo"):
            raise CorruptFileError("storage_data maps something other than chunks to files")
        offset = key.get("offset")
        if offset is None:
            continue  # a bytes entry
        if not isinstance(offset, tuple) or not is_size(*offset):
            raise CorruptFileError(f"chunk of {key.get('fqn')!r} at offsets {offset!r:.60}")
        index[(str(key.get("fqn")), offset)] = info
    return index


def _tensor(
    name: str, entry: _Record, where: dict[tuple[str, tuple[int, ...]], _Record]
) -> TensorEntry:
    what = f"tensor {name!r}"
    properties = entry.get("properties")
    if not _is(properties, "TensorProperties"):
        raise CorruptFileError(f"{what}: no tensor properties")
    torch_dtype = getattr(properties.get("dtype"), "name", None)  # type: ignore[union-attr]
    if not isinstance(torch_dtype, str) or torch_dtype not in TORCH_DTYPES:
        raise CorruptFileError(f"{what}: no torch dtype in its properties")
    dtype = TORCH_DTYPES[torch_dtype]
    if dtype is None:
        raise UnsupportedError(f"{what}: dtype torch.{torch_dtype} is not supported")
    layout = properties.get("layout")  # type: ignore[union-attr]
    if isinstance(layout, _Tag) and layout.name != "layout('torch.strided',)":
        raise UnsupportedError(f"{what}: {layout.name} tensors are not supported")
    shape = entry.get("size")
    if not isinstance(shape, tuple) or not is_size(*shape):
        raise CorruptFileError(f"{what}: malformed size {shape!r:.60}")
    chunks = entry.get("chunks")
    if not isinstance(chunks, list):
        raise CorruptFileError(f"{what}: no list of chunks")
    return TensorEntry(name, dtype, torch_dtype, shape, [_chunk(name, c, where) for c in chunks])


def _chunk(name: str, chunk: Any, where: dict[tuple[str, tuple[int, ...]], _Record]) -> Chunk:
    what = f"tensor {name!r}"
    offsets = chunk.get("offsets") if _is(chunk, "ChunkStorageMetadata") else None
    sizes = chunk.get("sizes") if _is(chunk, "ChunkStorageMetadata") else None
    if not (
        isinstance(offsets, tuple)
        and isinstance(sizes, tuple)
        and is_size(*offsets, *sizes)
        and len(offsets) == len(sizes)
    ):
        raise CorruptFileError(f"{what}: malformed chunk (offsets {offsets!r:.40}, {sizes!r:.40})")
    info = where.get((name, offsets))
    if info is None:
        raise CorruptFileError(f"{what}: the chunk at {list(offsets)} is stored in no file")
    if info.get("transform_descriptors"):
        raise UnsupportedError(
            f"{what}: stored through transforms ({info['transform_descriptors']!r:.60}); "
            "normcli reads chunks saved as they are"
        )
    file, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    if not isinstance(file, str) or file in ("", ".", "..") or "/" in file or "\\" in file:
        raise CorruptFileError(f"{what}: its chunk lies in {file!r:.60}, not a file of the folder")
    if not (isinstance(offset, int) and isinstance(length, int) and is_size(offset, length)):
        raise CorruptFileError(f"{what}: malformed byte range {offset!r:.30}, {length!r:.30}")
    return Chunk(offsets, sizes, file, offset, length)
