"""The safetensors reader against crafted files and the reference loader, and format detection."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import SAFETENSORS_NUMPY

from normcli.dtypes import BF16_BITS, as_float64
from normcli.errors import CorruptFileError, InputError, NormcliError, UnsupportedError, UsageError
from normcli.readers import detect_format, open_checkpoint

try:
    from . import hostile
except ImportError:
    import hostile

entry, safetensors_bytes, write = hostile.entry, hostile.safetensors_bytes, hostile.write

# The element type of each byte-aligned safetensors dtype, from the independent reference (not from
# normcli), so that a wrong entry in normcli's table shows up as a failure.
NUMPY_OF: dict[str, Any] = {
    name: dtype
    for name, dtype in SAFETENSORS_NUMPY.items()
    if name not in ("F4", "F6_E2M3", "F6_E3M2")  # packed below a byte: tested on their own
}
# the dtypes the reference loader can hand back as numpy arrays
NUMPY_NATIVE = [
    "F64",
    "F32",
    "F16",
    "C64",
    "I64",
    "I32",
    "I16",
    "I8",
    "U64",
    "U32",
    "U16",
    "U8",
    "BOOL",
]


# --- helpers -----------------------------------------------------------------------------------


def values(tensor: Any, max_elements: int) -> np.ndarray:
    """All values of a tensor, concatenated from its chunks, after checking each chunk's form."""
    parts = []
    for chunk in tensor.chunks(max_elements):
        assert isinstance(chunk, np.ndarray)
        assert chunk.ndim == 1
        assert 0 < chunk.size <= max(max_elements, tensor.dtype.group_elements)
        assert chunk.dtype == tensor.dtype.element
        parts.append(chunk.tobytes())
    # joined as bytes: np.concatenate would swap big-endian values to native order
    out = np.frombuffer(b"".join(parts), dtype=tensor.dtype.element)
    assert out.size == tensor.numel
    return out


def read_ours(
    path: Path, max_elements: int = 1 << 20
) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype name, shape, raw bytes of the values), through normcli."""
    out = {}
    with open_checkpoint(path, "safetensors") as checkpoint:
        for tensor in checkpoint.tensors:
            assert tensor.name not in out
            data = values(tensor, max_elements)
            out[tensor.name] = (tensor.dtype.name, tensor.shape, data.tobytes())
    return out


def read_reference(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype name, shape, raw bytes of the values), through the safetensors package."""
    out = {}
    with safetensors.safe_open(str(path), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
            meta = f.get_slice(name)
            array = f.get_tensor(name)
            out[name] = (
                meta.get_dtype(),
                tuple(meta.get_shape()),
                np.ascontiguousarray(array).tobytes(),
            )
    return out


def reference_rejects(path: Path) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            list(f.keys())
    except Exception:
        return True
    return False


def assert_rejected(path: Path, kind: type[NormcliError], *fragments: str) -> NormcliError:
    with pytest.raises(NormcliError) as caught:
        read_ours(path)
    error = caught.value
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    text = str(error)
    assert str(path) in text
    for fragment in fragments:
        assert fragment in text, text
    return error


def f32(*xs: float) -> bytes:
    return np.array(xs, dtype="<f4").tobytes()


# --- every validation rule, with crafted files ----------------------------------------------


# (id, file bytes, error kind, fragments the message must contain)
CORRUPT: list[tuple[str, bytes, type[NormcliError], tuple[str, ...]]] = [
    ("empty file", b"", CorruptFileError, ("only 0 bytes",)),
    ("shorter than 8 bytes", b"\x02\x00\x00\x00\x00\x00\x00", CorruptFileError, ("only 7 bytes",)),
    (
        "random bytes",
        random.Random(1234).randbytes(4096),
        CorruptFileError,
        ("not a safetensors file",),
    ),
    (
        "a text file",
        b"These are notes about the model, not weights.\n" * 4,
        CorruptFileError,
        ("not a safetensors file",),
    ),
    (
        "header length over the limit",
        safetensors_bytes({}, header_len=100_000_001),
        CorruptFileError,
        ("100000001", "exceeds the 100000000-byte limit"),
    ),
    (
        "header length at the limit, past the end",
        safetensors_bytes({}, header_len=100_000_000),
        CorruptFileError,
        ("runs past the end of the file",),
    ),
    (
        "header length one past the end",
        safetensors_bytes(raw_header=b"{}", header_len=3),
        CorruptFileError,
        ("header length 3 runs past the end of the file (10 bytes)",),
    ),
    (
        "zero-length header",
        safetensors_bytes(raw_header=b""),
        CorruptFileError,
        ("not valid JSON",),
    ),
    (
        "header not UTF-8",
        safetensors_bytes(raw_header=b'{"\xff\xfe":{}}'),
        CorruptFileError,
        ("not valid UTF-8",),
    ),
    (
        "header with a UTF-8 BOM",
        safetensors_bytes(raw_header=b"\xef\xbb\xbf{}"),
        CorruptFileError,
        ("not valid JSON",),
    ),
    (
        "header not JSON",
        safetensors_bytes(raw_header=b'{"a": {"dtype": "F32",'),
        CorruptFileError,
        ("not valid JSON",),
    ),
    (
        "header JSON followed by garbage",
        safetensors_bytes(raw_header=b"{}\x00"),
        CorruptFileError,
        ("not valid JSON",),
    ),
    (
        # Python's json recurses once per level; serde_json stops at 128 levels
        "deeply nested JSON",
        safetensors_bytes(raw_header=b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        CorruptFileError,
        ("safetensors header",),
    ),
    (
        "integer of 5000 digits",
        safetensors_bytes(
            raw_header=b'{"a":{"dtype":"F32","shape":[1%s],"data_offsets":[0,4]}}' % (b"0" * 4999)
        ),
        CorruptFileError,
        ("safetensors header",),
    ),
    (
        "header is a list",
        safetensors_bytes(raw_header=b"[]"),
        CorruptFileError,
        ("not a JSON object",),
    ),
    (
        "header is a number",
        safetensors_bytes(raw_header=b"42"),
        CorruptFileError,
        ("not a JSON object",),
    ),
    (
        "control character in a name",
        safetensors_bytes(raw_header=b'{"a\x01":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'),
        CorruptFileError,
        ("not valid JSON",),
    ),
    *[
        (
            f"{token} token",
            safetensors_bytes(
                raw_header=b'{"a":{"dtype":"F32","shape":[%s],"data_offsets":[0,4]}}' % token
            ),
            CorruptFileError,
            ("not valid JSON", token.decode()),
        )
        for token in (b"NaN", b"Infinity", b"-Infinity")
    ],
    (
        "NaN as metadata",
        safetensors_bytes(raw_header=b'{"__metadata__":NaN}'),
        CorruptFileError,
        ("NaN",),
    ),
    *[
        (
            f"__metadata__ {label}",
            safetensors_bytes({"__metadata__": metadata}),
            CorruptFileError,
            ("__metadata__ must map strings to strings",),
        )
        for label, metadata in [
            ("value is a number", {"a": 1}),
            ("value is null", {"a": None}),
            ("value is an object", {"a": {"b": "c"}}),
            ("is a list", ["a", "b"]),
            ("is a string", "a=b"),
            ("is a number", 3),
        ]
    ],
    *[
        (
            f"entry is {label}",
            safetensors_bytes({"a": value}),
            CorruptFileError,
            ("tensor 'a'", "entry is not an object"),
        )
        for label, value in [("a list", ["F32", [1], [0, 4]]), ("a string", "F32"), ("null", None)]
    ],
    *[
        (
            f"dtype {label}",
            safetensors_bytes({"a": entry(dtype=dtype)}, f32(0)),
            CorruptFileError,
            ("tensor 'a'", "unknown dtype", *extra),
        )
        for label, dtype, extra in [
            ("unknown", "F128", ("'F128'",)),
            ("lowercase", "f32", ("'f32'",)),
            ("numpy's name", "float32", ("'float32'",)),
            ("missing", None, ()),
            ("a number", 32, ()),
            # unhashable JSON values: a set lookup must not turn these into a TypeError
            ("a list", ["F32"], ()),
            ("an object", {"F32": 1}, ()),
        ]
    ],
    (
        "dtype key missing",
        safetensors_bytes({"a": {"shape": [1], "data_offsets": [0, 4]}}, f32(0)),
        CorruptFileError,
        ("tensor 'a'", "unknown dtype None"),
    ),
    *[
        (
            f"shape {label}",
            safetensors_bytes({"a": entry(shape=shape)}, f32(0)),
            CorruptFileError,
            ("tensor 'a'", "is not a list of sizes"),
        )
        for label, shape in [
            ("negative", [-1]),
            ("negative, multiplying to a valid size", [-1, -1]),
            ("float", [1.0]),
            ("bool", [True]),
            ("a number, not a list", 1),
            ("a string", "1"),
            ("null", None),
            ("nested", [[1]]),
            ("2**64", [2**64]),
        ]
    ],
    (
        "shape key missing",
        safetensors_bytes({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, f32(0)),
        CorruptFileError,
        ("tensor 'a'", "is not a list of sizes"),
    ),
    *[
        (
            f"data_offsets {label}",
            safetensors_bytes({"a": entry(offsets=offsets)}, f32(0)),
            CorruptFileError,
            ("tensor 'a'", "data_offsets", "is not a pair of byte offsets"),
        )
        for label, offsets in [
            ("one number", [0]),
            ("three numbers", [0, 4, 4]),
            ("empty", []),
            ("negative", [-4, 0]),
            ("float", [0, 4.0]),
            ("bool", [False, 4]),
            ("strings", ["0", "4"]),
            ("an object", {"begin": 0, "end": 4}),
            ("2**64", [0, 2**64]),
            ("null", None),
        ]
    ],
    (
        "end before begin",
        safetensors_bytes({"a": entry(offsets=(4, 0))}, f32(0)),
        CorruptFileError,
        ("tensor 'a'", "ends before it begins"),
    ),
    (
        "overlapping tensors",
        safetensors_bytes(
            {"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(shape=(2,), offsets=(4, 12))},
            f32(1, 2, 3),
        ),
        CorruptFileError,
        ("tensor 'b'", "overlaps the tensor before it"),
    ),
    (
        "same bytes claimed twice",
        safetensors_bytes(
            {"a": entry(offsets=(0, 4)), "b": entry(offsets=(0, 4))},
            f32(1),
        ),
        CorruptFileError,
        ("overlaps the tensor before it",),
    ),
    (
        "empty tensor inside another",
        safetensors_bytes(
            {"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(shape=(0,), offsets=(4, 4))},
            f32(1, 2),
        ),
        CorruptFileError,
        ("tensor 'b'", "overlaps the tensor before it"),
    ),
    (
        "gap between tensors",
        safetensors_bytes(
            {"a": entry(offsets=(0, 4)), "b": entry(offsets=(8, 12))},
            f32(1, 2, 3),
        ),
        CorruptFileError,
        ("tensor 'b'", "leaves a gap", "expected to start at byte 4"),
    ),
    (
        "first tensor not at 0",
        safetensors_bytes({"a": entry(offsets=(4, 8))}, f32(1, 2)),
        CorruptFileError,
        ("tensor 'a'", "leaves a gap", "expected to start at byte 0"),
    ),
    (
        "offsets smaller than shape * dtype",
        safetensors_bytes({"a": entry(shape=(2,), offsets=(0, 4))}, f32(1)),
        CorruptFileError,
        ("tensor 'a'", "needs 8 bytes", "hold 4"),
    ),
    (
        "offsets larger than shape * dtype",
        safetensors_bytes({"a": entry(dtype="F16", shape=(2,), offsets=(0, 8))}, f32(1, 2)),
        CorruptFileError,
        ("tensor 'a'", "needs 4 bytes", "hold 8"),
    ),
    (
        "numel * bits overflows u64",
        safetensors_bytes({"a": entry(shape=(2**32, 2**32), offsets=(0, 4))}, f32(0)),
        CorruptFileError,
        ("tensor 'a'", "overflow"),
    ),
    (
        "numel overflows u64",
        safetensors_bytes({"a": entry(dtype="U8", shape=(2**33, 2**31), offsets=(0, 4))}, f32(0)),
        CorruptFileError,
        ("tensor 'a'", "overflow"),
    ),
    (
        # 2**61 F32 elements are 2**66 bits (the reference overflows) but 2**63 bytes (a u64)
        "numel * bits overflows u64, bytes fit",
        safetensors_bytes({"a": entry(shape=(2**61,), offsets=(0, 2**63))}, f32(0)),
        CorruptFileError,
        (),
    ),
    (
        "F4 odd element count",
        safetensors_bytes({"a": entry(dtype="F4", shape=(3,), offsets=(0, 2))}, b"\0\0"),
        CorruptFileError,
        ("tensor 'a'", "3 elements of F4 do not end on a byte boundary"),
    ),
    (
        "F6_E2M3 element count not a multiple of 4",
        safetensors_bytes({"a": entry(dtype="F6_E2M3", shape=(2,), offsets=(0, 2))}, b"\0\0"),
        CorruptFileError,
        ("tensor 'a'", "2 elements of F6_E2M3 do not end on a byte boundary"),
    ),
    (
        "F6_E3M2 element count not a multiple of 4",
        safetensors_bytes({"a": entry(dtype="F6_E3M2", shape=(5,), offsets=(0, 4))}, b"\0" * 4),
        CorruptFileError,
        ("tensor 'a'", "5 elements of F6_E3M2 do not end on a byte boundary"),
    ),
    (
        "trailing bytes after the last tensor",
        safetensors_bytes({"a": entry()}, f32(1) + b"\0\0\0"),
        CorruptFileError,
        ("3 bytes after the last tensor belong to no tensor",),
    ),
    (
        "trailing bytes after an empty header",
        safetensors_bytes({}, b"\0"),
        CorruptFileError,
        ("1 bytes after the last tensor",),
    ),
    (
        "truncated data",
        safetensors_bytes({"a": entry(shape=(2,), offsets=(0, 8))}, f32(1)),
        CorruptFileError,
        ("truncated", "need 8 bytes", "holds 4"),
    ),
]


@pytest.mark.parametrize(
    ("blob", "kind", "fragments"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT]
)
def test_crafted_corrupt_file_is_rejected_like_the_reference(
    tmp_path: Path, blob: bytes, kind: type[NormcliError], fragments: tuple[str, ...]
) -> None:
    path = write(tmp_path / "model.safetensors", blob)
    assert reference_rejects(path), "the crafted file should break a rule the reference enforces"
    assert_rejected(path, kind, *fragments)
    # detection by suffix and content leads to the same verdict
    with pytest.raises(kind):
        open_checkpoint(path)


def test_duplicate_tensor_names_are_rejected_although_the_reference_accepts_them(
    tmp_path: Path,
) -> None:
    one = b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    raw = b"{" + one + b"," + one + b"}"
    path = write(tmp_path / "dup.safetensors", safetensors_bytes(raw_header=raw) + f32(1))
    assert not reference_rejects(path)  # the reference silently keeps the last one
    assert_rejected(path, CorruptFileError, "duplicate key 'w'")


def test_duplicate_metadata_keys_are_rejected(tmp_path: Path) -> None:
    raw = b'{"__metadata__":{"k":"1","k":"2"}}'
    path = write(tmp_path / "dup.safetensors", safetensors_bytes(raw_header=raw))
    assert_rejected(path, CorruptFileError, "duplicate key 'k'")


# Files the reference rejects through quirks of its JSON parser (serde_json) that Python's json
# module does not share. A file the reference rejects, normcli must reject.
SERDE_STRICTER: list[tuple[str, bytes]] = [
    # serde_json reads -0 as the float -0.0, which is not a size
    ("-0 in a shape", b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}'),
    ("-0 in data_offsets", b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[-0,0]}}'),
    # a lone surrogate escape is not a Unicode string; Python keeps it, and it breaks UTF-8 output
    ("lone surrogate in a name", b'{"\\ud800":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'),
    ("lone surrogate in metadata", b'{"__metadata__":{"k":"\\udc00"}}'),
    # 1e400 is out of range for an f64; Python turns it into inf
    (
        "out-of-range number in an extra field",
        b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":1e400}}',
    ),
    # the reference multiplies dims left to right in u64 and fails on the overflow before the 0
    (
        "intermediate overflow before a zero dim",
        b'{"a":{"dtype":"F32","shape":[9223372036854775808,2,0],"data_offsets":[0,0]}}',
    ),
]


@pytest.mark.parametrize("raw", [c[1] for c in SERDE_STRICTER], ids=[c[0] for c in SERDE_STRICTER])
def test_header_the_reference_rejects_is_rejected(tmp_path: Path, raw: bytes) -> None:
    path = write(tmp_path / "model.safetensors", safetensors_bytes(raw_header=raw))
    assert reference_rejects(path)
    assert_rejected(path, CorruptFileError)


# --- minimal valid files still load ----------------------------------------------------------


VALID: list[tuple[str, bytes, dict[str, tuple[str, tuple[int, ...], bytes]]]] = [
    ("empty header", safetensors_bytes({}), {}),
    ("empty header, padded", safetensors_bytes({}, pad_to=8), {}),
    ("leading whitespace", safetensors_bytes(raw_header=b" \t\r\n{}"), {}),
    ("metadata only", safetensors_bytes({"__metadata__": {"format": "np", "": ""}}), {}),
    ("metadata null", safetensors_bytes({"__metadata__": None}), {}),
    (
        "zero-size tensors",
        safetensors_bytes(
            {
                "a": entry(shape=(0,), offsets=(0, 0)),
                "b": entry(dtype="F16", shape=(3, 0, 2), offsets=(0, 0)),
                "c": entry(dtype="F4", shape=(0,), offsets=(0, 0)),
            }
        ),
        {"a": ("F32", (0,), b""), "b": ("F16", (3, 0, 2), b""), "c": ("F4", (0,), b"")},
    ),
    (
        "scalar",
        safetensors_bytes({"s": entry(shape=(), offsets=(0, 4))}, f32(2.5)),
        {"s": ("F32", (), f32(2.5))},
    ),
    (
        "metadata, padding, extra entry keys, two tensors in reverse header order",
        safetensors_bytes(
            {
                "__metadata__": {"format": "pt"},
                "second": {**entry(dtype="I16", shape=(2,), offsets=(8, 12)), "extra": [1, {}]},
                "first": entry(shape=(2, 1), offsets=(0, 8)),
            },
            f32(1, -2) + np.array([7, -7], "<i2").tobytes(),
            pad_to=8,
        ),
        {
            "first": ("F32", (2, 1), f32(1, -2)),
            "second": ("I16", (2,), np.array([7, -7], "<i2").tobytes()),
        },
    ),
    (
        "empty tensor between two others",
        safetensors_bytes(
            {
                "a": entry(offsets=(0, 4)),
                "b": entry(shape=(0,), offsets=(4, 4)),
                "c": entry(offsets=(4, 8)),
            },
            f32(1, 2),
        ),
        {"a": ("F32", (1,), f32(1)), "b": ("F32", (0,), b""), "c": ("F32", (1,), f32(2))},
    ),
    (
        "unicode names",
        safetensors_bytes({"ω.\u00e9/\U0001f600": entry()}, f32(3)),
        {"ω.\u00e9/\U0001f600": ("F32", (1,), f32(3))},
    ),
]


@pytest.mark.parametrize(("blob", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_minimal_valid_file_loads(tmp_path: Path, blob: bytes, expected: dict[str, Any]) -> None:
    path = write(tmp_path / "ok.safetensors", blob)
    assert not reference_rejects(path)
    ours = read_ours(path)
    assert set(ours) == set(expected)
    for name, (dtype, shape, data) in expected.items():
        assert ours[name] == (dtype, shape, data)
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "safetensors"
        assert checkpoint.nbytes == len(blob)


def test_tensors_come_in_storage_order_with_shape_and_sizes(tmp_path: Path) -> None:
    blob = safetensors_bytes(
        {
            "z": entry(dtype="F16", shape=(3,), offsets=(0, 6)),
            "a": entry(dtype="F4", shape=(2, 2), offsets=(6, 8)),
        },
        b"\0" * 8,
    )
    with open_checkpoint(write(tmp_path / "m.safetensors", blob)) as checkpoint:
        assert [(t.name, t.dtype.name, t.shape, t.numel, t.nbytes) for t in checkpoint.tensors] == [
            ("z", "F16", (3,), 3, 6),
            ("a", "F4", (2, 2), 4, 2),
        ]


@pytest.mark.parametrize("name", sorted(NUMPY_OF))
def test_every_whole_byte_dtype_decodes_its_raw_bytes(tmp_path: Path, name: str) -> None:
    element = NUMPY_OF[name]
    raw = random.Random(name).randbytes(element.itemsize * 24)
    if name == "BOOL":
        raw = bytes(b & 1 for b in raw)
    # a one-byte tensor in front puts the data at an odd offset
    blob = safetensors_bytes(
        {
            "pad": entry(dtype="U8", shape=(1,), offsets=(0, 1)),
            "t": entry(dtype=name, shape=(4, 6), offsets=(1, 1 + len(raw))),
        },
        b"\x07" + raw,
    )
    path = write(tmp_path / "t.safetensors", blob)
    assert not reference_rejects(path)
    with open_checkpoint(path) as checkpoint:
        tensor = {t.name: t for t in checkpoint.tensors}["t"]
        assert tensor.dtype.name == name
        for step in (1, 5, 24, 1000):
            got = values(tensor, step)
            # bfloat16 stays raw bits until summed; every other type is numpy's (or ml_dtypes')
            assert got.dtype == (BF16_BITS if name == "BF16" else element)
            assert got.tobytes() == raw
            if element.kind in "fV":  # decoded exactly, as ml_dtypes decodes them
                np.testing.assert_array_equal(
                    as_float64(got), np.frombuffer(raw, element).astype(np.float64)
                )


# --- sub-byte dtypes ---------------------------------------------------------------------------


def minifloat(code: int, exponent_bits: int, mantissa_bits: int, bias: int) -> float:
    """The value of a finite-only minifloat code (no inf, no NaN), from its bit fields."""
    sign = -1.0 if code >> (exponent_bits + mantissa_bits) & 1 else 1.0
    exponent = code >> mantissa_bits & ((1 << exponent_bits) - 1)
    mantissa = code & ((1 << mantissa_bits) - 1)
    if exponent == 0:
        return sign * mantissa / (1 << mantissa_bits) * 2.0 ** (1 - bias)
    return sign * (1 + mantissa / (1 << mantissa_bits)) * 2.0 ** (exponent - bias)


SUB_BYTE = {
    # name: (ml_dtypes type, exponent bits, mantissa bits, bias, bits per element)
    "F4": (ml_dtypes.float4_e2m1fn, 2, 1, 1, 4),
    "F6_E2M3": (ml_dtypes.float6_e2m3fn, 2, 3, 1, 6),
    "F6_E3M2": (ml_dtypes.float6_e3m2fn, 3, 2, 3, 6),
}


def test_minifloat_reference_matches_known_values() -> None:
    assert [minifloat(c, 2, 1, 1) for c in range(8)] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert minifloat(0b1111, 2, 1, 1) == -6
    assert minifloat(0b011111, 2, 3, 1) == 7.5
    assert minifloat(0b011111, 3, 2, 3) == 28
    assert minifloat(0b000001, 3, 2, 3) == 0.0625


def pack(name: str, codes: list[int]) -> bytes:
    return hostile.pack_f4(codes) if name == "F4" else hostile.pack_f6(codes)


@pytest.mark.parametrize("name", sorted(SUB_BYTE))
def test_sub_byte_dtype_decodes_every_code(tmp_path: Path, name: str) -> None:
    ml_type, exponent_bits, mantissa_bits, bias, bits = SUB_BYTE[name]
    codes = list(range(1 << bits)) * 2
    random.Random(name).shuffle(codes)
    raw = pack(name, codes)
    blob = safetensors_bytes(
        {
            "lead": entry(dtype="U8", shape=(3,), offsets=(0, 3)),
            "t": entry(dtype=name, shape=(2, len(codes) // 2), offsets=(3, 3 + len(raw))),
        },
        b"\x01\x02\x03" + raw,
    )
    path = write(tmp_path / "sub.safetensors", blob)
    assert not reference_rejects(path)
    expected_floats = np.array([minifloat(c, exponent_bits, mantissa_bits, bias) for c in codes])
    expected = expected_floats.astype(ml_type)  # exact: every value is representable
    assert (expected.astype(np.float64) == expected_floats).all()
    with open_checkpoint(path) as checkpoint:
        tensor = {t.name: t for t in checkpoint.tensors}["t"]
        assert (tensor.dtype.name, tensor.shape, tensor.nbytes) == (
            name,
            (2, len(codes) // 2),
            len(raw),
        )
        for step in (1, 2, 3, 4, 5, 7, 8, 64, 10_000):
            got = values(tensor, step)
            assert got.dtype == np.dtype(ml_type)
            assert np.array_equal(got.astype(np.float64), expected_floats)
            assert np.array_equal(got.astype(np.float64), expected.astype(np.float64))
            # signed zeros too
            assert np.array_equal(np.signbit(got.astype(np.float64)), np.signbit(expected_floats))


@pytest.mark.parametrize("name", sorted(SUB_BYTE))
def test_sub_byte_dtype_round_trips_values_quantised_by_ml_dtypes(
    tmp_path: Path, name: str
) -> None:
    ml_type, *_, bits = SUB_BYTE[name]
    rng = np.random.default_rng(7)
    quantised = (rng.standard_normal(96) * 3).astype(ml_type)
    codes = [int(c) & ((1 << bits) - 1) for c in quantised.view(np.uint8)]
    raw = pack(name, codes)
    path = write(
        tmp_path / "q.safetensors",
        safetensors_bytes({"q": entry(dtype=name, shape=(96,), offsets=(0, len(raw)))}, raw),
    )
    with open_checkpoint(path) as checkpoint:
        got = values(checkpoint.tensors[0], 13)
    assert np.array_equal(got.astype(np.float64), quantised.astype(np.float64))


# --- property tests against the reference writer and loader --------------------------------

dtype_names = st.sampled_from(sorted(NUMPY_OF))
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
names = st.text(min_size=0, max_size=8).filter(lambda s: s != "__metadata__")


@st.composite
def tensor_dicts(draw: Any, dtypes: Any = dtype_names, max_size: int = 4) -> dict[str, np.ndarray]:
    out = {}
    for name in draw(st.lists(names, max_size=max_size, unique=True)):
        dtype, shape = NUMPY_OF[draw(dtypes)], draw(shapes)
        n = int(np.prod(shape))
        raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
        if dtype == np.bool_:
            raw = bytes(b & 1 for b in raw)
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return out


PROPERTY = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(
    tensors=tensor_dicts(),
    metadata=st.none() | st.dictionaries(names, st.text(max_size=5), max_size=2),
)
def test_files_written_by_the_reference_read_back_exactly(
    tmp_path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None
) -> None:
    if not tensors and metadata == {}:
        # safetensors 0.8's writer emits the invalid header `{},"__metadata__":{}}` for this case
        metadata = None
    path = tmp_path / "h.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)
    assert not reference_rejects(path)
    with open_checkpoint(path) as checkpoint:
        got = {t.name: t for t in checkpoint.tensors}
        assert set(got) == set(tensors)
        for name, array in tensors.items():
            tensor = got[name]
            assert tensor.shape == array.shape
            assert tensor.dtype.name == next(k for k, v in NUMPY_OF.items() if v == array.dtype)
            assert tensor.numel == array.size
            assert tensor.nbytes == array.nbytes
            for step in (1, 3, 7, 64):
                data = values(tensor, step)
                assert data.dtype == (BF16_BITS if tensor.dtype.name == "BF16" else array.dtype)
                assert data.tobytes() == array.tobytes()  # bit patterns: NaN payloads, -0.0


@st.composite
def damaged_files(draw: Any) -> bytes:
    tensors = draw(tensor_dicts(st.sampled_from(NUMPY_NATIVE), max_size=3))
    blob = safetensors.numpy.save(tensors)
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    if draw(st.booleans()):
        return blob[: draw(st.integers(0, len(blob)))]
    # most damage goes to the length field and header, where the rules are
    where = draw(st.integers(0, header_end - 1) | st.integers(0, len(blob) - 1))
    value = draw(st.integers(0, 255) | st.sampled_from(b'{}[]",:-0123456789 e.tfn\\'))
    return blob[:where] + bytes([value]) + blob[where + 1 :]


@PROPERTY
@given(blob=damaged_files())
def test_damaged_file_is_read_as_the_reference_reads_it_or_rejected(
    tmp_path: Path, blob: bytes
) -> None:
    path = write(tmp_path / "d.safetensors", blob)
    try:
        reference = read_reference(path)
    except Exception:
        reference = None
    try:
        ours = read_ours(path, max_elements=5)
    except NormcliError as e:
        assert str(path) in str(e)
        # the one deliberate difference: duplicate names, which the reference resolves silently
        assert reference is None or "duplicate key" in str(e), f"reference accepts, we say: {e}"
        return
    assert reference is not None, "normcli accepted a file the reference rejects"
    assert ours == reference


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_close_releases_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.safetensors", small_safetensors())
    checkpoint = open_checkpoint(path)
    values(checkpoint.tensors[0], 1)
    checkpoint.close()
    target = path.resolve()
    still_open = [
        fd for fd in Path("/proc/self/fd").iterdir() if fd.exists() and fd.resolve() == target
    ]
    assert still_open == []


# --- format detection -------------------------------------------------------------------------


def small_safetensors() -> bytes:
    return safetensors_bytes({"w": entry(shape=(2,), offsets=(0, 8))}, f32(1, -1), pad_to=8)


@pytest.mark.parametrize("filename", ["x.npz", "x.npy", "x.bin", "noext", "x.SAFETENSORS"])
def test_safetensors_is_detected_by_content_whatever_the_suffix(
    tmp_path: Path, filename: str
) -> None:
    path = write(tmp_path / filename, small_safetensors())
    assert detect_format(str(path)) == "safetensors"
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "safetensors"
        assert [t.name for t in checkpoint.tensors] == ["w"]


def test_npy_and_npz_are_detected_by_content_whatever_the_suffix(tmp_path: Path) -> None:
    npy = tmp_path / "array.safetensors"
    with npy.open("wb") as f:
        np.save(f, np.arange(3.0))
    npz = tmp_path / "arrays.safetensors"
    with npz.open("wb") as f:
        np.savez(f, a=np.arange(3.0))
    assert detect_format(str(npy)) == "npy"
    assert detect_format(str(npz)) == "npz"
    with open_checkpoint(npz) as checkpoint:
        assert checkpoint.format == "npz"
        assert [t.name for t in checkpoint.tensors] == ["a"]


@pytest.mark.parametrize(
    ("suffix", "fmt"),
    [(".safetensors", "safetensors"), (".npz", "npz"), (".npy", "npy"), (".NPZ", "npz")],
)
def test_unrecognised_content_falls_back_to_the_suffix(
    tmp_path: Path, suffix: str, fmt: str
) -> None:
    path = write(tmp_path / f"garbage{suffix}", b"\xff" * 100)
    assert detect_format(str(path)) == fmt
    with pytest.raises(CorruptFileError) as caught:
        open_checkpoint(path)
    assert str(path) in str(caught.value)


def test_empty_npz_without_zip_local_header_is_found_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "none.npz"
    np.savez(path)
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "npz"
        assert checkpoint.tensors == []


def test_unknown_format_names_the_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "model.bin", b"\x80\x02}q\x00." + b"\0" * 50)  # a pickle, say
    with pytest.raises(UnsupportedError) as caught:
        open_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    for fmt in ("safetensors", "npz", "npy"):
        assert fmt in message
    with pytest.raises(UnsupportedError):
        detect_format(str(path))


def test_empty_file_of_unknown_suffix_is_unsupported(tmp_path: Path) -> None:
    path = write(tmp_path / "model.bin", b"")
    with pytest.raises(UnsupportedError, match="empty"):
        open_checkpoint(path)


def test_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        open_checkpoint(tmp_path)
    assert "directory" in str(caught.value)
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(InputError):
        open_checkpoint(tmp_path, "safetensors")


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    for fmt in (None, "safetensors", "npz", "npy"):
        with pytest.raises(InputError) as caught:
            open_checkpoint(path, fmt)
        assert "no such file" in str(caught.value)
        assert str(path) in str(caught.value)


def test_input_format_overrides_detection(tmp_path: Path) -> None:
    # a valid npy file, read as safetensors on request, is corrupt safetensors
    path = tmp_path / "a.npy"
    np.save(path, np.arange(4.0))
    with pytest.raises(CorruptFileError):
        open_checkpoint(path, "safetensors")
    with open_checkpoint(path, "npy") as checkpoint:
        assert checkpoint.format == "npy"
    # and a safetensors file is corrupt as npy or npz
    st_path = write(tmp_path / "m.safetensors", small_safetensors())
    for fmt in ("npy", "npz"):
        with pytest.raises(CorruptFileError):
            open_checkpoint(st_path, fmt)


def test_unknown_input_format_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path / "m.safetensors", small_safetensors())
    with pytest.raises(UsageError) as caught:
        open_checkpoint(path, "pt")
    assert "'pt'" in str(caught.value)
    for fmt in ("safetensors", "npz", "npy"):
        assert fmt in str(caught.value)


def test_header_json_is_not_mistaken_for_safetensors_without_a_length(tmp_path: Path) -> None:
    path = write(tmp_path / "x.bin", json.dumps({"a": 1}).encode())
    with pytest.raises(UnsupportedError):
        open_checkpoint(path)
