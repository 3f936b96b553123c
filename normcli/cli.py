"""The command line: parse options, call one core function, hand its result to a renderer."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

import click

from . import __version__

EXIT_OK, EXIT_VIOLATION, EXIT_BAD_INPUT = 0, 1, 2

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


class NormcliGroup(click.Group):
    """Turns every user-facing failure into one line on stderr and exit code 2."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        from .errors import NormcliError

        try:
            code = super().main(argv, prog_name or "normcli", standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            # no command at all: the help is the answer, not an error wrapped around it
            click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message(), err=True)
            code = EXIT_BAD_INPUT
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            code = _fail(f"{e.format_message()}{hint}")
        except click.ClickException as e:
            code = _fail(e.format_message())
        except NormcliError as e:
            if debug:
                raise
            code = _fail(str(e))
        except (click.Abort, KeyboardInterrupt):
            code = _fail("interrupted", 130)
        except BrokenPipeError:
            # the reader went away (`| head`): nothing left to say, and nothing to flush at exit
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = EXIT_OK
        except OSError as e:
            if debug:
                raise
            where = f"{e.filename}: " if e.filename else ""
            code = _fail(f"{where}{e.strerror or e}")
        except Exception as e:  # a bug: still one line, with the way to see more
            if debug:
                raise
            code = _fail(
                f"internal error: {type(e).__name__}: {e} (rerun with --debug to see where)"
            )
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    # paths and tensor names come from users and files: escape anything that could break the
    # one-line contract or drive the terminal
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    # stderr itself may fail (a full device): the exit code still says what happened, and 1
    # must keep meaning "a rule was violated"
    with contextlib.suppress(OSError):
        click.echo(f"normcli: error: {safe}", err=True)
    return code


@click.group(cls=NormcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="normcli")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """Exact L1/L2 norms of model checkpoints, per tensor and for the whole model.

    Reads safetensors, npz, npy, PyTorch (without torch), GGUF, ONNX and Keras/HDF5 files where
    they lie, in a single streaming pass, and never executes anything from a file.
    Exit codes: 0 success, 1 a check failed, 2 bad usage or input.
    """


@contextlib.contextmanager
def _output(path: str | None, inputs: Sequence[str] = ()) -> Iterator[TextIO | None]:
    if path is None:
        yield None
        return
    from .errors import InputError, UsageError

    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise UsageError("-o would overwrite an input file", path)

    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            yield f
    except OSError as e:
        raise InputError(f"cannot write output: {e.strerror or e}", path) from e


F = TypeVar("F", bound=Callable[..., Any])


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


output_options = _options(
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

selection_options = _options(
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

reading_options = _options(
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


@contextlib.contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from .report.console import ProgressBar, error_console

    bar = ProgressBar(error_console(), label)
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
    draw: Callable[[Any, str], bytes] | None = None,
) -> None:
    from .report.console import output_console

    if plot is not None and draw is not None:
        if len(results) != 1:
            from .errors import UsageError

            raise UsageError("--plot draws one checkpoint at a time")
        _write_bytes(plot, draw(results[0], plot), inputs)
    with _output(output, inputs) as file:
        renderers[output_format](results, output_console(file))


def _write_bytes(path: str, data: bytes, inputs: Sequence[str]) -> None:
    from .errors import InputError, UsageError

    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise UsageError("--plot would overwrite an input file", path)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise InputError(f"cannot write: {e.strerror or e}", path) from e


@cli.command(epilog=INSPECT_EXAMPLES)
@click.argument("checkpoints", nargs=-1, required=True, metavar="CKPT...")
@output_options
@click.option(
    "--sort",
    type=click.Choice(["name", "l1", "l2", "linf", "numel"]),
    help="Order rows by name (natural order) or by a figure, largest first. Default: file order.",
)
@selection_options
@reading_options
def inspect(
    checkpoints: tuple[str, ...],
    output_format: str,
    output: str | None,
    plot: str | None,
    sort: str | None,
    top: int | None,
    filters: tuple[str, ...],
    excludes: tuple[str, ...],
    group_by: int | None,
    include_int: bool,
    input_format: str | None,
    key: str | None,
    threads: int | None,
    no_progress: bool,
) -> None:
    """Norms of every tensor in each CKPT, and of the whole model."""
    from . import api
    from .report import INSPECT_RENDERERS
    from .report.plots import plot_inspect

    results = []
    for path in checkpoints:
        with _progress(not no_progress, _label("inspect", path)) as bar:
            results.append(
                api.inspect(
                    path,
                    input_format=input_format,
                    key=key,
                    include_int=include_int,
                    filter=filters,
                    exclude=excludes,
                    sort=sort,
                    top=top,
                    group_by=group_by,
                    threads=threads,
                    progress=bar,
                )
            )
    _render(INSPECT_RENDERERS, output_format, results, output, checkpoints, plot, plot_inspect)


@cli.command(epilog=COMPARE_EXAMPLES)
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@output_options
@click.option(
    "--sort",
    type=click.Choice(["rel", "diff", "ratio", "cosine", "name", "l2"]),
    help="rel: relative update ‖B−A‖₂/‖A‖₂ (default); diff: ‖B−A‖₂; ratio: "
    "‖B‖₂/‖A‖₂ furthest from 1; cosine: least similar; l2: ‖B‖₂; name.",
)
@selection_options
@click.option(
    "--strip-prefix",
    multiple=True,
    metavar="PREFIX",
    help="Remove PREFIX from tensor names on both sides before matching, e.g. the "
    "'module.' DDP adds (repeatable).",
)
@click.option(
    "--rename",
    multiple=True,
    metavar="REGEX=REPLACEMENT",
    help="Rewrite tensor names on both sides before matching (re.sub; repeatable, "
    "applied in order; write a literal '=' in REGEX as '\\=').",
)
@reading_options
def compare(
    a: str,
    b: str,
    output_format: str,
    output: str | None,
    plot: str | None,
    sort: str | None,
    top: int | None,
    filters: tuple[str, ...],
    excludes: tuple[str, ...],
    group_by: int | None,
    include_int: bool,
    strip_prefix: tuple[str, ...],
    rename: tuple[str, ...],
    input_format: str | None,
    key: str | None,
    threads: int | None,
    no_progress: bool,
) -> None:
    """What changed between checkpoints A and B: tensors matched by name, the update B−A
    measured element by element. Either side may be a report saved by `inspect -f json`
    (then only the stored norms are compared). Exits 0 whatever the differences."""
    from . import diff
    from .report import COMPARE_RENDERERS
    from .report.plots import plot_compare

    with _progress(not no_progress, _label("compare", a, b)) as bar:
        result = diff.compare(
            a,
            b,
            input_format=input_format,
            key=key,
            include_int=include_int,
            strip_prefix=strip_prefix,
            rename=rename,
            filter=filters,
            exclude=excludes,
            sort=sort,
            top=top,
            group_by=group_by,
            threads=threads,
            progress=bar,
        )
    _render(COMPARE_RENDERERS, output_format, [result], output, (a, b), plot, plot_compare)


TREND_EXAMPLES = """
\b
Examples:
  normcli trend runs/exp1/                       # every checkpoint in the folder, by step
  normcli trend 'ckpt/step-*.safetensors' --group-by 3 --plot trend.png
  normcli trend step-*.json --metric linf        # saved inspect reports are enough
  normcli trend runs/exp1/ --group-by 0 -f csv -o trend.csv
"""


@cli.command(epilog=TREND_EXAMPLES)
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
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="GLOB",
    help="Only tensors whose name matches GLOB (repeatable).",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Leave out tensors whose name matches GLOB (repeatable).",
)
@click.option("--include-int", is_flag=True, help="Follow integer and bool tensors too.")
@reading_options
def trend(
    checkpoints: tuple[str, ...],
    output_format: str,
    output: str | None,
    plot: str | None,
    metric: str,
    order: str,
    group_by: int | None,
    filters: tuple[str, ...],
    excludes: tuple[str, ...],
    include_int: bool,
    input_format: str | None,
    key: str | None,
    threads: int | None,
    no_progress: bool,
) -> None:
    """Norms across a training run: each tensor (or group) through the checkpoints, in step
    order, with the update from one checkpoint to the next. CKPT may be files, folders of
    checkpoints, glob patterns, or saved `inspect -f json` reports."""
    from . import trend as trends
    from .report import TREND_RENDERERS
    from .report.plots import plot_trend

    with _progress(not no_progress, "trend") as bar:
        result = trends.trend(
            checkpoints,
            metric=metric,
            order=order,
            group_by=group_by,
            include_int=include_int,
            filter=filters,
            exclude=excludes,
            input_format=input_format,
            key=key,
            threads=threads,
            progress=bar,
        )
    _render(TREND_RENDERERS, output_format, [result], output, checkpoints, plot, plot_trend)


CHECK_EXAMPLES = """
\b
Examples:
  normcli check model.safetensors                                  # fails on any NaN/Inf
  normcli check model.safetensors --max-tensor-linf 1000 --max-l2 5000
  normcli check new.safetensors --baseline base.json --max-l2-ratio 1.5
  normcli check new.safetensors --baseline old.safetensors --max-rel-update 0.1 \\
      --require-same-tensors --format github --junit normcli.xml
"""


def _limit_option(flag: str, help_text: str) -> Callable[[F], F]:
    return click.option(flag, type=float, metavar="X", help=help_text)


@cli.command(epilog=CHECK_EXAMPLES)
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
@_limit_option("--max-l2", "N002: whole-model L2 at most X.")
@_limit_option("--max-l1", "N003: whole-model L1 at most X.")
@_limit_option("--max-tensor-l2", "N004: every tensor's L2 at most X.")
@_limit_option("--max-tensor-linf", "N005: every tensor's max|x| at most X.")
@_limit_option("--max-tensor-rms", "N006: every tensor's RMS at most X.")
@_limit_option("--max-l2-ratio", "N010: whole-model ‖B‖₂/‖A‖₂ within [1/X, X].")
@_limit_option("--max-tensor-l2-ratio", "N011: every tensor's ‖B‖₂/‖A‖₂ within [1/X, X].")
@_limit_option(
    "--max-rel-update", "N012: whole-model ‖B−A‖₂/‖A‖₂ at most X (needs a checkpoint baseline)."
)
@_limit_option("--max-tensor-rel-update", "N013: every tensor's ‖B−A‖₂/‖A‖₂ at most X.")
@_limit_option("--min-cosine", "N014: cosine(A, B) of the model and every tensor at least X.")
@click.option(
    "--require-same-tensors",
    is_flag=True,
    default=None,
    help="N015: no tensor added, removed or reshaped against the baseline.",
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
@click.option(
    "--include-int",
    is_flag=True,
    help="Count integer and bool tensors too: in the tensor rules and the whole-model figures.",
)
@reading_options
def check(
    checkpoints: tuple[str, ...],
    baseline: str | None,
    config_file: str | None,
    output_format: str,
    output: str | None,
    junit: str | None,
    include_int: bool,
    input_format: str | None,
    key: str | None,
    threads: int | None,
    no_progress: bool,
    **limits: Any,
) -> None:
    """Fail (exit 1) when a CKPT breaks a rule: NaN/Inf values (always, unless allowed), norms
    past a limit, or drift from a baseline. Exit 0 when every rule passes, 2 when an input or
    the settings cannot be judged."""
    from rich.text import Text

    from . import check as gate
    from .report import json as json_report
    from .report.check_report import (
        render_github,
        render_junit,
        render_markdown,
        render_table,
        verdict,
    )
    from .report.console import error_console, output_console

    settings, source = gate.find_config(config_file)
    overrides = {key.replace("_", "-"): value for key, value in limits.items()}
    config = gate.parse_config(settings, source).merged(overrides)
    baseline = baseline or config.baseline
    results = []
    for path in checkpoints:
        with _progress(not no_progress, _label("check", path)) as bar:
            results.append(
                gate.run_check(
                    path,
                    config,
                    baseline,
                    input_format=input_format,
                    key=key,
                    include_int=include_int,
                    threads=threads,
                    progress=bar,
                )
            )
    with _output(output, (*checkpoints, *([baseline] if baseline else []))) as file:
        console = output_console(file)
        if output_format == "table":
            render_table(results, console)
        else:
            text = {"json": json_report.dumps, "github": render_github, "md": render_markdown}[
                output_format
            ](results)
            console.file.write(text)
    if junit:
        _write_text(junit, render_junit(results))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if output_format == "github" and summary:
        _write_text(summary, render_markdown(results), append=True)
    errors = error_console()
    # the verdict repeats what the exit code says: a stderr that cannot take it changes nothing
    with contextlib.suppress(OSError):
        for result in results:
            errors.print(
                Text(verdict(result)),
                style="green" if result.passed else "bold red",
                highlight=False,
                soft_wrap=True,
            )
    if not all(result.passed for result in results):
        click.get_current_context().exit(EXIT_VIOLATION)


def _write_text(path: str, text: str, append: bool = False) -> None:
    from .errors import InputError

    try:
        with open(path, "a" if append else "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise InputError(f"cannot write: {e.strerror or e}", path) from e


def main() -> None:
    _allow_open_files()
    cli.main()


def _allow_open_files() -> None:
    """Raise the soft limit on open files to the hard one: a sharded checkpoint, or a trend,
    keeps every file open (two descriptors each when mapped), and 1024 is a common soft limit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
