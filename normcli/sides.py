"""One side of a comparison, check or trend: a checkpoint opened, or a saved inspect report read.
open_side is the one place an argument becomes tensors (remote URLs plug in here)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import CorruptFileError, UsageError
from .norms import TensorStats, squares_of_l2
from .readers import Checkpoint, TensorSource, open_checkpoint, remote
from .readers.files import load_json, open_regular
from .readers.sharded import INDEX_SUFFIX, is_sharded
from .results import INSPECT_SCHEMA, CheckpointInfo
from .settings import ReadSettings


@dataclass(frozen=True)
class StoredTensor:
    """A tensor known only from a saved inspect report: figures, but no values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stats: TensorStats
    floating: bool
    # a tensor of a training checkpoint's optimizer state
    optimizer: bool = False


Entry = TensorSource | StoredTensor


def is_floating(entry: Entry) -> bool:
    return entry.floating if isinstance(entry, StoredTensor) else entry.dtype.is_floating


def is_optimizer(entry: Entry) -> bool:
    return entry.optimizer if isinstance(entry, StoredTensor) else entry.optimizer is not None


def dtype_name(entry: Entry) -> str:
    return entry.dtype if isinstance(entry, StoredTensor) else entry.dtype.name


def is_report(path: str) -> bool:
    """A saved JSON report rather than a checkpoint (a folder or an index file is a checkpoint).
    A URL is told by its name (a .json that is no index), without a request."""
    if remote.is_url(path):
        name = path.split("?", 1)[0].lower()
        return name.endswith(".json") and not name.endswith(INDEX_SUFFIX)
    if is_sharded(path):
        return False
    with open_regular(path) as f:
        head = f.read(64).lstrip()
    return head[:1] in (b"{", b"[")


def load_report(path: str, command: str = "compare") -> tuple[CheckpointInfo, list[StoredTensor]]:
    """A JSON document written by `normcli inspect -f json`, as the figures of one checkpoint;
    `command`, the one running, is named where the document cannot serve it."""
    doc = load_json(path, "report")
    if isinstance(doc, list):
        reports = "1 report" if len(doc) == 1 else f"{len(doc)} reports"
        raise UsageError(
            f"holds a list of {reports} (as inspect of several checkpoints writes); "
            f"{command} needs the report of one checkpoint, not a list",
            path,
        )
    if not isinstance(doc, dict) or doc.get("schema") != INSPECT_SCHEMA:
        raise CorruptFileError(
            f"not a normcli inspect report (expected schema {INSPECT_SCHEMA})", path
        )
    if doc.get("header_only"):
        raise UsageError(
            "a --header-only report holds no figures of the values to compare against", path
        )
    try:
        info = doc["checkpoint"]
        if len(doc["tensors"]) < doc["selected"]:
            raise UsageError(
                f"the report lists only {len(doc['tensors'])} of {doc['selected']} tensors "
                "(saved with --top); save a full report to compare against",
                path,
            )
        tensors = [_stored_tensor(t) for t in doc["tensors"]]
        # named by the report itself: the checkpoint it describes may be long gone
        globs = doc.get("selection") or {}
        selection = (tuple(globs.get("filter", ())), tuple(globs.get("exclude", ())))
        checkpoint = CheckpointInfo(
            path, "report", _count(info["bytes"]), len(tensors), selection=selection
        )
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        raise CorruptFileError(f"report is missing or has a malformed field: {e}", path) from e
    return checkpoint, tensors


def _stored_tensor(t: dict[str, Any]) -> StoredTensor:
    numel, nan, inf = _count(t["numel"]), _count(t["nan"]), _count(t["inf"])
    l1, l2, linf = (_figure(t[key], 0.0) for key in ("l1", "l2", "linf"))
    mean = _figure(t["mean"])
    # null norms: L1 and L2 overflowed float64; Linf, the max of no finite value at all
    sumsq, scale = squares_of_l2(l2) if l2 is not None else (math.inf, 0)
    stats = TensorStats(
        numel=numel,
        l1=l1 if l1 is not None else math.inf,
        sumsq=sumsq,
        scale=scale,
        linf=linf if linf is not None else 0.0,
        total=None if mean is None else mean * (numel - nan - inf),
        zeros=_count(t["zeros"]),
        nan=nan,
        inf=inf,
    )
    dtype = str(t["dtype"])
    shape = tuple(_count(d) for d in t["shape"])
    optimizer = t.get("optimizer") is not None
    return StoredTensor(str(t["name"]), dtype, shape, stats, _floating_name(dtype), optimizer)


def _floating_name(dtype: str) -> bool:
    """Whether a stored dtype holds floating-point values, from its name: every reader names
    integer and bool types I<bits>, U<bits> or BOOL. A report's in_total would not do: saved with
    --include-int, it is true for integer tensors too."""
    return not (dtype == "BOOL" or re.fullmatch(r"[IU]\d+", dtype))


def _count(value: Any) -> int:
    """A count or a dimension as a report stores it: a whole number that fits an int64."""
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValueError(f"{value!r:.40} is not a count")
    return value


def _figure(value: Any, least: float = -math.inf) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not least <= value < math.inf:
        raise ValueError(f"{value!r:.40} is not a finite number of at least {least}")
    return float(value)


def by_name(
    entries: Sequence[Entry], normalize: Callable[[str], str], where: str
) -> dict[str, Entry]:
    named: dict[str, Entry] = {}
    for entry in entries:
        key = normalize(entry.name)
        if key in named:
            raise UsageError(
                f"tensors {named[key].name!r} and {entry.name!r} both become {key!r} after "
                "--strip-prefix/--rename",
                where,
            )
        named[key] = entry
    return named


def checkpoint_info(checkpoint: Checkpoint) -> CheckpointInfo:
    return CheckpointInfo(
        checkpoint.path,
        checkpoint.format,
        checkpoint.nbytes,
        len(checkpoint.tensors),
        checkpoint.shards,
        checkpoint.skipped_values,
        tuple(checkpoint.skipped),
    )


@dataclass(frozen=True)
class Side:
    """An opened side: what it is, and its tensors (readable ones for a checkpoint, figures only
    for a saved report)."""

    info: CheckpointInfo
    entries: tuple[Entry, ...]


def open_side(
    path: str | os.PathLike[str], read: ReadSettings, stack: ExitStack, command: str = "compare"
) -> Side:
    """A checkpoint (closed when `stack` closes) or a saved inspect report: where compare,
    check and trend (`command`, named in messages) turn an argument into tensors."""
    path = os.fspath(path)
    if is_report(path):
        with remote.storage_options(dict(read.storage_options)):
            info, stored = load_report(path, command)
        return Side(info, tuple(stored))
    checkpoint = stack.enter_context(open_checkpoint_side(path, read))
    return Side(checkpoint_info(checkpoint), tuple(checkpoint.tensors))


def open_checkpoint_side(path: str | os.PathLike[str], read: ReadSettings) -> Checkpoint:
    """The one place a command opens a checkpoint (inspect directly, the others through
    open_side): where the location of a side, local or remote, is resolved."""
    return open_checkpoint(path, read.input_format, read.key, dict(read.storage_options))


@contextmanager
def open_sides(
    paths: Sequence[str | os.PathLike[str]], read: ReadSettings, command: str = "compare"
) -> Iterator[list[Side]]:
    """Every side of `command` opened, and every checkpoint among them closed on the way out."""
    with ExitStack() as stack:
        yield [open_side(path, read, stack, command) for path in paths]
