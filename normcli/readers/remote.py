"""Checkpoints named by URL (s3://, gs://, az://, http(s)://, hf://...): which library each
protocol needs, the storage options of a run, errors turned into one clear line, secrets kept out
of every message, and folder listings. fsspec and the protocol libraries are imported only when a
URL is read: a local run never pays for them."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import formats
from ..errors import InputError, NormcliError, UnsupportedError, UsageError

_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]+)://")
# protocol -> (the package that reads it, the normcli extra that installs it)
_PACKAGES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "adl": ("adlfs", "azure"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
    "hf": ("huggingface_hub", "hf"),
}
# Defaults that make faults show in seconds rather than after minutes of retries; a user's
# --storage-option or fsspec configuration overrides them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "s3": {
        "config_kwargs": {
            "connect_timeout": 5,
            "read_timeout": 60,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
    },
}
# patterns compiled on first use (re caches them): a local run never needs them
_SECRET_QUERY = (
    r"(?i)([?&](?:[a-z0-9_.-]*(?:token|signature|sig|key|secret|credential|password|auth)"
    r"[a-z0-9_.-]*)=)[^&#:\s'\"]*"
)
_USERINFO = r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@"
_SECRET_NAME = r"(?i)(token|secret|password|key|credential|sas|signature)"
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
)

T = TypeVar("T")


def is_url(path: str) -> bool:
    """A URL (scheme://...) rather than a local path; a Windows drive letter is a path."""
    return bool(_URL.match(path))


def protocol_of(url: str) -> str:
    match = _URL.match(url)
    return match["protocol"].lower() if match else "file"


def local_path(url: str) -> str | None:
    """The local path a file:// URL names (read through the memory map like any local path)."""
    if not url.lower().startswith("file://"):
        return None
    return url[len("file://") :] or "/"


# --- the storage options of a run ---------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSpec:
    """Everything needed to open a remote file again, in this process or another: a URL and
    storage options, never a connection."""

    url: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def shown(self) -> str:
        return redact(self.url)


_options: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "normcli_storage_options", default=()
)


@contextlib.contextmanager
def storage_options(options: Mapping[str, Any] | None) -> Iterator[None]:
    """The options (--storage-option KEY=VALUE) of every URL opened within."""
    token = _options.set(tuple(sorted((options or {}).items())))
    try:
        yield
    finally:
        _options.reset(token)


def spec_for(url: str) -> RemoteSpec:
    return RemoteSpec(url, _options.get())


def parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE: true/false/none, integers and decimals as such, anything else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--storage-option {redact(text)!r} is not KEY=VALUE")
    lowered = value.strip().lower()
    parsed: Any = value
    if lowered in ("true", "false"):
        parsed = lowered == "true"
    elif lowered in ("none", "null"):
        parsed = None
    else:
        for convert in (int, float):
            try:
                parsed = convert(value)
                break
            except ValueError:
                continue
    _SECRETS.update({value} if re.search(_SECRET_NAME, key) and len(value) >= 4 else set())
    return key.strip(), parsed


# --- keeping secrets out of messages ------------------------------------------------------------

# values known to be secret (credential options given on the command line)
_SECRETS: set[str] = set()


def redact(text: str) -> str:
    """`text` with user:password@ in URLs, secret query parameters and every known credential
    value replaced by ***."""
    text = re.sub(_USERINFO, r"\1***@", text)
    text = re.sub(_SECRET_QUERY, r"\1***", text)
    secrets = _SECRETS | {v for k in _SECRET_ENV if len(v := os.environ.get(k, "")) >= 4}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# --- filesystems and their errors ---------------------------------------------------------------


def filesystem(spec: RemoteSpec) -> tuple[Any, str]:
    """The fsspec filesystem of `spec` and the path within it."""
    protocol = protocol_of(spec.url)
    _require_package(protocol, spec.shown)
    fsspec_core = importlib.import_module("fsspec.core")
    base = _DEFAULTS.get("s3" if protocol == "s3a" else protocol, {})
    options = {**base, **dict(spec.options)}
    try:
        fs, path = fsspec_core.url_to_fs(spec.url, **options)
    except ImportError as e:
        raise _missing(protocol, spec.shown) from e
    except (ValueError, TypeError) as e:
        raise InputError(f"cannot use this URL: {redact(str(e))}", spec.shown) from e
    return fs, path


def _require_package(protocol: str, shown: str) -> None:
    package = _PACKAGES.get(protocol)
    if package is None:
        return  # a protocol fsspec knows by itself, or reports unknown
    try:
        importlib.import_module(package[0])
    except ImportError as e:
        raise _missing(protocol, shown) from e


def _missing(protocol: str, shown: str) -> UnsupportedError:
    package, extra = _PACKAGES.get(protocol, ("fsspec", "remote"))
    return UnsupportedError(
        f"reading {protocol}:// URLs needs the {package} package (pip install 'normcli[{extra}]')",
        shown,
    )


def call(action: Callable[[], T], shown: str, what: str = "cannot read") -> T:
    """Run one remote operation; its failure as one line naming the URL."""
    try:
        return action()
    except NormcliError:
        raise
    except Exception as e:
        raise describe(e, shown, what) from e


_DNS_FAILURES = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated",
    "getaddrinfo failed",
)


def describe(error: BaseException, shown: str, what: str = "cannot read") -> NormcliError:
    """A remote library's exception as the user's one line. fsspec reports many failures as
    FileNotFoundError; what really happened is in the error it was raised from."""
    chain = _chain(error)
    status = next((s for s in map(_status, chain) if s is not None), None)
    texts = [redact(str(e)) for e in chain if str(e)]
    # the outermost error says what failed, the innermost why (a refused connection...)
    text = " / ".join(dict.fromkeys(texts[:1] + texts[-1:])) or type(error).__name__
    lowered = " ".join(texts).lower()
    if status in (401, 403) or any(isinstance(e, PermissionError) for e in chain):
        return InputError(
            "access denied (403): check the credentials (AWS_*, HF_TOKEN, --storage-option ...)",
            shown,
        )
    if any(s in lowered for s in _DNS_FAILURES):
        return InputError(f"cannot resolve the server's name (DNS): {texts[-1]}", shown)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or (
        "connect" in lowered and any(w in lowered for w in ("refused", "could not", "cannot"))
    ):
        return InputError(f"cannot connect to the server: {texts[-1]}", shown)
    if status == 404 or any(isinstance(e, FileNotFoundError) for e in chain):
        return InputError("no such file, bucket or repository (404 not found)", shown)
    if isinstance(error, IsADirectoryError):
        return InputError("is a folder, not a checkpoint file", shown)
    if status is not None:
        return InputError(f"{what}: the server answered {status}: {text}", shown)
    return InputError(f"{what}: {type(error).__name__}: {text}", shown)


def _chain(error: BaseException) -> list[BaseException]:
    """The error and those it was raised from, outermost first."""
    found: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(found) < 8 and seen not in found:
        found.append(seen)
        seen = seen.__cause__ or seen.__context__
    return found


def _status(error: BaseException) -> int | None:
    for attribute in ("status", "status_code", "code"):
        value = getattr(error, attribute, None)
        if isinstance(value, int):
            return value
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore
        code = response.get("Error", {}).get("Code")
        http = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            return 404
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return 403
        return http if isinstance(http, int) else None
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


# --- folders ------------------------------------------------------------------------------------


def info(spec: RemoteSpec) -> dict[str, Any]:
    fs, path = filesystem(spec)
    found: dict[str, Any] = call(lambda: fs.info(path), spec.shown)
    return found


def is_dir(url: str) -> bool:
    if url.endswith("/"):
        return True
    if protocol_of(url) in ("http", "https"):
        return False  # asking would fetch the whole body to look for links in it
    spec = spec_for(url)
    fs, path = filesystem(spec)
    try:
        return bool(fs.isdir(path))
    except Exception:
        return False


def list_dir(url: str) -> dict[str, str]:
    """The folder's entries: name -> "file" or "directory"."""
    spec = spec_for(url)
    fs, path = filesystem(spec)
    entries = call(lambda: fs.ls(path.rstrip("/"), detail=True), spec.shown)
    found = {}
    for entry in entries:
        name = posixpath.basename(str(entry["name"]).rstrip("/"))
        if name:
            found[name] = "directory" if entry.get("type") == "directory" else "file"
    return found


def listable(url: str) -> bool:
    """Whether the folder of `url` can be listed: not over plain HTTP(S), where a folder is at
    best a web page of links."""
    return protocol_of(url) not in ("http", "https")


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def dirname(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url.split("://", 1)[-1] else url


def join_path(folder: str, name: str) -> str:
    """`name` within `folder`, a local path or a URL."""
    return join(folder, name) if is_url(folder) else os.path.join(folder, name)


def parent(path: str) -> str:
    """The folder holding `path`, a local path or a URL."""
    return dirname(path) if is_url(path) else os.path.dirname(path)


def is_dcp(path: str) -> bool:
    """A torch.distributed.checkpoint folder or its metadata file, local or at a URL. A folder
    at a URL is listed to find out (not over plain HTTP, which cannot list: name its file)."""
    if not is_url(path) or local_path(path) is not None:
        return formats.is_dcp(local_path(path) or path)
    if path.rstrip("/").rsplit("/", 1)[-1] == formats.DCP_METADATA:
        return True
    return listable(path) and is_dir(path) and formats.DCP_METADATA in list_dir(path)
