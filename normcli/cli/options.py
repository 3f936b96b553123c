"""Option bundles shared by the commands: output, selection, reading, and the check limits."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from ..formats import FORMATS
from ..settings import ReadSettings, Selection

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


def _glob_options(include_int_help: str) -> Callable[[F], F]:
    return bundle(
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
        click.option("--include-int", is_flag=True, help=include_int_help),
        click.option(
            "--include-optimizer",
            is_flag=True,
            help="Count a training checkpoint's optimizer state (Adam's moments, step "
            "counters...) in the whole-model figures; by default it is set apart.",
        ),
    )


_rename_options = bundle(
    click.option(
        "--strip-prefix",
        multiple=True,
        metavar="PREFIX",
        help="Remove PREFIX from tensor names on both sides before matching, e.g. the "
        "'module.' DDP adds (repeatable).",
    ),
    click.option(
        "--rename",
        multiple=True,
        metavar="REGEX=REPLACEMENT",
        help="Rewrite tensor names on both sides before matching (re.sub; repeatable, "
        "applied in order; write a literal '=' in REGEX as '\\=').",
    ),
)


def selection_options(include_int_help: str, renames: bool = False) -> Callable[[F], F]:
    """--filter, --exclude, --include-int, --include-optimizer (and --strip-prefix, --rename
    where names are matched across checkpoints), handed to the command as one `selection:
    Selection`."""

    def apply(command: F) -> F:
        @functools.wraps(command)
        def with_selection(
            *args: Any,
            filters: tuple[str, ...],
            excludes: tuple[str, ...],
            include_int: bool,
            include_optimizer: bool,
            strip_prefix: tuple[str, ...] = (),
            rename: tuple[str, ...] = (),
            **kwargs: Any,
        ) -> Any:
            selection = Selection(
                filters, excludes, include_int, strip_prefix, rename, include_optimizer
            )
            return command(*args, selection=selection, **kwargs)

        decorated = _glob_options(include_int_help)(cast(F, with_selection))
        return _rename_options(decorated) if renames else decorated

    return apply


view_options = bundle(
    click.option(
        "--top", type=click.IntRange(min=1), metavar="N", help="Show only the first N rows."
    ),
    click.option(
        "--group-by",
        type=click.IntRange(min=1),
        metavar="N",
        help="One row per group of tensors sharing the first N dot-separated name "
        "parts (e.g. 3: model.layers.7).",
    ),
)


_reading_options = bundle(
    click.option(
        "--input-format",
        type=click.Choice(list(FORMATS)),
        help="Read as this format instead of detecting it.",
    ),
    click.option(
        "--key",
        metavar="PATH",
        help="In a nested PyTorch checkpoint, a TorchScript archive or a DCP folder, read only "
        "this dotted sub-tree (e.g. model); files of other formats are read whole.",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        metavar="N",
        help="Worker threads (default: all cores).",
    ),
    click.option("--no-progress", is_flag=True, help="Never show a progress bar."),
    click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="An option of the storage of URL arguments (s3://, gs://, az://, hf://, https://), "
        "e.g. endpoint_url=http://127.0.0.1:9000 or anon=true (repeatable); credentials come "
        "from the usual places (AWS_*, HF_TOKEN, fsspec's configuration).",
    ),
)


def reading_options(command: F) -> F:
    """--input-format, --key, --threads, --no-progress, --storage-option, handed to the command
    as `read: ReadSettings` (its progress set per file by the command) and `progress: bool`."""

    @functools.wraps(command)
    def with_reading(
        *args: Any,
        input_format: str | None,
        key: str | None,
        threads: int | None,
        no_progress: bool,
        storage_options: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        from ..readers.remote import parse_option

        options = tuple(parse_option(text) for text in storage_options)
        read = ReadSettings(input_format, key, threads, storage_options=options)
        return command(*args, read=read, progress=not no_progress, **kwargs)

    return _reading_options(cast(F, with_reading))


def limit_option(flag: str, help_text: str) -> Callable[[F], F]:
    return click.option(flag, type=float, metavar="X", help=help_text)
