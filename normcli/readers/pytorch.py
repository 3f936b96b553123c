"""PyTorch checkpoints (torch.save, zip and legacy formats), read without torch: a restricted
unpickler turns the few globals a tensor checkpoint needs into inert stand-ins and refuses all
others, so nothing from the file is ever run; tensor data is read where it lies."""

from __future__ import annotations

import contextlib
import io
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from ..dtypes import DType
from ..errors import CorruptFileError, NormcliError, UnsupportedError, UsageError
from ..formats import ZIP_MAGIC
from .base import Checkpoint, TensorSource
from .files import Data, open_data, open_regular
from .pickle_limits import check_storage_reads, max_values
from .torch_archive import (
    ARCHIVE_PICKLE,
    Loaded,
    archive_prefix,
    check_byteorder,
    load_pickle,
    open_zip,
)
from .torch_pickle import (
    TORCH_DTYPES,
    RestrictedUnpickler,
    StorageStub,
    TensorStub,
    is_size,
    pickled_text,
    unpickle,
)
from .torch_views import SignFlipped, StridedReader, is_contiguous, sign_flips
from .training import tree_slots
from .zipped import CrcCheckedReader

FORMAT = "pytorch"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Shared references can make a small pickle name a deep tree; past this, refuse.
MAX_DEPTH = 100


def looks_like_pytorch(head: bytes, path: str) -> bool:
    """A zip holding <archive>/data.pkl, or a pickle stream that starts with torch's legacy
    magic number. `head` is the file's first 64 bytes."""
    if head.startswith(ZIP_MAGIC):
        try:
            with open_zip(path) as archive:
                return any(ARCHIVE_PICKLE.fullmatch(n) for n in archive.namelist())
        except CorruptFileError:
            return False
    if head[:1] != b"\x80":
        return False
    try:
        magic = RestrictedUnpickler(io.BytesIO(head)).load()
    except Exception:
        return False
    return type(magic) is int and magic == LEGACY_MAGIC


# --- opening -------------------------------------------------------------------------------------


def open_pytorch(path: str, key: str | None = None) -> Checkpoint:
    """Open a torch.save checkpoint; `key` (dotted, e.g. "model" or "state_dict") reads only
    that part of it, and names its tensors from there."""
    with open_regular(path) as f:
        head = f.read(len(ZIP_MAGIC))
        size = f.seek(0, 2)
    if size == 0:
        raise CorruptFileError("file is empty", path)
    data = open_data(path)
    closers: list[Callable[[], None]] = [data.close]
    with closed_on_error(data, path):
        loaded = _load_zip(path, data) if head == ZIP_MAGIC else _load_legacy(path, data)
        root = loaded.root if key is None else select(loaded.root, key, path)
        stem = key or _stem(path)
        tensors, skipped = flatten(
            root, stem if isinstance(root, TensorStub) else "", loaded.pickle_bytes
        )
        sources = read_tensors(tensors, loaded, data, closers)
        slots = tree_slots(root, tensors)
        sources = [replace(s, optimizer=slots.get(s.name)) for s in sources]
    return Checkpoint(path, FORMAT, size, sources, closers, skipped_values=skipped)


@contextlib.contextmanager
def closed_on_error(data: Data, path: str) -> Iterator[None]:
    """Closes `data` if opening fails, and names `path` in an error that names no file."""
    try:
        yield
    except NormcliError as e:
        data.close()
        if e.path is None:
            e.path = path
        raise
    except BaseException:
        data.close()
        raise


def read_tensors(
    tensors: list[tuple[str, TensorStub]],
    loaded: Loaded,
    data: Data,
    closers: list[Callable[[], None]],
) -> list[TensorSource]:
    """The sources of rebuilt tensors; what must be closed with them is added to `closers`."""
    sources = []
    for name, tensor in tensors:
        source, closer = tensor_source(name, tensor, loaded, data)
        sources.append(source)
        if closer is not None:
            closers.append(closer)
    check_storage_reads(
        (s.name, t.storage.key, t.storage.nbytes, s.nbytes)
        for s, (_, t) in zip(sources, tensors, strict=True)
    )
    return sources


def _stem(path: str) -> str:
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base[1:] else base


def _load_zip(path: str, data: Data) -> Loaded:
    with open_zip(path) as archive:
        prefix = archive_prefix(archive)
        names = archive.namelist()
        torchscript = f"{prefix}constants.pkl" in names or any(
            n.startswith(f"{prefix}code/") for n in names
        )
        check_byteorder(archive, f"{prefix}byteorder", data)
        return load_pickle(
            archive,
            data,
            f"{prefix}data.pkl",
            f"{prefix}data/",
            lambda raw: RestrictedUnpickler(raw, torchscript=torchscript),
        )


def _load_legacy(path: str, data: Data) -> Loaded:
    """torch.save(..., _use_new_zipfile_serialization=False): pickles of the magic number, the
    protocol version, system information, the object, then the list of storage keys; then each
    storage as its element count (8 bytes, little-endian) and its bytes, in that list's order."""
    with open_regular(path) as f:
        magic = unpickle(RestrictedUnpickler(f, legacy=True), "the first pickle")
        if type(magic) is not int or magic != LEGACY_MAGIC:
            raise CorruptFileError(
                "not a PyTorch checkpoint: neither a zip archive nor a pickle stream that "
                "starts with torch's magic number"
            )
        protocol = unpickle(RestrictedUnpickler(f, legacy=True), "the protocol version")
        if type(protocol) is not int or protocol != LEGACY_PROTOCOL:
            raise UnsupportedError(f"legacy format version {protocol!r:.40} (torch writes 1001)")
        if not isinstance(unpickle(RestrictedUnpickler(f, legacy=True), "system info"), dict):
            raise CorruptFileError("the system information pickle is not a dict")
        unpickler = RestrictedUnpickler(f, legacy=True)
        root = unpickle(unpickler, "the checkpoint's pickle")
        keys = unpickle(RestrictedUnpickler(f, legacy=True), "the storage key list")
        # the C unpickler reads ahead only with peek(), and gives back what it did not use
        position = f.tell()
    if not isinstance(keys, list):
        raise CorruptFileError("the storage key list is not a list")
    starts: dict[str, int] = {}
    for raw_key in keys:
        key = pickled_text(raw_key)
        if key in starts:
            raise CorruptFileError(f"storage key {key!r} is listed twice")
        if key not in unpickler.storages:
            raise CorruptFileError(f"storage key {key!r} is listed but no tensor uses it")
        dtype_name, nbytes = unpickler.storages[key]
        header = data[position : position + 8]
        if len(header) < 8:
            raise CorruptFileError(f"truncated: the file ends before storage {key!r}")
        (count,) = struct.unpack("<q", header)
        itemsize = _dtype(dtype_name).bits // 8
        if count * itemsize != nbytes:
            raise CorruptFileError(
                f"storage {key!r} holds {count} elements of {dtype_name} but the pickle "
                f"declares {nbytes // itemsize}"
            )
        starts[key] = position + 8
        position += 8 + nbytes
        if position > len(data):
            raise CorruptFileError(
                f"truncated: storage {key!r} needs {nbytes} bytes but the file holds "
                f"{max(0, len(data) - starts[key])} after its header"
            )
    missing = sorted(set(unpickler.storages) - set(starts))
    if missing:
        raise CorruptFileError(f"storage {missing[0]!r} is used but never written")
    if position != len(data):
        raise CorruptFileError(f"{len(data) - position} bytes after the last storage")
    return Loaded(root, starts, unpickler.pickle_bytes, {})


def _dtype(name: str) -> DType:
    dtype = TORCH_DTYPES.get(name)
    if dtype is None:
        raise UnsupportedError(f"dtype torch.{name} is not supported")
    return dtype


# --- the object tree -----------------------------------------------------------------------------


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)


def _children(node: Any) -> list[tuple[str, Any]] | None:
    if isinstance(node, dict):
        return [(_key_text(k), v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(node)]
    return None


def select(root: Any, key: str, path: str) -> Any:
    """The value at dotted `key`; a dict key may itself hold dots ("model.layer.weight")."""
    node, rest = root, key
    while rest:
        children = dict(_children(node) or [])
        cuts = [len(rest)] + [i for i in range(len(rest) - 1, 0, -1) if rest[i] == "."]
        for cut in cuts:
            if rest[:cut] in children:
                node, rest = children[rest[:cut]], rest[cut + 1 :]
                break
        else:
            raise UsageError(f"no key {key!r} in the checkpoint ({_describe_top(root)})", path)
    return node


def _describe_top(root: Any) -> str:
    if isinstance(root, dict):
        names = [_key_text(k) for k in root]
        shown = ", ".join(repr(n) for n in names[:20])
        more = f", and {len(names) - 20} more" if len(names) > 20 else ""
        return f"its top-level keys: {shown}{more}" if names else "it is an empty dict"
    if isinstance(root, (list, tuple)):
        return f"it is a {type(root).__name__} of {len(root)} values, selected by index"
    return "it is a single tensor" if isinstance(root, TensorStub) else "it holds no tensors"


def flatten(root: Any, name: str, pickle_bytes: int) -> tuple[list[tuple[str, TensorStub]], int]:
    """Tensors under `root` by dotted name (dict keys, list and tuple indices), in pickle order,
    and the count of other values (a structure that contains itself counts once there). Shared
    parts are followed each time they are named, within what a pickle of that size may name."""
    limit = max_values(pickle_bytes)
    tensors: list[tuple[str, TensorStub]] = []
    seen_names: set[str] = set()
    skipped = visited = 0
    ancestors: set[int] = set()

    def walk(node: Any, name: str, depth: int) -> None:
        nonlocal skipped, visited
        visited += 1
        if visited > limit:
            raise UnsupportedError(
                f"the checkpoint's object names more than {limit} values (shared parts counted "
                "each time they are named): far more than its pickle holds"
            )
        if isinstance(node, TensorStub):
            if name in seen_names:
                raise UnsupportedError(f"two tensors have the same name {name!r}")
            seen_names.add(name)
            tensors.append((name, node))
            return
        children = _children(node)
        if children is None or id(node) in ancestors:
            skipped += 1
            return
        if depth >= MAX_DEPTH:
            raise UnsupportedError(f"the checkpoint nests more than {MAX_DEPTH} levels deep")
        ancestors.add(id(node))
        for key, child in children:
            walk(child, f"{name}.{key}" if name else key, depth + 1)
        ancestors.discard(id(node))

    walk(root, name, 0)
    return tensors, skipped


# --- tensors -------------------------------------------------------------------------------------


def tensor_source(
    name: str, tensor: TensorStub, loaded: Loaded, data: Data
) -> tuple[TensorSource, Callable[[], None] | None]:
    """The TensorSource of one rebuilt tensor, its view checked against its storage."""
    where = f"tensor {name!r}"
    dtype = TORCH_DTYPES.get(tensor.dtype) if isinstance(tensor.dtype, str) else None
    if dtype is None:
        raise UnsupportedError(f"{where}: dtype torch.{tensor.dtype} is not supported")
    shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
    if not (
        isinstance(shape, tuple)
        and isinstance(stride, tuple)
        and len(shape) == len(stride)
        and is_size(offset, *shape, *stride)
    ):
        raise CorruptFileError(
            f"{where}: malformed view (offset {offset!r:.40}, size {shape!r:.80}, "
            f"stride {stride!r:.80})"
        )
    flips = sign_flips(tensor.metadata, dtype, where)
    storage: StorageStub = tensor.storage
    itemsize = dtype.bits // 8
    numel = math.prod(shape)
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if numel and (last + 1) * itemsize > storage.nbytes:
        raise CorruptFileError(
            f"{where}: view (offset {offset}, size {list(shape)}, stride {list(stride)}) "
            f"reaches past the end of its storage {storage.key!r} "
            f"({storage.nbytes // itemsize} elements of {tensor.dtype})"
        )
    base = loaded.starts[storage.key] + storage.offset
    read: Any = data.reader(base + offset * itemsize)
    closer = None
    if numel and not is_contiguous(shape, stride):
        strided = StridedReader(data.reader(base), dtype, shape, stride, offset)
        read, closer = strided, strided.close
    elif numel and offset == 0 and numel * itemsize == storage.nbytes:
        info = loaded.members.get(storage.key)
        if info is not None and info.CRC:  # torch writes 0 when told not to compute CRCs
            read = CrcCheckedReader(data, base, 0, storage.nbytes, info, where, data.path)
    if flips is not None:
        read = SignFlipped(read, dtype, *flips)
    return TensorSource(name, dtype, tuple(shape), read), closer
