"""Checkpoints read through URLs: the same figures as the local files, bit for bit, for every
format, from a real S3 API server (moto) and an HTTP server on 127.0.0.1, and from a Hugging Face
cache laid out by hand; what a full read costs on the wire; and every fault as one clear line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from safetensors.numpy import save_file

import normcli
from normcli.readers import remote, remote_file
from tests.conftest import Run
from tests.servers import FileServer, serve_folder

PYTORCH_FIXTURES = Path(__file__).parent / "fixtures" / "pytorch"
TRAINING = PYTORCH_FIXTURES / "training"


def _write_gguf(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "test")
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_onnx(path: Path, arrays: dict[str, np.ndarray], external: bool) -> None:
    import onnx
    from onnx import helper, numpy_helper

    initializers = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    graph = helper.make_graph([], "g", [], [], initializer=initializers)
    model = helper.make_model(graph)
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
        )
    else:
        onnx.save_model(model, str(path))


def _write_hdf5(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        f.create_dataset("chunked", data=arrays["a.weight"], chunks=(8, 8), compression="gzip")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small checkpoint of every format, a sharded one among them."""
    root = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(13)
    arrays = {
        "a.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "a.bias": rng.standard_normal(48).astype(np.float16),
        "b.weight": (rng.standard_normal((3, 5, 7)) * 100).astype(np.float64),
    }
    save_file(arrays, str(root / "model.safetensors"))
    save_file({"w": rng.standard_normal(1 << 18).astype(np.float32)}, str(root / "big.safetensors"))
    np.save(root / "single.npy", arrays["a.weight"])
    np.savez(root / "stored.npz", **arrays)
    np.savez_compressed(root / "deflated.npz", **arrays)
    shutil.copy(PYTORCH_FIXTURES / "checkpoint.pt", root / "zip.pt")
    shutil.copy(PYTORCH_FIXTURES / "checkpoint_legacy.pt", root / "legacy.pt")
    for name in ("scripted_net.pt", "traced.pt", "training.pt"):
        shutil.copy(TRAINING / name, root / name)
    shutil.copytree(TRAINING / "dcp", root / "dcp")
    _write_gguf(root / "model.gguf", {k: v for k, v in arrays.items() if v.dtype != np.float64})
    _write_onnx(root / "model.onnx", arrays, external=False)
    (root / "external").mkdir()
    _write_onnx(root / "external" / "model.onnx", arrays, external=True)
    _write_hdf5(root / "weights.h5", arrays)
    sharded = root / "sharded"
    sharded.mkdir()
    weight_map = {}
    for part, names in enumerate((["a.weight"], ["a.bias", "b.weight"]), start=1):
        shard = f"model-{part:05d}-of-00002.safetensors"
        save_file({n: arrays[n] for n in names}, str(sharded / shard))
        weight_map.update(dict.fromkeys(names, shard))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


CHECKPOINTS = [
    "model.safetensors",
    "single.npy",
    "stored.npz",
    "deflated.npz",
    "zip.pt",
    "legacy.pt",
    "model.gguf",
    "model.onnx",
    "external/model.onnx",
    "weights.h5",
    "sharded/model.safetensors.index.json",
    "sharded/",
    "scripted_net.pt",
    "traced.pt",
    "training.pt",
    # a folder over plain HTTP cannot be listed: its metadata file names it
    "dcp/.metadata",
]


def figures(result: Any) -> dict[str, Any]:
    """The JSON of a result, less where the checkpoint was read from."""
    data = result.to_dict()
    data["checkpoint"].pop("path", None)
    return data


@pytest.fixture(scope="module")
def http_server(zoo: Path) -> Iterator[FileServer]:
    yield from serve_folder(str(zoo))


@pytest.fixture(autouse=True)
def _fresh_server(request: pytest.FixtureRequest) -> None:
    if "http_server" in request.fixturenames:
        server = request.getfixturevalue("http_server")
        server.served.fault = ""
        server.served.reset()


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_format_over_http_gives_the_local_figures_bit_for_bit(
    zoo: Path, http_server: FileServer, name: str
) -> None:
    local = figures(normcli.inspect(zoo / name))
    assert figures(normcli.inspect(f"{http_server.url}/{name}")) == local


def test_a_full_read_fetches_each_byte_about_once(zoo: Path, http_server: FileServer) -> None:
    size = (zoo / "model.safetensors").stat().st_size
    normcli.inspect(f"{http_server.url}/model.safetensors")
    assert http_server.served.bytes <= 1.1 * size
    assert http_server.served.requests <= 4


def test_a_big_file_is_read_in_blocks_several_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads on pieces of one tensor, in blocks fetched ahead: each byte comes once, and
    memory stays within the budget, however the threads' speeds interleave (tried a few
    times)."""
    from normcli import scan

    monkeypatch.setattr(remote_file, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(remote_file, "BUDGET_BYTES", 6 << 16)
    monkeypatch.setattr(scan, "PIECE_BYTES", 5 << 16)
    held: list[int] = []
    reserve = remote_file._reserve

    def counted(size: int, force: bool) -> bool:
        granted = reserve(size, force)
        held.append(remote_file._held_bytes)
        return granted

    monkeypatch.setattr(remote_file, "_reserve", counted)
    values = np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)
    save_file({"w": values, "v": values[:1000].copy()}, str(tmp_path / "big.safetensors"))
    size = (tmp_path / "big.safetensors").stat().st_size
    local = figures(normcli.inspect(tmp_path / "big.safetensors"))
    for server in serve_folder(str(tmp_path)):
        for _ in range(3):
            server.served.reset()
            held.clear()
            assert figures(normcli.inspect(f"{server.url}/big.safetensors", threads=2)) == local
            starts = sorted(start for start, _ in server.served.ranges)
            assert len(starts) == len(set(starts))  # no range asked for twice
            assert server.served.bytes == size
            assert len(server.served.ranges) >= size // (1 << 16)
            # blocks go once read through, or once every reader has passed them: memory
            # stays within the budget, plus the blocks the two readers wait for
            assert max(held) <= (6 + 2) << 16
            assert remote_file._held_bytes == 0


def test_a_missing_file_is_one_line_and_exit_2(run: Run, http_server: FileServer) -> None:
    result = run("inspect", f"{http_server.url}/nothing.safetensors", code=2)
    assert "nothing.safetensors" in result.stderr
    assert "404" in result.stderr
    assert "Traceback" not in result.stderr


def test_access_denied_is_one_line_and_exit_2(run: Run, http_server: FileServer) -> None:
    http_server.served.fault = "403"
    result = run("inspect", f"{http_server.url}/model.safetensors", code=2)
    assert "access denied" in result.stderr


def test_a_server_that_ignores_ranges_is_refused_clearly(run: Run, http_server: FileServer) -> None:
    http_server.served.fault = "ignore-range"
    result = run("inspect", f"{http_server.url}/big.safetensors", code=2)
    assert "ignores Range requests" in result.stderr


def test_a_connection_dropped_mid_file_is_retried_then_an_error(
    run: Run, http_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_file, "RETRY_PAUSE", 0.01)
    http_server.served.fault = "drop"
    http_server.served.drop_after = 1000
    result = run("inspect", f"{http_server.url}/model.safetensors", "-f", "json", code=2)
    assert result.stdout == ""
    assert "3 times" in result.stderr
    assert http_server.served.requests <= 2 + remote_file.TRIES


def test_connection_refused_is_said_in_seconds(run: Run) -> None:
    started = time.monotonic()
    result = run("inspect", "http://127.0.0.1:9/model.safetensors", code=2)
    assert "cannot connect" in result.stderr
    assert time.monotonic() - started < 10


def test_a_missing_protocol_library_names_the_extra(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(remote._PACKAGES, "gs", ("no_such_package_gcsfs", "gcs"))
    result = run("inspect", "gs://bucket/model.safetensors", code=2)
    assert "pip install 'normcli[gcs]'" in result.stderr


def test_credentials_never_reach_a_message() -> None:
    assert remote.redact("https://user:hunter2@host/x?token=abc&X-Amz-Signature=zz&a=1") == (
        "https://***@host/x?token=***&X-Amz-Signature=***&a=1"
    )
    key, value = remote.parse_option("secret=s3cr3t-value")
    assert (key, value) == ("secret", "s3cr3t-value")
    assert "s3cr3t" not in remote.redact("error: bad signature for s3cr3t-value")


def test_storage_option_values_are_parsed() -> None:
    assert remote.parse_option("anon=true") == ("anon", True)
    assert remote.parse_option("retries=7") == ("retries", 7)
    assert remote.parse_option("endpoint_url=http://127.0.0.1:9000") == (
        "endpoint_url",
        "http://127.0.0.1:9000",
    )


# --- S3, through a real S3 API server on loopback ---------------------------------------------


@pytest.fixture(scope="module")
def s3_bucket(zoo: Path) -> Iterator[dict[str, str]]:
    """A bucket on moto's S3 server, found through the standard AWS_* variables."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("normcli-test")
    for path in zoo.rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"normcli-test/{path.relative_to(zoo).as_posix()}")
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_format_over_s3_gives_the_local_figures_bit_for_bit(
    zoo: Path, s3_bucket: dict[str, str], name: str
) -> None:
    local = figures(normcli.inspect(zoo / name))
    assert figures(normcli.inspect(f"s3://normcli-test/{name}")) == local


def test_s3_through_the_cli(zoo: Path, s3_bucket: dict[str, str], run: Run) -> None:
    remote_json = json.loads(run("inspect", "s3://normcli-test/sharded/", "-f", "json").stdout)
    local_json = json.loads(run("inspect", zoo / "sharded", "-f", "json").stdout)
    assert remote_json["checkpoint"].pop("path") == "s3://normcli-test/sharded/"
    local_json["checkpoint"].pop("path")
    assert remote_json == local_json


@pytest.mark.parametrize("folder", ["dcp", "dcp/"])
def test_a_dcp_folder_over_s3_gives_the_local_figures(
    zoo: Path, s3_bucket: dict[str, str], folder: str
) -> None:
    local = figures(normcli.inspect(zoo / "dcp"))
    assert local["checkpoint"]["shards"] == 4
    assert figures(normcli.inspect(f"s3://normcli-test/{folder}")) == local


def test_a_dcp_folder_over_s3_missing_a_file_names_it(s3_bucket: dict[str, str], run: Run) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.copy("normcli-test/dcp/", "normcli-test/dcp-damaged/", recursive=True)
    fs.rm_file("normcli-test/dcp-damaged/__1_0.distcp")
    result = run("inspect", "s3://normcli-test/dcp-damaged", code=2)
    assert "s3://normcli-test/dcp-damaged/__1_0.distcp" in result.stderr
    assert "Traceback" not in result.stderr


def test_s3_missing_key_and_bucket(s3_bucket: dict[str, str], run: Run) -> None:
    for url in ("s3://normcli-test/none.safetensors", "s3://no-bucket/model.safetensors"):
        result = run("inspect", url, code=2)
        assert url in result.stderr
        assert "testing-secret" not in result.stderr


# --- the Hugging Face Hub, from a cache laid out as huggingface_hub lays it out ---------------


def _hub_cache(root: Path, zoo: Path, repo: str, files: dict[str, Path]) -> str:
    """models--ORG--NAME/{blobs,snapshots/COMMIT,refs/main}, each file a link to its blob."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    for name, source in files.items():
        blob = folder / "blobs" / f"blob-{name.replace('/', '-')}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, blob)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    return commit


@pytest.fixture
def hub_cache(zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sharded = zoo / "sharded"
    # the PyTorch checkpoint a repo often keeps beside the safetensors one
    files = {p.name: p for p in sharded.iterdir()} | {"pytorch_model.bin": zoo / "zip.pt"}
    _hub_cache(cache, zoo, "org/sharded", files)
    _hub_cache(
        cache,
        zoo,
        "org/single",
        {"model.safetensors": zoo / "model.safetensors", "sub/weights.h5": zoo / "weights.h5"},
    )
    return cache


def test_a_hub_repo_alone_means_its_checkpoint_read_from_the_cache(
    zoo: Path, hub_cache: Path, run: Run
) -> None:
    for url, local in (
        ("hf://org/sharded", zoo / "sharded"),
        ("hf://org/single", zoo / "model.safetensors"),
    ):
        remote_json = json.loads(run("inspect", url, "-f", "json").stdout)
        local_json = json.loads(run("inspect", local, "-f", "json").stdout)
        assert remote_json["checkpoint"].pop("path") == url
        local_json["checkpoint"].pop("path")
        assert remote_json == local_json


def test_a_hub_file_and_revision(zoo: Path, hub_cache: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    local = figures(normcli.inspect(zoo / "weights.h5"))
    assert figures(normcli.inspect("hf://org/single/sub/weights.h5")) == local
    assert figures(normcli.inspect(f"hf://org/single@{commit}/sub/weights.h5")) == local


def test_offline_and_not_in_the_cache_is_said_plainly(hub_cache: Path, run: Run) -> None:
    result = run("inspect", "hf://org/absent", code=2)
    assert "HF_HUB_OFFLINE" in result.stderr
    assert "hf://org/absent" in result.stderr


def test_compare_reads_both_sides_through_urls(
    zoo: Path, http_server: FileServer, run: Run
) -> None:
    a, b = "model.safetensors", "sharded/model.safetensors.index.json"
    remote_json = json.loads(
        run("compare", f"{http_server.url}/{a}", f"{http_server.url}/{b}", "-f", "json").stdout
    )
    local_json = json.loads(run("compare", zoo / a, zoo / b, "-f", "json").stdout)
    assert remote_json["total"] == local_json["total"]
    assert remote_json["tensors"] == local_json["tensors"]


def test_a_remote_file_pickles_as_its_url_and_reopens(http_server: FileServer) -> None:
    spec = remote.RemoteSpec(f"{http_server.url}/model.safetensors", (("block_size", 1024),))
    opened = remote_file.RemoteFile(spec)
    copy = pickle.loads(pickle.dumps(opened))
    try:
        assert copy.spec == spec
        assert copy.size == opened.size
        assert copy[0:8] == opened[0:8]
    finally:
        opened.close()
        copy.close()


def test_a_shard_missing_from_an_unlistable_folder_is_named(
    zoo: Path, http_server: FileServer, run: Run
) -> None:
    index = json.loads((zoo / "sharded" / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra"] = "model-00009-of-00009.safetensors"
    (zoo / "sharded" / "broken.index.json").write_text(json.dumps(index))
    try:
        result = run("inspect", f"{http_server.url}/sharded/broken.index.json", code=2)
    finally:
        (zoo / "sharded" / "broken.index.json").unlink()
    assert "model-00009-of-00009.safetensors" in result.stderr
    assert "404" in result.stderr


def test_opening_a_sharded_checkpoint_reads_headers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shard: its size asked, then its first bytes (the header within them); no value."""
    from normcli.readers import open_checkpoint

    rng = np.random.default_rng(5)
    weight_map = {}
    for part in range(1, 6):
        shard = f"model-{part:05d}-of-00005.safetensors"
        arrays = {
            f"l{part}.w{i}": rng.standard_normal(1 << 16).astype(np.float32) for i in range(4)
        }
        save_file(arrays, str(tmp_path / shard))
        weight_map.update(dict.fromkeys(arrays, shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for server in serve_folder(str(tmp_path)):
        with open_checkpoint(f"{server.url}/model.safetensors.index.json") as opened:
            assert len(opened.tensors) == 20
        assert server.served.requests <= 2 + 2 * 5  # the index, then HEAD and GET per shard
        assert server.served.bytes <= 5 * remote_file.HEAD_BYTES + (1 << 12)


def test_storage_options_reach_the_filesystem(
    s3_bucket: dict[str, str], run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint given as an option wins over the environment's, which leads nowhere."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    given = ["--storage-option", f"endpoint_url={s3_bucket['AWS_ENDPOINT_URL']}"]
    result = run("inspect", "s3://normcli-test/model.safetensors", *given, "-f", "json")
    assert json.loads(result.stdout)["checkpoint"]["tensors"] == 3


def test_a_secret_is_never_shown_not_even_by_debug(http_server: FileServer, run: Run) -> None:
    url = http_server.url.replace("http://", "http://user:wrong-secret-xyz@") + "/none.safetensors"
    result = run("inspect", url, code=2)
    assert "wrong-secret-xyz" not in result.stderr
    assert "http://***@127.0.0.1" in result.stderr
    debugged = subprocess.run(
        [sys.executable, "-m", "normcli", "--debug", "inspect", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" in debugged.stderr
    assert "wrong-secret-xyz" not in debugged.stderr + debugged.stdout


def _fake_hub(root: Path) -> type[Any]:
    """Stands in for huggingface_hub's HfFileSystem (its network is not ours to use): repos are
    folders ORG/REPO/REVISION/ under `root`, read by ranges as the real one reads them."""
    import fsspec
    from fsspec.spec import AbstractBufferedFile

    class HubFile(AbstractBufferedFile):  # type: ignore[misc]
        def _fetch_range(self, start: int, end: int) -> bytes:
            with open(self.fs.local(self.path), "rb") as f:
                f.seek(start)
                return f.read(end - start)

    class Hub(fsspec.AbstractFileSystem):  # type: ignore[misc]
        protocol = "hf"
        opened: ClassVar[list[str]] = []

        def local(self, path: str) -> str:
            repo, _, rest = self._strip_protocol(path).partition("@")
            revision, _, inner = rest.partition("/")
            return str(root / repo / revision / inner)

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            local = Path(self.local(path))
            if local.is_dir():
                return {"name": path, "type": "directory", "size": 0}
            if not local.is_file():
                raise FileNotFoundError(path)
            return {"name": path, "type": "file", "size": local.stat().st_size}

        def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
            base = self._strip_protocol(path).rstrip("/")
            return [
                self.info(f"{base}/{entry.name}")
                for entry in sorted(Path(self.local(path)).iterdir())
            ]

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            type(self).opened.append(path)
            return HubFile(self, path, mode, **kwargs)

    return Hub


@pytest.fixture
def fake_hub(zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Any]]:
    import fsspec

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    shutil.copytree(zoo / "sharded", tmp_path / "org" / "sharded" / "main")
    # beside the safetensors checkpoint, the PyTorch one a repo often keeps too
    shutil.copy(zoo / "zip.pt", tmp_path / "org" / "sharded" / "main" / "pytorch_model.bin")
    (tmp_path / "org" / "single" / "v1").mkdir(parents=True)
    shutil.copy(zoo / "model.safetensors", tmp_path / "org" / "single" / "v1")
    shutil.copy(zoo / "weights.h5", tmp_path / "org" / "single" / "v1")
    hub = _fake_hub(tmp_path)
    fsspec.register_implementation("hf", hub, clobber=True)
    try:
        yield hub
    finally:
        from fsspec.registry import _registry

        _registry.pop("hf", None)
        hub.clear_instance_cache()


def test_a_hub_repo_not_in_the_cache_is_read_through_the_hub_filesystem(
    zoo: Path, fake_hub: type[Any]
) -> None:
    assert figures(normcli.inspect("hf://org/sharded")) == figures(normcli.inspect(zoo / "sharded"))
    assert any(p.endswith("model-00002-of-00002.safetensors") for p in fake_hub.opened)
    local = figures(normcli.inspect(zoo / "weights.h5"))
    assert figures(normcli.inspect("hf://org/single@v1/weights.h5")) == local
    with pytest.raises(normcli.errors.InputError, match="404"):
        normcli.inspect("hf://org/single@v1/none.safetensors")


def test_a_sharded_model_does_not_keep_a_block_per_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard's block that holds its header is never read through: it goes once no thread
    has read the shard for a while, instead of staying until the whole model is read."""
    monkeypatch.setattr(remote_file, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(remote_file, "IDLE_SECONDS", 0.0)
    held: list[int] = []
    reserve = remote_file._reserve

    def counted(size: int, force: bool) -> bool:
        granted = reserve(size, force)
        held.append(remote_file._held_bytes)
        return granted

    monkeypatch.setattr(remote_file, "_reserve", counted)
    rng = np.random.default_rng(3)
    for part in range(1, 13):
        values = {f"w{part}": rng.standard_normal(5000).astype(np.float32)}
        save_file(values, str(tmp_path / f"model-{part:05d}-of-00012.safetensors"))
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    local = figures(normcli.inspect(tmp_path))
    for server in serve_folder(str(tmp_path)):
        url = f"{server.url}/"
        shards = [f"{url}model-{part:05d}-of-00012.safetensors" for part in range(1, 13)]
        index = {"weight_map": {f"w{i + 1}": s.rsplit("/", 1)[1] for i, s in enumerate(shards)}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
        server.served.reset()
        fetched = figures(normcli.inspect(f"{url}model.safetensors.index.json", threads=1))
        assert fetched["tensors"] == local["tensors"]
        assert server.served.bytes <= total + 1000  # the index, and each shard once
        assert max(held) <= 3 << 16


def test_trend_and_check_read_urls(zoo: Path, http_server: FileServer, run: Run) -> None:
    a, b = "model.safetensors", "sharded/model.safetensors.index.json"
    urls = [f"{http_server.url}/{a}", f"{http_server.url}/{b}"]
    remote_trend = json.loads(run("trend", *urls, "--order", "given", "-f", "json").stdout)
    local_trend = json.loads(
        run("trend", zoo / a, zoo / b, "--order", "given", "-f", "json").stdout
    )
    assert remote_trend["rows"] == local_trend["rows"]
    assert remote_trend["total"] == local_trend["total"]
    remote_check = json.loads(run("check", urls[1], "--baseline", urls[0], "-f", "json").stdout)
    local_check = json.loads(run("check", zoo / b, "--baseline", zoo / a, "-f", "json").stdout)
    assert remote_check["violations"] == local_check["violations"]
    assert remote_check["checked"] == local_check["checked"]
