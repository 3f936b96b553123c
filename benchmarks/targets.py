"""The start-up and end-to-end targets of `make bench`, each a ratio of two figures measured side
by side in this run: small files against `python -c "import numpy"`, a 930-tensor table against
the same run as JSON, 4 GiB files end to end against one thread reading them through a memory map,
and the peak RSS of every normcli run here. The files are generated under `folder`."""

from __future__ import annotations

import json
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

NORMCLI = [sys.executable, "-m", "normcli"]
SAMPLE = Path(__file__).parent.parent / "sample_checkpoints" / "base.safetensors"
MIB = 1 << 20


def run(command: list[str]) -> tuple[float, int]:
    """Wall time (s) and peak RSS (KiB) of a child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return elapsed, usage.ru_maxrss


class Runs:
    """Medians of repeated runs, taken in turns so that figures compared with each other share
    whatever else the machine is doing; and the largest peak RSS of every normcli run."""

    def __init__(self) -> None:
        self.peak_kib = 0

    def medians(self, commands: list[list[str]], times: int) -> list[float]:
        seconds: list[list[float]] = [[] for _ in commands]
        for _ in range(times):
            for command, runs in zip(commands, seconds, strict=True):
                elapsed, rss = run(command)
                runs.append(elapsed)
                if command[: len(NORMCLI)] == NORMCLI:
                    self.peak_kib = max(self.peak_kib, rss)
        return [statistics.median(runs) for runs in seconds]


def write_many_tensors(path: Path, count: int = 930, nbytes: int = 120 * MIB) -> None:
    """A ResNet-152-like checkpoint in bfloat16: `count` tensors of very different sizes."""
    rng = np.random.default_rng(0)
    weights = rng.pareto(1.2, count) + 0.01
    sizes = np.maximum(1, (weights / weights.sum() * nbytes / 2).astype(np.int64))
    header: dict[str, object] = {}
    begin = 0
    for i, size in enumerate(sizes):
        name = f"layer{i // 30}.{i % 30 // 3}.conv{i % 3}.weight"
        header[name] = {
            "dtype": "BF16",
            "shape": [int(size)],
            "data_offsets": [begin, begin + 2 * int(size)],
        }
        begin += 2 * int(size)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    values = (rng.standard_normal(int(sizes.max()), dtype=np.float32) * 0.02).view(np.uint32)
    bits = (values >> 16).astype("<u2")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for size in sizes:
            f.write(bits[:size].tobytes())


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(
    folder: Path,
    write_big: Callable[[Path, str], None],
    mmap_rate: Callable[[Path], float],
) -> None:
    """Measure and print every target; `write_big(path, dtype)` writes a 4 GiB file and
    `mmap_rate(path)` is one thread's page-cache rate over it, in bytes per second, measured
    between the runs it is compared with."""
    runs = Runs()
    small = [[*NORMCLI, "inspect", str(SAMPLE), *extra] for extra in (["-f", "json"], [])]
    numpy_s, *small_s = runs.medians([[sys.executable, "-c", "import numpy"], *small], 9)
    print("targets, each a ratio of figures measured side by side in this run")
    print(f"  python -c 'import numpy'         {numpy_s:6.3f} s")
    for label, seconds in zip(("JSON ", "table"), small_s, strict=True):
        ratio = seconds / numpy_s
        print(
            f"  small file, {label}                {seconds:6.3f} s = {ratio:4.2f}x import numpy"
            f"        target <= 2.0x   {verdict(ratio <= 2.0)}"
        )
    many = folder / "many-tensors.safetensors"
    if not many.exists():
        write_many_tensors(many)
    inspect_many = [*NORMCLI, "inspect", str(many), "--no-progress"]
    as_json, as_table = runs.medians([[*inspect_many, "-f", "json"], inspect_many], 5)
    ratio = as_table / as_json
    print(
        f"  930 tensors, table vs JSON       {as_table:6.3f} s / {as_json:.3f} s = {ratio:4.2f}x"
        f"     target <= 1.3x   {verdict(ratio <= 1.3)}"
    )
    for dtype in ("F32", "BF16"):
        path = folder / f"{dtype.lower()}-4g.safetensors"
        if not path.exists():
            write_big(path, dtype)
        inspect = [*NORMCLI, "inspect", str(path), "--no-progress", "-f", "json"]
        limits, times = [mmap_rate(path)], []
        for _ in range(3):
            times += runs.medians([inspect], 1)
            limits.append(mmap_rate(path))
        limit = statistics.median(limits)
        end_to_end = path.stat().st_size / statistics.median(times)
        ratio = end_to_end / limit
        print(
            f"  4 GiB {dtype:4}, end to end         {end_to_end / 1e9:6.2f} GB/s = {ratio:4.2f}x "
            f"one-thread mmap ({limit / 1e9:5.2f} GB/s)   target >= 0.6x   {verdict(ratio >= 0.6)}"
        )
    peak = runs.peak_kib / 1024
    print(
        f"  peak RSS of every run above      {peak:6.0f} MiB"
        f"                        target <= 256 MiB {verdict(peak <= 256)}\n"
    )
