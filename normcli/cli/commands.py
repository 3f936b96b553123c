"""The commands: each turns its options into settings, makes one core call, renders the result."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import click

from ..settings import ReadSettings, Selection
from .exits import EXIT_VIOLATION
from .options import (
    limit_option,
    output_options,
    reading_options,
    selection_options,
    view_options,
)

INSPECT_EXAMPLES = """
\b
Examples:
  normcli inspect model.safetensors
  normcli inspect model.safetensors --sort l2 --top 20
  normcli inspect weights.npz --filter '*.attn.*' --exclude '*.bias'
  normcli inspect model.safetensors --group-by 3        # one row per model.layers.N
  normcli inspect model.safetensors -f json -o report.json
"""


COMPARE_EXAMPLES = """
\b
Examples:
  normcli compare step-1000.safetensors step-2000.safetensors
  normcli compare base.safetensors tuned.safetensors --group-by 3 --top 10
  normcli compare ddp.safetensors plain.safetensors --strip-prefix module.
  normcli compare baseline.json new.safetensors        # against a saved inspect report
  normcli compare a.safetensors b.npz -f json -o diff.json
"""


@contextlib.contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from ..report.console import ProgressBar

    bar = ProgressBar(label)
    try:
        yield bar
    finally:
        bar.stop()


def _label(command: str, *paths: str) -> str:
    """A progress bar's label: file names without their folders, so the bar fits the line."""
    return " ".join([command, *(os.path.basename(os.path.normpath(p)) or p for p in paths)])


def _render(
    renderers: dict[str, Any],
    output_format: str,
    results: list[Any],
    output: str | None,
    inputs: Sequence[str],
    plot: str | None = None,
    draw: str | None = None,
) -> None:
    """Render the results; `draw` names the function of report.plots that draws --plot (the
    module is imported only then)."""
    from ..output import check_targets, report_file, write_bytes
    from ..report.console import Output

    check_targets([(plot if draw is not None else None, "--plot"), (output, "-o")], inputs)
    if plot is not None and draw is not None:
        if len(results) != 1:
            from ..errors import UsageError

            raise UsageError("--plot draws one checkpoint at a time")
        from ..report import plots

        write_bytes(plot, getattr(plots, draw)(results[0], plot), inputs, "--plot")
    if output is None:
        renderers[output_format](results, Output())
        return
    with report_file(output, inputs) as file:
        renderers[output_format](results, Output(file))


@click.command(epilog=INSPECT_EXAMPLES)
@click.argument("checkpoints", nargs=-1, required=True, metavar="CKPT...")
@output_options
@click.option(
    "--sort",
    type=click.Choice(["name", "l1", "l2", "linf", "numel"]),
    help="Order rows by name (natural order) or by a figure, largest first. Default: file order.",
)
@click.option(
    "--header-only",
    is_flag=True,
    help="Names, dtypes, shapes and element/byte counts from the headers alone, without reading "
    "any value (a remote checkpoint costs a few small requests per file).",
)
@view_options
@selection_options("Count integer and bool tensors in the whole-model totals too.")
@reading_options
def inspect(
    checkpoints: tuple[str, ...],
    output_format: str,
    output: str | None,
    plot: str | None,
    sort: str | None,
    header_only: bool,
    top: int | None,
    group_by: int | None,
    selection: Selection,
    read: ReadSettings,
    progress: bool,
) -> None:
    """Norms of every tensor in each CKPT, and of the whole model."""
    from ..api import inspect_path
    from ..errors import UsageError
    from ..report import INSPECT_RENDERERS

    if header_only and plot:
        raise UsageError("--plot draws the values' figures, which --header-only does not read")
    results = []
    for path in checkpoints:
        with _progress(progress, _label("inspect", path)) as bar:
            results.append(
                inspect_path(
                    path,
                    selection,
                    replace(read, progress=bar),
                    sort=sort,
                    top=top,
                    group_by=group_by,
                    header_only=header_only,
                )
            )
    _render(INSPECT_RENDERERS, output_format, results, output, checkpoints, plot, "plot_inspect")


@click.command(epilog=COMPARE_EXAMPLES)
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@output_options
@click.option(
    "--sort",
    type=click.Choice(["rel", "diff", "ratio", "cosine", "name", "l2"]),
    help="rel: relative update ‖B−A‖₂/‖A‖₂ (default); diff: ‖B−A‖₂; ratio: "
    "‖B‖₂/‖A‖₂ furthest from 1; cosine: least similar; l2: ‖B‖₂; name.",
)
@view_options
@selection_options("Count integer and bool tensors in the whole-model totals too.", renames=True)
@reading_options
def compare(
    a: str,
    b: str,
    output_format: str,
    output: str | None,
    plot: str | None,
    sort: str | None,
    top: int | None,
    group_by: int | None,
    selection: Selection,
    read: ReadSettings,
    progress: bool,
) -> None:
    """What changed between checkpoints A and B: tensors matched by name, the update B−A
    measured element by element. Either side may be a report saved by `inspect -f json`
    (then only the stored norms are compared). Exits 0 whatever the differences."""
    from .. import diff
    from ..report import COMPARE_RENDERERS

    with _progress(progress, _label("compare", a, b)) as bar:
        read = replace(read, progress=bar)
        result = diff.compare(a, b, selection, read, sort=sort, top=top, group_by=group_by)
    _render(COMPARE_RENDERERS, output_format, [result], output, (a, b), plot, "plot_compare")


TREND_EXAMPLES = """
\b
Examples:
  normcli trend runs/exp1/                       # every checkpoint in the folder, by step
  normcli trend 'ckpt/step-*.safetensors' --group-by 3 --plot trend.png
  normcli trend step-*.json --metric linf        # saved inspect reports are enough
  normcli trend runs/exp1/ --group-by 0 -f csv -o trend.csv
"""


@click.command(epilog=TREND_EXAMPLES)
@click.argument("checkpoints", nargs=-1, required=True, metavar="CKPT...")
@output_options
@click.option(
    "--metric",
    type=click.Choice(["l2", "l1", "linf", "rms"]),
    default="l2",
    show_default=True,
    help="The figure followed through the run.",
)
@click.option(
    "--order",
    type=click.Choice(["name", "mtime", "given"]),
    default="name",
    show_default=True,
    help="name: natural order of the names (step numbers as numbers); mtime: "
    "modification time; given: as listed.",
)
@click.option(
    "--group-by",
    type=click.IntRange(min=0),
    metavar="N",
    help="One row per group of tensors sharing the first N name parts; 0 for every "
    "tensor. Default: every tensor, or groups of at most 64 rows for big models.",
)
@selection_options("Follow integer and bool tensors too.")
@reading_options
def trend(
    checkpoints: tuple[str, ...],
    output_format: str,
    output: str | None,
    plot: str | None,
    metric: str,
    order: str,
    group_by: int | None,
    selection: Selection,
    read: ReadSettings,
    progress: bool,
) -> None:
    """Norms across a training run: each tensor (or group) through the checkpoints, in step
    order, with the update from one checkpoint to the next. CKPT may be files, folders of
    checkpoints, glob patterns, or saved `inspect -f json` reports."""
    from .. import trends
    from ..report import TREND_RENDERERS

    with _progress(progress, "trend") as bar:
        read = replace(read, progress=bar)
        result = trends.trend(
            checkpoints, selection, read, metric=metric, order=order, group_by=group_by
        )
    _render(TREND_RENDERERS, output_format, [result], output, checkpoints, plot, "plot_trend")


CHECK_EXAMPLES = """
\b
Examples:
  normcli check model.safetensors                                  # fails on any NaN/Inf
  normcli check model.safetensors --max-tensor-linf 1000 --max-l2 5000
  normcli check new.safetensors --baseline base.json --max-l2-ratio 1.5
  normcli check new.safetensors --baseline old.safetensors --max-rel-update 0.1 \\
      --require-same-tensors --format github --junit normcli.xml
"""


@click.command(epilog=CHECK_EXAMPLES)
@click.argument("checkpoints", nargs=-1, required=True, metavar="CKPT...")
@click.option(
    "--baseline",
    metavar="REF",
    help="A checkpoint, or a report saved by `inspect -f json`, to compare against.",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="Settings file (default: ./normcli.toml, else [tool.normcli.check] in "
    "./pyproject.toml). Options given here override it.",
)
@click.option(
    "--allow-unread",
    is_flag=True,
    default=None,
    help="Do not fail on tensors normcli cannot read, or on a checkpoint without any (N016).",
)
@click.option(
    "--allow-nonfinite",
    is_flag=True,
    default=None,
    help="Do not fail on NaN or Inf values (rule N001).",
)
@limit_option("--max-l2", "N002: whole-model L2 at most X.")
@limit_option("--max-l1", "N003: whole-model L1 at most X.")
@limit_option("--max-tensor-l2", "N004: every tensor's L2 at most X.")
@limit_option("--max-tensor-linf", "N005: every tensor's max|x| at most X.")
@limit_option("--max-tensor-rms", "N006: every tensor's RMS at most X.")
@limit_option("--max-l2-ratio", "N010: whole-model ‖B‖₂/‖A‖₂ within [1/X, X].")
@limit_option("--max-tensor-l2-ratio", "N011: every tensor's ‖B‖₂/‖A‖₂ within [1/X, X].")
@limit_option(
    "--max-rel-update", "N012: whole-model ‖B−A‖₂/‖A‖₂ at most X (needs a checkpoint baseline)."
)
@limit_option("--max-tensor-rel-update", "N013: every tensor's ‖B−A‖₂/‖A‖₂ at most X.")
@limit_option("--min-cosine", "N014: cosine(A, B) of the model and every tensor at least X.")
@click.option(
    "--require-same-tensors",
    is_flag=True,
    default=None,
    help="N015: no tensor added, removed, reshaped or of another dtype against the baseline.",
)
@click.option(
    "-f",
    "--format",
    "output_format",
    default="table",
    show_default=True,
    type=click.Choice(["table", "json", "github", "md"]),
    help="github: ::error annotations, plus a summary appended to "
    "$GITHUB_STEP_SUMMARY when it is set.",
)
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE instead of stdout.")
@click.option("--junit", metavar="FILE", help="Also write a JUnit XML report to FILE.")
@selection_options(
    "Count integer and bool tensors too: in the tensor rules and the whole-model figures.",
    renames=True,
)
@reading_options
def check(
    checkpoints: tuple[str, ...],
    baseline: str | None,
    config_file: str | None,
    output_format: str,
    output: str | None,
    junit: str | None,
    selection: Selection,
    read: ReadSettings,
    progress: bool,
    **limits: Any,
) -> None:
    """Fail (exit 1) when a CKPT breaks a rule: NaN/Inf values (always, unless allowed), norms
    past a limit, or drift from a baseline. Exit 0 when every rule passes, 2 when an input or
    the settings cannot be judged."""
    from .. import gate
    from ..output import append_text, check_targets, write_text
    from ..report import CHECK_RENDERERS
    from ..report.check_report import print_verdicts, render_junit, render_markdown

    config = gate.load_config(config_file, limits)
    baseline = baseline or config.baseline
    inputs = (*checkpoints, *([baseline] if baseline else []))
    results = []
    for path in checkpoints:
        with _progress(progress, _label("check", path)) as bar:
            results.append(
                gate.run_check(path, config, baseline, selection, replace(read, progress=bar))
            )
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if output_format == "github" else None
    outputs = [(output, "-o"), (junit, "--junit"), (summary or None, "GITHUB_STEP_SUMMARY")]
    check_targets(outputs, inputs)
    _render(CHECK_RENDERERS, output_format, results, output, inputs)
    if junit:
        write_text(junit, render_junit(results), inputs, "--junit")
    if summary:
        append_text(summary, render_markdown(results), inputs, "GITHUB_STEP_SUMMARY")
    print_verdicts(results)
    if not all(result.passed for result in results):
        click.get_current_context().exit(EXIT_VIOLATION)
