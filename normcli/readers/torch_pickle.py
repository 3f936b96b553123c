"""The restricted unpickler of PyTorch checkpoints: an allow-list of globals, each replaced by an
inert stand-in; storages become references to the file's bytes. Nothing from the file runs."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from ..dtypes import SAFETENSORS_DTYPES, DType, from_numpy
from ..errors import CorruptFileError, NormcliError, UnsupportedError
from .pickle_limits import read_pickle

_C128 = from_numpy(np.dtype("<c16"))
# torch dtypes by the name they are pickled under (torch.float32 -> GLOBAL 'torch float32')
TORCH_DTYPES: dict[str, DType | None] = {
    "float32": SAFETENSORS_DTYPES["F32"],
    "float64": SAFETENSORS_DTYPES["F64"],
    "float16": SAFETENSORS_DTYPES["F16"],
    "bfloat16": SAFETENSORS_DTYPES["BF16"],
    "int64": SAFETENSORS_DTYPES["I64"],
    "int32": SAFETENSORS_DTYPES["I32"],
    "int16": SAFETENSORS_DTYPES["I16"],
    "int8": SAFETENSORS_DTYPES["I8"],
    "uint64": SAFETENSORS_DTYPES["U64"],
    "uint32": SAFETENSORS_DTYPES["U32"],
    "uint16": SAFETENSORS_DTYPES["U16"],
    "uint8": SAFETENSORS_DTYPES["U8"],
    "bool": SAFETENSORS_DTYPES["BOOL"],
    "complex64": SAFETENSORS_DTYPES["C64"],
    "complex128": _C128,
    "float8_e4m3fn": SAFETENSORS_DTYPES["F8_E4M3"],
    "float8_e5m2": SAFETENSORS_DTYPES["F8_E5M2"],
    "float8_e4m3fnuz": SAFETENSORS_DTYPES["F8_E4M3FNUZ"],
    "float8_e5m2fnuz": SAFETENSORS_DTYPES["F8_E5M2FNUZ"],
    "float8_e8m0fnu": SAFETENSORS_DTYPES["F8_E8M0"],
    # dtypes torch writes that normcli does not read
    **dict.fromkeys(
        ["complex32", "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2"]
        + ["qint8", "quint8", "qint32", "quint4x2", "quint2x4"]
        + [f"{kind}{bits}" for kind in ("int", "uint") for bits in range(1, 8)]
    ),
}
# storage classes -> the dtype of their elements; an UntypedStorage holds bytes
STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
# globals torch writes for tensors normcli does not read, named in the refusal
_REFUSED_KINDS = {
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor, which holds no data",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass",
    "torch._utils._rebuild_device_tensor_from_numpy": "a tensor saved through numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a tensor of an accelerator device",
}


# --- stand-ins for the torch objects a checkpoint's pickle rebuilds ------------------------------


class _Inert:
    """Base of the stand-ins: a pickle's BUILD opcode cannot change one."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise CorruptFileError(f"the pickle sets state on {self!r}, which torch.save never does")


class _Named(_Inert):
    __slots__ = ("name",)
    prefix = ""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{self.prefix}{self.name}"


class _StorageType(_Named):
    """torch.FloatStorage and the like (`name` is "FloatStorage")."""

    __slots__ = ()
    prefix = "torch."


class _TorchDType(_Named):
    """torch.float32 and the like (`name` is "float32")."""

    __slots__ = ()
    prefix = "torch."


class _TypeMarker(_Named):
    """torch.Tensor or torch.nn.Parameter named as the type of a rebuilt tensor; never called."""

    __slots__ = ()


class _Value(_Named):
    """A non-tensor torch value (a torch.device): kept only to be counted."""

    __slots__ = ()


class StorageStub(_Inert):
    """Bytes [offset, offset + nbytes) of the storage record `key`, typed as torch dtype `dtype`."""

    __slots__ = ("dtype", "key", "nbytes", "offset")

    def __init__(self, key: str, dtype: str, offset: int, nbytes: int) -> None:
        self.key, self.dtype, self.offset, self.nbytes = key, dtype, offset, nbytes

    def __repr__(self) -> str:
        return f"storage {self.key!r}"


class TensorStub(_Inert):
    """A dense tensor as its rebuild call described it; checked only once its name is known."""

    __slots__ = ("dtype", "metadata", "offset", "shape", "storage", "stride")

    def __init__(
        self, storage: Any, offset: Any, shape: Any, stride: Any, dtype: Any, metadata: Any
    ) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.dtype, self.metadata = dtype, metadata

    def __repr__(self) -> str:
        return "tensor"


class _Dict(dict):  # type: ignore[type-arg]
    """collections.OrderedDict and Counter. A state_dict pickles its `_metadata` attribute as
    BUILD state, which is dropped."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        pass


class _Global(_Inert):
    """An allowed global: a plain function of our own, called by REDUCE."""

    __slots__ = ("call", "name")

    def __init__(self, name: str, call: Callable[..., Any]) -> None:
        self.name, self.call = name, call

    def __call__(self, *args: Any) -> Any:
        return self.call(*args)

    def __repr__(self) -> str:
        return self.name


def _storage_of(storage: Any) -> StorageStub:
    if not isinstance(storage, StorageStub):
        raise CorruptFileError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorStub:
    return TensorStub(_storage_of(storage), offset, size, stride, _storage_of(storage).dtype, None)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    metadata: Any = None,
) -> TensorStub:
    return TensorStub(_storage_of(storage), offset, size, stride, storage.dtype, metadata)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorStub:
    if not isinstance(dtype, _TorchDType):
        raise CorruptFileError(f"a tensor is rebuilt with dtype {type(dtype).__name__}")
    return TensorStub(_storage_of(storage), offset, size, stride, dtype.name, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> TensorStub:
    if not isinstance(data, TensorStub):
        raise CorruptFileError(f"a parameter is rebuilt from {type(data).__name__}, not a tensor")
    return data


_TENSOR_REBUILDS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
}


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorStub:
    """A tensor with Python attributes (`state`, dropped) or of a subclass, which must be
    torch.Tensor or torch.nn.Parameter: any other class would have been refused by name."""
    if not (isinstance(func, _Global) and func.name in _TENSOR_REBUILDS):
        raise CorruptFileError(f"_rebuild_from_type_v2 calls {func!r}, not a tensor rebuild")
    if not isinstance(new_type, _TypeMarker) or not isinstance(args, tuple):
        raise CorruptFileError("_rebuild_from_type_v2 is given malformed arguments")
    tensor = func(*args)
    if not isinstance(tensor, TensorStub):
        raise CorruptFileError("_rebuild_from_type_v2 rebuilds something other than a tensor")
    return tensor


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """_codecs.encode, as protocol 2 pickles bytes: (latin-1 text, 'latin1')."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise CorruptFileError("_codecs.encode is used for something other than bytes")
    return text.encode("latin-1")


def _bytearray(*args: Any) -> bytearray:
    if args and isinstance(args[0], str):
        return bytearray(_encode(*args))
    if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
        raise CorruptFileError("bytearray is rebuilt from something other than bytes")
    return bytearray(*args)


def _size(values: Any = ()) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int for v in values):
        raise CorruptFileError("torch.Size is rebuilt from something other than integers")
    return tuple(values)


def _device(*args: Any) -> _Value:
    if not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in args):
        raise CorruptFileError("torch.device is rebuilt from malformed arguments")
    return _Value(f"torch.device{args!r}")


def _allowed_globals() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": _Dict,
        "collections.Counter": _Dict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": _Global("builtins.bytearray", _bytearray),
        "_codecs.encode": _Global("_codecs.encode", _encode),
        "torch.Size": _Global("torch.Size", _size),
        "torch.device": _Global("torch.device", _device),
        "torch._tensor._rebuild_from_type_v2": _Global(
            "torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2
        ),
    }
    allowed.update({name: _Global(name, call) for name, call in _TENSOR_REBUILDS.items()})
    legacy_tensors = [f"{t}Tensor" for t in ("Float", "Double", "Half", "BFloat16", "Long")]
    legacy_tensors += [f"{t}Tensor" for t in ("Int", "Short", "Char", "Byte", "Bool")]
    for marker in ["torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.Parameter"] + [
        f"torch.{name}" for name in legacy_tensors
    ]:
        allowed[marker] = _TypeMarker(marker)
    for name in STORAGE_TYPES:
        for module in ("torch", "torch.cuda", "torch.storage"):
            allowed[f"{module}.{name}"] = _StorageType(name)
    for name in TORCH_DTYPES:
        allowed[f"torch.{name}"] = _TorchDType(name)
    return allowed


ALLOWED = _allowed_globals()
# modules renamed since old checkpoints were written; protocol 2 writes Python 2 module names
_MODULE_ALIASES = {"__builtin__": "builtins", "torch.tensor": "torch._tensor"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's objects with stand-ins for the allowed globals; every other
    global is refused by name before anything could run. Storages are recorded, not read."""

    def __init__(self, file: IO[bytes], legacy: bool = False, torchscript: bool = False) -> None:
        # the next pickle in `file`, walked before the C unpickler sees it (which allocates
        # whatever its opcodes declare); `file` is left just after it, as load() would leave it
        raw = read_pickle(file, _left(file), "the pickle")
        super().__init__(io.BytesIO(raw), encoding="utf-8")
        self.pickle_bytes = len(raw)
        self.legacy, self.torchscript = legacy, torchscript
        # storage key -> (torch dtype of its elements, bytes), from its first reference
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        full = f"{module}.{name}"
        if full in ALLOWED:
            return ALLOWED[full]
        if module.startswith("__torch__") or self.torchscript:
            raise UnsupportedError(
                f"TorchScript archive: data.pkl rebuilds TorchScript objects ({full}), which "
                "a torch.save checkpoint never holds; read it with --input-format torchscript"
            )
        kind = f" ({_REFUSED_KINDS[full]})" if full in _REFUSED_KINDS else ""
        raise UnsupportedError(
            f"the pickle refers to {full}{kind}, which normcli does not load: it reads "
            "tensors, storages and plain Python values only, and never runs code from a file"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CorruptFileError(f"malformed persistent id {pid!r:.80}")
        kind = pickled_text(pid[0])
        if kind == "module" and self.legacy:
            raise UnsupportedError(
                "the checkpoint pickles a whole nn.Module, which only torch can rebuild; "
                "save model.state_dict() instead"
            )
        expected = 6 if self.legacy else 5
        if kind != "storage" or len(pid) != expected:
            raise CorruptFileError(f"malformed persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CorruptFileError(f"storage of type {storage_type!r:.40}")
        dtype_name = STORAGE_TYPES[storage_type.name]
        dtype = TORCH_DTYPES[dtype_name]
        if dtype is None:
            raise UnsupportedError(f"a {storage_type!r} of torch.{dtype_name} elements")
        if type(numel) is not int or numel < 0:
            raise CorruptFileError(f"storage of {numel!r:.40} elements")
        key, nbytes = pickled_text(key), numel * dtype.bits // 8
        known = self.storages.setdefault(key, (dtype_name, nbytes))
        if known != (dtype_name, nbytes):
            raise CorruptFileError(
                f"storage {key!r} is declared as {known[1]} bytes of {known[0]} and as "
                f"{nbytes} bytes of {dtype_name} (torch.save never writes both)"
            )
        view = pid[5] if self.legacy else None
        if view is None:
            return StorageStub(key, dtype_name, 0, nbytes)
        # storage views, written by torch before 1.0: (view key, element offset, elements)
        if not (isinstance(view, tuple) and len(view) == 3 and is_size(view[1], view[2])):
            raise CorruptFileError(f"storage {key!r}: malformed view {view!r:.80}")
        offset, size = view[1] * dtype.bits // 8, view[2] * dtype.bits // 8
        if offset + size > nbytes:
            raise CorruptFileError(f"storage {key!r}: a view runs past its end")
        return StorageStub(key, dtype_name, offset, size)


def _left(file: IO[bytes]) -> int:
    here = file.tell()
    end = file.seek(0, 2)
    file.seek(here)
    return end - here


def pickled_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "backslashreplace")
    if not isinstance(value, str):
        raise CorruptFileError(f"expected a string in the pickle, found {value!r:.40}")
    return value


def is_size(*values: Any) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def unpickle(unpickler: RestrictedUnpickler, what: str) -> Any:
    """One object, with every way a damaged pickle fails reported as a corrupt file."""
    try:
        return unpickler.load()
    except NormcliError:
        raise
    except EOFError as e:
        raise CorruptFileError(f"{what} ends early (truncated)") from e
    except RecursionError as e:
        raise CorruptFileError(f"{what} nests too deeply") from e
    except Exception as e:  # UnpicklingError, and whatever a malformed opcode stream raises
        raise CorruptFileError(f"{what} is not a valid pickle ({type(e).__name__}: {e})") from e


# --- detection -----------------------------------------------------------------------------------
