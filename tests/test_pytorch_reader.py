"""The PyTorch reader, without torch: checkpoints written by real torch (tests/fixtures/pytorch,
made by make_fixtures.py there) give the figures torch computed; hostile pickles run nothing."""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from normcli.dtypes import as_float64
from normcli.errors import CorruptFileError, NormcliError, UnsupportedError, UsageError
from normcli.readers import pytorch, torch_pickle, torch_views
from normcli.readers.base import TensorSource
from normcli.readers.pytorch import looks_like_pytorch, open_pytorch
from normcli.scan import scan_tensor

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pytorch"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
FILES: dict[str, Any] = EXPECTED["files"]
READABLE = [name for name, f in FILES.items() if not f.get("torchscript")]
RTOL = 1e-10

# torch dtype -> the name normcli reports, written out here rather than taken from the reader
NAMES = {
    "torch.float32": "F32",
    "torch.float64": "F64",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int8": "I8",
    "torch.int16": "I16",
    "torch.int32": "I32",
    "torch.int64": "I64",
    "torch.uint8": "U8",
    "torch.uint16": "U16",
    "torch.uint32": "U32",
    "torch.uint64": "U64",
    "torch.bool": "BOOL",
    "torch.complex64": "C64",
    "torch.complex128": "C128",
    "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2": "F8_E5M2",
}


def values(source: TensorSource, chunk: int = 1 << 16) -> np.ndarray:
    """All of a tensor's values in C order, as float64 (complex128)."""
    parts = [as_float64(c) for c in source.chunks(chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def head(expected: list[Any]) -> list[complex]:
    def one(v: Any) -> complex:
        return complex(*(float(x) for x in v)) if isinstance(v, list) else complex(float(v))

    return [one(v) for v in expected]


def same(a: complex, b: complex) -> bool:
    return all(
        (math.isnan(x) and math.isnan(y)) or x == y for x, y in ((a.real, b.real), (a.imag, b.imag))
    )


def close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=RTOL, abs_tol=0.0)


# --- every fixture gives torch's figures ----------------------------------------------------------


@pytest.mark.parametrize("name", READABLE)
def test_fixture_matches_torch(name: str) -> None:
    expected = FILES[name]
    with open_pytorch(str(FIXTURES / name)) as checkpoint:
        assert checkpoint.format == "pytorch"
        assert [t.name for t in checkpoint.tensors] == list(expected["tensors"])
        assert checkpoint.skipped_values == expected["skipped"]
        for source in checkpoint.tensors:
            want = expected["tensors"][source.name]
            assert source.dtype.name == NAMES[want["dtype"]], source.name
            assert list(source.shape) == want["shape"], source.name
            stats = scan_tensor(source, chunk_elements=7)
            got = {k: getattr(stats, k) for k in ("numel", "zeros", "nan", "inf")}
            assert got == {k: want[k] for k in got}, source.name
            for figure in ("l1", "l2", "linf"):
                assert close(getattr(stats, figure), want[figure]), (source.name, figure)
            first = values(source)[: len(want["head"])]
            assert all(map(same, first, head(want["head"]))), (source.name, first, want["head"])


@pytest.mark.parametrize("stem", ["checkpoint", "views", "dtypes", "sequence", "tensor"])
def test_zip_and_legacy_formats_hold_the_same_values(stem: str) -> None:
    with (
        open_pytorch(str(FIXTURES / f"{stem}.pt")) as new,
        open_pytorch(str(FIXTURES / f"{stem}_legacy.pt")) as old,
    ):
        legacy: dict[str, TensorSource | None] = {t.name: t for t in old.tensors}
        legacy[stem] = legacy.get(f"{stem}_legacy")  # a lone tensor is named after its file
        for source in new.tensors:
            other = legacy.get(source.name)
            if other is not None:  # the legacy format lacks the newest dtypes
                np.testing.assert_array_equal(values(source), values(other))
                assert other.dtype == source.dtype and other.shape == source.shape


def test_no_torch_is_imported() -> None:
    with open_pytorch(str(FIXTURES / "dtypes.pt")) as checkpoint:
        for source in checkpoint.tensors:
            values(source)
    assert "torch" not in sys.modules


def test_contiguous_tensors_are_read_in_place() -> None:
    with open_pytorch(str(FIXTURES / "views.pt")) as checkpoint:
        kinds = {t.name: type(t.read_bytes).__name__ for t in checkpoint.tensors}
    assert kinds["base"] == "CrcCheckedReader"  # a whole storage, its CRC checked as it goes
    assert kinds["row"] == "function"  # part of one: positioned reads at its offset
    assert kinds["transposed"] == kinds["stepped"] == "StridedReader"


# --- strided views -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
@pytest.mark.parametrize("held", [True, False])
def test_views_in_any_chunk_size_and_either_way_of_reading(
    monkeypatch: pytest.MonkeyPatch, chunk: int, held: bool
) -> None:
    if not held:  # gathered window by window, as a view over a large storage is
        monkeypatch.setattr(torch_views, "HELD_SPAN_BYTES", 0)
        monkeypatch.setattr(torch_views, "WINDOW_BYTES", 24)
    with open_pytorch(str(FIXTURES / "views.pt")) as checkpoint:
        tensors = {t.name: t for t in checkpoint.tensors}
        base = values(tensors["base"]).reshape(6, 8)
        np.testing.assert_array_equal(values(tensors["transposed"], chunk), base.T.reshape(-1))
        np.testing.assert_array_equal(values(tensors["stepped"], chunk), base[::2, 1::3].ravel())
        np.testing.assert_array_equal(values(tensors["column"], chunk), base[:, 5])
        expanded = values(tensors["expanded"], chunk).reshape(4, 5)
        assert (expanded == expanded[0]).all()
        for source in checkpoint.tensors:
            want = FILES["views.pt"]["tensors"][source.name]
            assert close(scan_tensor(source, chunk_elements=chunk).l2, want["l2"]), source.name


def test_a_held_span_is_released_once_every_element_went_out() -> None:
    with open_pytorch(str(FIXTURES / "views.pt")) as checkpoint:
        transposed = next(t for t in checkpoint.tensors if t.name == "transposed")
        reader = transposed.read_bytes
        assert isinstance(reader, torch_views.StridedReader)
        whole = values(transposed)
        assert reader.held is None
        # pieces read out of order, as threads scanning parts of one tensor do
        late = np.concatenate(
            [np.asarray(c, dtype=np.float64) for c in transposed.chunks(8, 24, 48)]
        )
        assert reader.held is not None
        early = np.concatenate(
            [np.asarray(c, dtype=np.float64) for c in transposed.chunks(8, 0, 24)]
        )
        assert reader.held is None
        np.testing.assert_array_equal(np.concatenate([early, late]), whole)


# --- key selection and names ---------------------------------------------------------------------


def test_key_selects_a_subtree_and_names_from_there() -> None:
    everything = list(FILES["checkpoint.pt"]["tensors"])
    with open_pytorch(str(FIXTURES / "checkpoint.pt"), key="model") as checkpoint:
        names = [t.name for t in checkpoint.tensors]
        assert names == [n[len("model.") :] for n in everything if n.startswith("model.")]
        assert checkpoint.skipped_values == 0
    with open_pytorch(str(FIXTURES / "checkpoint.pt"), key="optimizer.state.1") as checkpoint:
        assert [t.name for t in checkpoint.tensors] == ["step", "exp_avg", "exp_avg_sq"]
    with open_pytorch(str(FIXTURES / "checkpoint.pt"), key="config") as checkpoint:
        # name, tags, input_shape (2 sizes), device, seed_bytes, phase, nothing
        assert (checkpoint.tensors, checkpoint.skipped_values) == ([], 8)


def test_key_naming_one_tensor_reads_it_under_that_name() -> None:
    with open_pytorch(str(FIXTURES / "checkpoint.pt"), key="model.0.weight") as checkpoint:
        assert [(t.name, t.shape) for t in checkpoint.tensors] == [("model.0.weight", (16, 8))]


def test_key_indexes_lists_and_tuples() -> None:
    with open_pytorch(str(FIXTURES / "sequence.pt"), key="1") as checkpoint:
        assert [t.name for t in checkpoint.tensors] == ["0", "1.w"]
        assert checkpoint.skipped_values == 1  # the None beside "w"


def test_a_missing_key_lists_the_top_level_keys() -> None:
    with pytest.raises(UsageError) as error:
        open_pytorch(str(FIXTURES / "checkpoint.pt"), key="state_dict")
    message = str(error.value)
    assert "'state_dict'" in message
    assert "'model', 'optimizer', 'epoch', 'config'" in message
    assert message.startswith(str(FIXTURES / "checkpoint.pt"))
    with pytest.raises(UsageError, match="list of 5 values"):
        open_pytorch(str(FIXTURES / "sequence.pt"), key="9")


def test_a_single_tensor_is_named_after_the_file() -> None:
    with open_pytorch(str(FIXTURES / "tensor.pt")) as checkpoint:
        assert [t.name for t in checkpoint.tensors] == ["tensor"]


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hostile_zip.pt", "hostile_legacy.pt"])
def test_a_hostile_pickle_is_refused_and_runs_nothing(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = FIXTURES / name
    raw = path.read_bytes()
    if raw.startswith(b"PK"):
        raw = zipfile.ZipFile(path).read("archive/data.pkl")
    # the fixture really is hostile: unpickled by anything else, it calls os.system
    stream, ops = io.BytesIO(raw), []
    while stream.tell() < len(raw):  # the legacy layout is several pickles in a row
        ops += [(op.name, arg) for op, arg, _ in pickletools.genops(stream)]
    assert ("GLOBAL", "posix system") in ops and ("REDUCE", None) in ops
    assert any(arg == f"touch {EXPECTED['hostile_marker']}" for _, arg in ops)

    monkeypatch.chdir(tmp_path)
    assert looks_like_pytorch(path.read_bytes()[:64], str(path))
    with pytest.raises(UnsupportedError, match=r"posix\.system") as error:
        open_pytorch(str(path))
    assert "never runs code" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedError) as error:
        open_pytorch(str(FIXTURES / "scripted.pt"))
    message = str(error.value)
    assert "TorchScript archive:" in message
    assert "__torch__.torch.nn.modules.container.Sequential" in message


def test_dtypes_normcli_does_not_read_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedError, match=r"'half_complex'.*torch\.complex32"):
        open_pytorch(str(FIXTURES / "complex32.pt"))
    with pytest.raises(UnsupportedError, match=r"_rebuild_qtensor \(a quantized tensor\)"):
        open_pytorch(str(FIXTURES / "quantized.pt"))


# --- damaged files -------------------------------------------------------------------------------


def copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def rezip(
    source: Path, target: Path, drop: str = "", replace: dict[str, bytes] | None = None
) -> None:
    """`source` written again without member `drop`, and with members of `replace` changed."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename != drop:
                new.writestr(info, (replace or {}).get(info.filename, old.read(info)))


@pytest.mark.parametrize("name", ["checkpoint.pt", "views.pt", "dtypes.pt"])
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.95])
def test_a_truncated_zip_is_an_error(tmp_path: Path, name: str, keep: float) -> None:
    path = copy(tmp_path, name)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(NormcliError), open_pytorch(str(path)) as checkpoint:
        for source in checkpoint.tensors:
            values(source)


@pytest.mark.parametrize("name", ["checkpoint_legacy.pt", "views_legacy.pt"])
@pytest.mark.parametrize("cut", [1, 8, 100, 2000])
def test_a_truncated_legacy_file_is_an_error(tmp_path: Path, name: str, cut: int) -> None:
    path = copy(tmp_path, name)
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    with pytest.raises(CorruptFileError):
        open_pytorch(str(path))


def test_bytes_after_the_last_legacy_storage_are_an_error(tmp_path: Path) -> None:
    path = copy(tmp_path, "tensor_legacy.pt")
    path.write_bytes(path.read_bytes() + b"\0" * 3)
    with pytest.raises(CorruptFileError, match="3 bytes after the last storage"):
        open_pytorch(str(path))


def test_a_missing_storage_member_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "missing.pt"
    rezip(FIXTURES / "checkpoint.pt", target, drop="checkpoint/data/3")
    with pytest.raises(
        CorruptFileError,
        match=r"storage '3' \(member 'checkpoint/data/3'\) is "
        "missing",
    ):
        open_pytorch(str(target))


def test_a_storage_member_of_the_wrong_size_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "short.pt"
    rezip(FIXTURES / "tensor.pt", target, replace={"tensor/data/0": b"\0" * 44})
    with pytest.raises(CorruptFileError, match="holds 44 bytes but the pickle declares 48"):
        open_pytorch(str(target))


def test_damaged_tensor_data_fails_its_crc(tmp_path: Path) -> None:
    path = copy(tmp_path, "tensor.pt")
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo("tensor/data/0").header_offset
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[offset + 26 : offset + 30])
    raw[offset + 30 + name_len + extra_len + 5] ^= 0x40
    path.write_bytes(bytes(raw))
    with open_pytorch(str(path)) as checkpoint, pytest.raises(CorruptFileError, match="CRC"):
        values(checkpoint.tensors[0])


def test_big_endian_data_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "big.pt"
    rezip(FIXTURES / "tensor.pt", target, replace={"tensor/byteorder": b"big"})
    with pytest.raises(UnsupportedError, match="byte order b'big'"):
        open_pytorch(str(target))


# --- crafted pickles: torch's opcodes written by hand --------------------------------------------


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"


def dictionary(**items: bytes) -> bytes:
    return b"}(" + b"".join(text(k) + v for k, v in items.items()) + b"u"


def storage(key: str, numel: int, kind: str = "FloatStorage", legacy: bool = False) -> bytes:
    fields = [text("storage"), glob("torch", kind), text(key), text("cpu"), integer(numel)]
    return tup(*fields, *([b"N"] if legacy else [])) + b"Q"


def tensor(
    key: str,
    numel: int,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    legacy: bool = False,
) -> bytes:
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        storage(key, numel, legacy=legacy),
        integer(offset),
        tup(*map(integer, size)),
        tup(*map(integer, stride)),
        b"\x89",
        call(glob("collections", "OrderedDict")),
    )


def torch_zip(path: Path, body: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + body + b".")
        archive.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def torch_legacy(path: Path, body: bytes, storages: dict[str, bytes]) -> Path:
    parts = [pickle.dumps(p, protocol=2) for p in (pytorch.LEGACY_MAGIC, 1001, {"a": 1})]
    parts += [b"\x80\x02" + body + b".", pickle.dumps(list(storages), protocol=2)]
    parts += [struct.pack("<q", len(d) // 4) + d for d in storages.values()]
    path.write_bytes(b"".join(parts))
    return path


FLOATS = np.arange(1, 13, dtype="<f4").tobytes()


def test_a_crafted_checkpoint_reads(tmp_path: Path) -> None:
    """The guard for the crafted cases below: a well-formed one loads."""

    def body(legacy: bool) -> bytes:
        return dictionary(w=tensor("0", 12, 2, (2, 3), (1, 2), legacy), n=integer(5))

    zipped = torch_zip(tmp_path / "z.pt", body(legacy=False), {"0": FLOATS})
    legacy = torch_legacy(tmp_path / "l.pt", body(legacy=True), {"0": FLOATS})
    for path in (zipped, legacy):
        with open_pytorch(str(path)) as checkpoint:
            (source,) = checkpoint.tensors
            np.testing.assert_array_equal(values(source), [3, 5, 7, 4, 6, 8])
            assert checkpoint.skipped_values == 1


@pytest.mark.parametrize(
    ("size", "stride", "offset"), [((13,), (1,), 0), ((2, 3), (1, 5), 2), ((4,), (1,), 9)]
)
def test_a_view_past_the_end_of_its_storage_is_an_error(
    tmp_path: Path, size: tuple[int, ...], stride: tuple[int, ...], offset: int
) -> None:
    path = torch_zip(
        tmp_path / "v.pt", dictionary(w=tensor("0", 12, offset, size, stride)), {"0": FLOATS}
    )
    with pytest.raises(CorruptFileError, match=r"tensor 'w': view .* reaches past the end"):
        open_pytorch(str(path))


@pytest.mark.parametrize(
    ("global_", "named"),
    [
        (glob("builtins", "eval"), "builtins.eval"),
        (glob("__builtin__", "getattr"), "builtins.getattr"),
        (glob("torch", "load"), "torch.load"),
        (glob("numpy.core.multiarray", "scalar"), "numpy.core.multiarray.scalar"),
        # protocol 4's STACK_GLOBAL takes the same road
        (text("os") + text("system") + b"\x93", "os.system"),
    ],
)
def test_any_other_global_is_refused_by_name(tmp_path: Path, global_: bytes, named: str) -> None:
    body = dictionary(w=tensor("0", 12, 0, (12,), (1,)), bad=call(global_, text("1+1")))
    path = torch_zip(tmp_path / "g.pt", body, {"0": FLOATS})
    with pytest.raises(UnsupportedError, match=f"refers to {named.replace('.', '[.]')}"):
        open_pytorch(str(path))


def test_a_stand_in_cannot_be_changed_by_build(tmp_path: Path) -> None:
    body = dictionary(s=glob("torch", "FloatStorage") + dictionary(name=text("x")) + b"b")
    with pytest.raises(CorruptFileError, match=r"sets state on torch\.FloatStorage"):
        open_pytorch(str(torch_zip(tmp_path / "b.pt", body)))
    # and the shared stand-in is as it was
    assert repr(torch_pickle.ALLOWED["torch.FloatStorage"]) == "torch.FloatStorage"


def test_a_structure_that_holds_itself_is_counted_not_followed(tmp_path: Path) -> None:
    # a list appended to itself: [w, [...]]
    body = b"]q\x00(" + tensor("0", 12, 0, (12,), (1,)) + b"h\x00e"
    with open_pytorch(str(torch_zip(tmp_path / "c.pt", body, {"0": FLOATS}))) as checkpoint:
        assert [t.name for t in checkpoint.tensors] == ["0"]
        assert checkpoint.skipped_values == 1


def test_dotted_keys_are_selected_whole(tmp_path: Path) -> None:
    body = dictionary(**{"a.b": dictionary(c=tensor("0", 12, 0, (12,), (1,)))})
    path = torch_zip(tmp_path / "d.pt", body, {"0": FLOATS})
    with open_pytorch(str(path), key="a.b") as checkpoint:
        assert [t.name for t in checkpoint.tensors] == ["c"]
    with open_pytorch(str(path), key="a.b.c") as checkpoint:
        assert [t.name for t in checkpoint.tensors] == ["a.b.c"]


def test_two_tensors_of_one_name_are_refused(tmp_path: Path) -> None:
    w = tensor("0", 12, 0, (12,), (1,))
    body = dictionary(**{"a.b": w, "a": dictionary(b=w)})
    with pytest.raises(UnsupportedError, match=r"same name 'a\.b'"):
        open_pytorch(str(torch_zip(tmp_path / "n.pt", body, {"0": FLOATS})))


@pytest.mark.parametrize(
    "body",
    [
        b"(",  # a pickle that stops mid-way
        tup(text("storage")) + b"Q",  # a malformed persistent id
        call(glob("torch._utils", "_rebuild_tensor_v2"), integer(1)),  # wrong arguments
        call(glob("torch._utils", "_rebuild_parameter"), integer(1), b"\x88", b"N"),
    ],
)
def test_a_malformed_pickle_is_a_corrupt_file(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(CorruptFileError):
        open_pytorch(str(torch_zip(tmp_path / "m.pt", body)))


# --- detection -----------------------------------------------------------------------------------


def test_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in FILES:
        path = FIXTURES / name
        assert looks_like_pytorch(path.read_bytes()[:64], str(path)), name
    npz = tmp_path / "a.npz"
    np.savez(npz, a=np.ones(3))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(b"\x80\x02" + call(glob("posix", "system"), text("touch x")) + b".")
    for path in (npz, plain, hostile):
        assert not looks_like_pytorch(path.read_bytes()[:64], str(path)), path
    assert not looks_like_pytorch(b"\x80\x02\x8a\x0al\xfc", str(plain))  # a cut head
    assert not (tmp_path / "x").exists()


def test_compare_a_pytorch_file_with_its_safetensors_conversion(tmp_path: Path) -> None:
    """The .bin-to-safetensors conversion every hub does: every tensor must come out unchanged,
    views and bfloat16 included, so the values must line up element for element."""
    import numpy as np
    from safetensors.numpy import save_file

    import normcli
    from normcli.readers import open_checkpoint

    source = FIXTURES / "views.pt"
    converted: dict[str, np.ndarray] = {}
    with open_checkpoint(source) as checkpoint:
        for tensor in checkpoint.tensors:
            values = np.concatenate(
                [c.copy() for c in tensor.chunks(1 << 10)] or [np.zeros(0, tensor.dtype.element)]
            )
            converted[tensor.name] = values.reshape(tensor.shape)
    target = tmp_path / "converted.safetensors"
    # the safetensors package's numpy writer knows the plain numpy dtypes only
    plain = {k: v for k, v in converted.items() if v.dtype.kind in "fiub"}
    save_file(plain, str(target))
    result = normcli.compare(source, target)
    assert result.summary["changed"] == 0 and result.summary["shape_changed"] == 0
    assert result.summary["unchanged"] == len(plain) > 3
