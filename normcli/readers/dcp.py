"""torch.distributed.checkpoint (DCP) folders, read without torch: the .metadata pickle says
which box of which tensor lies where in the __<rank>_<n>.distcp files; each box is a small
torch.save archive inside one of them. A tensor is read as one, its boxes put back in place, in
the order of the consolidated state dict."""

from __future__ import annotations

import bisect
import io
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..errors import CorruptFileError, NormcliError, UnsupportedError, UsageError
from ..formats import DCP, DCP_METADATA, ZIP_MAGIC
from . import remote
from .base import Checkpoint, TensorSource
from .dcp_metadata import Chunk, TensorEntry, read_metadata
from .files import Data, DataSlice, open_data, open_regular
from .pytorch import flatten, tensor_source
from .torch_archive import Loaded, archive_prefix, check_byteorder, load_pickle, open_zip
from .torch_pickle import RestrictedUnpickler, TensorStub
from .training import flat_slots

FORMAT = DCP
# Boxes of one tensor are put in place through a grid of at most this many cells.
MAX_CELLS = 1 << 20


def open_dcp(path: str, key: str | None = None) -> Checkpoint:
    """Open a DCP folder (or its .metadata file); `key` (dotted, e.g. "model") reads only the
    entries under it, named from there."""
    named = path.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    folder = remote.parent(path) if named == DCP_METADATA else path.rstrip("/")
    metadata_path = remote.join_path(folder, DCP_METADATA)
    with open_regular(metadata_path) as f:
        raw = f.read()
    try:
        contents = read_metadata(raw)
    except NormcliError as e:
        e.path = e.path or metadata_path
        raise
    tensors, values = _selected(contents.tensors, contents.values, key, folder)
    files: dict[str, Data] = {}
    closers: list[Callable[[], None]] = []
    try:
        sources = [_assembled(entry, folder, files, closers) for entry in tensors]
    except BaseException:
        for data in files.values():
            data.close()
        raise
    closers = [data.close for data in files.values()] + closers
    slots = flat_slots([(e.name, e.shape, e.torch_dtype) for e in tensors], values)
    sources = [replace(s, optimizer=slots.get(s.name)) for s in sources]
    nbytes = sum(data.size for data in files.values()) + len(raw)
    return Checkpoint(
        folder, FORMAT, nbytes, sources, closers, shards=len(files), skipped_values=len(values)
    )


def _selected(
    tensors: list[TensorEntry], values: list[str], key: str | None, folder: str
) -> tuple[list[TensorEntry], list[str]]:
    """The entries under `key`, renamed from there (DCP flattens nested dicts to dotted names)."""
    if key is None:
        return tensors, values
    prefix = f"{key}."
    chosen = [
        TensorEntry(e.name[len(prefix) :], e.dtype, e.torch_dtype, e.shape, e.chunks)
        for e in tensors
        if e.name.startswith(prefix)
    ]
    chosen += [e for e in tensors if e.name == key]
    kept = [v for v in values if v.startswith(prefix) or v == key]
    if not chosen and not kept:
        tops = sorted({name.split(".", 1)[0] for name in [*(e.name for e in tensors), *values]})
        shown = ", ".join(repr(t) for t in tops[:20])
        raise UsageError(f"no key {key!r} in the checkpoint (its top-level keys: {shown})", folder)
    return chosen, kept


def _assembled(
    entry: TensorEntry, folder: str, files: dict[str, Data], closers: list[Callable[[], None]]
) -> TensorSource:
    """The tensor `entry` whole, its chunks read from their files."""
    pieces = [_piece(entry, chunk, folder, files, closers) for chunk in entry.chunks]
    names = sorted({chunk.file for chunk in entry.chunks})
    shard = ", ".join(names) if names else None
    if len(pieces) == 1 and entry.chunks[0].sizes == entry.shape:
        only = pieces[0]
        return TensorSource(entry.name, entry.dtype, entry.shape, only.read_bytes, shard=shard)
    grid = _Grid(entry, pieces)
    return TensorSource(entry.name, entry.dtype, entry.shape, grid.read, shard=shard)


def _piece(
    entry: TensorEntry,
    chunk: Chunk,
    folder: str,
    files: dict[str, Data],
    closers: list[Callable[[], None]],
) -> TensorSource:
    """One chunk's values, from the torch.save archive at its byte range."""
    path = remote.join_path(folder, chunk.file)
    if chunk.file not in files:
        if not remote.is_url(path) and not os.path.isfile(path):
            raise CorruptFileError("missing: the folder's .metadata names this file", path)
        files[chunk.file] = open_data(path)
    data = files[chunk.file]
    what = f"the chunk of tensor {entry.name!r} at {list(chunk.offsets)}"
    end = chunk.offset + chunk.length
    if end > data.size:
        raise CorruptFileError(
            f"truncated: {what} lies at bytes {chunk.offset}-{end}, but the file holds "
            f"{data.size} bytes",
            path,
        )
    try:
        stub, loaded = _chunk_archive(data, chunk, what)
        source, closer = tensor_source(entry.name, stub, loaded, data)
    except NormcliError as e:
        e.path = e.path or path
        raise
    if closer is not None:
        closers.append(closer)
    if source.dtype != entry.dtype or source.shape != chunk.sizes:
        raise CorruptFileError(
            f"{what} holds {list(source.shape)} {source.dtype.name} values; the metadata "
            f"declares {list(chunk.sizes)} torch.{entry.torch_dtype}",
            path,
        )
    return source


def _chunk_archive(data: Data, chunk: Chunk, what: str) -> tuple[TensorStub, Loaded]:
    if data[chunk.offset : chunk.offset + len(ZIP_MAGIC)] != ZIP_MAGIC:
        raise UnsupportedError(f"{what} is not a torch.save archive (another serialization?)")
    window = io.BufferedReader(DataSlice(data, chunk.offset, chunk.length))
    with open_zip(window, f"{what} is not") as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise UnsupportedError(f"{what}: member {info.filename!r} is compressed")
            # where the member lies in the .distcp file, from which every byte is read
            info.header_offset += chunk.offset
        prefix = archive_prefix(archive)
        check_byteorder(archive, f"{prefix}byteorder", data)
        loaded = load_pickle(
            archive, data, f"{prefix}data.pkl", f"{prefix}data/", RestrictedUnpickler
        )
    tensors, _ = flatten(loaded.root, "", loaded.pickle_bytes)
    if not isinstance(loaded.root, TensorStub) or len(tensors) != 1:
        raise CorruptFileError(f"{what} holds something other than one tensor")
    return loaded.root, loaded


class _Grid:
    """A tensor whose boxes tile it: reads its elements in C order, run by run. A run is the
    longest stretch that lies in one box and is contiguous there too: along the last dimension
    the boxes split, one box's extent, times everything after that dimension."""

    def __init__(self, entry: TensorEntry, pieces: list[TensorSource]) -> None:
        shape, what = entry.shape, f"tensor {entry.name!r}"
        self.itemsize = entry.dtype.bits // 8
        edges: list[set[int]] = [{0, n} for n in shape]
        for chunk in entry.chunks:
            if len(chunk.offsets) != len(shape) or any(
                o + s > n for o, s, n in zip(chunk.offsets, chunk.sizes, shape, strict=True)
            ):
                raise CorruptFileError(f"{what}: a chunk lies outside its {list(shape)}")
            for d, (o, s) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
                edges[d] |= {o, o + s}
        self.bounds = [sorted(e) for e in edges]
        cells = [len(b) - 1 for b in self.bounds]
        if math.prod(cells) > MAX_CELLS:
            raise UnsupportedError(f"{what}: its {len(entry.chunks)} chunks cut it too finely")
        self.owner = np.full(cells, -1, dtype=np.int64)
        for i, chunk in enumerate(entry.chunks):
            box = tuple(
                slice(b.index(o), b.index(o + s))
                for b, o, s in zip(self.bounds, chunk.offsets, chunk.sizes, strict=True)
            )
            if (self.owner[box] != -1).any():
                raise CorruptFileError(f"{what}: two chunks overlap")
            self.owner[box] = i
        if math.prod(shape) and (self.owner == -1).any():
            raise CorruptFileError(f"{what}: some elements lie in no chunk")
        self.chunks, self.pieces, self.shape = entry.chunks, pieces, shape
        split = [d for d, c in enumerate(cells) if c > 1]
        self.axis = split[-1] if split else 0
        self.inner = math.prod(shape[self.axis + 1 :])
        self.row = shape[self.axis] * self.inner

    def read(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        size = self.itemsize
        first, last = start // size, stop // size
        position = first
        while position < last:
            piece, begin, length = self._run(position)
            end = min(last, position + length)
            local = (begin * size, (begin + end - position) * size)
            if position == first and end == last:
                return np.frombuffer(self.pieces[piece].read_bytes(*local, out), dtype=np.uint8)
            into = out[(position - first) * size : (end - first) * size]
            got = np.frombuffer(self.pieces[piece].read_bytes(*local, into), dtype=np.uint8)
            if got.ctypes.data != into.ctypes.data:
                np.copyto(into, got)
            position = end
        return out[: stop - start]

    def _run(self, position: int) -> tuple[int, int, int]:
        """The piece holding element `position`, where it lies there, and how many elements
        from there on lie contiguously in both."""
        outer, within = divmod(position, self.row)
        index = [int(i) for i in np.unravel_index(outer, self.shape[: self.axis])]
        index.append(within // self.inner)
        cell = tuple(bisect.bisect_right(self.bounds[d], i) - 1 for d, i in enumerate(index))
        piece = int(self.owner[cell + (0,) * (self.owner.ndim - len(cell))])
        chunk = self.chunks[piece]
        local = [i - o for i, o in zip(index, chunk.offsets, strict=False)]
        width = chunk.sizes[self.axis] * self.inner
        outer_local = (
            int(np.ravel_multi_index(local[:-1], chunk.sizes[: self.axis])) if self.axis else 0
        )
        along = within - chunk.offsets[self.axis] * self.inner
        return piece, outer_local * width + along, width - along
