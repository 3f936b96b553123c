"""A mutation fuzzer over every reader: valid seeds written by each format's own library, edited
by seeded, structure-aware mutations, and run through `normcli inspect` in child processes under
a memory limit and a per-case timeout (`python tests/fuzzing.py child` is the child).

What each run must do: exit 0 or 2, never a traceback nor a message of Python's own, never hang,
never run anything from a file, an error in one line naming the file, and exit 0 only with
figures that a float64 reference (the format's own library reading the same bytes) also gives.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import pickletools
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "base.safetensors"
# the child's address space: numpy, h5py, onnx and gguf take about 350 MB of it
MEMORY_LIMIT = 1536 << 20
CASE_SECONDS = 10.0


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
    return out


# --- mutations -----------------------------------------------------------------------------------

Mutation = Callable[[Seed, bytes, random.Random], bytes]


def flip_bits(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    at = rng.randrange(len(out))
    for i in range(rng.choice([1, 2, 4, 8])):
        if at + i < len(out):
            out[at + i] = rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF])
    return bytes(out)


def truncate(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    points = seed.boundaries or [rng.randrange(len(data))]
    at = rng.choice(points) + rng.choice([-1, 0, 0, 1])
    return (
        data[: max(0, min(at, len(data) - 1))] if rng.random() < 0.9 else data[: rng.randrange(64)]
    )


def set_field(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    if not seed.fields:
        return flip_bits(seed, data, rng)
    at, width = rng.choice(seed.fields)
    if at + width > len(data):
        return data
    top = (1 << (8 * width)) - 1
    old = int.from_bytes(data[at : at + width], "little")
    new = rng.choice(
        [0, 1, top, top >> 1, (top >> 1) + 1, old + 1, old - 1, old * 2, old + 4096, len(data)]
    )
    return data[:at] + (new & top).to_bytes(width, "little") + data[at + width :]


def splice(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """A slice of the file copied over another place (overlapping records, repeated names)."""
    a, b = sorted(rng.randrange(len(data)) for _ in range(2))
    piece = data[a : b + 1][:256]
    at = rng.randrange(len(data))
    return data[:at] + piece + data[at + len(piece) :]


def rename(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """One tensor name made another's (same length: padded or cut), or made invalid UTF-8."""
    if not seed.names:
        return set_bytes(seed, data, rng)
    name = rng.choice(seed.names)
    at = data.find(name)
    if at == -1:
        return data
    if rng.random() < 0.5:
        other = rng.choice(seed.names)
        replacement = (other + b"." * len(name))[: len(name)]
    else:
        replacement = name[:-1] + rng.choice([b"\xff", b"\xc3", b"\x80", b"\x1b", b"\n"])
    return data[:at] + replacement + data[at + len(name) :]


def json_number(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """A number of a safetensors header rewritten (length field kept right): shape x dtype
    mismatches, offsets out of range or overlapping, huge and negative values."""
    if len(data) < 8:
        return data
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = data[8 : 8 + length].decode()
    except UnicodeDecodeError:
        return flip_bits(seed, data, rng)
    spots = [i for i, c in enumerate(header) if c.isdigit() and not header[i - 1].isdigit()]
    if not spots or rng.random() < 0.2:
        for old, new in (("F32", "F16"), ("F16", "F64"), ("I32", "BF16"), ("F64", "F8_E4M3")):
            if old in header and rng.random() < 0.5:
                header = header.replace(old, new, 1)
                break
    else:
        at = rng.choice(spots)
        end = at
        while end < len(header) and header[end].isdigit():
            end += 1
        value = rng.choice(["0", "1", "-1", "18446744073709551616", "4294967296", "1e3", "9" * 30])
        value = rng.choice([value, str(int(header[at:end]) + rng.choice([-4, -1, 1, 4]))])
        header = header[:at] + value + header[end:]
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def npy_header(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    if len(data) < 10:
        return data
    (length,) = struct.unpack("<H", data[8:10])
    header = data[10 : 10 + length].decode("latin1")
    edits = [
        ("<f4", "<f8"),
        ("<f8", ">f4"),
        ("<f4", "|O"),
        ("<f8", "<c16"),
        ("False", "True"),
        ("True", "False"),
        ("(5, 7)", "(5, 700000000)"),
        ("(5, 7)", "(35,)"),
        ("(5, 7)", "(-1, 7)"),
        ("(5, 7)", "()"),
        ("'descr'", "'desc'"),
        ("<f4", "<U4"),
    ]
    old, new = rng.choice(edits)
    header = header.replace(old, new, 1)
    raw = header.encode("latin1")
    return data[:8] + struct.pack("<H", len(raw)) + raw + data[10 + length :]


_PICKLE_OPS = b"()]}tlduaeR.0NJKhqrgp\x85\x86\x87\x88\x89\x94XBCU"


def pickle_edit(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """An opcode replaced, dropped or repeated; a memo index or a length made huge; or a call
    that would run a command, inserted before the STOP."""
    bounds, fields = _pickle_structure(data)
    if not bounds:
        return flip_bits(seed, data, rng)
    choice = rng.random()
    if choice < 0.15:
        stop = data.rfind(b".")
        command = b"touch " + os.environ.get("NORMCLI_FUZZ_MARKER", "/nonexistent").encode()
        call = b"cposix\nsystem\n(X" + struct.pack("<I", len(command)) + command + b"tR0"
        return data[:stop] + call + data[stop:]
    at = rng.choice(bounds)
    if choice < 0.4:
        return data[:at] + bytes([rng.choice(_PICKLE_OPS)]) + data[at + 1 :]
    if choice < 0.55:
        end = next((b for b in bounds if b > at), len(data))
        op = data[at:end]
        return data[:at] + (op * rng.choice([0, 2, 64])) + data[end:]
    if fields:
        spot, width = rng.choice(fields)
        new = rng.choice([0, -1, 1 << (8 * width - 1), 1 << 20]) % (1 << (8 * width))
        return data[:spot] + new.to_bytes(width, "little") + data[spot + width :]
    return flip_bits(seed, data, rng)


_GENERIC: list[Mutation] = [flip_bits, set_bytes, truncate, set_field, splice, rename]
_BY_KIND: dict[str, list[Mutation]] = {
    "safetensors": [json_number, json_number, json_number],
    "npy": [npy_header, npy_header],
    "pytorch": [pickle_edit, pickle_edit, pickle_edit],
    "gguf": [set_field, set_field, set_field],
    "index": [json_edit] * 6,
    "report": [json_edit] * 6,
}


def _member_mutations(name: str) -> list[Mutation]:
    if name.endswith(".npy"):
        return [npy_header, flip_bits, set_bytes, truncate, splice]
    if name.endswith(".pkl"):
        return [pickle_edit, pickle_edit, flip_bits, truncate]
    return [flip_bits, set_bytes, truncate, splice, rename]


def mutate(seed: Seed, rng: random.Random) -> bytes:
    """One mutant; zip formats get their members edited (and zipped again, CRCs right) half the
    time, their archive's own records the other half."""
    if seed.members and rng.random() < 0.5:
        name = rng.choice(sorted(seed.members))
        member = Seed(seed.kind, "", seed.members[name], names=seed.names)
        if name.endswith(".pkl"):
            member.boundaries, member.fields = _pickle_structure(member.data)
        edited = rng.choice(_member_mutations(name))(member, member.data, rng)
        return _zip({**seed.members, name: edited}, seed.compression)
    mutations = _GENERIC + _BY_KIND.get(seed.kind, [])
    data = seed.data
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(mutations)(seed, data, rng) or data
    return data


def write_cases(kind: str, folder: Path, count: int, seed_number: int) -> list[Path]:
    rng = random.Random(f"{kind}-{seed_number}")
    folder.mkdir(parents=True, exist_ok=True)
    sources = seeds()[kind]
    for seed in sources:
        for name, data in seed.companions.items():
            (folder / name).write_bytes(data)
    paths = []
    for i in range(count):
        seed = sources[i % len(sources)]
        path = folder / f"{kind}-{seed_number}-{i:05d}{seed.suffix}"
        path.write_bytes(mutate(seed, rng))
        paths.append(path)
    return paths


# --- running cases in a child process ----------------------------------------------------------


class Hang(BaseException):
    """A case ran past its time (a BaseException: normcli's error handling does not catch it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


def child_main() -> None:
    """Read case paths (one per line) from stdin; run each; print one JSON line per case."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from click.testing import CliRunner

    from normcli.cli import cli

    for library in ("gguf", "h5py", "onnx"):  # imported before the clock of any case starts
        with contextlib.suppress(ImportError):
            importlib.import_module(library)

    signal.signal(signal.SIGALRM, _alarm)
    runner = CliRunner()
    env = {"COLUMNS": "120", "NO_COLOR": "1", "GITHUB_STEP_SUMMARY": None}
    for line in sys.stdin:
        path = line.rstrip("\n")
        argv = ["inspect", path] if not path.endswith(".report.json") else ["compare", path, SAMPLE]
        argv = [*map(str, argv), "-f", "json", "--no-progress", "--threads", "1"]
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            result = runner.invoke(cli, argv, prog_name="normcli", env=env)
            outcome = {"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                outcome["exception"] = repr(result.exception)
        except Hang:
            outcome = {"code": None, "stdout": "", "stderr": "", "exception": "hang"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcome |= {"path": path, "seconds": time.perf_counter() - began}
        outcome["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(outcome), flush=True)


def run_cases(paths: list[Path], marker: Path) -> list[dict[str, Any]]:
    """Run the cases in one child; a child that dies (or hangs where no alarm reaches) is
    reported against the case it was running."""
    env = {**os.environ, "NORMCLI_FUZZ_MARKER": str(marker), "MALLOC_ARENA_MAX": "2"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    outcomes: list[dict[str, Any]] = []
    pending = list(paths)
    while pending:
        child = subprocess.Popen(
            [sys.executable, __file__, "child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        budget = 60 + CASE_SECONDS * 2 * len(pending)
        try:
            out, err = child.communicate("".join(f"{p}\n" for p in pending), timeout=budget)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        outcomes += done
        pending = pending[len(done) :]
        if pending:  # the child died on pending[0]
            outcomes.append(
                {
                    "path": str(pending[0]),
                    "code": child.returncode,
                    "stdout": "",
                    "stderr": err,
                    "exception": f"child died ({child.returncode})",
                }
            )
            pending = pending[1:]
    return outcomes


# --- judging outcomes ----------------------------------------------------------------------------


def problems(
    outcome: dict[str, Any], reference: Callable[[Path], dict[str, np.ndarray | None]]
) -> list[str]:
    """What is wrong with one case's outcome (nothing, for a clean refusal or a right answer)."""
    found = []
    code, stderr = outcome["code"], outcome["stderr"]
    if outcome.get("exception"):
        found.append(f"exception {outcome['exception']}")
    if code not in (0, 2):
        found.append(f"exit code {code}")
    if any(not line.startswith("normcli") for line in stderr.splitlines()):
        found.append("Python's own message on stderr")
    if code == 2:
        lines = stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("normcli: error: "):
            found.append("not one error line")
        elif outcome["path"] not in lines[0]:
            found.append("the error does not name the file")
        if "internal error" in stderr:
            found.append("internal error")
    if code == 0:
        found += _wrong_figures(outcome, reference)
    return found


def _wrong_figures(
    outcome: dict[str, Any], reference: Callable[[Path], dict[str, np.ndarray | None]]
) -> list[str]:
    try:
        expected = reference(Path(outcome["path"]))
    except Unverifiable:
        return []
    except Exception as e:  # the format's own library refuses what normcli accepted
        return [f"accepted, but the reference reader refuses it ({type(e).__name__}: {e})"]
    doc = json.loads(outcome["stdout"])
    got = {t["name"]: t for t in doc["tensors"]}
    skipped = {t["name"] for t in doc["checkpoint"]["skipped_tensors"]}
    found = []
    if set(got) | skipped != set(expected):
        found.append(f"tensors {sorted(got)} but the reference has {sorted(expected)}")
    for name, tensor in got.items():
        values = expected.get(name)
        if values is not None:
            found += [f"{name}: {p}" for p in _compare(tensor, values)]
    return found


class Unverifiable(Exception):
    """The reference library refuses the file for what normcli does not read (a metadata
    string of a GGUF that is not UTF-8, say): nothing to compare."""


def figures(values: np.ndarray) -> dict[str, float | int | None]:
    """The float64 reference: fsum of exact float64 values, over the finite elements."""
    flat = np.abs(values.reshape(-1)) if values.dtype.kind == "c" else values.reshape(-1)
    with np.errstate(invalid="ignore"):
        x = flat.astype(np.float64)
    finite = x[np.isfinite(x)]
    magnitude = np.abs(finite)
    scale = float(magnitude.max()) if magnitude.size else 0.0
    l2 = scale * math.sqrt(math.fsum((magnitude / scale) ** 2)) if scale else 0.0
    l1 = math.fsum(magnitude)
    return {
        "numel": int(x.size),
        "nan": int(np.isnan(x).sum()),
        "inf": int(np.isinf(x).sum()),
        "l1": l1 if math.isfinite(l1) else None,
        "l2": l2 if math.isfinite(l2) else None,
        "linf": scale if magnitude.size else None,
    }


def _compare(tensor: dict[str, Any], values: np.ndarray) -> list[str]:
    expected = figures(values)
    found = []
    for key, want in expected.items():
        have = tensor[key]
        if want is None or have is None:
            if (want is None) != (have is None) and key != "linf":
                found.append(f"{key} {have} != {want}")
        elif key in ("numel", "nan", "inf", "linf"):
            if have != want:
                found.append(f"{key} {have} != {want}")
        elif not math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-300):
            found.append(f"{key} {have} != {want}")
    return found


def reference_arrays(kind: str, path: Path) -> dict[str, np.ndarray | None]:
    """The tensors of `path` as the format's own library reads them (None: one it does not
    decode, which normcli may read or list as not read)."""
    data = path.read_bytes()
    if kind == "pytorch":
        from torch_reference import UnnamedKey, torch_arrays

        try:
            return dict(torch_arrays(data, path.name.rsplit(".", 1)[0]))
        except UnnamedKey as e:
            raise Unverifiable from e
    if kind == "safetensors":
        from safetensors.numpy import load

        return dict(load(data))
    if kind == "npy":
        return {path.stem: np.load(io.BytesIO(data), allow_pickle=False)}
    if kind == "npz":  # its .npy members, which are all normcli reads
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            members = set(archive.zip.namelist())
            return {k: archive[k] for k in archive.files if f"{k}.npy" in members}
    if kind == "onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(data)
        return {t.name: _decoded(numpy_helper.to_array, t) for t in model.graph.initializer}
    if kind in ("hdf5", "keras"):
        return _h5_arrays(data if kind == "hdf5" else _keras_member(data))
    if kind == "gguf":
        return _gguf_arrays(path)
    if kind == "index":
        return _index_arrays(path)
    if kind == "report":  # compared with a checkpoint: no figures of its own to check
        raise Unverifiable
    raise LookupError(f"no reference reader for {kind}")


def _decoded(decode: Callable[[Any], np.ndarray], tensor: Any) -> np.ndarray | None:
    try:
        return decode(tensor)
    except (TypeError, ValueError, KeyError):  # an element type it does not know
        return None


def _keras_member(data: bytes) -> bytes:
    """The weights file; a stored one is read in place by normcli, whose CRC it cannot check
    (h5py reads it out of order), so its CRC is not checked here either."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open("model.weights.h5") as f:
        if archive.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED:
            f._expected_crc = None  # type: ignore[attr-defined]
        return f.read()


def _h5_arrays(data: bytes) -> dict[str, np.ndarray | None]:
    import h5py

    arrays: dict[str, np.ndarray | None] = {}
    with h5py.File(io.BytesIO(data), "r") as f:

        def visit(name: str | bytes, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                key = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
                arrays[key] = item[()] if item.dtype.kind in "fiucb" else None

        f.visititems(visit)
    return arrays


def _index_arrays(path: Path) -> dict[str, np.ndarray | None]:
    """The tensors of the shards the index names, each where the index says it is."""
    from safetensors.numpy import load_file

    weight_map = json.loads(path.read_text())["weight_map"]
    out: dict[str, np.ndarray | None] = {}
    for shard in sorted(set(weight_map.values())):
        for name, values in load_file(str(path.parent / shard)).items():
            if weight_map.get(name) != shard:
                raise ValueError(f"{name} is not mapped to {shard}")
            out[name] = values
    if set(out) != set(weight_map):
        raise ValueError("the map names tensors no shard holds")
    return out


def _gguf_arrays(path: Path) -> dict[str, np.ndarray]:
    import gguf

    out = {}
    try:
        reader = gguf.GGUFReader(str(path))
    except UnicodeDecodeError as e:  # in a metadata string, which normcli skips unread
        raise Unverifiable from e
    for t in reader.tensors:
        if not t.n_elements:  # which gguf 0.19 cannot dequantize
            out[t.name] = np.zeros(0, np.float32)
            continue
        values = np.array(t.data)
        if t.tensor_type.name not in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
            try:
                values = gguf.quants.dequantize(values, t.tensor_type)
            except NotImplementedError:
                values = None
        out[t.name] = values
    return out


def fuzz(kind: str, folder: Path, count: int, seed_number: int) -> Iterator[tuple[str, list[str]]]:
    """Write and run `count` mutants of `kind`; yield (path, problems) for every case."""
    marker = folder / "EXECUTED"
    paths = write_cases(kind, folder, count, seed_number)
    for outcome in run_cases(paths, marker):
        found = problems(outcome, lambda p: reference_arrays(kind, p))
        if marker.exists():
            found.append("a command from the file was run")
            marker.unlink()
        yield outcome["path"], found


def main(argv: list[str]) -> int:
    """`python tests/fuzzing.py [CASES [SEED]]`: a long run over every format (make fuzz)."""
    import tempfile

    count = int(argv[0]) if argv else 2000
    seed_number = int(argv[1]) if len(argv) > 1 else int(time.time())
    bad = 0
    with tempfile.TemporaryDirectory() as folder:
        for kind in seeds():
            cases = bad_here = 0
            for path, found in fuzz(kind, Path(folder), count, seed_number):
                cases += 1
                if found:
                    bad_here += 1
                    keep = Path("fuzz-findings")
                    keep.mkdir(exist_ok=True)
                    os.replace(path, keep / Path(path).name)
                    print(f"{keep / Path(path).name}: {'; '.join(found)}", flush=True)
                else:
                    os.unlink(path)
            print(f"{kind}: {cases} cases (seed {seed_number}), {bad_here} with problems")
            bad += bad_here
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child_main()
    else:
        sys.exit(main(sys.argv[1:]))
