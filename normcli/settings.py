"""The settings every command shares, gathered once: which tensors (Selection) and how they are
read (ReadSettings). Light to import: the command line builds them before numpy is loaded."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import UsageError
from .select import name_selected, require_some

if TYPE_CHECKING:
    from .scan import Progress


@dataclass(frozen=True)
class Selection:
    """Which tensors a command covers (--filter/--exclude globs, --include-int,
    --include-optimizer) and the names they are matched under across checkpoints
    (--strip-prefix, --rename REGEX=REPLACEMENT)."""

    filter: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_int: bool = False
    strip_prefix: tuple[str, ...] = ()
    rename: tuple[str, ...] = ()
    # optimizer state (moments, step counters) in the totals, as if it were the model's
    include_optimizer: bool = False

    def selects(self, name: str) -> bool:
        return name_selected(name, self.filter, self.exclude)

    def require_some(self, selected: int, available: int) -> None:
        require_some(selected, available, self.filter, self.exclude)

    def covers(self, floating: bool, optimizer: bool = False) -> bool:
        """Whether whole-model totals count a tensor of this kind (`optimizer`: a tensor of an
        optimizer's state, set apart from the model's unless asked for)."""
        return (self.include_int or floating) and (self.include_optimizer or not optimizer)

    @property
    def scope(self) -> Literal["all", "floating"]:
        return "all" if self.include_int else "floating"

    def normalizer(self) -> Callable[[str], str]:
        return normalizer(self.strip_prefix, self.rename)


@dataclass(frozen=True)
class ReadSettings:
    """How checkpoints are opened and scanned: --input-format, --key (a sub-tree of a nested
    PyTorch checkpoint), --threads, and where progress goes (None: nowhere)."""

    input_format: str | None = None
    key: str | None = None
    threads: int | None = None
    progress: Progress | None = None
    # --storage-option KEY=VALUE pairs, for the filesystem of every URL opened
    storage_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # the command line's range, for library callers: 0 would quietly mean every core, and a
        # negative count would fail deep in the thread pool
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}")


def parse_rename(rule: str) -> tuple[re.Pattern[str], str]:
    """REGEX=REPLACEMENT, split at the first '=' not escaped as '\\='."""
    parts = re.split(r"(?<!\\)=", rule, maxsplit=1)
    if len(parts) != 2:
        raise UsageError(f"--rename {rule!r}: expected REGEX=REPLACEMENT")
    try:
        return re.compile(parts[0]), parts[1]
    except re.error as e:
        raise UsageError(f"--rename {rule!r}: bad regular expression: {e}") from e


def normalizer(strip_prefix: Sequence[str], rename: Sequence[str]) -> Callable[[str], str]:
    rules = [parse_rename(r) for r in rename]

    def normalize(name: str) -> str:
        for prefix in strip_prefix:
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
                break
        for pattern, replacement in rules:
            try:
                name = pattern.sub(replacement, name)
            except (re.error, IndexError) as e:
                raise UsageError(f"--rename {pattern.pattern!r}: bad replacement: {e}") from e
        return name

    return normalize
