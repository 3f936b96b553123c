"""A second reader of PyTorch checkpoints, for the fuzzer's float64 reference: Python's own
pure-Python unpickler (not the C one normcli uses) with torch's rebuild functions written out
in numpy. Test code only: it runs on files the tests made, and still allows no other global."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

_STORAGES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16",
}


class UnnamedKey(LookupError):
    """A tensor under a key that is not a plain value: no name to compare."""


class _Dict(dict):  # type: ignore[type-arg]
    def __setstate__(self, state: object) -> None:
        pass


class _Storage:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values


class _Tensor:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values


def _as_values(raw: bytes, kind: str) -> np.ndarray:
    if kind == "bf16":
        wide = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
        return wide.view(np.float32)
    return np.frombuffer(raw, kind)


def _rebuild(storage: _Storage, offset: int, size: Any, stride: Any, *rest: Any) -> _Tensor:
    values = storage.values
    shape, strides = tuple(size), tuple(stride)
    if len(shape) != len(strides) or min((offset, *shape, *strides), default=0) < 0:
        raise ValueError("malformed view")
    if all(shape):
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= values.size:
            raise ValueError("view past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            values[offset:], shape, [s * values.itemsize for s in strides]
        )
    else:
        view = np.zeros(shape, values.dtype)
    return _Tensor(np.array(view))


def _parameter(tensor: _Tensor, *rest: Any) -> _Tensor:
    if not isinstance(tensor, _Tensor):
        raise TypeError("a parameter of something else")
    return tensor


def _encode(text: str, encoding: str = "latin1") -> bytes:
    return text.encode(encoding)


_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": _Dict,
    "torch._utils._rebuild_tensor_v2": _rebuild,
    "torch._utils._rebuild_tensor": _rebuild,
    "torch._utils._rebuild_parameter": _parameter,
    "torch.Size": tuple,
    "torch.device": lambda *a: ("device", *a),
    "builtins.set": set,
    "builtins.complex": complex,
    "_codecs.encode": _encode,
}


class _Unpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    def __init__(self, file: io.BytesIO, storage: Callable[[str, str, int], np.ndarray]) -> None:
        super().__init__(file, encoding="utf-8")
        self.storage = storage

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins"}.get(module, module)
        full = f"{module}.{name}"
        if full in _GLOBALS:
            return _GLOBALS[full]
        if module == "torch" and name in _STORAGES:
            return name
        raise pickle.UnpicklingError(f"global {full} not allowed")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or storage_type not in _STORAGES:
            raise pickle.UnpicklingError(f"persistent id {pid!r}")
        values = self.storage(str(key), _STORAGES[storage_type], numel)
        if len(pid) > 5 and pid[5] is not None:
            _, start, count = pid[5]
            values = values[start : start + count]
        return _Storage(values)


def _flatten(node: Any, name: str, out: dict[str, np.ndarray], depth: int = 0) -> None:
    if isinstance(node, _Tensor):
        out[name] = node.values
        return
    if depth > 100:
        raise ValueError("nested too deeply")
    if isinstance(node, dict):
        if not all(isinstance(k, (str, bytes, int, float, bool, type(None))) for k in node):
            # normcli names such keys by its stand-ins' repr(), which this reader cannot echo
            raise UnnamedKey("a dict keyed by objects")
        items = [
            (k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k), v)
            for k, v in node.items()
        ]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return
    for key, child in items:
        _flatten(child, f"{name}.{key}" if name else key, out, depth + 1)


def torch_arrays(data: bytes, stem: str) -> dict[str, np.ndarray]:
    """Every tensor of a torch.save file (zip or legacy), by dotted name."""
    root = _load_zip(data) if data[:4] == b"PK\x03\x04" else _load_legacy(data)
    out: dict[str, np.ndarray] = {}
    _flatten(root, stem if isinstance(root, _Tensor) else "", out)
    return out


def _load_zip(data: bytes) -> Any:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("not one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]

        def storage(key: str, kind: str, numel: int) -> np.ndarray:
            values = _as_values(archive.read(f"{prefix}data/{key}"), kind)
            if values.size != numel:
                raise ValueError("storage of the wrong size")
            return values

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), storage).load()


def _load_legacy(data: bytes) -> Any:
    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system information
        _Unpickler(stream, lambda *a: np.zeros(0)).load()
    wanted: dict[str, tuple[str, int]] = {}

    def storage(key: str, kind: str, numel: int) -> np.ndarray:
        # a placeholder of the declared size: the storages follow the pickle
        if numel > 1 << 24:
            raise ValueError("a storage larger than any the tests write")
        wanted.setdefault(key, (kind, numel))
        return np.zeros(numel, np.float32 if kind == "bf16" else kind)

    placeholder_stream_at = stream.tell()
    _Unpickler(stream, storage).load()
    keys = _Unpickler(stream, lambda *a: np.zeros(0)).load()
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        kind, numel = wanted[str(key)]
        (count,) = struct.unpack("<q", stream.read(8))
        itemsize = 2 if kind == "bf16" else np.dtype(kind).itemsize
        raw = stream.read(count * itemsize)
        if count != numel or len(raw) != count * itemsize:
            raise ValueError("storage of the wrong size")
        arrays[str(key)] = _as_values(raw, kind)
    if stream.read(1):
        raise ValueError("bytes after the last storage")
    stream.seek(placeholder_stream_at)
    return _Unpickler(stream, lambda key, kind, numel: arrays[key]).load()
