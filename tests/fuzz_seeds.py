"""The fuzzer's seeds: a small valid file of every format, written by the format's own library
(or by torch, for the committed PyTorch fixtures), with where its structure lies: the offsets a
cut is most telling at, the integer fields worth lying in, the names worth doubling."""

from __future__ import annotations

import functools
import io
import json
import os
import pickletools
import random
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "base.safetensors"


# --- seeds ---------------------------------------------------------------------------------------


@dataclass
class Seed:
    """A valid file, and where its structure lies: offsets a cut is most telling at, and the
    (offset, width) of little-endian integer fields (lengths, counts, offsets, type ids)."""

    kind: str
    suffix: str
    data: bytes
    boundaries: list[int] = field(default_factory=list)
    fields: list[tuple[int, int]] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)
    # for zip formats: the members, mutated one at a time and zipped again with good CRCs
    members: dict[str, bytes] = field(default_factory=dict)
    compression: int = zipfile.ZIP_STORED
    # files the mutants need beside them, unmutated (the shards an index names)
    companions: dict[str, bytes] = field(default_factory=dict)


def _safetensors_seed() -> Seed:
    from safetensors.numpy import save

    rng = np.random.default_rng(1)
    tensors = {
        "w.f32": rng.standard_normal((6, 5)).astype(np.float32),
        "w.f16": rng.standard_normal(9).astype(np.float16),
        "w.f64": rng.standard_normal(4),
        "ids.i32": rng.integers(-9, 9, (2, 3)).astype(np.int32),
    }
    data = save(tensors)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    bounds = [8, 8 + length] + [8 + length + e["data_offsets"][0] for e in header.values()]
    names = [n.encode() for n in tensors]
    return Seed("safetensors", ".safetensors", data, bounds, [(0, 8)], names)


def _npy_seed(fortran: bool) -> Seed:
    buffer = io.BytesIO()
    values = np.random.default_rng(2).standard_normal((5, 7))
    np.save(buffer, np.asfortranarray(values) if fortran else values.astype(np.float32))
    data = buffer.getvalue()
    (length,) = struct.unpack("<H", data[8:10])
    return Seed("npy", ".npy", data, [6, 8, 10, 10 + length], [(8, 2)])


def _npz_seed(compressed: bool) -> Seed:
    rng = np.random.default_rng(3)
    arrays = {"a": rng.standard_normal((4, 4)).astype(np.float32), "b.c": rng.standard_normal(6)}
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    data = buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    seed = Seed("npz", ".npz", data, members=members, compression=method)
    return _with_zip_structure(seed, [n.encode() for n in arrays])


def _pytorch_seeds() -> list[Seed]:
    zipped = (FIXTURES / "pytorch" / "checkpoint.pt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    seeds = [_with_zip_structure(Seed("pytorch", ".pt", zipped, members=members), [])]
    legacy = (FIXTURES / "pytorch" / "checkpoint_legacy.pt").read_bytes()
    seed = Seed("pytorch", ".pt", legacy)
    seed.boundaries, seed.fields = _pickle_structure(legacy)
    seeds.append(seed)
    return seeds


def _torchscript_seed() -> Seed:
    """torch.jit.save's archive: a data.pkl of __torch__ objects, code, constants."""
    data = (FIXTURES / "pytorch" / "scripted.pt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    return _with_zip_structure(Seed("torchscript", ".pt", data, members=members), [])


def _pickle_structure(data: bytes) -> tuple[list[int], list[tuple[int, int]]]:
    """Opcode positions, and the binary integer arguments, of the pickles at the start of
    `data` (a legacy file holds five in a row, then raw storages)."""
    bounds: list[int] = []
    fields: list[tuple[int, int]] = []
    stream = io.BytesIO(data)
    widths = {"BINPUT": 1, "LONG_BINPUT": 4, "BINGET": 1, "LONG_BINGET": 4, "BININT": 4}
    widths |= {"BININT1": 1, "BININT2": 2, "BINUNICODE": 4, "SHORT_BINSTRING": 1}
    widths |= {"BINSTRING": 4, "SHORT_BINUNICODE": 1, "BINBYTES": 4, "FRAME": 8, "LONG1": 1}
    try:
        for _ in range(5):
            for opcode, _arg, pos in pickletools.genops(stream):
                bounds.append(pos or 0)
                if opcode.name in widths:
                    fields.append(((pos or 0) + 1, widths[opcode.name]))
    except ValueError:
        pass
    return bounds, fields


def _gguf_seed() -> Seed:
    import gguf

    kinds = gguf.GGMLQuantizationType
    rng = np.random.default_rng(4)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"normcli-fuzz-seed-{os.getpid()}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "fuzz")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
    weights = rng.standard_normal((2, 64)).astype(np.float32)
    writer.add_tensor("blk.0.f32", weights)
    writer.add_tensor("blk.0.f16", rng.standard_normal(8).astype(np.float16))
    writer.add_tensor("blk.0.q8", gguf.quants.quantize(weights, kinds.Q8_0), raw_dtype=kinds.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    seed = Seed("gguf", ".gguf", data, [4, 8, 16, 24], [(4, 4), (8, 8), (16, 8)])
    for name in (b"blk.0.f32", b"blk.0.f16", b"blk.0.q8"):
        at = data.index(name) + len(name)
        (dims,) = struct.unpack_from("<I", data, at)
        seed.fields += [(at - len(name) - 8, 8), (at, 4)]
        seed.fields += [(at + 4 + 8 * i, 8) for i in range(dims)]
        seed.fields += [(at + 4 + 8 * dims, 4), (at + 8 + 8 * dims, 8)]
        seed.boundaries += [at - len(name) - 8, at, at + 16 + 8 * dims]
        seed.names.append(name)
    return seed


def _onnx_seed() -> Seed:
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w.raw"),
        numpy_helper.from_array(rng.standard_normal(5), "w.f64"),
        helper.make_tensor("w.typed", onnx.TensorProto.FLOAT, [3], [1.5, -2.0, 0.25]),
    ]
    node = helper.make_node("Identity", ["x"], ["y"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node],
        "g",
        [value("x", onnx.TensorProto.FLOAT, [1])],
        [value("y", onnx.TensorProto.FLOAT, [1])],
        initializer=inits,
    )
    data = helper.make_model(graph).SerializeToString()
    names = [b"w.raw", b"w.f64", b"w.typed"]
    return Seed("onnx", ".onnx", data, [data.index(n) for n in names], names=names)


def _h5_bytes() -> bytes:
    import h5py

    rng = np.random.default_rng(6)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("dense/kernel", data=rng.standard_normal((6, 4)).astype(np.float32))
        f.create_dataset("dense/bias", data=rng.standard_normal(4))
        f.create_dataset(
            "packed",
            data=rng.standard_normal((32, 8)).astype(np.float32),
            chunks=(8, 8),
            compression="gzip",
        )
    return buffer.getvalue()


def _hdf5_seeds() -> list[Seed]:
    data = _h5_bytes()
    names = [b"kernel", b"bias", b"packed"]
    bounds = list(range(0, len(data), 512))
    seeds = [Seed("hdf5", ".h5", data, bounds, names=names)]
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        members = {"metadata.json": b'{"keras_version": "3.0.0"}', "model.weights.h5": data}
        seed = Seed("keras", ".keras", _zip(members, method), members=members, compression=method)
        seeds.append(_with_zip_structure(seed, names))
    return seeds


def _zip(members: dict[str, bytes], method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, payload)
    return buffer.getvalue()


def _with_zip_structure(seed: Seed, names: list[bytes]) -> Seed:
    """Every record of the archive: local headers, central directory, its end record."""
    data = seed.data
    for signature, layout in (
        (b"PK\x03\x04", [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]),
        (b"PK\x01\x02", [(6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (42, 4)]),
        (b"PK\x05\x06", [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]),
    ):
        at = data.find(signature)
        while at != -1:
            seed.boundaries.append(at)
            seed.fields += [(at + offset, width) for offset, width in layout]
            at = data.find(signature, at + 4)
    seed.names = names
    return seed


def _index_seed() -> Seed:
    from safetensors.numpy import save

    rng = np.random.default_rng(8)
    shards, weight_map = {}, {}
    for part in (1, 2):
        name = f"model-{part:05d}-of-00002.safetensors"
        tensors = {f"layer.{part}.{k}": rng.standard_normal(6).astype(np.float32) for k in "ab"}
        shards[name] = save(tensors)
        weight_map |= dict.fromkeys(tensors, name)
    index = json.dumps({"metadata": {"total_size": 48}, "weight_map": weight_map}).encode()
    return Seed("index", ".index.json", index, companions=shards)


def _report_seed() -> Seed:
    from normcli import api

    report = json.dumps(api.inspect(SAMPLE, top=3).to_dict() | {"selected": 3}).encode()
    return Seed("report", ".report.json", report)


def json_edit(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """A value of a JSON document replaced by one no writer produces: out of range, of the
    wrong type, nested without end, or a key dropped or doubled."""
    text = data.decode("utf-8", "replace")
    spots = [i for i, c in enumerate(text) if c in '0123456789"[{tfn-'] or [0]
    at = rng.choice(spots)
    end = at + 1
    while end < len(text) and text[end] not in ",]}:":
        end += 1
    value = rng.choice(
        [
            "1e999",
            "-1",
            "1e308",
            "NaN",
            "Infinity",
            "9" * 400,
            "0",
            "null",
            '"x"',
            "true",
            "{}",
            "[]",
            "[" * 50_000 + "]" * 50_000,
            '{"a": 1, "a": 2}',
            "0.5",
            "18446744073709551616",
        ]
    )
    return (text[:at] + value + text[end:]).encode()


@functools.cache  # built once per process: the seeds are read, never changed
def seeds() -> dict[str, list[Seed]]:
    """Every format's seeds, by the name the fuzz tests are parametrized with."""
    out: dict[str, list[Seed]] = {
        "safetensors": [_safetensors_seed()],
        "npy": [_npy_seed(False), _npy_seed(True)],
        "npz": [_npz_seed(False), _npz_seed(True)],
        "pytorch": _pytorch_seeds(),
        "gguf": [_gguf_seed()],
        "onnx": [_onnx_seed()],
    }
    hdf5 = _hdf5_seeds()
    out["hdf5"], out["keras"] = hdf5[:1], hdf5[1:]
    out["index"], out["report"] = [_index_seed()], [_report_seed()]
    out["torchscript"] = [_torchscript_seed()]
    return out
