"""Writing outputs (-o, --plot, --junit, the GitHub step summary): never over a file the run
reads, and atomically, so a run that fails leaves an existing output as it was.

A regular file is written to a temporary file in the same folder, flushed to disk and then put
in place with os.replace. Whatever is not a regular file (a FIFO, /dev/stdout, a terminal) is
written directly: it cannot be replaced, and there is nothing in it to keep.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

from . import stopping
from .errors import InputError, UsageError
from .inputs import read_by_this_run


def refuse_inputs(path: str, inputs: Sequence[str], flag: str) -> None:
    """A UsageError naming both when `path` is a file the run reads: one it opened (the same
    file, links followed, whether it came from a folder, an index, a glob, a baseline or a
    settings file) or one named on the command line."""
    read = read_by_this_run(path)
    if read is None and os.path.exists(path):
        read = next((s for s in inputs if os.path.exists(s) and os.path.samefile(path, s)), None)
    if read is not None:
        raise UsageError(f"{flag} would overwrite an input file ({read})", path)


def check_targets(targets: Sequence[tuple[str | None, str]], inputs: Sequence[str]) -> None:
    """Every output a run is about to write, as (path or None, flag), checked before any is
    written: none is an input, and each can be written where it is. A run that cannot write
    one of them then leaves every existing output as it was."""
    for path, flag in targets:
        if path is not None:
            refuse_inputs(path, inputs, flag)
            _check_writable(path, flag)


def _check_writable(path: str, flag: str) -> None:
    try:
        status: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        status = None
    except OSError as e:
        raise InputError(f"cannot write {flag}: {e.strerror or e}", path) from e
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise InputError(f"cannot write {flag}: it is a folder", path)
    if status is not None and not stat.S_ISREG(status.st_mode):
        return  # a FIFO or a device, written directly: its own writes will say
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {flag}: there is no folder {folder}", path)
    # a new file, or one replacing the old, is made in the folder
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {flag}: the folder {folder} is not writable", path)


@contextlib.contextmanager
def replacing(path: str, binary: bool = False) -> Iterator[IO[Any]]:
    """A file to write the whole of `path` into; it takes the place of `path` (or of the file a
    link at `path` points to) only when the block ends without an error."""
    mode = "wb" if binary else "w"
    encoding = None if binary else "utf-8"
    newline = None if binary else ""
    if not _is_regular_or_absent(path):
        with open(path, mode, encoding=encoding, newline=newline) as direct:
            yield direct
        return
    target = os.path.realpath(path)
    with stopping.held():
        fd, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target)
        )
        stopping.remove_if_stopped(temporary)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _keep_mode(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    finally:
        stopping.forget(temporary)


def _is_regular_or_absent(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def _keep_mode(path: str, temporary: str) -> None:
    """The permissions an existing output had, or those a new file gets under the umask
    (mkstemp makes its file private to the user)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(temporary, mode)


def write_text(path: str, text: str, inputs: Sequence[str], flag: str) -> None:
    _write(path, text, inputs, flag)


def write_bytes(path: str, data: bytes, inputs: Sequence[str], flag: str) -> None:
    _write(path, data, inputs, flag)


def _write(path: str, content: str | bytes, inputs: Sequence[str], flag: str) -> None:
    refuse_inputs(path, inputs, flag)
    try:
        with replacing(path, binary=isinstance(content, bytes)) as f:
            f.write(content)
    except OSError as e:
        raise InputError(f"cannot write: {e.strerror or e}", path) from e


def append_text(path: str, text: str, inputs: Sequence[str], flag: str) -> None:
    """Added at the end (the GitHub step summary, which other steps write to as well)."""
    refuse_inputs(path, inputs, flag)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise InputError(f"cannot write: {e.strerror or e}", path) from e


@contextlib.contextmanager
def report_file(path: str, inputs: Sequence[str]) -> Iterator[IO[str]]:
    """-o FILE: the report rendered into it, which replaces FILE once rendering succeeded."""
    refuse_inputs(path, inputs, "-o")
    try:
        with replacing(path) as f:
            yield f
    except OSError as e:
        raise InputError(f"cannot write output: {e.strerror or e}", path) from e
