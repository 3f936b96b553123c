"""The .npy / .npz reader: exact values in storage order, and no pickle ever from hostile files."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normcli.errors import CorruptFileError, NormcliError, UnsupportedError
from normcli.readers import open_checkpoint

try:
    from . import hostile
except ImportError:
    import hostile

write = hostile.write

# numpy dtype -> the name normcli reports for it, written out here rather than taken from normcli
NAMES = {
    "<f2": "F16",
    "<f4": "F32",
    "<f8": "F64",
    ">f2": "F16",
    ">f4": "F32",
    ">f8": "F64",
    "<c8": "C64",
    "<c16": "C128",
    ">c8": "C64",
    ">c16": "C128",
    "|b1": "BOOL",
    "|i1": "I8",
    "<i2": "I16",
    "<i4": "I32",
    "<i8": "I64",
    ">i2": "I16",
    ">i4": "I32",
    ">i8": "I64",
    "|u1": "U8",
    "<u2": "U16",
    "<u4": "U32",
    "<u8": "U64",
    ">u2": "U16",
    ">u4": "U32",
    ">u8": "U64",
}


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Arbitrary bit patterns of `dtype` (NaN payloads, infinities, -0.0 included)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.random.default_rng(seed).integers(0, 256, n * dt.itemsize, dtype=np.uint8).tobytes()
    if dt.kind == "b":
        raw = bytes(b & 1 for b in raw)
    return np.frombuffer(raw, dtype=dt).reshape(shape).copy()


def values(tensor: Any, max_elements: int) -> np.ndarray:
    parts = []
    for chunk in tensor.chunks(max_elements):
        assert isinstance(chunk, np.ndarray)
        assert chunk.ndim == 1
        assert 0 < chunk.size <= max_elements
        assert chunk.dtype == tensor.dtype.element
        parts.append(chunk.tobytes())
    # joined as bytes: np.concatenate would swap big-endian values to native order
    out = np.frombuffer(b"".join(parts), dtype=tensor.dtype.element)
    assert out.size == tensor.numel
    return out


def storage_order(array: np.ndarray, fortran: bool) -> bytes:
    return array.ravel(order="F" if fortran else "C").tobytes()


def read_all(path: Path, max_elements: int = 1 << 20) -> dict[str, tuple[Any, ...]]:
    out = {}
    with open_checkpoint(path) as checkpoint:
        for t in checkpoint.tensors:
            data = values(t, max_elements)
            out[t.name] = (t.dtype.name, t.shape, t.fortran_order, data.dtype, data.tobytes())
    return out


def npy_blob(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# --- .npy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", sorted(NAMES))
def test_npy_every_numeric_dtype_and_order(tmp_path: Path, dtype: str, order: str) -> None:
    array = np.asarray(sample(dtype, (3, 5, 2), seed=len(dtype)), order=order)
    path = tmp_path / "weights.npy"
    np.save(path, array)
    fortran = order == "F"
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "npy"
        (tensor,) = checkpoint.tensors
        assert tensor.name == "weights"
        assert tensor.dtype.name == NAMES[dtype]
        assert tensor.shape == (3, 5, 2)
        assert tensor.fortran_order is fortran
        assert tensor.nbytes == array.nbytes
        for step in (1, 4, 7, 30, 1000):
            got = values(tensor, step)
            assert got.dtype == np.dtype(dtype)  # byte order kept: values, not bytes, are compared
            assert got.tobytes() == storage_order(array, fortran)


def test_npy_big_endian_values_are_the_numbers_not_the_bytes(tmp_path: Path) -> None:
    array = np.array([1.5, -2.25, 1e30, 0.0], dtype=">f4")
    path = tmp_path / "be.npy"
    np.save(path, array)
    with open_checkpoint(path) as checkpoint:
        got = values(checkpoint.tensors[0], 3)
    assert got.astype(np.float64).tolist() == [1.5, -2.25, float(np.float32(1e30)), 0.0]


@pytest.mark.parametrize("shape", [(), (0,), (4, 0, 3), (1,), (7,)])
def test_npy_scalars_and_empty_arrays(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = sample("<f8", shape, seed=3)
    path = tmp_path / "s.npy"
    np.save(path, array)
    with open_checkpoint(path) as checkpoint:
        (tensor,) = checkpoint.tensors
        assert tensor.shape == shape
        assert tensor.numel == array.size
        assert values(tensor, 2).tobytes() == array.tobytes()


def test_npy_format_version_2(tmp_path: Path) -> None:
    array = sample("<f4", (2, 3), seed=5)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(2, 0))
    path = write(tmp_path / "v2.npy", buffer.getvalue())
    assert read_all(path)["v2"][4] == array.tobytes()


@pytest.mark.parametrize(
    ("dtype", "fragment"),
    [
        ("<U5", "not numeric"),
        ("|S3", "not numeric"),
        ("<M8[s]", "not numeric"),
        ("<m8[s]", "not numeric"),
        ("|V4", "not numeric"),
        ([("a", "<f4"), ("b", "<i4")], "not numeric"),
        ([("a", "<f4", (2,))], "not numeric"),
    ],
    ids=["unicode", "bytes", "datetime", "timedelta", "void", "structured", "structured-subarray"],
)
def test_npy_non_numeric_dtypes_are_unsupported(tmp_path: Path, dtype: Any, fragment: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3, dtype=dtype))
    with pytest.raises(UnsupportedError) as caught:
        open_checkpoint(path)
    assert fragment in str(caught.value)
    assert str(path) in str(caught.value)


def test_npy_truncated_data_is_corrupt(tmp_path: Path) -> None:
    blob = npy_blob(np.arange(10, dtype="<f4"))
    path = write(tmp_path / "t.npy", blob[:-1])
    with pytest.raises(CorruptFileError) as caught:
        open_checkpoint(path)
    assert "truncated" in str(caught.value)
    assert "needs 40 bytes" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("cut", [6, 8, 9, 20, 60])
def test_npy_truncated_header_is_corrupt(tmp_path: Path, cut: int) -> None:
    blob = npy_blob(np.arange(10, dtype="<f4"))
    path = write(tmp_path / "t.npy", blob[:cut])
    with pytest.raises(CorruptFileError) as caught:
        open_checkpoint(path)
    assert "not a valid .npy header" in str(caught.value)


@pytest.mark.parametrize(
    "literal",
    [
        "{'descr': '<f4', 'fortran_order': False}",
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,)}",
        "{'descr': 'nonsense', 'fortran_order': False, 'shape': (2,)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
        "__import__('os').system('true')",
        "[1, 2]",
    ],
)
def test_npy_malformed_header_is_corrupt(tmp_path: Path, literal: str) -> None:
    path = write(tmp_path / "m.npy", hostile.npy_bytes(literal, b"\0" * 8))
    with pytest.raises(CorruptFileError) as caught:
        open_checkpoint(path)
    assert "not a valid .npy header" in str(caught.value)


@pytest.mark.parametrize("shape", ["(-1,)", "(-1, -1)", "(-2, 3, -1)"])
def test_npy_negative_dimension_is_corrupt(tmp_path: Path, shape: str) -> None:
    literal = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    path = write(tmp_path / "neg.npy", hostile.npy_bytes(literal, b"\0" * 64))
    with pytest.raises(CorruptFileError) as caught:
        open_checkpoint(path)
    assert str(path) in str(caught.value)


def test_npy_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedError) as caught:
        open_checkpoint(path)
    assert "pickle" in str(caught.value)
    assert not marker.exists()
    # the payload is live: loading it the unsafe way runs it
    np.load(path, allow_pickle=True)
    assert marker.exists()


# --- .npz --------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates a directory at `marker`: the proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def mixed_arrays() -> dict[str, np.ndarray]:
    return {
        "embed.weight": sample("<f4", (17, 9), seed=1),
        "fortran": np.asfortranarray(sample("<f8", (4, 6), seed=2)),
        "half": sample("<f2", (33,), seed=3),
        "be": sample(">i4", (5, 2), seed=4),
        "flags": sample("|b1", (8,), seed=5),
        "cplx": sample("<c16", (3,), seed=6),
        "empty": np.zeros((0, 4), dtype="<f4"),
        "scalar": np.array(3.25, dtype="<f4"),
    }


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_values_match_exactly(tmp_path: Path, compressed: bool) -> None:
    arrays = mixed_arrays()
    path = tmp_path / "m.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "npz"
        assert [t.name for t in checkpoint.tensors] == list(arrays)
        for tensor in checkpoint.tensors:
            array = arrays[tensor.name]
            assert tensor.shape == array.shape
            assert tensor.dtype.name == NAMES[array.dtype.str]
            assert tensor.fortran_order is (
                array.flags.f_contiguous and not array.flags.c_contiguous
            )
            assert tensor.seekable is not compressed
            for step in (1, 5, 16, 1 << 20):
                got = values(tensor, step)
                assert got.dtype == array.dtype
                assert got.tobytes() == storage_order(array, tensor.fortran_order)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_member_can_be_read_again_after_stopping_early(
    tmp_path: Path, compressed: bool
) -> None:
    array = sample("<f4", (1000,), seed=9)
    path = tmp_path / "c.npz"
    (np.savez_compressed if compressed else np.savez)(path, a=array, b=array[::-1].copy())
    with open_checkpoint(path) as checkpoint:
        a, b = checkpoint.tensors
        first = next(iter(a.chunks(100)))
        assert first.tobytes() == array[:100].tobytes()
        # interleaved reads of two members, each from its start
        assert values(b, 300).tobytes() == array[::-1].tobytes()
        assert values(a, 64).tobytes() == array.tobytes()
        assert values(a, 999).tobytes() == array.tobytes()


@pytest.mark.parametrize(
    "method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_npz_any_zip_method_python_reads(tmp_path: Path, method: int) -> None:
    array = sample("<f8", (6, 7), seed=11)
    blob = hostile.zip_bytes({"dir/w.npy": npy_blob(array)}, method)
    path = write(tmp_path / "z.npz", blob)
    got = read_all(path, 5)
    assert list(got) == ["dir/w"]
    assert got["dir/w"][4] == array.tobytes()


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_member_with_bytes_after_the_array_reads_the_array(tmp_path: Path, method: int) -> None:
    # np.load reads what the header describes and ignores the rest; so must a CRC check
    array = sample("<f8", (9,), seed=14)
    blob = hostile.zip_bytes({"a.npy": npy_blob(array) + b"trailing"}, method)
    path = write(tmp_path / "t.npz", blob)
    with np.load(path) as archive:
        assert archive["a"].tobytes() == array.tobytes()
    for step in (1, 4, 100):
        assert read_all(path, step)["a"][4] == array.tobytes()


def test_npz_non_npy_members_are_ignored(tmp_path: Path) -> None:
    array = sample("<f4", (3,), seed=12)
    blob = hostile.zip_bytes(
        {
            "README.txt": b"hello",
            "w.npy": npy_blob(array),
            "nested/": b"",
            "x.pkl": b"\x80\x04K\x01.",
        }
    )
    path = write(tmp_path / "z.npz", blob)
    assert list(read_all(path)) == ["w"]


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_object_member_is_refused_without_unpickling(tmp_path: Path, compressed: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    # np.savez pickles object arrays (allow_pickle defaults to True when saving)
    (np.savez_compressed if compressed else np.savez)(
        path, good=np.arange(3.0), evil=np.array([Payload(marker)], dtype=object)
    )
    with pytest.raises(UnsupportedError) as caught:
        open_checkpoint(path)
    assert "pickle" in str(caught.value)
    assert "evil.npy" in str(caught.value)
    assert str(path) in str(caught.value)
    assert not marker.exists()
    # the payload is live: loading it the unsafe way runs it
    with np.load(path, allow_pickle=True) as archive:
        archive["evil"]
    assert marker.exists()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_encrypted_member_is_unsupported(tmp_path: Path, compressed: bool) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, a=np.arange(4.0))
    path = write(tmp_path / "enc.npz", hostile.set_encrypted_flag(buffer.getvalue()))
    with pytest.raises(UnsupportedError) as caught:
        open_checkpoint(path)
    assert "encrypted" in str(caught.value)
    assert "a.npy" in str(caught.value)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_truncated_archive_is_corrupt(tmp_path: Path, compressed: bool) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, a=sample("<f4", (200,), seed=13))
    blob = buffer.getvalue()
    for cut in (4, 30, len(blob) // 2, len(blob) - 10, len(blob) - 1):
        path = write(tmp_path / f"cut{cut}.npz", blob[:cut])
        assert str(path) in corrupt_error(path, 1 << 20)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_member_shorter_than_its_header_says_is_corrupt(
    tmp_path: Path, compressed: bool
) -> None:
    short = npy_blob(np.arange(100, dtype="<f4"))[:-40]  # ten elements missing
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    path = write(tmp_path / "short.npz", hostile.zip_bytes({"a.npy": short}, method))
    message = corrupt_error(path, 1 << 20)
    assert "needs 400 bytes" in message
    assert "a.npy" in message


def compressible(n: int) -> np.ndarray:
    """Data deflate encodes with Huffman codes (not stored blocks), so damage breaks the stream,
    and only about 3:1, so a large member spans many reads."""
    return np.random.default_rng(n).integers(0, 1000, n).astype("<f4")


def corrupt_error(path: Path, step: int) -> str:
    """The message of the CorruptFileError that opening or reading every chunk raises."""
    try:
        read_all(path, step)
    except CorruptFileError as e:
        message = str(e)
    else:
        pytest.fail("no CorruptFileError")
    # Failed reads leave a zip stream open in a reference cycle (see
    # test_failed_or_abandoned_compressed_read_leaves_nothing_open); collect it here, so that its
    # ResourceWarning does not land in whichever test happens to be running when the GC next runs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return message


@pytest.mark.parametrize("seed", range(4))
def test_npz_corrupt_deflate_stream_fails_while_reading_chunks(tmp_path: Path, seed: int) -> None:
    array = compressible(100_000)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=array)
    blob = bytearray(buffer.getvalue())
    start, stop = hostile.member_data_span(bytes(blob), "a.npy")
    assert stop - start > 8192
    rng = np.random.default_rng(seed)
    # damage well past the npy header, so opening (which inflates only the header) succeeds
    for at in rng.integers(start + (stop - start) // 2, stop, 4):
        blob[at] ^= 0xFF
    path = write(tmp_path / "bad.npz", bytes(blob))
    with open_checkpoint(path) as checkpoint:  # the header inflates fine
        assert [t.shape for t in checkpoint.tensors] == [(100_000,)]
    message = corrupt_error(path, 30_000)
    assert "a.npy" in message
    assert str(path) in message


@pytest.mark.parametrize("step", [1 << 20, 60_000, 16_384, 1_000, 7])
@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_npz_crc_mismatch_in_a_compressed_member_is_corrupt(
    tmp_path: Path, method: int, step: int
) -> None:
    # large enough that the damage shows while reading chunks, not while parsing the header
    array = compressible(60_000) if step >= 1_000 else compressible(3_000)
    blob = hostile.flip_crc(hostile.zip_bytes({"a.npy": npy_blob(array)}, method))
    path = write(tmp_path / "crc.npz", blob)
    message = corrupt_error(path, step)
    assert "CRC" in message
    assert str(path) in message


def test_npz_stored_member_claiming_more_bytes_than_it_holds_is_corrupt(tmp_path: Path) -> None:
    # The central directory says a.npy is 360 bytes longer than the bytes stored for it: reading
    # that far would take the next member's local header for the last 90 values of `a`.
    short = npy_blob(np.arange(100, dtype="<f4"))[:-360]
    blob = hostile.zip_bytes({"a.npy": short, "b.npy": npy_blob(np.arange(100, dtype="<f4"))})
    blob = hostile.set_central_file_size(blob, 0, len(short) + 360)
    path = write(tmp_path / "lie.npz", blob)
    with pytest.raises(ValueError), np.load(path) as archive:
        archive["a"]
    assert "a.npy" in corrupt_error(path, 1 << 20)


def test_npz_duplicate_member_names_are_corrupt(tmp_path: Path) -> None:
    # As with duplicate safetensors names: two tensors called "a" make every comparison ambiguous
    # (np.load lists both and silently hands back the last).
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("a.npy", npy_blob(np.arange(3.0)))
            archive.writestr("a.npy", npy_blob(np.arange(5.0)))
    path = write(tmp_path / "dup.npz", buffer.getvalue())
    assert "duplicate" in corrupt_error(path, 1 << 20).lower()


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
def test_npz_crc_mismatch_in_a_stored_member_is_corrupt(tmp_path: Path, step: int) -> None:
    # np.load rejects this archive ("Bad CRC-32"); normcli must not report the damaged values
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(10, dtype="<f4"))
    blob = bytearray(buffer.getvalue())
    _, stop = hostile.member_data_span(bytes(blob), "a.npy")
    blob[stop - 3] ^= 0x40  # one bit of the last element's data; the recorded CRC stays as it was
    path = write(tmp_path / "crc.npz", bytes(blob))
    with pytest.raises(zipfile.BadZipFile), np.load(path) as archive:
        archive["a"]
    assert "CRC" in corrupt_error(path, step)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_damage_is_caught_on_a_full_read_after_an_abandoned_one(
    tmp_path: Path, compressed: bool
) -> None:
    array = compressible(30_000)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, a=array)
    blob = bytearray(buffer.getvalue())
    _, stop = hostile.member_data_span(bytes(blob), "a.npy")
    blob[stop - 3] ^= 0x40  # near the end: the first chunk reads cleanly
    path = write(tmp_path / "late.npz", bytes(blob))
    checkpoint = open_checkpoint(path)
    try:
        (tensor,) = checkpoint.tensors
        next(iter(tensor.chunks(1_000)))  # a scan that stops early
        with pytest.raises(CorruptFileError):
            for _ in tensor.chunks(1_000):
                pass
    finally:
        checkpoint.close()
        with warnings.catch_warnings():  # as in corrupt_error
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


# --- property: any arrays, either writer, any chunk size -----------------------------------

numeric_dtypes = st.sampled_from(sorted(NAMES))
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def array_dicts(draw: Any) -> dict[str, np.ndarray]:
    out = {}
    for i, name in enumerate(
        draw(
            st.lists(
                st.from_regex(r"[a-z][a-z0-9_.]{0,6}", fullmatch=True), max_size=4, unique=True
            )
        )
    ):
        array = sample(draw(numeric_dtypes), draw(shapes), seed=draw(st.integers(0, 2**16)) + i)
        out[name] = np.asfortranarray(array) if draw(st.booleans()) else array
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arrays=array_dicts(), compressed=st.booleans(), step=st.sampled_from([1, 2, 3, 7, 64]))
def test_npz_property_any_arrays_read_back_exactly(
    tmp_path: Path, arrays: dict[str, np.ndarray], compressed: bool, step: int
) -> None:
    path = tmp_path / "p.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    got = read_all(path, step)
    assert list(got) == list(arrays)
    for name, array in arrays.items():
        dtype_name, shape, fortran, dtype, data = got[name]
        assert (dtype_name, shape, dtype) == (NAMES[array.dtype.str], array.shape, array.dtype)
        assert data == storage_order(array, fortran)
        # whatever the storage order, the reader's flag lets a consumer rebuild the array
        rebuilt = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        assert rebuilt.tobytes() == array.tobytes(order="C")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), compressed=st.booleans())
def test_npz_property_damage_gives_normcli_errors_only(
    tmp_path: Path, data: Any, compressed: bool
) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer, a=compressible(300), b=sample("<f2", (3, 4), seed=1)
    )
    blob = bytearray(buffer.getvalue())
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    else:
        at = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob[at] = data.draw(st.integers(0, 255).filter(lambda v: v != blob[at]), label="value")
    path = write(tmp_path / "d.npz", bytes(blob))
    try:
        read_all(path, 7)
    except NormcliError as e:
        assert str(path) in str(e)
    with warnings.catch_warnings():  # as in corrupt_error
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


# --- open files --------------------------------------------------------------------------------


def open_descriptors(path: Path) -> int:
    """How many of this process's file descriptors refer to `path` (Linux)."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone
            count += os.path.realpath(f"/proc/self/fd/{fd}") == target
    return count


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")


@needs_proc
@pytest.mark.parametrize("kind", ["npy", "npz", "npz-compressed"])
def test_close_releases_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"c.{kind[:3]}"
    if kind == "npy":
        np.save(path, np.arange(10.0))
    else:
        (np.savez_compressed if kind.endswith("compressed") else np.savez)(path, a=np.arange(10.0))
    checkpoint = open_checkpoint(path)
    for tensor in checkpoint.tensors:
        values(tensor, 3)
    checkpoint.close()
    assert open_descriptors(path) == 0


@needs_proc
@pytest.mark.parametrize("how", ["damaged", "abandoned"])
def test_failed_or_abandoned_compressed_read_leaves_nothing_open(tmp_path: Path, how: str) -> None:
    """A read that fails or stops early leaves no more open after close() than one that finishes."""
    array = compressible(100_000)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=array)
    good = write(tmp_path / "good.npz", buffer.getvalue())
    blob = bytearray(buffer.getvalue())
    if how == "damaged":
        blob = bytearray(hostile.flip_crc(bytes(blob)))
    bad = write(tmp_path / "bad.npz", bytes(blob))

    with open_checkpoint(good) as checkpoint:
        values(checkpoint.tensors[0], 30_000)
    baseline = open_descriptors(good)  # nonzero if close() keeps the memory map (see above)

    checkpoint = open_checkpoint(bad)
    try:
        if how == "damaged":
            with pytest.raises(CorruptFileError):
                values(checkpoint.tensors[0], 30_000)
        else:
            next(iter(checkpoint.tensors[0].chunks(30_000)))
    finally:
        checkpoint.close()
    try:
        assert open_descriptors(bad) == baseline
    finally:
        del checkpoint
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
