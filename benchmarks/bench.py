"""`make bench`: first the targets (start-up, tables, 4 GiB files end to end, peak RSS; see
targets.py), then normcli against the limits of this machine and against the naive way, on
generated safetensors files (2 GiB float32, 2 GiB bfloat16, 1 GiB float16; BENCH_LARGE=1 adds a
10 GiB bfloat16 one); BENCH_TARGETS=1 stops after the targets. Every figure is measured in this
run; nothing is compared to constants. compare reads each file beside a twin whose values all
moved by 1%, as a training step would move them (the 10 GiB file has no twin: the two would not
fit the page cache together).

naive = the safetensors package loads the file, then numpy norms in the stored dtype (bfloat16,
which the package's numpy loader does not know, is loaded by its bytes and widened to float32).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import targets

GIB = 1 << 30
NORMCLI = [sys.executable, "-m", "normcli"]


def write_safetensors(
    path: Path, dtype_name: str, dtype: object, nbytes: int, step: float = 0.0
) -> None:
    """Tensors of 256 MiB of normal values each, written without holding the file in memory;
    `step` scales every value by 1 + step, as a training step would move them."""
    itemsize = np.dtype(dtype).itemsize
    per_tensor = (256 << 20) // itemsize
    count = nbytes // (per_tensor * itemsize)
    header: dict[str, object] = {}
    for i in range(count):
        begin = i * per_tensor * itemsize
        header[f"model.layers.{i}.weight"] = {
            "dtype": dtype_name,
            "shape": [per_tensor // 4096, 4096],
            "data_offsets": [begin, begin + per_tensor * itemsize],
        }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(per_tensor // 16, dtype=np.float32) * 0.02).astype(dtype)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for i in range(count):
            for j in range(16):
                # a different scale per block, so no two blocks are alike
                scale = (1 + (i * 16 + j) / 1000) * (1 + step)
                f.write((block * scale).astype(dtype).tobytes())


def timed(command: list[str]) -> float:
    """Wall time of a child process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss(command: list[str]) -> int:
    """Peak RSS (KiB) of one run, read by /usr/bin/time -v when present."""
    if not os.path.exists("/usr/bin/time"):
        return -1
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in done.stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1])
    return -1


def best_of(n: int, command: list[str]) -> float:
    return min(timed(command) for _ in range(n))


def mmap_rates(path: Path) -> tuple[float, float]:
    """Bytes per second summing the page-cached file through a memory map: on a fresh map (the
    read rate: pages are mapped, then read; best of two, each range mapped at once with
    MADV_POPULATE_READ where there is one, which is faster than a fault per page), and on the
    same map once it is mapped (memory bandwidth alone: no reader starts there)."""
    step = 1 << 17  # 1 MiB of uint64
    piece = 64 << 20
    first = float("inf")
    with open(path, "rb") as f:
        for _ in range(2):
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                words = np.frombuffer(mm, dtype=np.uint64, count=len(mm) // 8)
                start = time.perf_counter()
                for begin in range(0, len(mm), piece):
                    populate(mm, begin, min(piece, len(mm) - begin))
                    part = words[begin // 8 : (begin + piece) // 8]
                    for i in range(0, part.size, step):
                        part[i : i + step].sum()
                first = min(first, time.perf_counter() - start)
                start = time.perf_counter()
                for i in range(0, words.size, step):
                    words[i : i + step].sum()
                again = time.perf_counter() - start
                del words, part
    size = path.stat().st_size
    return size / first, size / again


def populate(mm: mmap.mmap, start: int, length: int) -> None:
    if sys.platform == "linux":
        with contextlib.suppress(OSError):  # before Linux 5.14 pages fault in one by one
            mm.madvise(getattr(mmap, "MADV_POPULATE_READ", 22), start, length)


def dd_rate(path: Path, cold: bool) -> float:
    if cold:
        evict(path)
    start = time.perf_counter()
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=8M"], check=True, stderr=subprocess.DEVNULL
    )
    return path.stat().st_size / (time.perf_counter() - start)


def evict(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


IN_PROCESS = """
import sys, time, normcli
from normcli import kernels
kernels.load()  # start-up is measured apart: this is the scan alone
job = normcli.compare if len(sys.argv) > 2 else normcli.inspect
best = {}
for threads in (1, None):
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        job(*sys.argv[1:], threads=threads)
        runs.append(time.perf_counter() - start)
    best[threads] = min(runs)
print(best[1], best[None])
"""

NAIVE = """
import sys, numpy as np, ml_dtypes, json, struct
path = sys.argv[1]
if sys.argv[2] == "BF16":
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    tensors = {k: np.frombuffer(raw, ml_dtypes.bfloat16, offset=8 + n + v["data_offsets"][0],
               count=(v["data_offsets"][1] - v["data_offsets"][0]) // 2)
               for k, v in header.items()}
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
else:
    from safetensors.numpy import load_file
    tensors = load_file(path)
for x in tensors.values():
    np.abs(x).sum(); np.linalg.norm(x)
"""


def main() -> None:
    folder = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="normcli-bench-"))
    files = [
        ("F32", np.float32, 2 * GIB),
        ("BF16", ml_dtypes.bfloat16, 2 * GIB),
        ("F16", np.float16, 1 * GIB),
    ]
    if os.environ.get("BENCH_LARGE"):
        files.append(("BF16", ml_dtypes.bfloat16, 10 * GIB))
    threads = len(os.sched_getaffinity(0))
    print(f"normcli bench: {threads} cores, files in {folder}\n")
    try:
        targets.report(folder, write_big, warm_mmap_rate)
        if os.environ.get("BENCH_TARGETS"):
            return
        for name, dtype, size in files:
            path = folder / f"{name.lower()}-{size // GIB}g.safetensors"
            stepped = path.with_name(f"{path.stem}-step{path.suffix}")
            if not path.exists():
                write_safetensors(path, name, dtype, size)
            # the large file's twin would not fit the page cache beside it
            large = size > 2 * GIB
            if not large and not stepped.exists():
                write_safetensors(stepped, name, dtype, size, step=1e-2)
            bench_file(path, None if large else stepped, name, threads)
        from bench_remote import bench_remote

        bench_remote(folder, folder / "f16-1g.safetensors")
    finally:
        if not os.environ.get("BENCH_DIR"):
            shutil.rmtree(folder, ignore_errors=True)


def write_big(path: Path, name: str) -> None:
    """A 4 GiB file of the targets: float32 or bfloat16."""
    write_safetensors(path, name, np.float32 if name == "F32" else ml_dtypes.bfloat16, 4 * GIB)


def warm_mmap_rate(path: Path) -> float:
    """One thread's page-cache rate, measured in a process of its own: the pages it maps
    would count in the peak RSS of every process this one starts (a child's starts at its
    parent's)."""
    dd_rate(path, cold=False)  # warm the page cache
    done = subprocess.run(
        [sys.executable, __file__, "--mmap-rate", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout)


def rate(gigabytes: float, seconds: float) -> float:
    return gigabytes / seconds


def in_process(*paths: Path) -> tuple[float, float]:
    """Seconds of the scan alone, with 1 and all threads: the process started, the kernels
    loaded, the page cache warm."""
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, *map(str, paths)],
        check=True,
        capture_output=True,
        text=True,
    )
    one, every = map(float, done.stdout.split())
    return one, every


def bench_file(path: Path, stepped: Path | None, name: str, threads: int) -> None:
    """One file's lines. `stepped` (the same tensors, every value moved) is what compare reads
    beside it; the large file has none, and no naive run (it would need three times the file
    in memory)."""
    size = path.stat().st_size
    gb = size / 1e9
    inspect = [*NORMCLI, "inspect", str(path), "--no-progress", "-f", "json"]
    dd_rate(path, cold=False)  # warm the page cache
    limit_mmap, mapped_again = mmap_rates(path)
    limit_dd = dd_rate(path, cold=False)
    naive = best_of(1, [sys.executable, "-c", NAIVE, str(path), name]) if stepped else None
    one = best_of(2, [*inspect, "--threads", "1"])
    every = best_of(2, inspect)
    numpy_path = best_of(1, ["env", "NORMCLI_KERNELS=numpy", *inspect])
    scan_one, scan_every = in_process(path)
    rss = peak_rss(inspect)
    if stepped:
        dd_rate(stepped, cold=False)  # warm the page cache
        compare = best_of(
            1, [*NORMCLI, "compare", str(path), str(stepped), "--no-progress", "-f", "json"]
        )
        compare_one, compare_every = in_process(path, stepped)
    cold_dd = dd_rate(path, cold=True)
    evict(path)
    cold = best_of(1, inspect)

    def vs_naive(seconds: float) -> str:
        return f"{naive / seconds:5.1f}x naive" if naive else "  (no naive run)"

    print(f"{path.name}  ({name}, {gb:.2f} GB)")
    print(
        f"  limits      page-cache mmap {limit_mmap / 1e9:6.2f} GB/s   "
        f"dd {limit_dd / 1e9:6.2f} GB/s   cold dd {cold_dd / 1e9:6.2f} GB/s   "
        f"(memory: {mapped_again / 1e9:5.2f} GB/s re-reading a map)"
    )
    if naive:
        print(f"  naive       {rate(gb, naive):6.2f} GB/s")
    one_rate, every_rate = rate(gb, one), rate(gb, every)
    print(
        f"  inspect  1t {one_rate:6.2f} GB/s  = {one_rate * 1e9 / limit_mmap:4.2f}x mmap, "
        f"{vs_naive(one)}   (end to end: start-up and imports included)"
    )
    print(
        f"  inspect {threads}t {every_rate:6.2f} GB/s  = {one / every:4.2f}x one thread, "
        f"{vs_naive(every)}   (numpy kernels: {rate(gb, numpy_path):5.2f} GB/s)"
    )
    alone_one, alone_every = rate(gb, scan_one), rate(gb, scan_every)
    print(
        f"  scan alone  {alone_one:6.2f} GB/s 1t = {alone_one * 1e9 / limit_mmap:4.2f}x mmap; "
        f"{alone_every:6.2f} GB/s {threads}t = {scan_one / scan_every:4.2f}x one thread"
    )
    if stepped:
        both, both_one, both_every = (
            rate(2 * gb, compare),
            rate(2 * gb, compare_one),
            rate(2 * gb, compare_every),
        )
        print(
            f"  compare {threads}t {both:6.2f} GB/s over both files = "
            f"{both * 1e9 / limit_mmap:4.2f}x mmap   (end to end)"
        )
        print(
            f"  compare alone {both_one:4.2f} GB/s 1t = {both_one * 1e9 / limit_mmap:4.2f}x mmap; "
            f"{both_every:6.2f} GB/s {threads}t = {both_every * 1e9 / limit_mmap:4.2f}x mmap"
        )
    cold_rate = rate(gb, cold)
    print(f"  cold        {cold_rate:6.2f} GB/s  = {cold_rate * 1e9 / cold_dd:4.2f}x cold dd")
    print(f"  peak RSS    {f'{rss / 1024:6.0f} MiB' if rss >= 0 else 'n/a (no /usr/bin/time)'}\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--mmap-rate"]:
        print(mmap_rates(Path(sys.argv[2]))[0])
    else:
        main()
