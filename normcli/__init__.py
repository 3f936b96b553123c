"""normcli: exact L1/L2 norms of model checkpoints, per tensor and for the whole model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CompareResult",
    "InspectResult",
    "NormcliError",
    "__version__",
    "compare",
    "inspect",
    "stats",
]

if TYPE_CHECKING:
    from .api import compare, inspect, stats
    from .errors import NormcliError
    from .results import CompareResult, InspectResult

_LAZY = {
    "inspect": "api",
    "stats": "api",
    "NormcliError": "errors",
    "InspectResult": "results",
    "compare": "api",
    "CompareResult": "results",
}


def __getattr__(name: str) -> Any:
    # numpy and the readers load on first use, so `normcli --version` starts in milliseconds.
    # (The modules behind `stats` and `compare` are named norms and diff: a submodule of the
    # same name would replace the function on the package once imported.)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
