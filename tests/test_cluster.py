"""Scans on a Dask cluster: the same figures as a local run, bit for bit, whatever the partition
into tasks; the work done on the workers; every fault one line and exit code 2."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from conftest import Run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import normcli
from normcli import cluster, scan
from normcli.api import inspect
from normcli.errors import ClusterError
from normcli.gate import CheckConfig, run_check
from normcli.settings import ReadSettings, Selection

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

BIN = Path(sys.executable).parent
# pieces of about 1 MiB, so a few MiB of test data make many pieces and many tasks
SMALL_PIECES = 1 << 20


def _tensors(seed: int, moved: float = 0.0) -> dict[str, np.ndarray]:
    """Float tensors of several dtypes and sizes (one of 3 Mi elements, cut into pieces), one
    holding NaN and Inf, and an integer one."""
    rng = np.random.default_rng(seed)
    big = rng.standard_normal(3 << 20, dtype=np.float32) * (1 + moved)
    odd = rng.standard_normal((300, 777)) * 1e3 * (1 + moved)
    odd[5, 7], odd[9, 9] = np.nan, -np.inf
    return {
        "model.embed.weight": big.reshape(3 << 10, 1 << 10),
        "model.layers.0.weight": odd,
        "model.layers.1.weight": (rng.standard_normal(500_000) * (1 + moved)).astype(
            ml_dtypes.bfloat16
        ),
        "model.layers.2.weight": (rng.standard_normal(70_000) * (1 + moved)).astype(np.float16),
        "model.position_ids": np.arange(1000, dtype=np.int64),
    }


def _shards(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A folder of two safetensors shards holding `tensors`."""
    folder.mkdir()
    names = sorted(tensors)
    for part, chosen in enumerate((names[::2], names[1::2])):
        save_file(
            {n: tensors[n] for n in chosen},
            str(folder / f"model-0000{part + 1}-of-00002.safetensors"),
        )
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three checkpoints of one run: a single file, then two sharded folders."""
    root = tmp_path_factory.mktemp("run")
    first = root / "step-100.safetensors"
    save_file(_tensors(0), str(first))
    return [
        first,
        _shards(root / "step-200", _tensors(0, 0.01)),
        _shards(root / "step-300", _tensors(0, 0.03)),
    ]


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    """One LocalCluster of 2 worker processes for the module, and a client of it."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as started,
        distributed.Client(started) as client,
    ):
        yield client
    cluster.close_clients()


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "PIECE_BYTES", SMALL_PIECES)
    monkeypatch.setattr(cluster, "TASK_BYTES", 3 * SMALL_PIECES)


def _all_runs(paths: list[Path], dask: Any) -> list[dict[str, Any]]:
    a, b, c = (str(p) for p in paths)
    return [
        inspect(a, dask=dask).to_dict(),
        inspect(b, dask=dask, group_by=2).to_dict(),
        normcli.compare(a, b, dask=dask).to_dict(),
        normcli.compare(b, c, include_int=True, dask=dask).to_dict(),
        normcli.trend([a, b, c], group_by=0, dask=dask).to_dict(),
        normcli.check(c, baseline=b, max_rel_update=0.5, dask=dask).to_dict(),
        run_check(c, CheckConfig(), None, Selection(), ReadSettings(dask=dask)).to_dict(),
    ]


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_every_command_gives_the_local_figures_bit_for_bit(
    kernels: str, checkpoints: list[Path], local_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMCLI_KERNELS", kernels)
    local = _all_runs(checkpoints, None)
    assert _all_runs(checkpoints, local_cluster) == local
    # the figures are the real ones, not merely the same twice
    reference = _tensors(0)["model.embed.weight"].astype(np.float64)
    embed = next(t for t in local[0]["tensors"] if t["name"] == "model.embed.weight")
    assert embed["l2"] == pytest.approx(np.sqrt(np.sum(reference**2)), rel=1e-12)


# The cluster's client runs an event loop in a thread of this process that draws from the global
# random module (Dask's retries and ids) while hypothesis makes the next example; hypothesis
# takes that for a strategy using `random` and warns, although no strategy here does.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    piece=st.sampled_from([SMALL_PIECES, 2 * SMALL_PIECES, 64 << 20]),
    task=st.integers(1, 16 << 20),
)
def test_any_partition_into_tasks_gives_the_same_figures(
    piece: int, task: int, checkpoints: list[Path], local_cluster: Any
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan, "PIECE_BYTES", piece)
        local = normcli.compare(checkpoints[0], checkpoints[2]).to_dict()
        patch.setattr(cluster, "TASK_BYTES", task)
        assert (
            normcli.compare(checkpoints[0], checkpoints[2], dask=local_cluster).to_dict() == local
        )


@settings(max_examples=20, deadline=None)
@given(task=st.integers(1, 16 << 20), order=st.randoms(use_true_random=False))
def test_tasks_finishing_in_any_order_merge_to_the_local_figures(
    task: int, order: Any, checkpoints: list[Path]
) -> None:
    """The merge without a cluster: tasks run here in a random order, results put back."""
    with (
        normcli.readers.open_checkpoint(checkpoints[1]) as a,
        normcli.readers.open_checkpoint(checkpoints[2]) as b,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(scan, "PIECE_BYTES", SMALL_PIECES)
        patch.setattr(cluster, "TASK_BYTES", task)
        singles, pairs = a.tensors[:2], list(zip(a.tensors[2:], b.tensors[2:], strict=True))
        local = scan.scan_all(singles, pairs)
        pieces = scan.pieces_of(singles, pairs)
        items = cluster.items_of(singles, pairs, pieces)
        tasks = cluster.group(items, [p.file_bytes for p in pieces], [0] * len(items))
        assert sum(len(t.items) for t in tasks) == len(pieces)
        done: dict[int, list[Any]] = {}
        for i in order.sample(range(len(tasks)), len(tasks)):
            done[i] = cluster.scan_items(False, None, tasks[i])
        results = [r for i in range(len(tasks)) for r in done[i]]
        assert scan.merge_pieces(singles, pairs, pieces, results) == local


def test_the_workers_do_the_scanning(
    checkpoints: list[Path], local_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the client scanned")

    for name in ("scan_tensor", "scan_pair", "scan_series"):
        monkeypatch.setattr(scan, name, refuse)
    with pytest.raises(AssertionError, match="the client scanned"):
        inspect(checkpoints[0])
    a, b, c = (str(p) for p in checkpoints)
    assert inspect(a, dask=local_cluster).total.stats.numel > 0
    assert normcli.compare(a, b, dask=local_cluster).total.pair is not None
    assert normcli.trend([a, b, c], dask=local_cluster).rows


@pytest.mark.parametrize(
    ("command", "sides", "code"),
    [("inspect", [1], 0), ("compare", [0, 2], 0), ("check", [2], 1), ("trend", [0, 1, 2], 0)],
)
def test_every_command_takes_the_address_by_option_or_environment(
    command: str, sides: list[int], code: int, run: Run, checkpoints: list[Path], local_cluster: Any
) -> None:
    args = [command, *(checkpoints[i] for i in sides), "-f", "json"]
    here = run(*args, code=code)
    address = local_cluster.scheduler.address
    by_option = run(*args, "--dask", address, code=code)
    by_environment = run(*args, code=code, env={"NORMCLI_DASK": address})
    assert by_option.stdout == by_environment.stdout == here.stdout
    # the address reaches the scan: one it cannot use fails there
    for option, env in ((["--dask", "local:0"], {}), ([], {"NORMCLI_DASK": "local:0"})):
        assert "--dask local:N needs" in run(*args, *option, code=2, env=env).stderr


def test_nothing_to_read_needs_no_cluster(
    run: Run, checkpoints: list[Path], tmp_path: Path
) -> None:
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    for checkpoint, report in zip(checkpoints, reports, strict=False):
        run("inspect", checkpoint, "-f", "json", "-o", report)
    # saved reports on both sides: no value is read, so no cluster is asked for (local:0 would fail)
    for command in ("compare", "trend"):
        here = run(command, *reports).stdout
        assert run(command, *reports, "--dask", "local:0").stdout == here


def test_progress_counts_the_bytes_finished_across_the_cluster(
    checkpoints: list[Path], local_cluster: Any, small_pieces: None
) -> None:
    class Count:
        total, done, calls = 0, 0, 0

        def start(self, total_bytes: int) -> None:
            self.total = total_bytes

        def advance(self, done_bytes: int) -> None:
            self.done += done_bytes
            self.calls += 1

    count = Count()
    inspect(checkpoints[1], dask=local_cluster, progress=count)
    assert count.done == count.total > 0
    assert count.calls > 1


def test_a_file_a_worker_cannot_read_is_named_as_a_local_run_names_it(
    checkpoints: list[Path], local_cluster: Any, tmp_path: Path
) -> None:
    moved = tmp_path / "model.safetensors"
    shutil.copy(checkpoints[0], moved)

    class RemoveOnStart:
        def start(self, total_bytes: int) -> None:
            moved.unlink()  # after the client read the header, before any worker opens it

        def advance(self, done_bytes: int) -> None: ...

    with pytest.raises(normcli.NormcliError) as raised:
        inspect(moved, dask=local_cluster, progress=RemoveOnStart())
    assert str(raised.value) == f"{moved}: no such file"


def test_a_file_that_changed_since_the_client_read_it_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(path))
    with normcli.readers.open_checkpoint(path) as checkpoint:
        task = cluster.Task((cluster.Item((cluster._portable(checkpoint.tensors[0]),), 0, 3),), 12)
    assert cluster.scan_items(False, None, task)[0].l1 == 3.0
    save_file({"w": np.ones(4, np.float32)}, str(path))  # rewritten before a worker read it
    with pytest.raises(normcli.NormcliError) as raised:
        cluster.scan_items(False, None, task)
    assert str(raised.value) == (
        f"{path}: tensor 'w' is not where it was when the run began (the file changed while "
        "it was read, or this machine sees another file under that name)"
    )


def test_a_version_mismatch_names_the_package(
    checkpoints: list[Path], local_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cluster.importlib.metadata.version
    monkeypatch.setattr(  # on the client only: the workers are other processes
        cluster.importlib.metadata, "version", lambda p: "0.1" if p == "numpy" else real(p)
    )
    with pytest.raises(
        normcli.NormcliError,
        match=r"version mismatch: Dask worker tcp://\S+ has "
        rf"numpy {np.__version__}, this client 0\.1",
    ):
        inspect(checkpoints[0], dask=local_cluster)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_scheduler_at_the_address_is_one_line(
    run: Run, checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    result = run("inspect", checkpoints[0], "--dask", address, code=2)
    assert result.stderr == (
        f"normcli: error: no Dask scheduler answered at {address} within 1 s\n"
    )


def test_a_scheduler_without_workers_is_one_line(
    run: Run, checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 0.5)
    with distributed.LocalCluster(
        n_workers=0, processes=False, dashboard_address=":0", silence_logs=logging.ERROR
    ) as empty:
        result = run("inspect", checkpoints[0], "--dask", empty.scheduler_address, code=2)
        cluster.close_clients()
    assert result.stderr == (
        f"normcli: error: the Dask scheduler at {empty.scheduler_address} has no worker "
        "(none joined within 0.5 s)\n"
    )


@pytest.mark.parametrize("address", ["scheduler", "http://127.0.0.1:8786"])
def test_an_address_dask_cannot_parse_is_a_usage_error(
    run: Run, checkpoints: list[Path], address: str
) -> None:
    result = run("inspect", checkpoints[0], "--dask", address, code=2)
    assert result.stderr.startswith(
        f"normcli: error: --dask {address!r} is not a scheduler address"
    )
    assert result.stderr.endswith("give tcp://HOST:PORT, or local[:N]\n")


@pytest.mark.parametrize("address", ["local:0", "local:two"])
def test_a_bad_local_cluster_size_is_a_usage_error(
    run: Run, checkpoints: list[Path], address: str
) -> None:
    result = run("inspect", checkpoints[0], "--dask", address, code=2)
    assert "--dask local:N needs a number of workers N of 1 or more" in result.stderr


def test_without_dask_the_error_says_what_to_install(
    run: Run, checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    result = run("inspect", checkpoints[0], "--dask", "local:1", code=2)
    assert result.stderr == ("normcli: error: --dask needs Dask: pip install 'normcli[dask]'\n")


# --- a cluster started as a user starts one: `dask scheduler` and `dask worker` processes ---


@contextlib.contextmanager
def _started(workers: int) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, as a user starts them
    (without nannies, so a killed worker stays dead): the address, and the scheduler's process
    then the workers'."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = f"scheduler --host 127.0.0.1 --port {address.rsplit(':', 1)[1]} --no-dashboard"
    worker = f"worker {address} --host 127.0.0.1 --nthreads 1 --no-nanny --no-dashboard"
    started: list[subprocess.Popen[bytes]] = []
    try:
        for command in (scheduler, *[worker] * workers):
            started.append(
                subprocess.Popen(
                    [BIN / "dask", *command.split()],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, started
    finally:
        cluster.close_clients()
        # the workers first, while the scheduler is there to say goodbye to
        for process in reversed(started):
            _stop(process)


@pytest.fixture(scope="module")
def dask_processes() -> Iterator[str]:
    with _started(workers=2) as (address, _):
        yield address


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_the_command_line_against_a_scheduler_and_two_workers(
    checkpoints: list[Path], dask_processes: str
) -> None:
    def normcli_json(*args: Any, **env: str) -> Any:
        done = subprocess.run(
            [BIN / "normcli", *map(str, args), "-f", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        return json.loads(done.stdout)

    a, b = checkpoints[0], checkpoints[1]
    here = json.loads(json.dumps(inspect(b).to_dict()))
    assert normcli_json("inspect", b, "--dask", dask_processes) == here
    here = json.loads(json.dumps(normcli.compare(a, b).to_dict()))
    assert normcli_json("compare", a, b, NORMCLI_DASK=dask_processes) == here


class KillOnFirstTask:
    """Progress that, as the first task finishes, kills a worker with a task in hand as a
    machine dies: no goodbye."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.killed: list[int] = []

    def start(self, total_bytes: int) -> None: ...

    def advance(self, done_bytes: int) -> None:
        if self.killed:
            return
        busy = [w for w, keys in self.client.processing().items() if keys]
        for pid in self.client.run(os.getpid, workers=busy[:1]).values():
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)


def test_a_worker_killed_mid_run_changes_nothing(
    checkpoints: list[Path], dask_processes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "PIECE_BYTES", SMALL_PIECES)
    monkeypatch.setattr(cluster, "TASK_BYTES", 1)  # a task per piece: many tasks
    a, c = checkpoints[0], checkpoints[2]
    local = normcli.compare(a, c).to_dict()
    client = cluster.connect(dask_processes)
    kill = KillOnFirstTask(client)
    result = normcli.compare(a, c, dask=client, progress=kill)
    assert kill.killed, "no worker had a task in hand"
    assert result.to_dict() == local
    assert kill.killed[0] not in client.run(os.getpid).values()


def test_a_task_that_keeps_losing_its_worker_is_one_line(
    checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "PIECE_BYTES", SMALL_PIECES)
    monkeypatch.setattr(cluster, "TASK_BYTES", 1)
    # a scheduler that gives a task up the first time its worker dies
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL
        ) as started,
        distributed.Client(started) as client,
        pytest.raises(
            normcli.NormcliError, match="Dask workers died again and again running one task"
        ),
    ):
        normcli.compare(
            checkpoints[0], checkpoints[2], dask=client, progress=KillOnFirstTask(client)
        )


def test_a_scheduler_lost_mid_run_is_one_line_not_a_wait_for_ever(
    checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "PIECE_BYTES", SMALL_PIECES)
    monkeypatch.setattr(cluster, "TASK_BYTES", 1)
    with _started(workers=1) as (address, (scheduler, _)):

        class KillTheScheduler:
            def start(self, total_bytes: int) -> None: ...

            def advance(self, done_bytes: int) -> None:
                if scheduler.poll() is None:
                    scheduler.kill()
                    scheduler.wait()

        failed: list[BaseException] = []

        def scan_it() -> None:
            try:
                inspect(checkpoints[0], dask=address, progress=KillTheScheduler())
            except BaseException as e:
                failed.append(e)

        # on a thread, so a run that waits for ever fails the test instead of hanging it
        thread = threading.Thread(target=scan_it, daemon=True)
        thread.start()
        thread.join(120)
    assert not thread.is_alive(), "the run still waits for the lost scheduler"
    assert [type(e) for e in failed] == [ClusterError]
    assert str(failed[0]) == f"lost the Dask scheduler at {address}"


# --- URLs: the workers open them with the run's storage options ---------------------------------


@pytest.fixture(scope="module")
def s3_run(checkpoints: list[Path]) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """The three checkpoints in a bucket of moto's S3 server on 127.0.0.1, and the storage
    options that reach it (no AWS_* variable: the workers know the server only from them)."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "id", "secret": "secret"}
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.mkdir("run")
        root = checkpoints[0].parent
        for path in root.rglob("*"):
            if path.is_file():
                fs.put_file(str(path), f"run/{path.relative_to(root).as_posix()}")
        yield [f"s3://run/{p.relative_to(root).as_posix()}" for p in checkpoints], options
    finally:
        server.stop()


def _figures(result: Any) -> dict[str, Any]:
    """The JSON of a result, less where its checkpoints were read from."""
    data = result.to_dict()
    for side in ("checkpoint", "a", "b"):
        if isinstance(data.get(side), dict):
            data[side].pop("path", None)
    return data


def test_workers_read_urls_with_the_runs_storage_options(
    checkpoints: list[Path], s3_run: tuple[list[str], dict[str, Any]], local_cluster: Any
) -> None:
    urls, options = s3_run
    assert _figures(inspect(urls[1], storage_options=options, dask=local_cluster)) == _figures(
        inspect(checkpoints[1])
    )
    on_cluster = normcli.compare(urls[0], urls[2], storage_options=options, dask=local_cluster)
    assert _figures(on_cluster) == _figures(normcli.compare(checkpoints[0], checkpoints[2]))


def test_training_checkpoints_on_the_cluster(local_cluster: Any) -> None:
    """A torch.distributed.checkpoint folder (tensors split across its files) and a training
    checkpoint with optimizer state: the workers reopen them as the client did."""
    training = Path(__file__).resolve().parent / "fixtures" / "pytorch" / "training"
    for path in (training / "dcp", training / "training.pt"):
        assert inspect(path, dask=local_cluster).to_dict() == inspect(path).to_dict()
    a, b = training / "dcp", training / "dcp_consolidated.pt"
    assert normcli.compare(a, b, dask=local_cluster).to_dict() == normcli.compare(a, b).to_dict()
