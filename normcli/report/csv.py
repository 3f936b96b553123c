"""CSV output: one row per tensor (or group) and one for the whole model, with full-precision
numbers, for spreadsheets; the first column says which kind of row each is, to filter on."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..results import CompareResult, InspectResult
from .text import spreadsheet_cell, total_label

STAT_COLUMNS = [
    "bytes",
    "numel",
    "l1",
    "l2",
    "linf",
    "rms",
    "mean",
    "zeros",
    "sparsity",
    "nan",
    "inf",
]
TENSOR_COLUMNS = ["row", "checkpoint", "name", "dtype", "shape", *STAT_COLUMNS, "in_total", "shard"]
GROUP_COLUMNS = ["row", "checkpoint", "name", "tensors", "dtypes", *STAT_COLUMNS]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return spreadsheet_cell(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return (
            "x".join(str(v) for v in value)
            if all(isinstance(v, int) for v in value)
            else " ".join(map(str, value))
        )
    return value


def _table(columns: list[str], records: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(c)) for c in columns])
    return out.getvalue()


def render_inspect(results: Sequence[InspectResult]) -> str:
    grouped = results[0].groups is not None
    return _table(
        GROUP_COLUMNS if grouped else TENSOR_COLUMNS,
        (record for result in results for record in _inspect_records(result)),
    )


def _inspect_records(result: InspectResult) -> Iterator[dict[str, Any]]:
    path = result.checkpoint.path
    kind = "group" if result.groups is not None else "tensor"
    for row in result.groups if result.groups is not None else result.tensors:
        yield {"row": kind, "checkpoint": path, **row.to_dict()}
    total = result.total
    yield {
        "row": "total",
        "checkpoint": path,
        "name": total_label(result.selected, result.checkpoint.tensors),
        "tensors": total.tensors,
        **total.to_dict(),
    }


SIDE_FIELDS = ("name", "dtype", "shape", "numel", "l1", "l2", "linf", "nan", "inf")
DIFF_COLUMNS = [f"diff_{k}" for k in ("l1", "l2", "linf")] + ["rel_l2", "ratio_l2", "cosine"]
COMPARE_COLUMNS = (
    ["row", "a", "b", "name", "status", "dtype_changed", "in_total", "tensors"]
    + [f"a_{k}" for k in SIDE_FIELDS]
    + [f"b_{k}" for k in SIDE_FIELDS]
    + DIFF_COLUMNS
)
COMPARE_GROUP_COLUMNS = (
    ["row", "a", "b", "name", "tensors"]
    + [f"{side}_{k}" for side in "ab" for k in ("numel", "l1", "l2", "linf", "nan", "inf")]
    + DIFF_COLUMNS
)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def render_compare(results: Sequence[CompareResult]) -> str:
    grouped = results[0].groups is not None
    return _table(
        COMPARE_GROUP_COLUMNS if grouped else COMPARE_COLUMNS,
        (record for result in results for record in _compare_records(result)),
    )


def _compare_records(result: CompareResult) -> Iterator[dict[str, Any]]:
    sides = {"a": result.a.path, "b": result.b.path}
    kind = "group" if result.groups is not None else "tensor"
    for row in result.groups if result.groups is not None else result.tensors:
        yield {"row": kind, **_flatten(row.to_dict()), **sides}
    label = total_label(result.selected, result.available)
    yield {"row": "total", **_flatten(result.total.to_dict()), **sides, "name": label}
