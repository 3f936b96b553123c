"""What a checkpoint's pickle may ask for, checked before anything is built: the C unpickler
allocates whatever the opcodes declare (a memo as long as the largest index, a buffer as long
as a string's length field), so a file of a few hundred bytes could ask for gigabytes."""

from __future__ import annotations

import io
import pickletools
from collections import defaultdict
from collections.abc import Iterable
from typing import IO

from ..errors import CorruptFileError, UnsupportedError

# Nesting of MARKs (tuples, lists, dicts being built); torch.save needs a few per level of the
# checkpoint's own nesting, which is limited to 100 levels when it is flattened.
MAX_MARK_DEPTH = 1000
# A shared sub-tree is visited once per reference: a pickle may name this many values per byte
# of it (a tied embedding is named twice; a hostile file nests shared lists to name millions).
VALUES_PER_BYTE = 16
MIN_VALUES = 100_000
# Tensors may share a storage (views, tied weights); together they may read this many times
# its bytes (a broadcast view reads elements repeatedly), plus a little for tiny storages.
READS_PER_STORAGE_BYTE = 64
SMALL_STORAGE = 1 << 16

# the opcodes looked at, as pickletools describes them
_OPCODES = pickletools.opcodes
_PUTS = frozenset(op for op in _OPCODES if op.name in ("PUT", "BINPUT", "LONG_BINPUT"))
_ENDS_MARK = frozenset(op for op in _OPCODES if pickletools.markobject in op.stack_before)
_MARK = next(op for op in _OPCODES if op.name == "MARK")
_FRAME = next(op for op in _OPCODES if op.name == "FRAME")


class _Clamped:
    """The next `left` bytes of a stream: a read asking for more gets what is there, never a
    buffer of the size asked for (BufferedReader.read(n) allocates n bytes before reading)."""

    def __init__(self, stream: IO[bytes], left: int) -> None:
        self.stream, self.left = stream, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.stream.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.stream.readline(self.left)
        self.left -= len(line)
        return line


def read_pickle(stream: IO[bytes], left: int, what: str) -> bytes:
    """The bytes of the pickle at `stream`'s position (of the `left` bytes that follow), once
    every opcode in it is within bounds: memo indices no larger than the opcodes before them,
    declared lengths within the bytes present, frames within the file, MARKs nested at most
    MAX_MARK_DEPTH deep. `stream` is left just after the pickle's STOP."""
    start = stream.tell()
    # bytes in memory are read as they are (BytesIO never allocates past its end); a file
    # through _Clamped
    source = stream if isinstance(stream, io.BytesIO) else _Clamped(stream, left)
    depth = 0
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(source)):  # type: ignore[arg-type]
            if opcode in _PUTS and type(arg) is int and arg > count:
                raise CorruptFileError(
                    f"{what} stores memo entry {arg} after only {count} opcodes "
                    "(a hostile or damaged pickle)"
                )
            if opcode is _FRAME and type(arg) is int and arg > left - (stream.tell() - start):
                raise CorruptFileError(f"{what} is truncated: a frame runs past its end")
            if opcode is _MARK:
                depth += 1
                if depth > MAX_MARK_DEPTH:
                    raise CorruptFileError(f"{what} nests more than {MAX_MARK_DEPTH} levels deep")
            elif opcode in _ENDS_MARK:
                depth -= 1
    except ValueError as e:  # a truncated argument, an unknown opcode, no STOP
        raise CorruptFileError(f"{what} is not a valid pickle ({e})") from e
    end = stream.tell()
    stream.seek(start)
    return stream.read(end - start)


def max_values(pickle_bytes: int) -> int:
    """How many values a pickle of that size may name once its shared parts are followed."""
    return max(MIN_VALUES, VALUES_PER_BYTE * pickle_bytes)


def check_storage_reads(reads: Iterable[tuple[str, str, int, int]]) -> None:
    """Refuse tensors that together read a storage many times over: (tensor name, storage key,
    storage bytes, tensor bytes) for each tensor. Scanning is bounded by the data present."""
    total: dict[str, int] = defaultdict(int)
    for name, key, storage_bytes, tensor_bytes in reads:
        total[key] += tensor_bytes
        if total[key] > READS_PER_STORAGE_BYTE * max(storage_bytes, SMALL_STORAGE):
            raise UnsupportedError(
                f"tensors up to {name!r} read storage {key!r} ({storage_bytes} bytes) more "
                f"than {READS_PER_STORAGE_BYTE} times over: views that repeat so much data "
                "are refused"
            )
