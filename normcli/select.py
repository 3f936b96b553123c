"""Choosing and ordering rows: name globs, natural order, sort keys, and name-prefix groups."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from .errors import UsageError

SORT_KEYS = ("name", "l1", "l2", "linf", "numel")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Orders `layers.2` before `layers.10`: digit runs compare as numbers."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(name) if part
    )


def name_selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Kept if it matches any --filter glob (or none are given) and no --exclude glob."""
    if include and not any(fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatchcase(name, g) for g in exclude)


def require_some(
    selected: int, available: int, include: Sequence[str], exclude: Sequence[str]
) -> None:
    """A selection that matches nothing is almost always a typo; say so instead of reporting 0."""
    if available and not selected and (include or exclude):
        globs = " ".join(
            [*(f"--filter {g!r}" for g in include), *(f"--exclude {g!r}" for g in exclude)]
        )
        raise UsageError(f"{globs} left none of the {available} tensors")


_SEPARATOR = re.compile(r"[./]")


def require_view(
    sort: str | None,
    sort_keys: Sequence[str],
    top: int | None,
    group_by: int | None,
    least: int = 1,
) -> None:
    """The view options of a command (what the command line's choices and ranges enforce),
    checked for library callers: a --top of 0 or -1 would slice rows away unannounced."""
    if sort is not None and sort not in sort_keys:
        raise UsageError(f"cannot sort by {sort!r} (choose from {', '.join(sort_keys)})")
    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if group_by is not None and group_by < least:
        raise UsageError(f"--group-by must be at least {least}, not {group_by}")


def group_name(name: str, depth: int) -> str:
    """The first `depth` parts of a name, split at dots (safetensors, PyTorch) or slashes (HDF5,
    ONNX), separators kept as they were."""
    cuts = [m.start() for m in _SEPARATOR.finditer(name)]
    return name[: cuts[depth - 1]] if depth <= len(cuts) else name


def group_names(names: Iterable[str], depth: int) -> dict[str, list[int]]:
    """Indices of `names` under each group, groups in natural order."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(group_name(name, depth), []).append(i)
    return {g: groups[g] for g in sorted(groups, key=natural_key)}
