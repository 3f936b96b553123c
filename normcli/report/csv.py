"""CSV output: one row per tensor (or group) with full-precision numbers, for spreadsheets."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from ..results import InspectResult

TENSOR_COLUMNS = ["checkpoint", "name", "dtype", "shape", "bytes", "numel", "l1", "l2", "linf",
                  "rms", "mean", "zeros", "sparsity", "nan", "inf", "in_total"]
GROUP_COLUMNS = ["checkpoint", "name", "tensors", "dtypes", "bytes", "numel", "l1", "l2", "linf",
                 "rms", "mean", "zeros", "sparsity", "nan", "inf"]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) \
            else " ".join(map(str, value))
    return value


def render_inspect(results: Sequence[InspectResult]) -> str:
    grouped = results[0].groups is not None
    columns = GROUP_COLUMNS if grouped else TENSOR_COLUMNS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for result in results:
        rows = result.groups if result.groups is not None else result.tensors
        for row in rows:
            record = {"checkpoint": result.checkpoint.path, **row.to_dict()}
            writer.writerow([_cell(record[c]) for c in columns])
    return out.getvalue()
