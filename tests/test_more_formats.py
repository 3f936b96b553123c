"""The GGUF, ONNX and HDF5 / Keras readers against files written by each format's own library, and
against hostile files. Each part is skipped when its library is not installed."""

from __future__ import annotations

import io
import math
import random
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normcli
from normcli.errors import CorruptFileError, InputError, NormcliError, UnsupportedError
from normcli.norms import TensorStats
from normcli.readers.base import Checkpoint
from normcli.scan import CHUNK_ELEMENTS, scan_pair, scan_tensor, scan_tensors

RTOL = 1e-10


def reference(values: Any) -> dict[str, float | int]:
    """Figures of an array computed apart from normcli: float64 (complex128), math.fsum."""
    array = np.asarray(values)
    wide = array.astype(np.complex128 if array.dtype.kind == "c" else np.float64).reshape(-1)
    finite = wide[np.isfinite(wide)]
    magnitude = np.abs(finite)
    return {
        "numel": int(wide.size),
        "l1": math.fsum(magnitude.tolist()),
        "sumsq": math.fsum((magnitude * magnitude).tolist()),
        "linf": float(magnitude.max()) if magnitude.size else 0.0,
        "nan": int(np.isnan(wide).sum()),
    }


def assert_matches(stats: TensorStats, expected: dict[str, float | int], name: str) -> None:
    assert stats.numel == expected["numel"], name
    assert stats.nan == expected["nan"], name
    for key in ("l1", "sumsq", "linf"):
        assert math.isclose(getattr(stats, key), expected[key], rel_tol=RTOL, abs_tol=0.0), (
            name,
            key,
            getattr(stats, key),
            expected[key],
        )


def scanned(checkpoint: Checkpoint, chunk_elements: int) -> dict[str, TensorStats]:
    stats = scan_tensors(checkpoint.tensors, threads=2, chunk_elements=chunk_elements)
    return {t.name: s for t, s in zip(checkpoint.tensors, stats, strict=True)}


def scan_everything(checkpoint: Checkpoint) -> None:
    for tensor in checkpoint.tensors:
        scan_tensor(tensor, 1000)


def never_another_exception(open_it: Callable[[str], Checkpoint], path: Path) -> None:
    """Opening (and scanning, if it opens) either works or raises a NormcliError."""
    try:
        with open_it(str(path)) as checkpoint:
            scan_everything(checkpoint)
    except NormcliError:
        pass


# --- GGUF --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf() -> Any:
    return pytest.importorskip("gguf")


def gguf_quant_types(gguf: Any) -> tuple[list[Any], list[Any]]:
    """The block types this gguf can dequantize, and those it cannot."""
    can, cannot = [], []
    for kind, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if block == 1:
            continue
        try:
            gguf.quants.dequantize(np.zeros(size, dtype=np.uint8), kind)
        except NotImplementedError:
            cannot.append(kind)
        else:
            can.append(kind)
    return can, cannot


def random_blocks(gguf: Any, kind: Any, rows: int, blocks: int, rng: np.random.Generator) -> Any:
    """Valid blocks for any type, also those gguf cannot quantize: random bytes, with bit 6 of
    every byte clear so each f16 / e8m0 scale is finite (its exponent's top bit is zero)."""
    size = gguf.GGML_QUANT_SIZES[kind][1]
    return rng.integers(0, 256, (rows, blocks * size), dtype=np.uint8) & np.uint8(0xBF)


def write_gguf(
    gguf: Any, path: Path, tensors: dict[str, tuple[Any, Any]], alignment: int | None = None
) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_string("general.name", "normcli test")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "world"])
    writer.add_array("some.floats", [0.5, 1.5, 2.5])
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(gguf: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kinds = gguf.GGMLQuantizationType
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((6, 512)).astype(np.float32)
    tensors: dict[str, tuple[Any, Any]] = {
        "f32": (weights, None),
        "f16.3d": (rng.standard_normal((2, 3, 40)).astype(np.float16), None),
        "f64": (rng.standard_normal(33), None),
        "i8": (rng.integers(-128, 128, 50).astype(np.int8), None),
        "i16": (rng.integers(-3000, 3000, 50).astype(np.int16), None),
        "i32": (rng.integers(-(2**31), 2**31, 50).astype(np.int32), None),
        "i64": (rng.integers(-(2**62), 2**62, 50).astype(np.int64), None),
        "bf16": (gguf.quants.quantize(weights, kinds.BF16), kinds.BF16),
        # quantized by gguf's own quantizer
        "q8_0": (gguf.quants.quantize(weights, kinds.Q8_0), kinds.Q8_0),
        "q4_0": (gguf.quants.quantize(weights, kinds.Q4_0), kinds.Q4_0),
    }
    can, cannot = gguf_quant_types(gguf)
    for kind in can + cannot:
        name = f"blocks.{kind.name}"
        if kind.name in ("Q8_0", "Q4_0"):
            continue
        tensors[name] = (random_blocks(gguf, kind, 3, 2, rng), kind)
    return write_gguf(gguf, tmp_path_factory.mktemp("gguf") / "model.gguf", tensors, alignment=64)


def gguf_reference(gguf: Any, path: Path) -> dict[str, dict[str, float | int]]:
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        if t.tensor_type.name in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
            values = np.array(t.data)
        else:
            try:
                values = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
            except NotImplementedError:
                values = np.full(0, np.nan)  # must come back as skipped
        out[t.name] = reference(values)
    return out


class RecordedProgress:
    def __init__(self) -> None:
        self.total = 0
        self.done: list[int] = []

    def start(self, total_bytes: int) -> None:
        self.total = total_bytes

    def advance(self, done_bytes: int) -> None:
        self.done.append(done_bytes)


def test_gguf_progress_counts_the_bytes_of_the_file_not_of_the_decoded_values(
    gguf: Any, gguf_file: Path
) -> None:
    result = normcli.inspect(gguf_file, include_int=True)
    read = {t.name for t in result.tensors}
    stored = sum(t.n_bytes for t in gguf.GGUFReader(str(gguf_file)).tensors if t.name in read)
    for threads in (1, 2):
        progress = RecordedProgress()
        normcli.inspect(gguf_file, threads=threads, progress=progress)
        assert progress.total == stored
        assert sum(progress.done) == stored


@pytest.mark.parametrize("chunk_elements", [100, CHUNK_ELEMENTS])
def test_gguf_every_tensor_matches_gguf_own_dequantization(
    gguf: Any, gguf_file: Path, chunk_elements: int
) -> None:
    from normcli.readers.gguf import open_gguf

    expected = gguf_reference(gguf, gguf_file)
    _, cannot = gguf_quant_types(gguf)
    with open_gguf(str(gguf_file)) as checkpoint:
        assert checkpoint.format == "gguf"
        got = scanned(checkpoint, chunk_elements)
        skipped = dict(checkpoint.skipped)
    # every tensor is either read or reported skipped with its reason, never dropped
    assert set(got) | set(skipped) == set(expected)
    assert set(skipped) == {f"blocks.{kind.name}" for kind in cannot}
    assert all("cannot dequantize" in reason for reason in skipped.values())
    for name, stats in got.items():
        assert_matches(stats, expected[name], name)


def test_gguf_header_walk_agrees_with_gguf_reader(gguf: Any, gguf_file: Path) -> None:
    import mmap

    from normcli.readers.gguf import _Header

    reader = gguf.GGUFReader(str(gguf_file))
    with open(gguf_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        infos, data_start, order = _Header(m, str(gguf_file), gguf).read()
    assert (data_start, order) == (reader.data_offset, "<")
    assert data_start % 64 == 0 and reader.alignment == 64
    assert [(i.name, i.dims, i.type_id, data_start + i.offset) for i in infos] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), t.data_offset)
        for t in reader.tensors
    ]


def test_gguf_names_the_storage_type_and_reports_the_logical_shape(
    gguf: Any, gguf_file: Path
) -> None:
    from normcli.readers.gguf import open_gguf

    with open_gguf(str(gguf_file)) as checkpoint:
        tensors = {t.name: t for t in checkpoint.tensors}
    # numpy shape (rows, cols) goes in; GGUF stores [cols, rows]; the reader says (rows, cols)
    assert tensors["f32"].shape == (6, 512)
    assert tensors["f16.3d"].shape == (2, 3, 40)
    assert tensors["blocks.Q4_K"].shape == (3, 512)
    assert {name: tensors[name].dtype.name for name in ("f32", "bf16", "q8_0", "i8")} == {
        "f32": "F32",
        "bf16": "BF16",
        "q8_0": "Q8_0",
        "i8": "I8",
    }
    assert tensors["blocks.Q6_K"].dtype.name == "Q6_K"
    assert tensors["q8_0"].dtype.is_floating and not tensors["i32"].dtype.is_floating


def test_gguf_quantized_against_its_float32_source_is_a_small_update(
    gguf: Any, tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    from normcli.readers.gguf import open_gguf
    from normcli.readers.safetensors import open_safetensors

    kinds = gguf.GGMLQuantizationType
    rng = np.random.default_rng(3)
    arrays = {
        "blk.0.attn_q.weight": rng.standard_normal((64, 256)).astype(np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((32, 512)).astype(np.float32),
    }
    save_file(arrays, str(tmp_path / "model.safetensors"))
    bounds = {"Q8_0": 0.01, "Q4_0": 0.15}
    for kind_name, bound in bounds.items():
        kind = kinds[kind_name]
        path = write_gguf(
            gguf,
            tmp_path / f"model-{kind_name}.gguf",
            {name: (gguf.quants.quantize(a, kind), kind) for name, a in arrays.items()},
        )
        with (
            open_safetensors(str(tmp_path / "model.safetensors")) as a,
            open_gguf(str(path)) as b,
        ):
            by_name = {t.name: t for t in b.tensors}
            for tensor in a.tensors:
                other = by_name[tensor.name]
                assert other.shape == tensor.shape
                pair = scan_pair(tensor, other)
                odd = scan_pair(tensor, other, chunk_elements=1000)
                exact = gguf.quants.dequantize(
                    gguf.quants.quantize(arrays[tensor.name], kind), kind
                )
                diff = exact.astype(np.float64) - arrays[tensor.name].astype(np.float64)
                assert math.isclose(pair.diff.sumsq, reference(diff)["sumsq"], rel_tol=RTOL)
                assert math.isclose(odd.diff.sumsq, pair.diff.sumsq, rel_tol=1e-12)
                assert pair.rel_l2 is not None and 0 < pair.rel_l2 < bound, (kind_name, pair)


def test_gguf_dequantizes_a_chunk_of_blocks_at_a_time(
    gguf: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normcli.readers.gguf import open_gguf

    kinds = gguf.GGMLQuantizationType
    rng = np.random.default_rng(9)
    blocks = random_blocks(gguf, kinds.Q4_K, 64, 16, rng)  # 64 rows of 4096: 256 Ki values
    path = write_gguf(gguf, tmp_path / "q4k.gguf", {"w": (blocks, kinds.Q4_K)})
    expected = reference(gguf.quants.dequantize(blocks, kinds.Q4_K))
    real = gguf.quants.dequantize
    sizes: list[int] = []

    def spy(data: np.ndarray, kind: Any) -> np.ndarray:
        sizes.append(data.size)
        return real(data, kind)

    monkeypatch.setattr(gguf.quants, "dequantize", spy)
    with open_gguf(str(path)) as checkpoint:
        sizes.clear()  # opening tries one block of each type
        stats = scan_tensor(checkpoint.tensors[0], chunk_elements=5000)
    assert_matches(stats, expected, "w")
    block_bytes = gguf.GGML_QUANT_SIZES[kinds.Q4_K][1]
    # 5000 values span at most 21 blocks of 256; never the 1024 blocks of the whole tensor
    assert len(sizes) == -(-64 * 4096 // 5000) and max(sizes) <= 21 * block_bytes


def test_big_endian_gguf_reads_plain_types_and_reports_blocks_skipped(
    gguf: Any, tmp_path: Path
) -> None:
    from normcli.readers.gguf import open_gguf

    kinds = gguf.GGMLQuantizationType
    path = tmp_path / "big-endian.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    values = np.arange(64, dtype=np.float32) - 10.5
    writer.add_tensor("f32", values)  # the writer swaps the bytes
    writer.add_tensor("i16", np.arange(-3, 5, dtype=np.int16))
    writer.add_tensor(
        "q8_0", gguf.quants.quantize(values.reshape(2, 32), kinds.Q8_0), raw_dtype=kinds.Q8_0
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_gguf(str(path)) as checkpoint:
        got = scanned(checkpoint, 10)
        skipped = dict(checkpoint.skipped)
    assert_matches(got["f32"], reference(values), "f32")
    assert_matches(got["i16"], reference(np.arange(-3, 5)), "i16")
    assert skipped == {"q8_0": "Q8_0 blocks in a big-endian GGUF file: not supported"}


def gguf_header(
    tensors: list[tuple[bytes, list[int], int, int]],
    kv: bytes = b"",
    kv_count: int = 0,
    version: int = 3,
    count: int | None = None,
) -> bytes:
    """A GGUF header, byte by byte: (name, dims fastest first, type id, offset) per tensor."""
    blob = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if count is None else count, kv_count
    )
    blob += kv
    for name, dims, type_id, offset in tensors:
        blob += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        blob += b"".join(struct.pack("<Q", d) for d in dims)
        blob += struct.pack("<IQ", type_id, offset)
    return blob + b"\0" * (-len(blob) % 32)


def kv_array(key: bytes, item_type: int, count: int, payload: bytes = b"") -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, item_type, count) + payload


def test_a_minimal_crafted_gguf_still_loads(gguf: Any, tmp_path: Path) -> None:
    from normcli.readers.gguf import open_gguf

    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_header([(b"w", [4], 0, 0)]) + struct.pack("<4f", 1, -2, 3, -4))
    with open_gguf(str(path)) as checkpoint:
        (stats,) = scan_tensors(checkpoint.tensors)
    assert (stats.l1, stats.sumsq, stats.numel) == (10.0, 30.0, 4)


HOSTILE_GGUF: dict[str, tuple[bytes, type[NormcliError], str]] = {
    "too many dimensions": (
        gguf_header([(b"w", [1] * 5, 0, 0)]) + b"\0" * 64,
        CorruptFileError,
        "dimensions",
    ),
    "dims overflow": (
        gguf_header([(b"w", [4194305, 4194305, 211106198978564], 0, 0)]) + b"\0" * 64,
        CorruptFileError,
        "overflows",
    ),
    "array longer than the file": (
        gguf_header([], kv_array(b"a", 12, 5_000_000), kv_count=1) + b"\0" * 1000,
        CorruptFileError,
        "needs",
    ),
    "endless array of nothing": (
        gguf_header([], kv_array(b"a", 9, 2**62), kv_count=1) + b"\0" * 100,
        CorruptFileError,
        "cannot fit",
    ),
    "tensor count beyond the file": (
        gguf_header([], count=2**40) + b"\0" * 100,
        CorruptFileError,
        "cannot fit",
    ),
    "data past the end": (
        gguf_header([(b"w", [1024], 0, 0)]) + b"\0" * 64,
        CorruptFileError,
        "past the end",
    ),
    "offset past the end": (
        gguf_header([(b"w", [4], 0, 2**40)]) + b"\0" * 16,
        CorruptFileError,
        "past the end",
    ),
    "overlapping tensors": (
        gguf_header([(b"a", [8], 0, 0), (b"b", [8], 0, 16)]) + b"\0" * 64,
        CorruptFileError,
        "overlaps",
    ),
    "rows not whole blocks": (
        gguf_header([(b"q", [33], 8, 0)]) + b"\0" * 128,
        CorruptFileError,
        "whole Q8_0 blocks",
    ),
    "duplicate tensor names": (
        gguf_header([(b"a", [4], 0, 0), (b"a", [4], 0, 32)]) + b"\0" * 64,
        CorruptFileError,
        "duplicated",
    ),
    "name not utf-8": (
        gguf_header([(b"\xff\xfe", [4], 0, 0)]) + b"\0" * 16,
        CorruptFileError,
        "UTF-8",
    ),
    "unknown tensor type": (
        gguf_header([(b"w", [4], 31, 0)]) + b"\0" * 64,
        UnsupportedError,
        "type id 31",
    ),
    "version 1": (gguf_header([], version=1), UnsupportedError, "version 1"),
    "bad alignment": (
        gguf_header(
            [],
            struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 3),
            kv_count=1,
        ),
        CorruptFileError,
        "power of two",
    ),
    "unknown metadata type": (
        gguf_header([], struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99), kv_count=1),
        CorruptFileError,
        "unknown value type",
    ),
    "wrong magic": (b"GGUG" + b"\0" * 40, CorruptFileError, "magic"),
    "tiny": (b"GGUF", CorruptFileError, "only 4 bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_GGUF))
def test_hostile_gguf_is_refused_clearly(gguf: Any, tmp_path: Path, case: str) -> None:
    from normcli.readers.gguf import open_gguf

    blob, error, words = HOSTILE_GGUF[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(blob)
    with pytest.raises(error, match=words) as caught:
        open_gguf(str(path))
    assert caught.value.path == str(path)


def test_truncated_gguf_at_every_length_is_a_clear_error(
    gguf: Any, gguf_file: Path, tmp_path: Path
) -> None:
    from normcli.readers.gguf import open_gguf

    blob = gguf_file.read_bytes()
    path = tmp_path / "cut.gguf"
    cuts = sorted({*range(0, 400, 7), *random.Random(1).sample(range(len(blob)), 60)})
    for cut in cuts:
        path.write_bytes(blob[:cut])
        with pytest.raises(NormcliError):
            open_gguf(str(path))


def test_damaged_gguf_never_raises_another_exception(
    gguf: Any, gguf_file: Path, tmp_path: Path
) -> None:
    from normcli.readers.gguf import open_gguf

    blob = gguf_file.read_bytes()
    header_end = blob.index(b"blk") if b"blk" in blob else 2000
    rng = random.Random(5)
    path = tmp_path / "damaged.gguf"
    for _ in range(150):
        damaged = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(min(header_end + 2000, len(blob)))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        never_another_exception(open_gguf, path)


# --- ONNX --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx() -> Any:
    module = pytest.importorskip("onnx")
    pytest.importorskip("onnx.numpy_helper")
    return module


def onnx_model(onnx: Any, initializers: list[Any], extra_nodes: list[Any] | None = None) -> Any:
    helper, kinds = onnx.helper, onnx.TensorProto
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node, *(extra_nodes or [])],
        "g",
        [helper.make_tensor_value_info("x", kinds.FLOAT, [1])],
        [helper.make_tensor_value_info("y", kinds.FLOAT, [1])],
        initializer=initializers,
    )
    return helper.make_model(graph)


@pytest.fixture(scope="module")
def onnx_file(onnx: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    helper, numpy_helper, kinds = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    rng = np.random.default_rng(11)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), "big.weight"),
        numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "small.raw"),
        numpy_helper.from_array(rng.standard_normal(7), "double.raw"),
        numpy_helper.from_array(rng.standard_normal(9).astype(np.float16), "half.raw"),
        numpy_helper.from_array(rng.integers(-50, 50, 11).astype(np.int64), "ids"),
        numpy_helper.from_array((rng.standard_normal(4) + 1j).astype(np.complex64), "complex"),
        helper.make_tensor("typed.float", kinds.FLOAT, [2, 2], [1.5, -2.0, 3.0, 0.0]),
        helper.make_tensor("typed.half", kinds.FLOAT16, [3], np.array([1, -2, 65504], np.float16)),
        helper.make_tensor(
            "typed.bf16", kinds.BFLOAT16, [3], np.array([1, -2.5, 3e38], ml_dtypes.bfloat16)
        ),
        helper.make_tensor("typed.int4", kinds.INT4, [5], [1, -2, 7, -8, 0]),
        helper.make_tensor(
            "raw.f4",
            kinds.FLOAT4E2M1,
            [4],
            np.array([1, -2, 6, 0.5], ml_dtypes.float4_e2m1fn),
            raw=False,
        ),
        helper.make_tensor("names", kinds.STRING, [2], [b"a", b"b"]),
    ]
    inner_constant = helper.make_node(
        "Constant",
        [],
        ["inner.constant"],
        value=numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32)),
    )
    then_graph = helper.make_graph(
        [inner_constant, helper.make_node("Identity", ["inner.weight"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", kinds.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([3.0, -4.0], np.float32), "inner.weight")],
    )
    branch = helper.make_node("If", ["cond"], ["z"], then_branch=then_graph, else_branch=then_graph)
    # exporters such as spox keep weights in Constant nodes, named by their output
    constants = [
        helper.make_node(
            "Constant",
            [],
            ["const.weight"],
            value=numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float16)),
        ),
        helper.make_node(
            "Constant",
            [],
            ["const.sparse"],
            sparse_value=helper.make_sparse_tensor(
                numpy_helper.from_array(np.array([2.0], np.float32), ""),
                numpy_helper.from_array(np.array([0], np.int64), ""),
                [4],
            ),
        ),
        helper.make_node("Constant", [], ["const.scalar"], value_float=0.5),
    ]
    model = onnx_model(onnx, initializers, [*constants, branch])
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0], np.float32), "sparse.w"),
        numpy_helper.from_array(np.array([1], np.int64), "sparse.idx"),
        [3],
    )
    model.graph.sparse_initializer.append(sparse)
    folder = tmp_path_factory.mktemp("onnx")
    path = folder / "model.onnx"
    # the large tensors go to an external data file beside the model, as exporters do
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=100,
    )
    return path


def onnx_reference(onnx: Any, path: Path) -> dict[str, dict[str, float | int]]:
    model = onnx.load(str(path))  # onnx's own loader, external data included

    def graphs(graph: Any) -> Iterator[Any]:
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    yield from graphs(attribute.g)

    tensors = []
    for graph in graphs(model.graph):
        tensors += [(t.name, t) for t in graph.initializer]
        for node in graph.node:
            tensors += [
                (node.output[0], a.t)
                for a in node.attribute
                if node.op_type == "Constant" and a.name == "value"
            ]
            tensors += [
                (node.output[0], onnx.helper.make_tensor("", 1, [], [a.f]))
                for a in node.attribute
                if node.op_type == "Constant" and a.name == "value_float"
            ]
    out = {}
    for name, tensor in tensors:
        if tensor.data_type != onnx.TensorProto.STRING:
            values = onnx.numpy_helper.to_array(tensor)
            if values.dtype in (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.int2)):
                values = values.astype(np.int8)
            out[name] = reference(values)
    return out


@pytest.mark.parametrize("chunk_elements", [100, CHUNK_ELEMENTS])
def test_onnx_every_initializer_matches_onnx_own_loading(
    onnx: Any, onnx_file: Path, chunk_elements: int
) -> None:
    from normcli.readers.onnx import open_onnx

    expected = onnx_reference(onnx, onnx_file)
    model = onnx.load(str(onnx_file), load_external_data=False)
    external = {t.name for t in model.graph.initializer if t.data_location == 1}
    assert "big.weight" in external and "small.raw" not in external  # both kinds of storage
    with open_onnx(str(onnx_file)) as checkpoint:
        assert checkpoint.format == "onnx"
        got = scanned(checkpoint, chunk_elements)
        dtypes = {t.name: t.dtype.name for t in checkpoint.tensors}
        skipped = dict(checkpoint.skipped)
    assert set(got) == set(expected)
    # the If's two branches are one graph here: its initializer is read once, then reported
    assert set(skipped) == {"names", "sparse.w", "const.sparse", "inner.weight", "inner.constant"}
    assert "subgraph" in skipped["inner.weight"] and "sparse" in skipped["sparse.w"]
    assert skipped["const.sparse"] == "sparse constant: normcli reads dense tensors only"
    assert {"const.weight", "inner.constant", "const.scalar"} <= set(got)
    assert dtypes["const.weight"] == "F16"
    assert dtypes["big.weight"] == "F32" and dtypes["typed.bf16"] == "BF16"
    assert dtypes["typed.int4"] == "I4" and dtypes["raw.f4"] == "F4"
    for name, stats in got.items():
        assert_matches(stats, expected[name], name)


def test_onnx_is_recognised_by_suffix_and_first_bytes(onnx_file: Path) -> None:
    from normcli.readers.onnx import looks_like_onnx

    head = onnx_file.read_bytes()[:64]
    assert looks_like_onnx(head, "model.onnx")
    assert looks_like_onnx(head, "MODEL.ONNX")
    assert not looks_like_onnx(head, "model.bin")
    assert not looks_like_onnx(b"PK\x03\x04" + head, "model.onnx")
    assert not looks_like_onnx(b"", "model.onnx")
    assert not looks_like_onnx(b"\xff" * 20, "model.onnx")


def external_model(onnx: Any, folder: Path, **entries: str) -> Path:
    """A model with one float32 [4] initializer whose data lives as `entries` say."""
    tensor = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in entries.items():
        item = tensor.external_data.add()
        item.key, item.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(onnx_model(onnx, [tensor]).SerializeToString())
    (folder / "weights.bin").write_bytes(struct.pack("<4f", 1, 2, 3, 4))
    return path


HOSTILE_EXTERNAL: dict[str, tuple[dict[str, str], type[NormcliError], str]] = {
    "parent folder": ({"location": "../../etc/passwd"}, CorruptFileError, "outside"),
    "absolute path": ({"location": "/etc/passwd"}, CorruptFileError, "outside"),
    "backslashes": ({"location": "..\\..\\etc\\passwd"}, CorruptFileError, "outside"),
    "no location": ({"offset": "0"}, CorruptFileError, "no usable location"),
    "offset past the end": (
        {"location": "weights.bin", "offset": "4096"},
        CorruptFileError,
        "past the end",
    ),
    "length past the end": (
        {"location": "weights.bin", "offset": "8"},
        CorruptFileError,
        "past the end",
    ),
    "length that lies": (
        {"location": "weights.bin", "length": "12"},
        CorruptFileError,
        "length 12",
    ),
    "offset not a number": (
        {"location": "weights.bin", "offset": "-4"},
        CorruptFileError,
        "not a byte count",
    ),
    "missing file": ({"location": "nowhere.bin"}, InputError, "no such file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_EXTERNAL))
def test_onnx_hostile_external_data_is_refused(onnx: Any, tmp_path: Path, case: str) -> None:
    from normcli.readers.onnx import open_onnx

    entries, error, words = HOSTILE_EXTERNAL[case]
    path = external_model(onnx, tmp_path, **entries)
    with pytest.raises(error, match=words):
        open_onnx(str(path))


def test_onnx_external_data_in_bounds_reads(onnx: Any, tmp_path: Path) -> None:
    from normcli.readers.onnx import open_onnx

    path = external_model(onnx, tmp_path, location="weights.bin", offset="0", length="16")
    with open_onnx(str(path)) as checkpoint:
        (stats,) = scan_tensors(checkpoint.tensors)
    assert (stats.l1, stats.sumsq) == (10.0, 30.0)


def test_onnx_external_data_through_a_symlink_out_of_the_folder_is_refused(
    onnx: Any, tmp_path: Path
) -> None:
    from normcli.readers.onnx import open_onnx

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(outside / "secret.bin")
    path = external_model(onnx, folder, location="link.bin")
    with pytest.raises(CorruptFileError, match="outside"):
        open_onnx(str(path))


def test_onnx_damaged_initializers_are_refused(onnx: Any, tmp_path: Path) -> None:
    from normcli.readers.onnx import open_onnx

    numpy_helper = onnx.numpy_helper
    short = numpy_helper.from_array(np.ones(4, np.float32), "short")
    short.raw_data = short.raw_data[:-1]
    negative = numpy_helper.from_array(np.ones(4, np.float32), "negative")
    negative.dims[0] = -4
    twice = [numpy_helper.from_array(np.ones(2, np.float32), "same")] * 2
    cases = {"short": ([short], "needs 16 bytes"), "negative": ([negative], "negative")}
    cases["twice"] = (twice, "more than once")
    for name, (initializers, words) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(onnx_model(onnx, initializers).SerializeToString())
        with pytest.raises(CorruptFileError, match=words):
            open_onnx(str(path))


def test_onnx_truncated_or_garbage_never_raises_another_exception(
    onnx: Any, tmp_path: Path
) -> None:
    from normcli.readers.onnx import open_onnx

    rng = np.random.default_rng(2)
    model = onnx_model(
        onnx, [onnx.numpy_helper.from_array(rng.standard_normal((20, 20)).astype(np.float32), "w")]
    )
    blob = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    for cut in range(0, len(blob), 13):
        path.write_bytes(blob[:cut])
        never_another_exception(open_onnx, path)
    # cut inside the raw data: protobuf itself notices the length runs past the end
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptFileError):
        open_onnx(str(path))
    path.write_bytes(b"\x89HDF garbage, not protobuf \xff\xff\xff\xff")
    with pytest.raises(CorruptFileError):
        open_onnx(str(path))


# --- HDF5 and Keras ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def h5py() -> Any:
    return pytest.importorskip("h5py")


def fill_h5(h5py: Any, f: Any) -> None:
    rng = np.random.default_rng(5)
    f["model_weights/dense/dense/kernel:0"] = rng.standard_normal((30, 40)).astype(np.float32)
    f["model_weights/dense/dense/bias:0"] = rng.standard_normal(40).astype(np.float32)
    f.create_dataset(
        "model_weights/conv/conv/kernel:0",
        data=rng.standard_normal((5, 6, 7, 8)),
        chunks=(2, 3, 4, 5),
        compression="gzip",
    )
    f["optimizer_weights/iterations:0"] = np.int64(1000)
    f["big_endian"] = rng.standard_normal(50).astype(">f8")
    f["half"] = rng.standard_normal((4, 25)).astype(np.float16)
    f["ints"] = np.arange(-5, 5, dtype=np.int32)
    keras_bf16 = f.create_dataset(
        "layers/dense/vars/0", data=rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16)
    )
    keras_bf16.attrs["dtype"] = "bfloat16"
    f["complex"] = rng.standard_normal(6) * (1 + 2j)
    f.create_dataset("unwritten", shape=(10,), dtype="f4", fillvalue=2.5)
    f["names"] = np.array([b"dense", b"conv"])
    f.attrs["model_config"] = '{"class_name": "Lambda", "config": {"function": "evil"}}'


def h5_reference(h5py: Any, source: Any) -> dict[str, dict[str, float | int]]:
    out = {}
    with h5py.File(source, "r") as f:

        def visit(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset) and item.dtype.kind != "S":
                values = item[()]
                if item.attrs.get("dtype") == "bfloat16":
                    values = values.view(ml_dtypes.bfloat16)
                out[name] = reference(values)

        f.visititems(visit)
    return out


@pytest.fixture(scope="module")
def h5_files(h5py: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("h5")
    with h5py.File(folder / "weights.h5", "w") as f:
        fill_h5(h5py, f)
    with h5py.File(folder / "userblock.h5", "w", userblock_size=1024) as f:
        fill_h5(h5py, f)
    inner = io.BytesIO()
    with h5py.File(inner, "w") as f:
        fill_h5(h5py, f)
    # Keras v3 writes config, metadata and the weights into a stored (uncompressed) zip
    for name, compression in (("model.keras", zipfile.ZIP_STORED), ("zipped.keras", 8)):
        with zipfile.ZipFile(folder / name, "w", compression=compression) as archive:
            archive.writestr("metadata.json", '{"keras_version": "3.0.0"}')
            archive.writestr("config.json", '{"class_name": "Lambda"}')
            archive.writestr("model.weights.h5", inner.getvalue())
    return {
        "hdf5": folder / "weights.h5",
        "userblock": folder / "userblock.h5",
        "keras": folder / "model.keras",
        "deflated keras": folder / "zipped.keras",
    }


@pytest.mark.parametrize("chunk_elements", [7, 1000, CHUNK_ELEMENTS])
@pytest.mark.parametrize("which", ["hdf5", "userblock", "keras", "deflated keras"])
def test_hdf5_every_dataset_matches_h5py(
    h5py: Any, h5_files: dict[str, Path], which: str, chunk_elements: int
) -> None:
    from normcli.readers.hdf5 import open_hdf5

    path = h5_files[which]
    if path.suffix == ".keras":
        expected = h5_reference(h5py, io.BytesIO(zipfile.ZipFile(path).read("model.weights.h5")))
    else:
        expected = h5_reference(h5py, path)
    with open_hdf5(str(path)) as checkpoint:
        assert checkpoint.format == ("keras" if path.suffix == ".keras" else "hdf5")
        got = scanned(checkpoint, chunk_elements)
        dtypes = {t.name: t.dtype.name for t in checkpoint.tensors}
        skipped = dict(checkpoint.skipped)
    assert set(got) == set(expected)
    assert skipped == {"names": "dtype |S5: not numbers"}
    assert dtypes["layers/dense/vars/0"] == "BF16" and dtypes["big_endian"] == "F64"
    for name, stats in got.items():
        assert_matches(stats, expected[name], name)


def test_hdf5_never_follows_links_or_external_storage(h5py: Any, tmp_path: Path) -> None:
    from normcli.readers.hdf5 import open_hdf5

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.ones(3)
    (tmp_path / "raw.bin").write_bytes(b"\x01" * 64)
    path = tmp_path / "links.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.arange(4.0)
        f["hard"] = f["w"]
        f["soft"] = h5py.SoftLink("/w")
        f["elsewhere"] = h5py.ExternalLink(str(other), "/secret")
        f.create_dataset(
            "outside", shape=(8,), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 64)]
        )
        layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(other), "secret", shape=(3,))
        f.create_virtual_dataset("virtual", layout)
    with open_hdf5(str(path)) as checkpoint:
        names = [t.name for t in checkpoint.tensors]
        skipped = dict(checkpoint.skipped)
    assert len(names) == 1 and names[0] in ("w", "hard")  # one object, two hard links
    assert set(skipped) == {"outside", "virtual"}
    assert "external" in skipped["outside"] and "virtual" in skipped["virtual"]


def test_keras_archive_without_h5_weights_is_refused(h5py: Any, tmp_path: Path) -> None:
    from normcli.formats import FORMATS
    from normcli.readers.hdf5 import open_hdf5

    npz = tmp_path / "npz.keras"
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.npz", b"PK")
    with pytest.raises(UnsupportedError, match=r"model\.weights\.npz"):
        open_hdf5(str(npz))
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedError, match=r"without model\.weights\.h5"):
        open_hdf5(str(other))
    assert FORMATS["keras"].sniff(npz.read_bytes()[:8], str(npz), 0)
    assert not FORMATS["keras"].sniff(npz.read_bytes()[:8], "weights.npz", 0)


@pytest.mark.parametrize("which", ["hdf5", "keras", "deflated keras"])
def test_truncated_hdf5_is_a_clear_error(
    h5py: Any, h5_files: dict[str, Path], tmp_path: Path, which: str
) -> None:
    from normcli.readers.hdf5 import open_hdf5

    blob = h5_files[which].read_bytes()
    path = tmp_path / ("cut" + h5_files[which].suffix)
    cuts = sorted({0, 4, 8, 100, *random.Random(3).sample(range(len(blob)), 25)})
    for cut in cuts:
        path.write_bytes(blob[:cut])
        with pytest.raises(NormcliError), open_hdf5(str(path)) as checkpoint:
            scan_everything(checkpoint)


def test_hdf5_garbage_after_the_signature_is_a_clear_error(h5py: Any, tmp_path: Path) -> None:
    from normcli.formats import FORMATS
    from normcli.readers.hdf5 import open_hdf5

    path = tmp_path / "fake.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    assert FORMATS["hdf5"].sniff(path.read_bytes()[:8], str(path), 0)
    with pytest.raises(CorruptFileError, match="not a readable HDF5 file"):
        open_hdf5(str(path))


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
    data=st.data(),
)
def test_hyperslabs_cover_exactly_the_elements_asked_for(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    from normcli.readers.hdf5 import _slabs

    numel = math.prod(shape)
    first = data.draw(st.integers(0, numel))
    last = data.draw(st.integers(first, numel))
    array = np.arange(numel).reshape(shape)
    pieces = [array[s].reshape(-1) for s in _slabs(shape, first, last)]
    joined = np.concatenate(pieces) if pieces else np.empty(0, dtype=array.dtype)
    assert joined.tolist() == array.reshape(-1)[first:last].tolist()


# --- all three ---------------------------------------------------------------------------------


def test_importing_the_readers_imports_no_format_library() -> None:
    code = (
        "import sys, normcli, normcli.readers, normcli.readers.gguf, normcli.readers.onnx, "
        "normcli.readers.hdf5\n"
        "print(sorted(m for m in ('gguf', 'onnx', 'h5py') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "opener", "hint"),
    [
        ("gguf", "open_gguf", "pip install 'normcli[gguf]'"),
        ("onnx", "open_onnx", "pip install 'normcli[onnx]'"),
        ("h5py", "open_hdf5", "pip install 'normcli[h5]'"),
    ],
)
def test_a_missing_library_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, opener: str, hint: str
) -> None:
    import importlib

    reader = importlib.import_module(
        {"gguf": "normcli.readers.gguf", "onnx": "normcli.readers.onnx"}.get(
            module, "normcli.readers.hdf5"
        )
    )
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    path = tmp_path / "file.bin"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(UnsupportedError) as caught:
        getattr(reader, opener)(str(path))
    assert hint in str(caught.value)


def test_skipped_tensors_of_a_plain_checkpoint_is_empty() -> None:
    assert Checkpoint("x", "npy", 0, []).skipped == []


def test_a_quantized_tensor_reports_its_bytes_in_the_file(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    import normcli

    values = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    kind = gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor("w", quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    row = normcli.inspect(path).tensors[0]
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    assert row.dtype == "Q8_0" and row.nbytes == values.size // block_elements * block_bytes
