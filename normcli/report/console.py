"""The rich Consoles of one run (made per run, never at import) and the progress bar on stderr."""

from __future__ import annotations

import os
import threading
import time
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .text import printable

# Work shorter than this finishes before a bar would help; showing one would only flicker.
PROGRESS_DELAY_S = 1.0


def output_console(file: IO[str] | None = None) -> Console:
    """Where results go: stdout or the -o file; colour only on a terminal and without NO_COLOR."""
    if file is not None:
        return Console(file=file, no_color=True, highlight=False, width=200, soft_wrap=False)
    console = _Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # piped into a file or a pager: nothing to wrap to, so keep every column whole
        console.width = 240
    return console


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit 1, which the contract keeps for failed checks; let the CLI decide
        self.quiet = True
        raise BrokenPipeError


def error_console() -> Console:
    return Console(stderr=True, highlight=False)


class ProgressBar:
    """A bar on stderr with bytes, throughput and time left, shown only on a terminal and only
    once the work has run for PROGRESS_DELAY_S."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = printable(label)
        self.lock = threading.Lock()
        self.bar: Progress | None = None
        self.task = TaskID(0)
        self.total = 0
        self.done = 0
        self.began = 0.0

    def start(self, total_bytes: int) -> None:
        with self.lock:
            self.total, self.done, self.began = total_bytes, 0, time.monotonic()

    def advance(self, done_bytes: int) -> None:
        with self.lock:
            self.done += done_bytes
            if self.bar is None:
                if time.monotonic() - self.began < PROGRESS_DELAY_S or not self.console.is_terminal:
                    return
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
            self.bar.update(self.task, completed=self.done)

    def stop(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None
