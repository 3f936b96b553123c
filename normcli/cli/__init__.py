"""The command line: parse options, call one core function, hand its result to a renderer.

This package is the only importer of click. options.py holds the option bundles the commands
share, commands.py the commands; here, the group that turns every failure into one line and an
exit code, and the process-wide settings only the command line makes (the open-file limit).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from .. import __version__, stopping
from ..inputs import recording_reads
from . import commands
from .exits import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK


class NormcliGroup(click.Group):
    """Turns every failure into one line on stderr: exit code 2 for bad usage or input, 3 for a
    bug in normcli."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        from ..errors import NormcliError

        try:
            with recording_reads():  # what the run reads, so that no output replaces it
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
                f"internal error: {type(e).__name__}: {e} (rerun with --debug to see where)",
                EXIT_INTERNAL,
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

    Reads safetensors, npz, npy, PyTorch and TorchScript (without torch), torch.distributed
    checkpoint folders, GGUF, ONNX and Keras/HDF5 files where they lie, in a single streaming
    pass, and never executes anything from a file.
    Exit codes: 0 success, 1 a check failed, 2 bad usage or input, 3 an internal error
    (a bug in normcli).
    """


for command in (commands.inspect, commands.compare, commands.trend, commands.check):
    cli.add_command(command)


def main() -> None:
    _allow_open_files()
    sys.excepthook = _redacted_traceback
    stopping.install()
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


def _redacted_traceback(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    """The traceback --debug shows, with credentials in URLs, queries and options hidden."""
    import traceback

    from ..readers.remote import redact

    sys.stderr.write(redact("".join(traceback.format_exception(kind, error, trace))))
