"""Where a run's output goes, the rich Consoles (made per run, never at import, and only for
output that is drawn: rich costs a JSON run a fifth of its start-up) and the progress bar."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

from .text import printable

# Work shorter than this finishes before a bar would help; showing one would only flicker.
PROGRESS_DELAY_S = 1.0


class Output:
    """Where results go: stdout or the -o file. Text formats write to `file`; tables ask for
    `console()`, made on first use."""

    def __init__(self, file: IO[str] | None = None) -> None:
        self._file = file
        self._console: Console | None = None

    @property
    def file(self) -> IO[str]:
        return sys.stdout if self._file is None else self._file

    def console(self) -> Console:
        if self._console is None:
            self._console = output_console(self._file)
        return self._console


def output_console(file: IO[str] | None = None) -> Console:
    """Colour only on a terminal and without NO_COLOR."""
    from rich.console import Console

    if file is not None:
        return Console(file=file, no_color=True, highlight=False, width=200, soft_wrap=False)
    console = _stdout_console()(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # piped into a file or a pager: nothing to wrap to, so keep every column whole
        console.width = 240
    return console


@functools.cache
def _stdout_console() -> type[Console]:
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1, which the contract keeps for failed checks; let the CLI decide
            self.quiet = True
            raise BrokenPipeError

    return StdoutConsole


def error_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class ProgressBar:
    """A bar on stderr with bytes, throughput and time left, shown only on a terminal and only
    once the work has run for PROGRESS_DELAY_S."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self._console = console
        self.label = printable(label)
        self.lock = threading.Lock()
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.total = 0
        self.done = 0
        self.began = 0.0

    @property
    def console(self) -> Console:
        """stderr's, made when there is something to show."""
        if self._console is None:
            self._console = error_console()
        return self._console

    def start(self, total_bytes: int) -> None:
        with self.lock:
            self.total, self.done, self.began = total_bytes, 0, time.monotonic()

    def advance(self, done_bytes: int) -> None:
        with self.lock:
            self.done += done_bytes
            if self.bar is None:
                if time.monotonic() - self.began < PROGRESS_DELAY_S or not self.console.is_terminal:
                    return
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                self.bar = Progress(
                    # the label names files: plain text, never markup (a name could hold
                    # "[link=...]"), and no control characters that would drive the terminal
                    TextColumn("{task.description}", markup=False),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )
                self.task = self.bar.add_task(self.label, total=self.total)
                self.bar.start()
            if self.task is not None:
                self.bar.update(self.task, completed=self.done)

    def compiling(self) -> None:
        """The scan waits for the kernels to compile: say so, rather than pause in silence."""
        if self.console.is_terminal:
            self.console.print(
                "normcli: compiling the fast kernels for this machine; once only, "
                "later runs load them",
                markup=False,
            )

    def stop(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None
