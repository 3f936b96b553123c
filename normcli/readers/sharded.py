"""Checkpoints split over several files: a Hugging Face `*.index.json` with its weight map, or a
folder of `*-NNNNN-of-NNNNN.*` shards, read as one model whose tensors name their shard."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import replace

from ..errors import CorruptFileError, InputError, UsageError
from . import remote
from .base import Checkpoint, TensorSource
from .files import load_json

INDEX_SUFFIX = ".index.json"
# the files a folder may hold that are checkpoints (shards among them)
CHECKPOINT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".npz",
    ".npy",
    ".gguf",
    ".onnx",
    ".h5",
    ".keras",
)
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<part>\d+)-of-(?P<count>\d+)(?P<suffix>\.[^.]+)$")

OpenOne = Callable[[str], Checkpoint]


def is_sharded(path: str) -> bool:
    return path.endswith(INDEX_SUFFIX) or _is_dir(path)


def _is_dir(path: str) -> bool:
    return remote.is_dir(path) if remote.is_url(path) else os.path.isdir(path)


def _files(folder: str) -> list[str]:
    """The names of the regular files in `folder`, sorted."""
    if remote.is_url(folder):
        return sorted(n for n, kind in remote.list_dir(folder).items() if kind == "file")
    return sorted(e for e in os.listdir(folder) if os.path.isfile(os.path.join(folder, e)))


def open_sharded(path: str, open_one: OpenOne) -> Checkpoint:
    """`path` is an index file or a folder; `open_one` opens one shard file."""
    if path.endswith(INDEX_SUFFIX) and not _is_dir(path):
        return _from_index(path, open_one)
    if not _is_dir(path):
        raise InputError("no such file or folder", path)
    entries = _files(path)
    indexes = [e for e in entries if e.endswith(INDEX_SUFFIX)]
    if len(indexes) == 1:
        return _from_index(remote.join_path(path, indexes[0]), open_one, shown=path)
    if len(indexes) > 1:
        raise UsageError(f"holds several index files ({', '.join(indexes)}); name one", path)
    files = [e for e in entries if e.lower().endswith(CHECKPOINT_SUFFIXES)]
    if not files:
        raise InputError("holds no checkpoint file", path)
    if len(files) == 1 and not _part_of_more(files[0]):
        return open_one(remote.join_path(path, files[0]))
    shards = _shard_set(files, path)
    if shards is None:
        raise UsageError(
            f"holds several checkpoints ({', '.join(files)}); name the one to read", path
        )
    return _combine(path, [(name, remote.join_path(path, name)) for name in shards], open_one)


def _part_of_more(name: str) -> bool:
    """model-00001-of-00002.safetensors alone is half a model, not a model."""
    match = SHARD_NAME.match(name)
    return bool(match) and int(match["count"]) > 1  # type: ignore[index]


def _shard_set(files: list[str], folder: str) -> list[str] | None:
    """The files, in order, if they are exactly the parts 1..N of one set; else None."""
    matches = [SHARD_NAME.match(name) for name in files]
    if not all(matches):
        return None
    found = [m for m in matches if m]
    if len({(m["stem"], m["count"], m["suffix"]) for m in found}) != 1:
        return None
    parts = sorted(int(m["part"]) for m in found)
    if parts != list(range(1, int(found[0]["count"]) + 1)):
        missing = sorted(set(range(1, int(found[0]["count"]) + 1)) - set(parts))
        if missing:
            raise CorruptFileError(
                f"shard set {found[0]['stem']}-*-of-{found[0]['count']} is missing part(s) "
                f"{', '.join(map(str, missing))}",
                folder,
            )
        return None
    return sorted(files, key=lambda name: int(SHARD_NAME.match(name)["part"]))  # type: ignore[index]


def _from_index(index_path: str, open_one: OpenOne, shown: str | None = None) -> Checkpoint:
    index = load_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptFileError("index has no weight_map of tensor names to shard files", index_path)
    folder = remote.parent(index_path)
    shards = list(dict.fromkeys(weight_map.values()))
    # a shard missing from a folder that cannot be listed is a 404 when it is opened
    present = set(_files(folder or ".")) if remote.listable(index_path) else None
    for shard in shards:
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CorruptFileError(f"index names shard {shard!r} outside its folder", index_path)
        if present is not None and shard not in present:
            raise CorruptFileError(f"index names shard {shard!r}, which does not exist", index_path)
    checkpoint = _combine(
        shown or index_path,
        [(shard, remote.join_path(folder, shard)) for shard in shards],
        open_one,
    )
    try:
        _check_against_map(checkpoint, weight_map, index_path)
    except BaseException:
        checkpoint.close()
        raise
    return checkpoint


def _check_against_map(checkpoint: Checkpoint, weight_map: dict[str, str], index_path: str) -> None:
    found = {t.name: t.shard for t in checkpoint.tensors}
    for name, shard in weight_map.items():
        if name not in found:
            raise CorruptFileError(f"tensor {name!r} is not in its shard {shard!r}", index_path)
        if found[name] != shard:
            raise CorruptFileError(
                f"tensor {name!r} is mapped to {shard!r} but found in {found[name]!r}",
                index_path,
            )
    extra = [name for name in found if name not in weight_map]
    if extra:
        raise CorruptFileError(
            f"shard {found[extra[0]]!r} holds tensor {extra[0]!r}, which the index does not map"
            + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""),
            index_path,
        )


def _combine(shown: str, shards: list[tuple[str, str]], open_one: OpenOne) -> Checkpoint:
    paths = [shard_path for _, shard_path in shards]
    if any(map(remote.is_url, paths)):
        from .remote_file import open_concurrently

        # a request's round trip each: a hundred shards' headers in seconds, not minutes
        opened = open_concurrently(open_one, paths, Checkpoint.close)
    else:
        opened = []
        try:
            for shard_path in paths:
                opened.append(open_one(shard_path))
        except BaseException:
            for checkpoint in opened:
                checkpoint.close()
            raise
    tensors: list[TensorSource] = []
    seen: dict[str, str] = {}
    for (shard, _), checkpoint in zip(shards, opened, strict=True):
        for tensor in checkpoint.tensors:
            if tensor.name in seen:
                for c in opened:
                    c.close()
                raise CorruptFileError(
                    f"tensor {tensor.name!r} appears in two shards, {seen[tensor.name]!r} and "
                    f"{shard!r}",
                    shown,
                )
            seen[tensor.name] = shard
            tensors.append(replace(tensor, shard=shard))
    formats = sorted({c.format for c in opened})
    return Checkpoint(
        shown,
        "+".join(formats),
        sum(c.nbytes for c in opened),
        tensors,
        [close for c in opened for close in c.closers],
        shards=len(opened),
        skipped_values=sum(c.skipped_values for c in opened),
        skipped=[
            (name, f"{reason} (in {shard})")
            for (shard, _), c in zip(shards, opened, strict=True)
            for name, reason in c.skipped
        ],
    )
