"""Stored element types: names, sizes, and how raw bytes become numpy values normcli reduces."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["float", "complex", "int", "bool"]

# bfloat16 is the top half of a float32, so its values need no bfloat16 type: chunks hold the raw
# bits under this dtype of their own and are widened exactly by as_float64. It equals no numeric
# dtype, and numpy refuses to cast it to a number, so no code can sum the bits as integers by
# mistake. Importing ml_dtypes costs up to half a second; it is left to the narrower floats
# (float8/6/4), which numpy cannot decode without it.
BF16_BITS: np.dtype[np.void] = np.dtype([("bfloat16", "V2")])


@dataclass(frozen=True)
class DType:
    """One stored element type.

    Sub-byte types (F4, F6) are packed: `group_elements` elements share `group_bytes` bytes, and
    `decode` unpacks them into one byte per element of `element`.
    """

    name: str
    kind: Kind
    # a numpy dtype, or the name of an ml_dtypes type, imported when `element` is first asked for
    element_type: np.dtype[np.generic] | str
    bits: int
    group_elements: int = 1

    @property
    def element(self) -> np.dtype[np.generic]:
        """The numpy dtype of decoded values."""
        if isinstance(self.element_type, str):
            return _ml_dtype(self.element_type)
        return self.element_type

    @property
    def group_bytes(self) -> int:
        return self.bits * self.group_elements // 8

    @property
    def is_floating(self) -> bool:
        """Counted in whole-model totals by default (integer and bool tensors are codes)."""
        return self.kind in ("float", "complex")

    def nbytes(self, numel: int) -> int | None:
        """Bytes that `numel` elements occupy, or None where they do not end on a byte boundary."""
        bits = numel * self.bits
        return None if bits % 8 else bits // 8

    def decode(self, raw: bytes | memoryview | np.ndarray) -> np.ndarray:
        """Raw little-endian bytes holding whole groups -> a 1-D array of `element` values."""
        data = np.frombuffer(raw, dtype=np.uint8)
        if self.bits == 4:
            codes = np.empty(data.size * 2, dtype=np.uint8)
            # the first element of each byte sits in its low nibble (the MX / PyTorch x2 layout)
            np.bitwise_and(data, 0x0F, out=codes[0::2])
            np.right_shift(data, 4, out=codes[1::2])
            return codes.view(self.element)
        if self.bits == 6:
            # four elements fill three bytes, read as one little-endian bit stream
            triples = data.reshape(-1, 3).astype(np.uint32)
            word = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
            codes = np.empty((word.size, 4), dtype=np.uint8)
            for i in range(4):
                codes[:, i] = (word >> (6 * i)) & 0x3F
            return codes.reshape(-1).view(self.element)
        return data.view(self.element)


@functools.cache
def _ml_dtype(name: str) -> np.dtype[np.generic]:
    import ml_dtypes

    dtype: np.dtype[np.generic] = np.dtype(getattr(ml_dtypes, name))
    return dtype


def _make(name: str, kind: Kind, element: np.dtype[np.generic] | str, bits: int = 8) -> DType:
    """`element`: a numpy dtype (its size gives the bits), or an ml_dtypes name of `bits` bits."""
    if isinstance(element, np.dtype):
        bits = element.itemsize * 8
    group = 8 // bits if bits < 8 else 1
    if bits == 6:
        group = 4
    return DType(name, kind, element, bits, group)


def as_float64(values: np.ndarray) -> np.ndarray:
    """Decoded values as float64 (complex128 for complex ones), exactly; bfloat16 bits widened."""
    if values.dtype == BF16_BITS:
        wide = values.view("<u2").astype(np.uint32)
        values = np.left_shift(wide, 16, out=wide).view(np.float32)
    target = np.complex128 if values.dtype.kind == "c" else np.float64
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(values, dtype=target)


SAFETENSORS_DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        _make("F64", "float", np.dtype("<f8")),
        _make("F32", "float", np.dtype("<f4")),
        _make("F16", "float", np.dtype("<f2")),
        _make("BF16", "float", BF16_BITS),
        _make("F8_E4M3", "float", "float8_e4m3fn"),
        _make("F8_E5M2", "float", "float8_e5m2"),
        _make("F8_E8M0", "float", "float8_e8m0fnu"),
        _make("F8_E4M3FNUZ", "float", "float8_e4m3fnuz"),
        _make("F8_E5M2FNUZ", "float", "float8_e5m2fnuz"),
        _make("F6_E2M3", "float", "float6_e2m3fn", bits=6),
        _make("F6_E3M2", "float", "float6_e3m2fn", bits=6),
        _make("F4", "float", "float4_e2m1fn", bits=4),
        _make("C64", "complex", np.dtype("<c8")),
        _make("I64", "int", np.dtype("<i8")),
        _make("I32", "int", np.dtype("<i4")),
        _make("I16", "int", np.dtype("<i2")),
        _make("I8", "int", np.dtype("i1")),
        _make("U64", "int", np.dtype("<u8")),
        _make("U32", "int", np.dtype("<u4")),
        _make("U16", "int", np.dtype("<u2")),
        _make("U8", "int", np.dtype("u1")),
        _make("BOOL", "bool", np.dtype("?")),
    )
}

_NUMPY_KINDS: dict[str, Kind] = {"f": "float", "c": "complex", "i": "int", "u": "int", "b": "bool"}
_NUMPY_PREFIX = {"float": "F", "complex": "C", "int": "I", "bool": "BOOL"}


def from_numpy(dtype: np.dtype[np.generic]) -> DType | None:
    """The DType of a numpy array's elements (any byte order), or None if it holds no numbers."""
    if dtype == BF16_BITS or (dtype.kind == "V" and dtype.name == "bfloat16"):
        return SAFETENSORS_DTYPES["BF16"]  # the same bits, whichever type holds them
    for known in SAFETENSORS_DTYPES.values():
        # an ml_dtypes type is met only where ml_dtypes is imported already: named, not loaded
        if isinstance(known.element_type, str):
            same = dtype.kind == "V" and dtype.name == known.element_type
        else:
            same = dtype.newbyteorder("<") == known.element_type.newbyteorder("<")
        if same:
            # in memory, numpy keeps even a 4- or 6-bit element in a byte of its own
            return DType(known.name, known.kind, dtype, max(known.bits, 8))
    kind = _NUMPY_KINDS.get(dtype.kind)
    if kind is None or dtype.fields is not None or dtype.subdtype is not None:
        return None
    if kind == "int" and dtype.kind == "u":
        name = f"U{dtype.itemsize * 8}"
    else:
        name = f"{_NUMPY_PREFIX[kind]}{dtype.itemsize * 8}"
    return DType(name, kind, dtype, dtype.itemsize * 8)
