"""Option bundles shared by the commands: output, selection, reading, and the check limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def bundle(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


output_options = bundle(
    click.option(
        "-f",
        "--format",
        "output_format",
        default="table",
        show_default=True,
        type=click.Choice(["table", "json", "csv", "md"]),
        help="Output format.",
    ),
    click.option(
        "-o", "--output", metavar="FILE", help="Write the report to FILE instead of stdout."
    ),
    click.option(
        "--plot",
        metavar="FILE",
        help="Also draw a picture: .svg or .html (self-contained), or .png (needs "
        "'normcli[plot]').",
    ),
)

selection_options = bundle(
    click.option(
        "--top", type=click.IntRange(min=1), metavar="N", help="Show only the first N rows."
    ),
    click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="GLOB",
        help="Only tensors whose name matches GLOB (repeatable).",
    ),
    click.option(
        "--exclude",
        "excludes",
        multiple=True,
        metavar="GLOB",
        help="Leave out tensors whose name matches GLOB (repeatable).",
    ),
    click.option(
        "--group-by",
        type=click.IntRange(min=1),
        metavar="N",
        help="One row per group of tensors sharing the first N dot-separated name "
        "parts (e.g. 3: model.layers.7).",
    ),
    click.option(
        "--include-int",
        is_flag=True,
        help="Count integer and bool tensors in the whole-model totals too.",
    ),
)

reading_options = bundle(
    click.option(
        "--input-format",
        type=click.Choice(
            ["safetensors", "npz", "npy", "pytorch", "gguf", "onnx", "hdf5", "keras"]
        ),
        help="Read as this format instead of detecting it.",
    ),
    click.option(
        "--key",
        metavar="PATH",
        help="In a nested PyTorch checkpoint, read only this dotted sub-tree (e.g. model); "
        "files of other formats are read whole.",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        metavar="N",
        help="Worker threads (default: all cores).",
    ),
    click.option("--no-progress", is_flag=True, help="Never show a progress bar."),
)


def limit_option(flag: str, help_text: str) -> Callable[[F], F]:
    return click.option(flag, type=float, metavar="X", help=help_text)
