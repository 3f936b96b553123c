"""The errors normcli reports to users: one line each, exit code 2 at the command line."""

from __future__ import annotations

import os


class NormcliError(Exception):
    """Bad input or bad usage: something the user can fix, reported without a traceback."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UsageError(NormcliError):
    """An option or argument that cannot be honoured."""


class InputError(NormcliError):
    """A file that cannot be opened or read (missing, a directory, permission denied)."""


class CorruptFileError(NormcliError):
    """A file whose contents break the rules of its format (lying header, truncated data, ...)."""


class UnsupportedError(NormcliError):
    """A well-formed file holding something normcli does not read (a dtype, a pickled object)."""


class ClusterError(NormcliError):
    """A Dask cluster that cannot be reached or used (no scheduler, mismatched versions)."""
