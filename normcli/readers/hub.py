"""hf://ORG/REPO[@REVISION][/PATH] on the Hugging Face Hub: read from the local Hub cache when it
holds the file (no network at all), else through huggingface_hub's filesystem. A repo with no
path means its checkpoint, as a user would expect: model.safetensors, else its sharded index."""

from __future__ import annotations

import os
import re

from ..errors import InputError, UsageError
from . import remote

_HF_URL = re.compile(
    r"^hf://(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>[^/\s]+))?(?:/(?P<path>.*))?$"
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# what a repo's checkpoint is, in the order a user would look for it
CHECKPOINT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def cache_dir() -> str:
    """The Hub cache, where huggingface_hub looks for it: HF_HUB_CACHE, else HF_HOME/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(url: str) -> str:
    """Where to read `url` from: a path in the local cache, or an hf:// URL naming its
    revision and file. Any other URL is returned as it is."""
    if remote.protocol_of(url) != "hf":
        return url
    match = _HF_URL.match(url)
    if match is None:
        raise UsageError(
            f"{remote.redact(url)!r} is not hf://ORG/REPO[@REVISION][/PATH]",
        )
    repo, revision = match["repo"], match["revision"] or "main"
    path = (match["path"] or "").strip("/")
    cached = _in_cache(repo, revision, path)
    if cached is not None:
        return cached
    if offline():
        what = f"{path!r} of {repo}@{revision}" if path else f"{repo}@{revision}"
        raise InputError(
            f"{what} is not in the local Hugging Face cache ({cache_dir()}), and "
            "HF_HUB_OFFLINE=1 forbids fetching it",
            remote.redact(url),
        )
    base = f"hf://{repo}@{revision}"
    return f"{base}/{path}" if path else _remote_checkpoint(base)


def _in_cache(repo: str, revision: str, path: str) -> str | None:
    """The cached file or folder, following the cache layout (models--ORG--NAME/refs/REV holds
    the commit, snapshots/COMMIT/ the files as links into blobs/)."""
    folder = os.path.join(cache_dir(), "models--" + repo.replace("/", "--"))
    commit = revision if _COMMIT.match(revision) else _read_ref(folder, revision)
    if commit is None:
        return None
    snapshot = os.path.join(folder, "snapshots", commit)
    if not os.path.isdir(snapshot):
        return None
    if path:
        found = os.path.join(snapshot, *path.split("/"))
        return found if os.path.exists(found) else None
    for name in CHECKPOINT_FILES:
        if os.path.isfile(os.path.join(snapshot, name)):
            return os.path.join(snapshot, name)
    return None


def _read_ref(folder: str, revision: str) -> str | None:
    if ".." in revision.split("/"):
        return None
    try:
        with open(os.path.join(folder, "refs", revision), encoding="ascii") as f:
            commit = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if _COMMIT.match(commit) else None


def _remote_checkpoint(base: str) -> str:
    """The repo's checkpoint file on the Hub."""
    present = remote.list_dir(base)
    for name in CHECKPOINT_FILES:
        if present.get(name) == "file":
            return f"{base}/{name}"
    raise InputError(
        f"holds no checkpoint ({', '.join(CHECKPOINT_FILES)}); name a file: {base}/FILE",
        remote.redact(base),
    )
