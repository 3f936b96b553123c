"""ONNX models: the graph's initializers, embedded in the model or in external data files beside
it. Nothing is executed (ONNX holds no code); external data never comes from outside the model's
folder."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import SAFETENSORS_DTYPES, DType, from_numpy
from ..errors import CorruptFileError, InputError, NormcliError
from .base import Checkpoint, TensorSource
from .files import Data, import_optional, open_data, open_regular
from .remote import dirname, is_url, join

SUFFIX = ".onnx"
# ModelProto's fields (number -> protobuf wire type): a model's first byte is the tag of one
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
# subgraphs (If, Loop, Scan bodies) nest; protobuf itself stops parsing at 100 levels
MAX_NESTING = 100
# element types stored packed, several to a byte; only FLOAT4E2M1 has a packed DType here
_PACKED = {"INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3", "FLOAT6E3M2"}
# narrow integers that onnx unpacks into ml_dtypes types numpy cannot sum: widened to a byte
_NARROW_INTS = {
    "INT4": ("I4", np.int8),
    "INT2": ("I2", np.int8),
    "UINT4": ("U4", np.uint8),
    "UINT2": ("U2", np.uint8),
}


def looks_like_onnx(head: bytes, path: str) -> bool:
    """An .onnx file whose first bytes are a plausible start of a serialized ModelProto."""
    if not path.lower().endswith(SUFFIX):
        return False
    tag, at = _varint(head, 0)
    if tag is None or _MODEL_FIELDS.get(tag >> 3) != tag & 7:
        return False
    value, _ = _varint(head, at)
    return value is not None


def _varint(data: bytes, at: int) -> tuple[int | None, int]:
    value = 0
    for shift in range(0, 64, 7):
        if at >= len(data):
            return None, at
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    return None, at


def open_onnx(path: str) -> Checkpoint:
    """The initializers and Constant values of the model's graph and of its subgraphs, in graph
    order. Embedded data is held in memory (the onnx package parses the whole model, at most
    2 GB); external data is read from its file with positioned reads, so memory stays flat."""
    onnx = import_optional(
        "onnx", "onnx.numpy_helper", what="an ONNX model", extra="onnx", path=path
    )
    with open_regular(path) as f:
        size = f.seek(0, 2)
    try:
        # load_external_data=False: external files are opened by us, after checking their paths
        if is_url(path):
            with open_regular(path) as f:
                model = onnx.load(f, format="protobuf", load_external_data=False)
        else:
            model = onnx.load(path, format="protobuf", load_external_data=False)
    except Exception as e:
        raise CorruptFileError(f"not a valid ONNX model ({type(e).__name__}: {e})", path) from e
    if not model.HasField("graph"):
        raise CorruptFileError("ONNX model has no graph: not an ONNX model, or damaged", path)
    opened = _ExternalFiles(path)
    try:
        sources, skipped = _read_tensors(model, onnx, opened, path)
    except BaseException:
        opened.close()
        raise
    del model
    return Checkpoint(path, "onnx", size, sources, [opened.close], skipped=skipped)


def _text(value: str | bytes, what: str, path: str) -> str:
    # protobuf hands back bytes for a string field that is not valid UTF-8
    if isinstance(value, str):
        return value
    raise CorruptFileError(f"{what} is not valid UTF-8: {value!r}", path)


@dataclass(frozen=True)
class _Stored:
    """A tensor the model stores: an initializer, or the value of a Constant node (exporters
    such as spox keep every weight in one), named as the graph names the value."""

    name: str
    proto: Any
    sparse: bool
    # the node whose attribute holds the subgraph it is in (None: the main graph)
    owner: str | None
    what: str


def _constant_value(attribute: Any, onnx: Any) -> Any:
    """The tensor a Constant node's attribute holds (None for no tensor: a string, say)."""
    if attribute.name == "value" and attribute.HasField("t"):
        return attribute.t
    if attribute.name == "sparse_value" and attribute.HasField("sparse_tensor"):
        return attribute.sparse_tensor
    numbers: dict[str, Callable[[], Any]] = {
        "value_float": lambda: np.float32(attribute.f),
        "value_floats": lambda: np.array(attribute.floats, dtype=np.float32),
        "value_int": lambda: np.int64(attribute.i),
        "value_ints": lambda: np.array(attribute.ints, dtype=np.int64),
    }
    if attribute.name not in numbers:
        return None
    return onnx.numpy_helper.from_array(np.asarray(numbers[attribute.name]()))


def _stored_tensors(
    graph: Any, onnx: Any, path: str, owner: str | None = None, depth: int = 0
) -> Iterator[_Stored]:
    if depth > MAX_NESTING:
        return
    for tensor in graph.initializer:
        yield _Stored(_text(tensor.name, "a name", path), tensor, False, owner, "initializer")
    for sparse in graph.sparse_initializer:
        name = _text(sparse.values.name, "a name", path)
        yield _Stored(name, sparse, True, owner, "initializer")
    for node in graph.node:
        label = _text(node.name or node.op_type, "a node name", path)
        constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        for attribute in node.attribute:
            if constant and node.output:
                name = _text(node.output[0], "a name", path)
                value = _constant_value(attribute, onnx)
                if value is not None:
                    yield _Stored(name, value, attribute.name == "sparse_value", owner, "constant")
            here = f"{label}.{_text(attribute.name, 'an attribute name', path)}"
            for sub in [attribute.g] if attribute.HasField("g") else []:
                yield from _stored_tensors(sub, onnx, path, here, depth + 1)
            for sub in attribute.graphs:
                yield from _stored_tensors(sub, onnx, path, here, depth + 1)


def _read_tensors(
    model: Any, onnx: Any, opened: _ExternalFiles, path: str
) -> tuple[list[TensorSource], list[tuple[str, str]]]:
    sources: list[TensorSource] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for stored in _stored_tensors(model.graph, onnx, path):
        name = stored.name
        if name in seen:
            if stored.owner is None:
                raise CorruptFileError(f"tensor {name!r} is defined more than once", path)
            # sibling subgraphs (the branches of an If) may each define the same name
            skipped.append((name, f"a second tensor of this name, in subgraph {stored.owner}"))
            continue
        seen.add(name)
        if stored.sparse:
            skipped.append((name, f"sparse {stored.what}: normcli reads dense tensors only"))
            continue
        made = _source(name, stored.what, stored.proto, onnx, opened, path)
        if isinstance(made, str):
            skipped.append((name, made))
        else:
            sources.append(made)
    return sources, skipped


def _source(
    name: str, what: str, tensor: Any, onnx: Any, opened: _ExternalFiles, path: str
) -> TensorSource | str:
    """The tensor's source, or why it cannot be read."""
    where = f"{what} {name!r}"
    try:
        type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
    except ValueError:
        return f"element type {tensor.data_type} is unknown to onnx {onnx.__version__}"
    if type_name in ("UNDEFINED", "STRING"):
        return f"element type {type_name}: not numbers"
    if tensor.HasField("segment"):
        return "stored in segments: not supported"
    if any(d < 0 for d in tensor.dims):
        raise CorruptFileError(f"{where}: negative dimension in {list(tensor.dims)}", path)
    shape = tuple(int(d) for d in tensor.dims)
    numel = math.prod(shape)
    element = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        dtype = _raw_dtype(type_name, element, numel)
        if dtype is None:
            return f"{type_name} in an external data file: packed layout not supported"
        read = opened.reader(tensor, numel * dtype.bits // 8, where)
        return TensorSource(name, dtype, shape, read)
    if tensor.HasField("raw_data"):
        dtype = _raw_dtype(type_name, element, numel)
        if dtype is not None:
            raw = tensor.raw_data
            if len(raw) != numel * dtype.bits // 8:
                raise CorruptFileError(
                    f"{where}: {type_name} {list(shape)} needs {numel * dtype.bits // 8} bytes "
                    f"but raw_data holds {len(raw)}",
                    path,
                )
            return TensorSource(name, dtype, shape, _memory_reader(np.frombuffer(raw, np.uint8)))
    # typed fields (float_data, int32_data, ...) and packed raw data: onnx's own conversion
    try:
        array = onnx.numpy_helper.to_array(tensor)
    except Exception as e:
        raise CorruptFileError(
            f"{where}: data does not match its type and shape ({e})", path
        ) from e
    if array.size != numel:
        raise CorruptFileError(
            f"{where}: {list(shape)} needs {numel} values but it holds {array.size}", path
        )
    array, dtype = _widened(array, type_name)
    if dtype is None:
        return f"element type {type_name} ({array.dtype}): not supported"
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return TensorSource(name, dtype, shape, _memory_reader(flat))


def _raw_dtype(type_name: str, element: np.dtype[Any], numel: int) -> DType | None:
    """How the type's little-endian raw bytes decode, or None when normcli cannot say."""
    if type_name == "FLOAT4E2M1":
        return SAFETENSORS_DTYPES["F4"] if numel % 2 == 0 else None
    if type_name in _PACKED:
        return None
    # raw data is little-endian whatever the machine
    little = element.newbyteorder("<") if element.kind in "fiuc" else element
    return from_numpy(little)


def _widened(array: np.ndarray, type_name: str) -> tuple[np.ndarray, DType | None]:
    """INT4 and friends come out of onnx as ml_dtypes types numpy cannot sum: widened to a
    byte each, under a name that still shows the stored type."""
    narrow = _NARROW_INTS.get(type_name)
    if narrow is not None:
        label, wide = narrow
        return array.astype(wide), DType(label, "int", np.dtype(wide), 8)
    return array, from_numpy(array.dtype)


def _memory_reader(flat: np.ndarray) -> Callable[[int, int, np.ndarray], np.ndarray]:
    def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
        out[: stop - start] = flat[start:stop]
        return out[: stop - start]

    return read


class _ExternalFiles:
    """The external data files of one model, each opened once, only inside the model's folder."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.remote = is_url(model_path)
        self.folder = (
            dirname(model_path) if self.remote else os.path.dirname(os.path.abspath(model_path))
        )
        self.files: dict[str, Data] = {}

    def reader(
        self, tensor: Any, nbytes: int, where: str
    ) -> Callable[[int, int, np.ndarray], np.ndarray]:
        info = {
            _text(entry.key, f"{where}: external data", self.model_path): _text(
                entry.value, f"{where}: external data", self.model_path
            )
            for entry in tensor.external_data
        }
        location = info.get("location", "")
        offset = self._integer(info, "offset", 0, where)
        length = self._integer(info, "length", None, where)
        data = self._open(location, where)
        if length is not None and length != nbytes:
            raise CorruptFileError(
                f"{where}: external data length {length} but its type and shape need {nbytes}",
                self.model_path,
            )
        if offset + nbytes > data.size:
            raise CorruptFileError(
                f"{where}: external data [{offset}, {offset + nbytes}) runs past the end of "
                f"{location!r} ({data.size} bytes)",
                self.model_path,
            )
        return data.reader(offset)

    def _integer(self, info: dict[str, str], key: str, default: int | None, where: str) -> Any:
        if key not in info:
            return default
        text = info[key]
        if not (text.isascii() and text.isdigit()):
            raise CorruptFileError(
                f"{where}: external data {key} {text!r} is not a byte count", self.model_path
            )
        return int(text)

    def _open(self, location: str, where: str) -> Data:
        if location in self.files:
            return self.files[location]
        if not location or "\0" in location:
            raise CorruptFileError(
                f"{where}: external data has no usable location ({location!r})", self.model_path
            )
        escapes = (
            os.path.isabs(location)
            or location.startswith(("/", "\\"))
            or ".." in location.replace("\\", "/").split("/")
            or (len(location) > 1 and location[1] == ":")
        )
        full = join(self.folder, location) if self.remote else os.path.join(self.folder, location)
        if escapes or not self._inside(full):
            raise CorruptFileError(
                f"{where}: external data location {location!r} is outside the model's folder; "
                "normcli reads only files beside the model",
                self.model_path,
            )
        try:
            data = open_data(full)
        except NormcliError as e:
            raise InputError(
                f"{where}: external data file {location!r}: {e.message}", self.model_path
            ) from e
        self.files[location] = data
        return data

    def _inside(self, full: str) -> bool:
        if self.remote:
            return True  # a location with no "..", no root and no drive stays in a URL's folder
        root = os.path.realpath(self.folder)
        # a symbolic link out of the folder escapes it too (onnx refuses every symbolic link)
        return os.path.commonpath([os.path.realpath(full), root]) == root

    def close(self) -> None:
        for data in self.files.values():
            data.close()
        self.files.clear()
