"""safetensors files: the header validated as strictly as the reference loader, data mapped."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from ..dtypes import SAFETENSORS_DTYPES
from ..errors import CorruptFileError
from .base import Checkpoint, TensorSource
from .files import finite_float, open_data, open_regular, refuse_constant

# The reference implementation refuses larger headers; so do we.
MAX_HEADER_BYTES = 100_000_000
# Sizes are u64 in the reference implementation: anything larger overflowed there.
U64_LIMIT = 2**64
# headers from this size on are checked for their lists before they are parsed
LARGE_HEADER_BYTES = 1 << 20
SPARE_BYTES = 64
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def looks_like(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, followed by a JSON object."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and _opens_json(head)


def _opens_json(head: bytes) -> bool:
    return head[8:].lstrip(b" \t\r\n")[:1] == b"{"


def open_safetensors(path: str) -> Checkpoint:
    with open_regular(path) as f:
        size = f.seek(0, 2)
        if size < 8:
            raise CorruptFileError(f"not a safetensors file: only {size} bytes", path)
        f.seek(0)
        head = f.read(72)
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > min(MAX_HEADER_BYTES, size - 8) and not _opens_json(head):
            # a text file, or any other file, named .safetensors: say what it is not
            raise CorruptFileError(
                "not a safetensors file: it starts with neither a header length that fits "
                "the file nor a JSON header",
                path,
            )
        f.seek(8)
        if header_len > MAX_HEADER_BYTES:
            raise CorruptFileError(
                f"safetensors header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit",
                path,
            )
        if 8 + header_len > size:
            raise CorruptFileError(
                f"safetensors header length {header_len} runs past the end of the file "
                f"({size} bytes): truncated or not safetensors",
                path,
            )
        header = _parse_header(f.read(header_len), path)
    data_start = 8 + header_len
    entries = _validate(header, size - data_start, path)
    data = open_data(path)
    tensors = [
        TensorSource(name, SAFETENSORS_DTYPES[dtype], shape, data.reader(data_start + begin))
        for name, dtype, shape, begin in entries
    ]
    return Checkpoint(path, "safetensors", size, tensors, [data.close])


class _Objects:
    """The hook that builds each JSON object of a header as it is parsed. Objects that are not
    tensor entries (__metadata__, values of keys the format ignores) are few: past one per
    SPARE_BYTES of header the parse stops, before a header of millions of `{}` is built whole
    (each costs some 200 bytes of Python objects)."""

    def __init__(self, header_bytes: int) -> None:
        self.left = 16 + header_bytes // SPARE_BYTES

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if not any(key == "dtype" for key, _ in pairs):
            self.left -= 1
            if self.left < 0:
                raise ValueError("far more objects than tensor entries")
        return _strict_object(pairs)


def _check_lists(raw: bytes) -> None:
    """A tensor entry holds two lists; others are few (one per SPARE_BYTES). Checked, outside
    the header's strings, before a large header is parsed: lists have no hook, and a header
    of `[],[],...` costs fifty times its size in Python objects."""
    if len(raw) < LARGE_HEADER_BYTES:
        return
    bare = _STRINGS.sub(b"", raw)
    lists, objects = bare.count(b"["), bare.count(b"{")
    if lists > 2 * objects + 16 + len(raw) // SPARE_BYTES:
        raise ValueError(f"{lists} lists for {objects} objects: far more than tensor entries")


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        for text in (key, value) if isinstance(value, str) else (key,):
            _check_unicode(text)
        seen[key] = value
    return seen


def _check_unicode(text: str) -> None:
    # Python's json accepts "\ud800" escapes; a lone surrogate is not Unicode and serde rejects it
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"string {text!r} holds a lone surrogate") from e


def _strict_int(token: str) -> int:
    # every integer the format holds is unsigned; "-0" must not pass as 0
    return -1 if token.startswith("-") else int(token)


def _parse_header(raw: bytes, path: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(
            f"safetensors header is not valid UTF-8 (byte {e.start})", path
        ) from e
    try:
        _check_lists(raw)
        header = json.loads(
            text,
            object_pairs_hook=_Objects(len(raw)),
            parse_constant=refuse_constant,
            parse_float=finite_float,
            parse_int=_strict_int,
        )
    except ValueError as e:
        raise CorruptFileError(f"safetensors header is not valid JSON: {e}", path) from e
    except RecursionError as e:
        raise CorruptFileError("safetensors header nests JSON too deeply", path) from e
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path)
    return header


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value < U64_LIMIT


def _validate(
    header: dict[str, Any], data_bytes: int, path: str
) -> list[tuple[str, str, tuple[int, ...], int]]:
    """Check every rule of the format; return (name, dtype, shape, begin) in storage order."""
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CorruptFileError("safetensors __metadata__ must map strings to strings", path)

    entries = []
    for name, info in header.items():
        where = f"safetensors header, tensor {name!r}"
        if not isinstance(info, dict):
            raise CorruptFileError(f"{where}: entry is not an object", path)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            known = ", ".join(SAFETENSORS_DTYPES)
            raise CorruptFileError(f"{where}: unknown dtype {dtype!r} (known: {known})", path)
        if not (isinstance(shape, list) and all(_is_u64(d) for d in shape)):
            raise CorruptFileError(f"{where}: shape {shape!r} is not a list of sizes", path)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_u64, offsets))):
            raise CorruptFileError(
                f"{where}: data_offsets {offsets!r} is not a pair of byte offsets", path
            )
        entries.append((offsets[0], offsets[1], name, dtype, tuple(shape)))

    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    for begin, end, name, dtype, shape in entries:
        where = f"tensor {name!r}"
        if begin != position or end < begin:
            problem = "overlaps the tensor before it" if begin < position else "leaves a gap"
            if end < begin:
                problem = "ends before it begins"
            raise CorruptFileError(
                f"{where}: data_offsets [{begin}, {end}] {problem} (expected to start at "
                f"byte {position})",
                path,
            )
        position = end
        numel = 1
        for d in shape:
            numel *= d
            # checked at every step, as the reference does: [2**40, 2**40, 0] overflows too
            if numel >= U64_LIMIT:
                raise CorruptFileError(
                    f"{where}: shape {list(shape)} overflows a 64-bit size", path
                )
        bits = numel * SAFETENSORS_DTYPES[dtype].bits
        if bits // 8 >= U64_LIMIT:
            raise CorruptFileError(f"{where}: shape {list(shape)} overflows a 64-bit size", path)
        if bits % 8:
            raise CorruptFileError(
                f"{where}: {numel} elements of {dtype} do not end on a byte boundary", path
            )
        if end - begin != bits // 8:
            raise CorruptFileError(
                f"{where}: {dtype} {list(shape)} needs {bits // 8} bytes but data_offsets "
                f"[{begin}, {end}] hold {end - begin}",
                path,
            )
    if position != data_bytes:
        problem = (
            f"truncated: the tensors need {position} bytes of data but the file holds {data_bytes}"
            if position > data_bytes
            else f"{data_bytes - position} bytes after the last tensor belong to no tensor"
        )
        raise CorruptFileError(problem, path)
    return [(name, dtype, shape, begin) for begin, _, name, dtype, shape in entries]
