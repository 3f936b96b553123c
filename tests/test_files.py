"""Reading tensor data through a memory map: the same bytes as positioned reads, memory that stays
flat, and a file cut short while it is read that is an error, not a crash (SIGBUS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import normcli
from normcli import kernels
from normcli.api import trend
from normcli.readers import files
from normcli.readers.files import DataFile

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# loading the kernels installs the SIGBUS handler that lets files be read through maps
kernels.load()
mapping = pytest.mark.skipif(
    files._guard is None, reason="no SIGBUS handler here (numba missing, or not Linux)"
)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("files") / "blob.bin"
    path.write_bytes(data)
    return path, data


@mapping
@settings(max_examples=60, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 299_999), st.integers(0, 40_000)), max_size=12))
def test_mapped_reads_give_the_file_bytes(
    blob: tuple[Path, bytes], spans: list[tuple[int, int]]
) -> None:
    path, data = blob
    mapped = DataFile(str(path))
    with pytest.MonkeyPatch.context() as patch:
        # small windows, so mapping ahead and handing back behind happen on a small file
        patch.setattr(files, "WINDOW_MIN", 16384)
        patch.setattr(files, "WINDOW_MAX", 16384)
        assert mapped._current_map() is not None
        for base, length in spans:
            stop = min(length, len(data) - base)
            out = np.empty(stop, np.uint8)
            got = np.asarray(mapped.reader(base)(0, stop, out))
            assert got.tobytes() == data[base : base + stop]
            if base % 8 == 0:
                assert got.ctypes.data % 8 == 0  # aligned for the kernels, copied or not
    mapped.close()


def test_a_file_that_cannot_be_mapped_is_read_with_positioned_reads(
    blob: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DataFile, "_open_map", lambda self: None)
    path, data = blob
    unmapped = DataFile(str(path))
    out = np.empty(1000, np.uint8)
    assert unmapped.reader(5)(10, 1010, out).tobytes() == data[15:1015]
    with pytest.raises(normcli.errors.CorruptFileError, match="ended early"):
        unmapped.reader(299_900)(0, 1000, out)
    unmapped.close()


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


class PeakWatch:
    """A progress listener that notes the most file-backed memory mapped while a scan runs."""

    peak = 0

    def start(self, total_bytes: int) -> None:
        pass

    def advance(self, done_bytes: int) -> None:
        self.peak = max(self.peak, _rss_file_kib())


@mapping
@linux_only
def test_memory_stays_flat_while_a_file_much_larger_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    tensors = {f"w{i}": np.full(4 << 20, i + 1, dtype=np.float32) for i in range(6)}  # 96 MiB
    save_file(tensors, str(path))
    del tensors

    before, watch = _rss_file_kib(), PeakWatch()
    report = normcli.inspect(path, threads=2, progress=watch)
    assert report.total.stats.l1 == sum((i + 1) * (4 << 20) for i in range(6))
    # each of two threads keeps its window and the chunk it reads mapped, not 96 MiB
    assert watch.peak - before < 2 * (files.WINDOW_MAX + (4 << 20)) // 1024


@mapping
@linux_only
@pytest.mark.parametrize("threads", [1, 2])
def test_memory_stays_flat_however_many_files_are_read(tmp_path: Path, threads: int) -> None:
    """A thread's windows over all the files it reads share one budget: trend reads its files in
    lockstep, and a sharded checkpoint one shard after another."""
    for i in range(12):
        save_file(
            {"w": np.full(2 << 20, i + 1, dtype=np.float32)},
            str(tmp_path / f"step-{i}.safetensors"),
        )

    before, watch = _rss_file_kib(), PeakWatch()
    result = trend([str(tmp_path)], threads=threads, progress=watch)
    assert result.to_dict()["checkpoints"][-1]  # read to the end
    # 12 files of 8 MiB: 96 MiB, of which a thread keeps its share mapped at most
    assert 0 < watch.peak - before < threads * (files.WINDOW_MAX + (4 << 20)) // 1024


def test_descriptors_are_given_back_on_close(blob: tuple[Path, bytes]) -> None:
    path, _ = blob
    proc = Path("/proc/self/fd")
    if not proc.exists():
        pytest.skip("no /proc/self/fd")
    before = len(list(proc.iterdir()))
    opened = [DataFile(str(path)) for _ in range(20)]
    for data in opened:
        data.reader(0)(0, 100, np.empty(100, np.uint8))  # mapped, where mapping is on
    assert len(list(proc.iterdir())) - before <= 40
    for data in opened:
        data.close()
    assert len(list(proc.iterdir())) == before


CUT_SHORT = """
import os, sys
from normcli import kernels
from normcli.errors import NormcliError
from normcli.readers import open_checkpoint
from normcli.scan import scan_tensors
from normcli.readers import files
kernels.load()
print("mapping", files._guard is not None)
path, when = sys.argv[1], sys.argv[2]
checkpoint = open_checkpoint(path)
try:
    if when == "before":
        os.truncate(path, 1 << 20)
        scan_tensors(checkpoint.tensors, threads=1)
    else:
        # a chunk in hand (a view of the file's pages) when the file is cut under it
        chunks = checkpoint.tensors[0].chunks(1 << 18)
        first = next(chunks)
        os.truncate(path, 100_000)
        print("read", float(first.astype("f8").sum()))  # pages gone: zeros, not a SIGBUS
        next(chunks)
except NormcliError as e:
    print(type(e).__name__, e)
"""


@mapping
@linux_only
@pytest.mark.parametrize("when", ["before", "while"])
def test_a_file_cut_short_while_it_is_read_is_an_error_not_a_crash(
    tmp_path: Path, when: str
) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"w": np.ones(2 << 20, dtype=np.float32)}, str(path))
    done = subprocess.run(
        [sys.executable, "-c", CUT_SHORT, str(path), when],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # a SIGBUS would end it with -7
    assert "mapping True" in done.stdout
    assert "CorruptFileError" in done.stdout and "cut short while being read" in done.stdout
    if when == "while":
        assert "read " in done.stdout  # the chunk was summed, over pages of zeros


@linux_only
def test_a_low_soft_limit_on_open_files_is_raised_for_a_run_of_many_files(tmp_path: Path) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 256:
        pytest.skip("the hard limit on open files is too low to show it")
    for i in range(120):
        save_file({"w": np.full(16, i, dtype=np.float32)}, str(tmp_path / f"step-{i}.safetensors"))

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    done = subprocess.run(
        [sys.executable, "-m", "normcli", "trend", str(tmp_path), "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=low_soft_limit,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["checkpoints"]) == 120


FOREIGN_MAP = """
import faulthandler, mmap, os, sys
import numpy as np
faulthandler.enable()  # a SIGBUS handler of the program's own, there before normcli's
from normcli import kernels
from normcli.readers import files
kernels.load()
print("handler", files._guard is not None, flush=True)
path = sys.argv[1]
with open(path, "rb") as f:
    foreign = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)  # a map normcli did not make
os.truncate(path, 4096)
print(int(np.frombuffer(foreign, np.uint8).sum()), flush=True)
"""


@mapping
@linux_only
def test_a_sigbus_outside_normcli_maps_still_ends_the_process(tmp_path: Path) -> None:
    """A program using the API keeps its own maps' faults, and its own handler for them:
    normcli must not read zeros there."""
    path = tmp_path / "theirs.bin"
    path.write_bytes(b"\x01" * (1 << 20))
    done = subprocess.run(
        [sys.executable, "-c", FOREIGN_MAP, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "handler True" in done.stdout
    assert done.returncode == -7, (done.returncode, done.stdout, done.stderr)  # SIGBUS
    assert "Fatal Python error: Bus error" in done.stderr  # the program's handler had it


FAULTS_ARE_THE_FILES_OWN = """
import os, sys, threading
from normcli import kernels
from normcli.errors import NormcliError
from normcli.readers import open_checkpoint
from normcli.scan import scan_tensors
kernels.load()
cut, other = sys.argv[1], sys.argv[2]
a, b = open_checkpoint(cut), open_checkpoint(other)

def fault_in_a():
    chunk = next(a.tensors[0].chunks(1 << 18))
    os.truncate(cut, 100_000)
    print("read", float(chunk.astype("f8").sum()))  # pages gone: zeros, a fault in a's map

reader = threading.Thread(target=fault_in_a)
reader.start()
reader.join()
print("other", scan_tensors(b.tensors, threads=1)[0].l1)  # b's scan: b's faults only
try:
    scan_tensors(a.tensors, threads=1)  # over the pages that read as zeros
    print("zeros taken for values")
except NormcliError as e:
    print(type(e).__name__, e)
"""


@mapping
@linux_only
def test_a_scan_neither_sees_nor_clears_the_faults_of_another_files_map(tmp_path: Path) -> None:
    # faults were one process-wide count that each scan reset: the scan of b wiped a's fault,
    # and a scanned again read the pages that had become zeros without a word
    cut, other = tmp_path / "cut.safetensors", tmp_path / "other.safetensors"
    save_file({"w": np.ones(1 << 18, dtype=np.float32)}, str(cut))
    save_file({"w": np.full(1000, 2.0, dtype=np.float32)}, str(other))
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_ARE_THE_FILES_OWN, str(cut), str(other)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "other 2000.0" in done.stdout
    assert "CorruptFileError" in done.stdout and "cut short while being read" in done.stdout
