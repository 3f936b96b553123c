"""Members of zip archives (npz, PyTorch) read in place: where a stored member's data begins, and
its CRC-32 checked as a front-to-back scan passes over it."""

from __future__ import annotations

import struct
import zipfile
import zlib

import numpy as np

from ..errors import CorruptFileError
from ..formats import ZIP_MAGIC
from .files import Data

# general-purpose flag bits 0 (encrypted) and 6 (strong encryption): either way, not readable
ENCRYPTED = 0x1 | 0x40
# deflate produces at most 1032 bytes from one: a member declaring more is damaged or hostile
MAX_DEFLATE_RATIO = 1032


def check_inflated_size(info: zipfile.ZipInfo, where: str, path: str | None) -> None:
    """Refuse a compressed member that declares more bytes than deflate can make of its own."""
    if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CorruptFileError(
            f"{where} declares {info.file_size} bytes from {info.compress_size} compressed: "
            "more than deflate can produce",
            path,
        )


_LOCAL_HEADER = struct.Struct("<4s22xHH")


def stored_data_start(info: zipfile.ZipInfo, buffer: Data, where: str, path: str) -> int:
    offset = info.header_offset
    header = bytes(buffer[offset : offset + _LOCAL_HEADER.size])
    if len(header) < _LOCAL_HEADER.size:
        raise CorruptFileError(f"{where}: local header lies past the end of the file", path)
    magic, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if magic != ZIP_MAGIC:
        raise CorruptFileError(f"{where}: local header is damaged", path)
    name_at = offset + _LOCAL_HEADER.size
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if buffer[name_at : name_at + name_len] != info.orig_filename.encode(encoding, "replace"):
        raise CorruptFileError(
            f"{where}: the local header names another member (a damaged archive)", path
        )
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise CorruptFileError(
            f"{where}: stored, but its sizes differ ({info.compress_size} and "
            f"{info.file_size} bytes): a damaged archive",
            path,
        )
    start: int = name_at + name_len + extra_len
    if start + info.file_size > len(buffer):
        raise CorruptFileError(f"{where}: data runs past the end of the file (truncated)", path)
    return start


class CrcCheckedReader:
    """Reads a stored member straight from the map, and checks the member's CRC-32 as a
    front-to-back scan passes over it, as unzipping it would."""

    def __init__(
        self,
        buffer: Data,
        start: int,
        header: int,
        data_bytes: int,
        info: zipfile.ZipInfo,
        where: str,
        path: str,
    ) -> None:
        self.read = buffer.reader(start + header)
        self.buffer, self.info, self.where, self.path = buffer, info, where, path
        self.tail = slice(start + header + data_bytes, start + info.file_size)
        self.data_bytes = data_bytes
        self.header_crc = zlib.crc32(buffer[start : start + header])
        self.crc, self.position = self.header_crc, 0

    def __call__(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        data = self.read(start, stop, out)
        if start == 0:  # a scan starting over: so does the running CRC
            self.crc, self.position = self.header_crc, 0
        if start != self.position:
            self.position = -1  # read out of order: a running CRC no longer applies
            return data
        self.crc = zlib.crc32(data.data, self.crc)
        self.position = stop
        if stop == self.data_bytes:
            crc = zlib.crc32(self.buffer[self.tail], self.crc)
            if crc != self.info.CRC:
                raise CorruptFileError(f"{self.where}: CRC-32 mismatch (damaged data)", self.path)
        return data
