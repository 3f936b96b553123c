"""torch.save's zip archives, which TorchScript and torch.distributed.checkpoint use too: the
folder they hold, a pickle unpickled with its storages located in the file, small members read
with their CRC checked."""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ..errors import CorruptFileError, UnsupportedError
from . import files
from .files import Data
from .torch_pickle import RestrictedUnpickler, unpickle
from .zipped import ENCRYPTED, check_inflated_size, stored_data_start

ARCHIVE_PICKLE = re.compile(r"[^/]+/data\.pkl")


@dataclass(frozen=True)
class Loaded:
    """The unpickled object, and where each storage's bytes begin in the file."""

    root: Any
    starts: dict[str, int]
    # bytes of the object's pickle, which bound how many values it may name
    pickle_bytes: int
    # storage key -> the zip member holding it (for its CRC), in the zip format
    members: dict[str, zipfile.ZipInfo]


def open_zip(file: str | IO[bytes], what: str = "") -> zipfile.ZipFile:
    """A zip archive's directory, read (a path may be a URL); `what` names it in the error if
    it cannot be."""
    try:
        return files.open_zip(file) if isinstance(file, str) else zipfile.ZipFile(file)
    except files.ZIP_ERRORS as e:
        raise CorruptFileError(f"{what or 'not'} a readable zip archive: {e}") from e


def archive_prefix(archive: zipfile.ZipFile) -> str:
    """The folder of a torch zip archive ("archive/" in "archive/data.pkl")."""
    names = archive.namelist()
    if len(set(names)) != len(names):
        raise CorruptFileError("zip archive holds a member more than once")
    pickles = [n for n in names if ARCHIVE_PICKLE.fullmatch(n)]
    if not pickles:
        raise UnsupportedError("zip archive holds no <archive>/data.pkl: not PyTorch's")
    if len(pickles) > 1:
        raise CorruptFileError(f"zip archive holds {len(pickles)} <archive>/data.pkl members")
    return pickles[0][: -len("data.pkl")]


def load_pickle(
    archive: zipfile.ZipFile,
    data: Data,
    member: str,
    folder: str,
    unpickler: Callable[[io.BytesIO], RestrictedUnpickler],
) -> Loaded:
    """The object pickled in `member`, whose storages are the members of `folder`."""
    raw = member_bytes(archive, archive.getinfo(member), data)
    loader = unpickler(io.BytesIO(raw))
    root = unpickle(loader, member)
    starts, members = {}, {}
    for key, (_, nbytes) in loader.storages.items():
        name = f"{folder}{key}"
        where = f"storage {key!r} (member {name!r})"
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise CorruptFileError(f"{where} is missing from the archive") from None
        if info.flag_bits & ENCRYPTED:
            raise UnsupportedError(f"{where} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsupportedError(f"{where} is compressed; torch.save stores members as is")
        if info.file_size != nbytes:
            raise CorruptFileError(
                f"{where} holds {info.file_size} bytes but the pickle declares {nbytes}"
            )
        starts[key] = stored_data_start(info, data, where, data.path)
        members[key] = info
    return Loaded(root, starts, loader.pickle_bytes, members)


def check_byteorder(archive: zipfile.ZipFile, member: str, data: Data) -> None:
    try:
        info = archive.getinfo(member)
    except KeyError:
        return  # written before torch 1.10: little-endian
    order = member_bytes(archive, info, data)
    if order != b"little":
        raise UnsupportedError(
            f"tensors stored with byte order {order!r:.20}; normcli reads little-endian ones"
        )


def member_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, data: Data) -> bytes:
    """A small member's bytes. Stored ones are read here rather than by zipfile: torch told
    not to compute CRCs writes 0 for every member, which zipfile takes for damage."""
    where = f"member {info.filename!r}"
    if info.flag_bits & ENCRYPTED:
        raise UnsupportedError(f"{where} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        start = stored_data_start(info, data, where, data.path)
        raw = data[start : start + info.file_size]
        if info.CRC and zlib.crc32(raw) != info.CRC:
            raise CorruptFileError(f"{where}: CRC-32 mismatch (damaged data)")
        return raw
    check_inflated_size(info, where, None)
    try:
        return archive.read(info)
    except files.ZIP_ERRORS as e:
        raise CorruptFileError(f"{where} cannot be read ({e})") from e
