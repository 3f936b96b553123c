"""Ending a run on Ctrl-C or SIGTERM: at once, leaving every output as it was.

A stop does not unwind the run. Raising KeyboardInterrupt at whatever line the main thread is
on can leave a lock taken that other threads wait for (the scan pool's, taken as the main thread
submits a job): the run then hangs at exit instead of ending, until a CI job's time runs out.
So the command line's handler removes the temporary outputs not yet put in place and ends the
process there; the writer registers each temporary file here while it exists.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

STOPPING_SIGNALS = ("SIGINT", "SIGTERM")

_unfinished: set[str] = set()
_holding = 0
_pending: int | None = None


def install() -> None:
    """Ctrl-C and SIGTERM end the process through stop(): for the command line only (a program
    using the API keeps its own handlers)."""
    for name in STOPPING_SIGNALS:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            signal.signal(getattr(signal, name), _on_signal)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A block a stop does not cut short, so that making a temporary file and registering it
    happen together; a stop that came meanwhile takes effect at its end."""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        if _holding == 0 and _pending is not None:
            stop(_pending)


def remove_if_stopped(path: str) -> None:
    _unfinished.add(path)


def forget(path: str) -> None:
    _unfinished.discard(path)


def _on_signal(signum: int, frame: Any) -> None:
    global _pending
    _pending = signum
    if _holding == 0:
        stop(signum)


def stop(signum: int) -> None:
    """Remove the unfinished outputs, say so in one line, and exit with 128 + the signal's
    number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process a signal ended."""
    for path in list(_unfinished):
        with contextlib.suppress(OSError):
            os.unlink(path)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        # the progress bar's line cleared and the cursor it hid shown again
        tidy = "\r\x1b[2K\x1b[?25h" if sys.stderr.isatty() else ""
        os.write(sys.stderr.fileno(), f"{tidy}normcli: error: interrupted\n".encode())
    os._exit(128 + signum)
