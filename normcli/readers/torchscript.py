"""TorchScript archives (torch.jit.save), read without torch: the modules' tensors (parameters,
buffers, tensor attributes) by module path, and the code's tensor constants. The archive's code is
never read; its classes become inert attribute holders, and an object that only its own code can
rebuild is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from ..errors import CorruptFileError, UnsupportedError
from ..formats import ZIP_MAGIC
from .base import Checkpoint
from .files import open_data, open_regular
from .pytorch import closed_on_error, flatten, read_tensors, select
from .torch_archive import archive_prefix, check_byteorder, load_pickle, open_zip
from .torch_pickle import RestrictedUnpickler, TensorStub

FORMAT = "torchscript"
# The name the code gives the archive's constants (CONSTANTS.c0, ...): tensors it captured.
CONSTANTS = "CONSTANTS"


def looks_like_torchscript(head: bytes, path: str) -> bool:
    """A torch zip archive that holds code or constants beside its data.pkl."""
    if not head.startswith(ZIP_MAGIC):
        return False
    try:
        with open_zip(path) as archive:
            return _is_torchscript(archive.namelist())
    except CorruptFileError:
        return False


def _is_torchscript(names: list[str]) -> bool:
    return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names) and any(
        n.endswith("/constants.pkl") or "/code/" in n for n in names
    )


class ScriptObject(dict):  # type: ignore[type-arg]
    """An object of a class the archive's code defines (a scripted module): its attributes
    only. Torch restores one from a dict of attributes unless its class has a __setstate__ of
    its own, which would have to run; that is refused."""

    __slots__ = ()
    qualified_name = "__torch__"

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnsupportedError(
                f"TorchScript object {self.qualified_name} is rebuilt by running its own "
                "__setstate__ code (a quantized or custom class), which normcli never runs"
            )
        self.update(state)


def _restore_type_tag(value: Any, type_name: Any = None) -> Any:
    return value


def _build_list(values: Any) -> list[Any]:
    if not isinstance(values, list):
        raise CorruptFileError("a TorchScript list is built from something other than a list")
    return values


# The helpers torch's C++ pickler names for typed containers: they only retype their argument.
_JIT_GLOBALS: dict[str, Callable[..., Any]] = {
    "torch.jit._pickle.restore_type_tag": _restore_type_tag,
    **{
        f"torch.jit._pickle.build_{kind}list": _build_list
        for kind in ("int", "double", "bool", "tensor", "generic")
    },
}


class ScriptUnpickler(RestrictedUnpickler):
    """The restricted unpickler, with each __torch__ class of the archive replaced by an inert
    ScriptObject subclass carrying its name."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _JIT_GLOBALS:
            return _JIT_GLOBALS[full]
        if module == "__torch__" or module.startswith("__torch__."):
            if full not in self.classes:
                self.classes[full] = type(
                    "ScriptObject", (ScriptObject,), {"__slots__": (), "qualified_name": full}
                )
            return self.classes[full]
        try:
            return super().find_class(module, name)
        except UnsupportedError as e:
            raise UnsupportedError(f"TorchScript archive: {e.message}") from None


def open_torchscript(path: str, key: str | None = None) -> Checkpoint:
    """Open a torch.jit.save archive; `key` (dotted, e.g. "encoder") reads one submodule."""
    with open_regular(path) as f:
        size = f.seek(0, 2)
    data = open_data(path)
    closers: list[Callable[[], None]] = [data.close]
    with closed_on_error(data, path):
        with open_zip(path) as archive:
            prefix = archive_prefix(archive)
            check_byteorder(archive, f"{prefix}byteorder", data)
            modules = load_pickle(
                archive, data, f"{prefix}data.pkl", f"{prefix}data/", ScriptUnpickler
            )
            constants = None
            if f"{prefix}constants.pkl" in archive.namelist():
                constants = load_pickle(
                    archive, data, f"{prefix}constants.pkl", f"{prefix}constants/", ScriptUnpickler
                )
        root = modules.root if key is None else select(modules.root, key, path)
        stem = (key or "") if isinstance(root, TensorStub) else ""
        tensors, skipped = flatten(root, stem, modules.pickle_bytes)
        sources = read_tensors(tensors, modules, data, closers)
        if constants is not None and key is None:
            named, _ = flatten(_constant_names(constants.root), "", constants.pickle_bytes)
            sources += read_tensors(named, constants, data, closers)
    return Checkpoint(path, FORMAT, size, sources, closers, skipped_values=skipped)


def _constant_names(root: Any) -> dict[str, Any]:
    """The constants table, a tuple, by the names the code uses: CONSTANTS.c0, CONSTANTS.c1..."""
    if not isinstance(root, tuple):
        raise CorruptFileError(f"constants.pkl holds a {type(root).__name__}, not a tuple")
    return {CONSTANTS: {f"c{i}": value for i, value in enumerate(root)}}
