"""A mutation fuzzer over every reader: valid seeds written by each format's own library, edited
by seeded, structure-aware mutations, and run through `normcli inspect` in child processes under
a memory limit and a per-case timeout (`python tests/fuzzing.py child` is the child).

What each run must do: exit 0 or 2, never a traceback nor a message of Python's own, never hang,
never run anything from a file, an error in one line naming the file, and exit 0 only with
figures that a float64 reference (the format's own library reading the same bytes) also gives.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_mutations import write_cases
from fuzz_seeds import SAMPLE, seeds

# the child's address space: numpy, h5py, onnx and gguf take about 350 MB of it
MEMORY_LIMIT = 1536 << 20
CASE_SECONDS = 10.0


# --- running cases in a child process ----------------------------------------------------------


class Hang(BaseException):
    """A case ran past its time (a BaseException: normcli's error handling does not catch it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


def child_main() -> None:
    """Read case paths (one per line) from stdin; run each; print one JSON line per case."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from click.testing import CliRunner

    from normcli.cli import cli

    for library in ("gguf", "h5py", "onnx"):  # imported before the clock of any case starts
        with contextlib.suppress(ImportError):
            importlib.import_module(library)

    signal.signal(signal.SIGALRM, _alarm)
    runner = CliRunner()
    env = {"COLUMNS": "120", "NO_COLOR": "1", "GITHUB_STEP_SUMMARY": None}
    for line in sys.stdin:
        path = line.rstrip("\n")
        argv = ["inspect", path] if not path.endswith(".report.json") else ["compare", path, SAMPLE]
        argv = [*map(str, argv), "-f", "json", "--no-progress", "--threads", "1"]
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            result = runner.invoke(cli, argv, prog_name="normcli", env=env)
            outcome = {"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                outcome["exception"] = repr(result.exception)
        except Hang:
            outcome = {"code": None, "stdout": "", "stderr": "", "exception": "hang"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcome |= {"path": path, "seconds": time.perf_counter() - began}
        outcome["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(outcome), flush=True)


def run_cases(paths: list[Path], marker: Path) -> list[dict[str, Any]]:
    """Run the cases in one child; a child that dies (or hangs where no alarm reaches) is
    reported against the case it was running."""
    env = {**os.environ, "NORMCLI_FUZZ_MARKER": str(marker), "MALLOC_ARENA_MAX": "2"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    outcomes: list[dict[str, Any]] = []
    pending = list(paths)
    while pending:
        child = subprocess.Popen(
            [sys.executable, __file__, "child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        budget = 60 + CASE_SECONDS * 2 * len(pending)
        try:
            out, err = child.communicate("".join(f"{p}\n" for p in pending), timeout=budget)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        outcomes += done
        pending = pending[len(done) :]
        if pending:  # the child died on pending[0]
            outcomes.append(
                {
                    "path": str(pending[0]),
                    "code": child.returncode,
                    "stdout": "",
                    "stderr": err,
                    "exception": f"child died ({child.returncode})",
                }
            )
            pending = pending[1:]
    return outcomes


# --- judging outcomes ----------------------------------------------------------------------------


def problems(
    outcome: dict[str, Any], reference: Callable[[Path], dict[str, np.ndarray | None]]
) -> list[str]:
    """What is wrong with one case's outcome (nothing, for a clean refusal or a right answer)."""
    found = []
    code, stderr = outcome["code"], outcome["stderr"]
    if outcome.get("exception"):
        found.append(f"exception {outcome['exception']}")
    if code not in (0, 2):
        found.append(f"exit code {code}")
    if any(not line.startswith("normcli") for line in stderr.splitlines()):
        found.append("Python's own message on stderr")
    if code == 2:
        lines = stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("normcli: error: "):
            found.append("not one error line")
        elif outcome["path"] not in lines[0]:
            found.append("the error does not name the file")
        if "internal error" in stderr:
            found.append("internal error")
    if code == 0:
        found += _wrong_figures(outcome, reference)
    return found


def _wrong_figures(
    outcome: dict[str, Any], reference: Callable[[Path], dict[str, np.ndarray | None]]
) -> list[str]:
    try:
        expected = reference(Path(outcome["path"]))
    except Unverifiable:
        return []
    except Exception as e:  # the format's own library refuses what normcli accepted
        return [f"accepted, but the reference reader refuses it ({type(e).__name__}: {e})"]
    doc = json.loads(outcome["stdout"])
    got = {t["name"]: t for t in doc["tensors"]}
    skipped = {t["name"] for t in doc["checkpoint"]["skipped_tensors"]}
    found = []
    if set(got) | skipped != set(expected):
        found.append(f"tensors {sorted(got)} but the reference has {sorted(expected)}")
    for name, tensor in got.items():
        values = expected.get(name)
        if values is not None:
            found += [f"{name}: {p}" for p in _compare(tensor, values)]
    return found


class Unverifiable(Exception):
    """The reference library refuses the file for what normcli does not read (a metadata
    string of a GGUF that is not UTF-8, say): nothing to compare."""


def figures(values: np.ndarray) -> dict[str, float | int | None]:
    """The float64 reference: fsum of exact float64 values, over the finite elements."""
    flat = np.abs(values.reshape(-1)) if values.dtype.kind == "c" else values.reshape(-1)
    with np.errstate(invalid="ignore"):
        x = flat.astype(np.float64)
    finite = x[np.isfinite(x)]
    magnitude = np.abs(finite)
    scale = float(magnitude.max()) if magnitude.size else 0.0
    l2 = scale * math.sqrt(math.fsum((magnitude / scale) ** 2)) if scale else 0.0
    l1 = math.fsum(magnitude)
    return {
        "numel": int(x.size),
        "nan": int(np.isnan(x).sum()),
        "inf": int(np.isinf(x).sum()),
        "l1": l1 if math.isfinite(l1) else None,
        "l2": l2 if math.isfinite(l2) else None,
        "linf": scale if magnitude.size else None,
    }


def _compare(tensor: dict[str, Any], values: np.ndarray) -> list[str]:
    expected = figures(values)
    found = []
    for key, want in expected.items():
        have = tensor[key]
        if want is None or have is None:
            if (want is None) != (have is None) and key != "linf":
                found.append(f"{key} {have} != {want}")
        elif key in ("numel", "nan", "inf", "linf"):
            if have != want:
                found.append(f"{key} {have} != {want}")
        elif not math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-300):
            found.append(f"{key} {have} != {want}")
    return found


def reference_arrays(kind: str, path: Path) -> dict[str, np.ndarray | None]:
    """The tensors of `path` as the format's own library reads them (None: one it does not
    decode, which normcli may read or list as not read)."""
    data = path.read_bytes()
    if kind == "pytorch":
        from torch_reference import UnnamedKey, torch_arrays

        try:
            return dict(torch_arrays(data, path.name.rsplit(".", 1)[0]))
        except UnnamedKey as e:
            raise Unverifiable from e
    if kind == "safetensors":
        from safetensors.numpy import load

        return dict(load(data))
    if kind == "npy":
        return {path.stem: np.load(io.BytesIO(data), allow_pickle=False)}
    if kind == "npz":  # its .npy members, which are all normcli reads
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            members = set(archive.zip.namelist())
            return {k: archive[k] for k in archive.files if f"{k}.npy" in members}
    if kind == "onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(data)
        return {t.name: _decoded(numpy_helper.to_array, t) for t in model.graph.initializer}
    if kind in ("hdf5", "keras"):
        return _h5_arrays(data if kind == "hdf5" else _keras_member(data))
    if kind == "gguf":
        return _gguf_arrays(path)
    if kind == "index":
        return _index_arrays(path)
    if kind in ("report", "torchscript"):  # no second reader to check the figures against
        raise Unverifiable
    raise LookupError(f"no reference reader for {kind}")


def _decoded(decode: Callable[[Any], np.ndarray], tensor: Any) -> np.ndarray | None:
    try:
        return decode(tensor)
    except (TypeError, ValueError, KeyError):  # an element type it does not know
        return None


def _keras_member(data: bytes) -> bytes:
    """The weights file; a stored one is read in place by normcli, whose CRC it cannot check
    (h5py reads it out of order), so its CRC is not checked here either."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open("model.weights.h5") as f:
        if archive.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED:
            f._expected_crc = None  # type: ignore[attr-defined]
        return f.read()


def _h5_arrays(data: bytes) -> dict[str, np.ndarray | None]:
    import h5py

    arrays: dict[str, np.ndarray | None] = {}
    with h5py.File(io.BytesIO(data), "r") as f:

        def visit(name: str | bytes, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                key = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
                arrays[key] = item[()] if item.dtype.kind in "fiucb" else None

        f.visititems(visit)
    return arrays


def _index_arrays(path: Path) -> dict[str, np.ndarray | None]:
    """The tensors of the shards the index names, each where the index says it is."""
    from safetensors.numpy import load_file

    weight_map = json.loads(path.read_text())["weight_map"]
    out: dict[str, np.ndarray | None] = {}
    for shard in sorted(set(weight_map.values())):
        for name, values in load_file(str(path.parent / shard)).items():
            if weight_map.get(name) != shard:
                raise ValueError(f"{name} is not mapped to {shard}")
            out[name] = values
    if set(out) != set(weight_map):
        raise ValueError("the map names tensors no shard holds")
    return out


def _gguf_arrays(path: Path) -> dict[str, np.ndarray]:
    import gguf

    out = {}
    try:
        reader = gguf.GGUFReader(str(path))
    except UnicodeDecodeError as e:  # in a metadata string, which normcli skips unread
        raise Unverifiable from e
    for t in reader.tensors:
        if not t.n_elements:  # which gguf 0.19 cannot dequantize
            out[t.name] = np.zeros(0, np.float32)
            continue
        values = np.array(t.data)
        if t.tensor_type.name not in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
            try:
                with np.errstate(all="ignore"):  # NaN scales are data here, not a mistake
                    values = gguf.quants.dequantize(values, t.tensor_type)
            except NotImplementedError:
                values = None
        out[t.name] = values
    return out


def fuzz(kind: str, folder: Path, count: int, seed_number: int) -> Iterator[tuple[str, list[str]]]:
    """Write and run `count` mutants of `kind`; yield (path, problems) for every case."""
    marker = folder / "EXECUTED"
    paths = write_cases(kind, folder, count, seed_number)
    for outcome in run_cases(paths, marker):
        found = problems(outcome, lambda p: reference_arrays(kind, p))
        if marker.exists():
            found.append("a command from the file was run")
            marker.unlink()
        yield outcome["path"], found


def main(argv: list[str]) -> int:
    """`python tests/fuzzing.py [CASES [SEED]]`: a long run over every format (make fuzz)."""
    import tempfile

    count = int(argv[0]) if argv else 2000
    seed_number = int(argv[1]) if len(argv) > 1 else int(time.time())
    bad = 0
    with tempfile.TemporaryDirectory() as folder:
        for kind in seeds():
            cases = bad_here = 0
            for path, found in fuzz(kind, Path(folder), count, seed_number):
                cases += 1
                if found:
                    bad_here += 1
                    keep = Path("fuzz-findings")
                    keep.mkdir(exist_ok=True)
                    os.replace(path, keep / Path(path).name)
                    print(f"{keep / Path(path).name}: {'; '.join(found)}", flush=True)
                else:
                    os.unlink(path)
            print(f"{kind}: {cases} cases (seed {seed_number}), {bad_here} with problems")
            bad += bad_here
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child_main()
    else:
        sys.exit(main(sys.argv[1:]))
