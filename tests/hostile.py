"""Byte-level builders for crafted checkpoint files: valid ones, and ones that break a rule."""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"


# --- safetensors -------------------------------------------------------------------------------


def entry(dtype: Any = "F32", shape: Any = (1,), offsets: Any = (0, 4)) -> dict[str, Any]:
    """One header entry; tuples become JSON lists, anything else is written as given."""
    return {
        "dtype": dtype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets,
    }


def safetensors_bytes(
    header: dict[str, Any] | None = None,
    data: bytes = b"",
    *,
    raw_header: bytes | None = None,
    header_len: int | None = None,
    pad_to: int = 1,
) -> bytes:
    """An 8-byte little-endian length, the header (JSON of `header`, or `raw_header`), data.

    `header_len` overrides the length field (to lie about it); `pad_to` pads the header with
    trailing spaces to a multiple of that many bytes, as the reference writer does (8).
    """
    text = raw_header if raw_header is not None else json.dumps(header or {}).encode()
    text += b" " * (-len(text) % pad_to)
    length = len(text) if header_len is None else header_len
    return struct.pack("<Q", length) + text + data


def write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def pack_f4(codes: list[int]) -> bytes:
    """4-bit codes, two per byte, the first element of each pair in the low nibble."""
    assert len(codes) % 2 == 0
    return bytes(lo | (hi << 4) for lo, hi in zip(codes[0::2], codes[1::2], strict=True))


def pack_f6(codes: list[int]) -> bytes:
    """6-bit codes as one little-endian bit stream: element i at bits 6i .. 6i+5."""
    assert len(codes) % 4 == 0
    stream = 0
    for i, code in enumerate(codes):
        assert 0 <= code < 64
        stream |= code << (6 * i)
    return stream.to_bytes(len(codes) * 6 // 8, "little")


# --- npy / npz -------------------------------------------------------------------------------


def npy_bytes(header_literal: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy file whose header dict is `header_literal` verbatim (padded as numpy pads it)."""
    header = header_literal.encode("latin1")
    length_field = "<H" if version == (1, 0) else "<I"
    prefix = 6 + 2 + struct.calcsize(length_field)
    header += b" " * (-(prefix + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_field, len(header)) + header + data


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive with the given members, byte for byte reproducible."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = compression
            archive.writestr(info, payload)
    return buffer.getvalue()


def _patch_records(blob: bytes, signature: bytes, patch: Callable[[bytearray, int], None]) -> bytes:
    out = bytearray(blob)
    at = out.find(signature)
    found = 0
    while at != -1:
        patch(out, at)
        found += 1
        at = out.find(signature, at + 4)
    assert found, f"no {signature!r} record to patch"
    return bytes(out)


def flip_crc(blob: bytes) -> bytes:
    """Damage the CRC-32 recorded for every member, in local and central headers alike."""

    def flip(offset: int) -> Callable[[bytearray, int], None]:
        def patch(out: bytearray, at: int) -> None:
            out[at + offset] ^= 0xFF

        return patch

    blob = _patch_records(blob, _LOCAL, flip(14))
    return _patch_records(blob, _CENTRAL, flip(16))


def set_encrypted_flag(blob: bytes) -> bytes:
    """Set general-purpose flag bit 0 (encrypted) on every member."""

    def local(out: bytearray, at: int) -> None:
        out[at + 6] |= 0x01

    def central(out: bytearray, at: int) -> None:
        out[at + 8] |= 0x01

    return _patch_records(_patch_records(blob, _LOCAL, local), _CENTRAL, central)


def member_data_span(blob: bytes, name: str) -> tuple[int, int]:
    """Where the (possibly compressed) bytes of member `name` lie in the archive: [start, stop)."""
    import io

    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        info = archive.getinfo(name)
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", blob[at + 26 : at + 30])
    start = at + 30 + name_len + extra_len
    return start, start + info.compress_size


def set_central_file_size(blob: bytes, index: int, file_size: int) -> bytes:
    """Rewrite the uncompressed size that the `index`-th central directory record claims."""
    out = bytearray(blob)
    at = -1
    for _ in range(index + 1):
        at = out.find(_CENTRAL, at + 1)
        assert at != -1, "no such central directory record"
    out[at + 24 : at + 28] = struct.pack("<I", file_size)
    return bytes(out)
