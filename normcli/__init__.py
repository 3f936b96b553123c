"""normcli: exact L1/L2 norms of model checkpoints, per tensor and for the whole model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CheckResult",
    "CompareResult",
    "InspectResult",
    "NormcliError",
    "TrendResult",
    "__version__",
    "check",
    "compare",
    "inspect",
    "stats",
    "trend",
]

if TYPE_CHECKING:
    from .api import check, compare, inspect, stats, trend
    from .errors import NormcliError
    from .results import CheckResult, CompareResult, InspectResult, TrendResult

_LAZY = {
    "inspect": "api",
    "stats": "api",
    "compare": "api",
    "check": "api",
    "trend": "api",
    "NormcliError": "errors",
    "InspectResult": "results",
    "CompareResult": "results",
    "CheckResult": "results",
    "TrendResult": "results",
}


def __getattr__(name: str) -> Any:
    # numpy and the readers load on first use, so `normcli --version` starts in milliseconds.
    # (No submodule is named like a function here: once imported it would replace the function
    # on the package, which is why the modules behind them are api, diff, gate and trends.)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names are no attributes until used: list the public surface, not the typing
    # helpers and submodules that happen to be loaded
    return sorted({*__all__, *(k for k in globals() if k.startswith("__"))})
