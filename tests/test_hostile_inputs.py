"""Every finding of the fuzzing campaign of issue 17, as a crafted file: each is run by the fuzz
child (tests/fuzzing.py), under its memory limit and per-case timeout, and must end in one
clear line naming the file (or in the right figures), never a traceback, a hang or a bomb."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fuzzing
import numpy as np
import pytest
from conftest import Run
from test_pytorch_reader import FLOATS, dictionary, tensor, torch_legacy, torch_zip

MARK, LIST, APPEND, BINPUT, BINGET = b"(", b"l", b"a", b"q", b"h"


Build = Callable[[Path], Path]
# name -> (how to build the file in a folder, the text its one error line holds: None if the
# file must be read, and its checks are made by a test of its own)
CASES: dict[str, tuple[Build, str | None]] = {}


def case(name: str, message: str | None = None) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        CASES[name] = (build, message)
        return build

    return register


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every crafted file, run in one fuzz child (memory limit, per-case timeout)."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, (build, _) in CASES.items():
        (folder / name).mkdir()
        paths[name] = build(folder / name)
    found = fuzzing.run_cases(list(paths.values()), folder / "EXECUTED")
    by_path = {outcome["path"]: outcome for outcome in found}
    return {name: by_path[str(path)] for name, path in paths.items()}


def read(outcome: dict[str, Any]) -> dict[str, Any]:
    assert outcome["code"] == 0, outcome
    doc: dict[str, Any] = json.loads(outcome["stdout"])
    return doc


# --- the unpickler: limits checked before anything is allocated ---------------------------------


def _tensor(legacy: bool) -> bytes:
    return tensor("0", 12, 0, (12,), (1,), legacy)


def pytorch_case(name: str, message: str | None, body: Callable[[bool], bytes]) -> None:
    """The same pickle body in a zip checkpoint and in a legacy one."""
    case(f"{name}-zip", message)(lambda d: torch_zip(d / "m.pt", body(False), {"0": FLOATS}))
    case(f"{name}-legacy", message)(lambda d: torch_legacy(d / "m.pt", body(True), {"0": FLOATS}))


def _with(bomb: bytes) -> Callable[[bool], bytes]:
    return lambda legacy: dictionary(w=_tensor(legacy), x=bomb)


# a memo index of 2^31 made the C unpickler allocate a 16 GB memo table
pytorch_case("memo", "stores memo entry 2147483647", _with(b"]r" + struct.pack("<I", 2**31 - 1)))
# lengths the file does not hold were allocated before they were read
pytorch_case("string", "expected 4294967295 bytes", _with(b"X" + struct.pack("<I", 2**32 - 1)))
# and a bytearray cut short leaked "SystemError: deallocated bytearray object"
pytorch_case(
    "bytearray", "expected 1099511627776 bytes", _with(b"\x96" + struct.pack("<Q", 1 << 40))
)
pytorch_case("marks", "nests more than 1000 levels", _with(MARK * 5000))


def _shared_lists(legacy: bool) -> bytes:
    """A list holding one tensor, then four lists each naming the one below 32 times: a few
    hundred bytes that name 2^20 tensors (72 s and 3.6 GB, then a MemoryError)."""
    out = MARK + _tensor(legacy) + LIST + BINPUT + b"\x00"
    for level in range(1, 5):
        out += MARK + (BINGET + bytes([level - 1])) * 32 + LIST + BINPUT + bytes([level])
    return out


pytorch_case("shared", "names more than 100000 values", _shared_lists)


@case("views", "times over")
def _views(folder: Path) -> Path:
    storage = np.zeros(16384, np.float32).tobytes()
    views = {f"v{i}": tensor("0", 16384, 0, (16384,), (1,)) for i in range(80)}
    return torch_zip(folder / "views.pt", dictionary(**views), {"0": storage})


@case("broadcast", "times over")
def _broadcast(folder: Path) -> Path:  # one element read 2^30 times
    body = dictionary(w=tensor("0", 12, 0, (2**30,), (0,)))
    return torch_zip(folder / "broadcast.pt", body, {"0": FLOATS})


@case("tied")
def _tied(folder: Path) -> Path:
    body = dictionary(
        a=tensor("0", 12, 0, (12,), (1,)),
        tied=tensor("0", 12, 0, (12,), (1,)),
        half=tensor("0", 12, 6, (6,), (1,)),
    )
    return torch_zip(folder / "tied.pt", body, {"0": FLOATS})


def test_tied_weights_and_views_within_a_storage_still_read(
    outcomes: dict[str, dict[str, Any]],
) -> None:
    figures = {t["name"]: t["l1"] for t in read(outcomes["tied"])["tensors"]}
    assert figures == {"a": 78.0, "tied": 78.0, "half": 57.0}


# pickle passes bytes that are not UTF-8 on as lone surrogates, which no output could encode
_NAME = b"X" + struct.pack("<I", 5) + b"w\xed\xa0\x80x"
pytorch_case("utf8", None, lambda legacy: b"}(" + _NAME + _tensor(legacy) + b"u")


@pytest.mark.parametrize("name", ["utf8-zip", "utf8-legacy"])
def test_a_name_that_is_not_utf8_is_escaped(name: str, outcomes: dict[str, dict[str, Any]]) -> None:
    (row,) = read(outcomes[name])["tensors"]
    assert row["name"] == "w\\xed\\xa0\\x80x"


@case("empty", "empty.pt: file is empty")
def _empty(folder: Path) -> Path:
    (folder / "empty.pt").write_bytes(b"")
    return folder / "empty.pt"


# --- zip archives ---------------------------------------------------------------------------------


def _version_needed(blob: bytes, version: int) -> bytes:
    out = bytearray(blob)
    at = out.find(b"PK\x01\x02")
    while at != -1:
        out[at + 6 : at + 8] = struct.pack("<H", version)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# zipfile raises NotImplementedError for these: it was an internal error
@case("version-npz", "zip file version 25.5")
def _version_npz(folder: Path) -> Path:
    (folder / "v.npz").write_bytes(_version_needed(_npz(w=np.ones(3, np.float32)), 0xFF))
    return folder / "v.npz"


@case("version-pt", "zip file version 25.5")
def _version_pt(folder: Path) -> Path:
    pt = torch_zip(folder / "v.pt", dictionary(w=_tensor(False)), {"0": FLOATS})
    pt.write_bytes(_version_needed(pt.read_bytes(), 0xFF))
    return pt


# found by the fuzzer: normcli read these, numpy refuses them
@case("local-name", "the local header names another member")
def _local_name(folder: Path) -> Path:
    blob = _npz(a=np.ones(3, np.float32), b=np.ones(2))
    at = blob.find(b"b.npy")
    (folder / "n.npz").write_bytes(blob[:at] + b"a.npy" + blob[at + 5 :])
    return folder / "n.npz"


@case("stored-sizes", "its sizes differ")
def _stored_sizes(folder: Path) -> Path:
    blob = bytearray(_npz(a=np.ones(3, np.float32)))
    central = blob.find(b"PK\x01\x02")
    blob[central + 20 : central + 24] = bytes(4)  # compressed size 0, stored
    (folder / "s.npz").write_bytes(bytes(blob))
    return folder / "s.npz"


@case("strong-encryption", "is encrypted")
def _strong_encryption(folder: Path) -> Path:
    """Flag bit 6 alone (found by the fuzzer, seed 99): zipfile refuses it, normcli read it."""
    blob = bytearray(_npz(a=np.ones(3, np.float32)))
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = blob.find(signature)
        blob[at + flags] |= 0x40
    (folder / "e.npz").write_bytes(bytes(blob))
    return folder / "e.npz"


@case("index", "index nests too deeply")
def _index(folder: Path) -> Path:
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return index


# --- saved reports and index files ----------------------------------------------------------------


SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('"numel": 6144', '"numel": 1e999', 1), "not valid JSON"),
        (lambda t: t.replace('"numel": 6144', '"numel": 1e300', 1), "is not a count"),
        (lambda t: t.replace('"l2": 11.', '"l2": -11.', 1), "malformed field"),
        (lambda t: t.replace('"l1": 709.', '"l1": Infinity, "x": 709.', 1), "not valid JSON"),
        (lambda t: t.replace('"shard": null', '"shard": ' + "[" * 100_000, 1), "too deeply"),
    ],
)
def test_a_report_with_impossible_figures_is_refused(
    tmp_path: Path, run: Run, edit: Callable[[str], str], message: str
) -> None:
    """Infinite counts and norms were OverflowError and "math domain error"; deep nesting a
    RecursionError: internal errors all."""
    from normcli import api

    report = tmp_path / "report.json"
    saved = json.dumps(api.inspect(SAMPLES / "base.safetensors").to_dict())
    report.write_text(edit(saved))
    assert report.read_text() != saved
    result = run("compare", report, SAMPLES / "base.safetensors", code=2)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"normcli: error: {report}: ") and message in line, line


# --- time bombs: work must follow the data present, not what a header claims -------------------


@case("gguf-duplicate", "tensor 't.39998' is described twice")
def _gguf_duplicate(folder: Path) -> Path:
    """40,000 tensors, the last two of one name: 13 s to say so (a quadratic check)."""
    count = 40_000
    records = []
    for i in range(count):
        name = b"t.%d" % min(i, count - 2)
        records.append(struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 1, 0, 32 * i))
    header = b"GGUF" + struct.pack("<IQQ", 3, count, 0) + b"".join(records)
    path = folder / "dup.gguf"
    path.write_bytes(header + bytes(-len(header) % 32) + bytes(32 * count))
    return path


@case("hdf5-chunk")
def _hdf5_chunk(folder: Path) -> Path:
    """A 32 MiB chunk of zeros deflated to a few KB: inflated again for every read."""
    import h5py

    path = folder / "chunk.h5"
    with h5py.File(path, "w") as f:
        zeros = np.zeros(1 << 23, np.float32)
        f.create_dataset("big", data=zeros, chunks=zeros.shape, compression="gzip")
        f.create_dataset("small", data=np.arange(4.0))
    return path


def test_a_compressed_chunk_larger_than_the_cache_is_listed_not_read(
    outcomes: dict[str, dict[str, Any]],
) -> None:
    doc = read(outcomes["hdf5-chunk"])
    assert [t["name"] for t in doc["tensors"]] == ["small"]
    (skipped,) = doc["checkpoint"]["skipped_tensors"]
    assert skipped["name"] == "big" and "chunk cache" in skipped["reason"]


@case("keras-deflated")
def _keras_deflated(folder: Path) -> Path:
    """Read through zipfile, every backward seek inflated the member again from its start
    (64 MB in 16 datasets, two threads: 13 s, now 1.9 s); inflated once now, and read right."""
    import h5py

    inner = io.BytesIO()
    with h5py.File(inner, "w") as f:
        for i in range(4):
            f.create_dataset(f"w{i}", data=np.full(1 << 18, i + 1, np.float32))
    path = folder / "deflated.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.weights.h5", inner.getvalue())
    return path


def test_a_deflated_keras_archive_is_read_in_one_pass(
    outcomes: dict[str, dict[str, Any]],
) -> None:
    rows = read(outcomes["keras-deflated"])["tensors"]
    assert [(row["name"], row["l1"]) for row in rows] == [
        (f"w{i}", (i + 1) * (1 << 18)) for i in range(4)
    ]


# 99 MB of these took 2.5 GB; two MB show the rule (checked from 1 MB up)
@case("brackets-lists", "far more")
def _brackets_lists(folder: Path) -> Path:
    body = b'{"a":[' + b"[]," * 700_000 + b"0]}"
    (folder / "l.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    return folder / "l.safetensors"


@case("brackets-objects", "far more")
def _brackets_objects(folder: Path) -> Path:
    body = b"{" + b"".join(b'"%d":{},' % i for i in range(200_000)) + b'"z":{}}'
    (folder / "o.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    return folder / "o.safetensors"


# --- files that are not files -------------------------------------------------------------------


class _Waited(BaseException):
    pass


def _give_up(signum: int, frame: Any) -> None:
    raise _Waited


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_wherever_a_file_is_read(tmp_path: Path, run: Run) -> None:
    """Each of these waited for ever on a writer that never came."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    model = SAMPLES / "base.safetensors"
    index = tmp_path / "model.safetensors.index.json"
    os.mkfifo(index)
    config = tmp_path / "normcli.toml"
    os.mkfifo(config)
    onnx_args: list[list[str | Path]] = []
    if importlib.util.find_spec("onnx") is not None:
        import onnx
        from test_more_formats import external_model

        (tmp_path / "onnx").mkdir()
        with_external = external_model(onnx, tmp_path / "onnx", location="weights.bin")
        (tmp_path / "onnx" / "weights.bin").unlink()
        os.mkfifo(tmp_path / "onnx" / "weights.bin")
        onnx_args.append(["inspect", with_external])
    previous = signal.signal(signal.SIGALRM, _give_up)
    try:
        for args in (
            ["inspect", fifo],
            ["inspect", fifo, "--input-format", "hdf5"],
            ["inspect", index],
            ["check", model, "--baseline", fifo],
            ["compare", fifo, model],
            ["check", model, "--config", config],
            *onnx_args,
        ):
            signal.alarm(20)
            result = run(*args, code=2)
            signal.alarm(0)
            assert "is a FIFO (named pipe), not a regular file" in result.stderr, args
            assert result.stderr.count("\n") == 1, result.stderr
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_full_stderr_never_turns_an_exit_code_into_one() -> None:
    """1 means a violated rule: not the failure to write an error message."""
    with open(os.devnull, "w") as null, open("/dev/full", "w") as full:

        def code(*args: str | Path) -> int:
            return subprocess.run(
                [sys.executable, "-m", "normcli", *map(str, args)], stdout=null, stderr=full
            ).returncode

        assert code("inspect", SAMPLES / "nope.safetensors") == 2
        assert code("check", SAMPLES / "base.safetensors") == 0
        assert code("check", SAMPLES / "blowup.safetensors") == 1


# after every case above has registered itself
@pytest.mark.parametrize("name", [n for n, (_, message) in CASES.items() if message])
def test_a_hostile_file_is_refused_in_one_line(
    name: str, outcomes: dict[str, dict[str, Any]]
) -> None:
    outcome, message = outcomes[name], CASES[name][1]
    assert fuzzing.problems(outcome, lambda p: {}) == [], outcome
    assert outcome["code"] == 2, outcome
    assert message is not None and message in outcome["stderr"], outcome
