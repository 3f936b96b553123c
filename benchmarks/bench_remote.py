"""The remote part of `make bench`: a checkpoint read over HTTP on loopback (a server with Range
support, as the tests use), against fetching the same file whole with fsspec's `cat_file`; and
what `inspect --header-only` of a sharded checkpoint costs in requests and bytes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import serve_folder

MIB = 1 << 20


def _best(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def _write_shards(folder: Path, shards: int, tensors: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    weight_map = {}
    for part in range(1, shards + 1):
        name = f"model-{part:05d}-of-{shards:05d}.safetensors"
        arrays = {
            f"layers.{part}.t{i}": rng.standard_normal(4096).astype(np.float32)
            for i in range(tensors)
        }
        save_file(arrays, str(folder / name))
        weight_map.update(dict.fromkeys(arrays, name))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))


def bench_remote(folder: Path, checkpoint: Path) -> None:
    """`checkpoint` (a safetensors file in `folder`) read over HTTP on 127.0.0.1."""
    import fsspec

    import normcli

    sharded = folder / "remote-sharded"
    sharded.mkdir(exist_ok=True)
    _write_shards(sharded, shards=20, tensors=50)
    servers = serve_folder(str(folder))
    server = next(servers)
    try:
        url = f"{server.url}/{checkpoint.name}"
        size = checkpoint.stat().st_size
        fs = fsspec.filesystem("http")
        whole = _best(2, lambda: fs.cat_file(url))
        server.served.reset()
        scan = _best(2, lambda: normcli.inspect(url))
        fetched = server.served.bytes / 2 / size
        print(f"\nremote: {checkpoint.name} over HTTP on loopback ({size / MIB:.0f} MiB)")
        print(f"  fsspec cat_file, whole file   {size / MIB / whole:8.0f} MiB/s")
        print(
            f"  normcli inspect               {size / MIB / scan:8.0f} MiB/s  "
            f"{whole / scan:.2f}x of cat_file (goal >= 0.8x), {fetched:.3f}x the file fetched"
        )
        from bench import NORMCLI, peak_rss

        rss = peak_rss([*NORMCLI, "inspect", url, "--no-progress"])
        if rss > 0:
            print(f"  peak RSS of `normcli inspect URL`: {rss / 1024:.0f} MiB")
        server.served.reset()
        index = f"{server.url}/{sharded.name}/model.safetensors.index.json"
        started = time.perf_counter()
        count = normcli.inspect(index, header_only=True).checkpoint.tensors
        took = time.perf_counter() - started
        print(
            f"  inspect --header-only, 20 shards ({count} tensors): "
            f"{server.served.requests} requests, {server.served.bytes / 1024:.0f} KiB, {took:.2f} s"
        )
    finally:
        servers.close()
