"""Scans as tasks on a Dask cluster: the pieces of a local scan grouped into tasks of a few
hundred MiB, each naming its files and element ranges (never bytes), run on workers that open
the files themselves, and merged into exactly the figures a local run gives. Imported by scan
only, and only when a run asks for Dask."""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.metadata
import logging
import platform
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from . import scan
from .errors import ClusterError, UsageError
from .norms import PairStats, TensorStats
from .readers import Checkpoint, TensorSource, find, reopen
from .readers import files as file_reading

INSTALL = "pip install 'normcli[dask]'"
# how long to wait for a scheduler to answer, and for a cluster to have a worker
CONNECT_SECONDS = 10.0
# A task reads about this much: large enough to drown the scheduler's few milliseconds per
# task, small enough that two workers share even one file and a lost worker costs little.
TASK_BYTES = 256 << 20
# what must be the same on the client and on every worker for the figures to be the same
PACKAGES = ("normcli", "numpy", "ml_dtypes", "numba", "dask", "distributed", "cloudpickle")

T = TypeVar("T")
Result = TensorStats | PairStats


@dataclass(frozen=True)
class Item:
    """One piece of work: elements [first, last) of a tensor, or of a pair read in lockstep."""

    sources: tuple[TensorSource, ...]
    first: int
    last: int


@dataclass(frozen=True)
class Task:
    """Items run one after another on one worker; `nbytes` is what they read from files (what
    progress counts)."""

    items: tuple[Any, ...]
    nbytes: int


def run_pieces(
    dask: scan.Cluster,
    singles: Sequence[TensorSource],
    pairs: Sequence[tuple[TensorSource, TensorSource]],
    pieces: Sequence[scan.Piece],
    compiled: bool,
    chunk_elements: int | None,
    progress: scan.Progress | None,
) -> list[Result]:
    """The statistics of every piece, in the order given, each computed on a worker."""
    items = items_of(singles, pairs, pieces)
    tasks = group(items, [p.file_bytes for p in pieces], [_files(i.sources) for i in items])
    done = _run(dask, tasks, functools.partial(scan_items, compiled, chunk_elements), progress)
    return [result for results in done for result in results]


def items_of(
    singles: Sequence[TensorSource],
    pairs: Sequence[tuple[TensorSource, TensorSource]],
    pieces: Sequence[scan.Piece],
) -> list[Item]:
    return [
        Item(
            tuple(_portable(s) for s in (pairs[p.owner] if p.pair else (singles[p.owner],))),
            p.first,
            p.last,
        )
        for p in pieces
    ]


def run_series(
    dask: scan.Cluster,
    series: Sequence[Sequence[TensorSource | None]],
    sizes: Sequence[int],
    compiled: bool,
    progress: scan.Progress | None,
) -> list[scan.Series]:
    """Every tensor's series across checkpoints (`sizes`: each row's file bytes), rows grouped
    into tasks: a task reads the same tensors of every checkpoint, so each update is computed
    where both sides are read."""
    rows = [tuple(None if s is None else _portable(s) for s in row) for row in series]
    tasks = group(rows, sizes, [() for _ in rows])
    done = _run(dask, tasks, functools.partial(scan_rows, compiled), progress)
    return [result for results in done for result in results]


def group(items: Sequence[Any], sizes: Sequence[int], files: Sequence[Any]) -> list[Task]:
    """Consecutive items into tasks reading at most TASK_BYTES of files (an item larger than
    that alone), a task never crossing from one file (or set of files) to another."""
    limit = TASK_BYTES
    tasks: list[Task] = []
    current: list[Any] = []
    nbytes = 0
    for i, item in enumerate(items):
        if current and (nbytes + sizes[i] > limit or files[i] != files[i - 1]):
            tasks.append(Task(tuple(current), nbytes))
            current, nbytes = [], 0
        current.append(item)
        nbytes += sizes[i]
    if current:
        tasks.append(Task(tuple(current), nbytes))
    return tasks


def _portable(source: TensorSource) -> TensorSource:
    """The source as a task carries it: where it lies, without the means to read it here."""
    if source.origin is None:
        raise UsageError(f"tensor {source.name!r} is in memory: only files can be read on Dask")
    return replace(source, read_bytes=_not_here)


def _not_here(start: int, stop: int, out: Any) -> bytes:
    raise AssertionError("a task's sources are reopened on the worker before they are read")


def _files(sources: Sequence[TensorSource]) -> tuple[str, ...]:
    return tuple(s.origin.location for s in sources if s.origin is not None)


# --- on the workers ---


def scan_items(compiled: bool, chunk_elements: int | None, task: Task) -> list[Result]:
    """A task's pieces, each scanned exactly as a local run scans it."""
    plan = scan.plan_for(compiled)
    chunk = chunk_elements or plan.chunk_elements
    results: list[Result] = []
    with _opened() as local:
        for item in task.items:
            first, *more = (local(s) for s in item.sources)
            if more:
                results.append(
                    scan.scan_pair(
                        first, more[0], chunk, None, item.first, item.last, plan.reduce_pair
                    )
                )
            else:
                results.append(
                    scan.scan_tensor(first, chunk, None, plan.reduce, item.first, item.last)
                )
    return results


def scan_rows(compiled: bool, task: Task) -> list[scan.Series]:
    plan = scan.plan_for(compiled)
    with _opened() as local:
        return [
            scan.scan_series(
                [None if s is None else local(s) for s in row],
                None,
                plan.reduce,
                plan.reduce_pair,
            )
            for row in task.items
        ]


@contextlib.contextmanager
def _opened() -> Iterator[Callable[[TensorSource], TensorSource]]:
    """A task's files, each opened once as it is first needed and all closed at the end; the
    pages mapped to read them are handed back, which reports any page that could not be read."""
    checkpoints: dict[tuple[str, str, str | None], Checkpoint] = {}

    def local(source: TensorSource) -> TensorSource:
        origin = source.origin
        assert origin is not None
        where = (origin.location, origin.format, origin.key)
        if where not in checkpoints:
            checkpoints[where] = reopen(origin)
        return find(checkpoints[where], source)

    try:
        yield local
    finally:
        try:
            file_reading.release_windows()
        finally:
            for checkpoint in checkpoints.values():
                checkpoint.close()


def versions() -> dict[str, str]:
    """What this process runs, of all that decides the figures."""
    found = {"python": ".".join(platform.python_version_tuple()[:2])}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "none"
    return found


# --- on the client ---


def _run(
    dask: scan.Cluster,
    tasks: Sequence[Task],
    function: Callable[[Task], list[T]],
    progress: scan.Progress | None,
) -> list[list[T]]:
    """Each task's results, in the order of the tasks, whatever order they finish in."""
    client = connect(dask)
    _check_versions(client)
    from distributed import as_completed

    # the largest first, so one big task does not start last and run alone
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].nbytes)
    futures = {client.submit(function, tasks[i], pure=False): i for i in order}
    results: list[list[T] | None] = [None] * len(tasks)
    try:
        with _as_user_errors(client):
            # on this client's loop: as_completed takes the default client's, which may be
            # another. Results are fetched here, not by as_completed (with_results): a fetch that
            # fails there is never reported, and the loop would wait for ever.
            for future in as_completed(futures, loop=client.loop):
                i = futures[future]
                results[i] = future.result()
                if progress is not None:
                    progress.advance(tasks[i].nbytes)
    finally:
        client.cancel(list(futures), force=True)
    return [r for r in results if r is not None]


@contextlib.contextmanager
def _as_user_errors(client: Any) -> Iterator[None]:
    """Dask's own failures as one line each; a task's error (a file a worker cannot read, say)
    is raised as it was on the worker, as a local run raises it."""
    from asyncio import CancelledError as LoopCancelled
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    try:
        yield
    except KilledWorker as e:
        raise ClusterError(
            "Dask workers died again and again running one task (out of memory, or killed); "
            f"the scheduler gave up on it: {e}"
        ) from e
    except (OSError, CancelledError, LoopCancelled) as e:  # what Dask raises as it loses one
        if client.status == "running":  # a task's own error, raised as the worker raised it
            raise
        raise _lost(client) from e


def _lost(client: Any) -> ClusterError:
    return ClusterError(f"lost the Dask scheduler at {client.scheduler.address}")


_clients: dict[str, Any] = {}


@atexit.register
def close_clients() -> None:
    """Let go of every cluster this process connected to (and stop those it started)."""
    while _clients:
        client = _clients.popitem()[1]
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def connect(dask: scan.Cluster) -> Any:
    """A client of the cluster `dask` names (kept for the rest of the process), with at least
    one worker."""
    if not isinstance(dask, str):
        return dask
    if dask not in _clients:
        _clients[dask] = _start(dask)
    client = _clients[dask]
    try:
        client.wait_for_workers(1, timeout=CONNECT_SECONDS)
    except TimeoutError as e:
        raise ClusterError(
            f"the Dask scheduler at {dask} has no worker (none joined within {CONNECT_SECONDS:g} s)"
        ) from e
    return client


def _start(address: str) -> Any:
    try:
        import distributed
    except ImportError as e:
        raise UsageError(f"--dask needs Dask: {INSTALL}") from e
    local = _local_workers(address)
    if local is None and not address.startswith("inproc://"):  # in-process: no host or port
        _check_address(address)
    # A client normcli starts is normcli's to report on: Dask's log lines (a traceback per lost
    # connection, retries) would break the one line a failure gets; they reach the user as
    # ClusterError instead. --debug still shows the traceback.
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.startswith("distributed"):  # Dask sets some of its loggers' levels one by one
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        # Dask warns of mismatched versions as it connects; _check_versions says which, once
        warnings.simplefilter("ignore")
        if local is not None:
            _quiet_resource_tracker()
            cluster = distributed.LocalCluster(
                n_workers=local,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            client = distributed.Client(cluster)
        else:
            try:
                client = distributed.Client(address, timeout=CONNECT_SECONDS)
            except (OSError, TimeoutError) as e:
                raise ClusterError(
                    f"no Dask scheduler answered at {address} within {CONNECT_SECONDS:g} s"
                ) from e
    return client


def _quiet_resource_tracker() -> None:
    """A run stopped by Ctrl-C or SIGTERM ends at once (stopping.py), before the local cluster's
    processes let go of their semaphores. Python's resource tracker, a process of its own that
    outlives the run, then frees them and warns of each on stderr, after normcli's one line.
    It takes its warning filters from this process's -W options, which this one is added to."""
    import sys

    quiet = "ignore:resource_tracker:UserWarning"
    if quiet not in sys.warnoptions:
        sys.warnoptions.append(quiet)


def _check_address(address: str) -> None:
    """Refuse an address Dask cannot parse before a client is made of it: a Client that fails
    as it starts can deadlock the next one when it is collected (its close waits on the lock
    the new one holds while starting its event loop)."""
    from distributed.comm.addressing import get_address_host_port

    try:
        get_address_host_port(address)
    except ValueError as e:
        raise UsageError(
            f"--dask {address!r} is not a scheduler address ({e}); give tcp://HOST:PORT, or "
            "local[:N]"
        ) from e


def _local_workers(address: str) -> int | None:
    """N for "local:N" (all cores for "local"), None for any other address."""
    name, _, count = address.partition(":")
    if name != "local":
        return None
    if not count:
        return scan.default_threads()
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"--dask local:N needs a number of workers N of 1 or more, not {count!r}")
    return int(count)


def _check_versions(client: Any) -> None:
    mine = versions()
    try:
        theirs: dict[str, dict[str, str]] = client.run(versions)
    except OSError as e:  # Dask's closed connections among them
        raise _lost(client) from e
    except Exception as e:  # normcli missing on a worker fails there, as whatever unpickling met
        raise ClusterError(
            f"the Dask workers cannot run normcli ({type(e).__name__}: {e}); install the same "
            "normcli on every worker"
        ) from e
    for worker, found in sorted(theirs.items()):
        for package, version in mine.items():
            if found.get(package) != version:
                raise ClusterError(
                    f"version mismatch: Dask worker {worker} has {package} "
                    f"{found.get(package)}, this client {version} (the figures could differ: "
                    "install the same versions everywhere)"
                )
