"""The mutation fuzzer (tests/fuzzing.py) over every format: a few hundred seeded cases each,
run in child processes under a memory limit and a per-case timeout. `make fuzz` runs longer."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import fuzz_mutations
import fuzz_seeds
import fuzzing
import numpy as np
import pytest

CASES = int(os.environ.get("NORMCLI_FUZZ_CASES", "250"))
# fixed, so a failure here fails again on the next run; `make fuzz` draws new ones
SEED_NUMBER = 17
KINDS = [
    "safetensors",
    "npy",
    "npz",
    "pytorch",
    "gguf",
    "onnx",
    "hdf5",
    "keras",
    "index",
    "report",
    "torchscript",
]
_OPTIONAL = {"gguf": "gguf", "onnx": "onnx", "hdf5": "h5py", "keras": "h5py"}


@pytest.mark.parametrize("kind", KINDS)
def test_no_mutant_breaks_a_run(kind: str, tmp_path: Path) -> None:
    if kind in _OPTIONAL:
        pytest.importorskip(_OPTIONAL[kind])
    outcomes = list(fuzzing.fuzz(kind, tmp_path, CASES, SEED_NUMBER))
    bad = [f"{Path(path).name}: {'; '.join(found)}" for path, found in outcomes if found]
    assert not bad, f"{len(bad)} of {len(outcomes)} cases:\n" + "\n".join(bad[:20])
    # the mutants reach past the first check: some are read, most refused, none alike
    assert len(outcomes) == CASES


@pytest.mark.parametrize("kind", KINDS)
def test_mutants_are_seeded_and_varied(kind: str, tmp_path: Path) -> None:
    if kind in _OPTIONAL:
        pytest.importorskip(_OPTIONAL[kind])
    first = [p.read_bytes() for p in fuzz_mutations.write_cases(kind, tmp_path / "a", 40, 1)]
    again = [p.read_bytes() for p in fuzz_mutations.write_cases(kind, tmp_path / "b", 40, 1)]
    assert first == again
    assert len(set(first)) > 30


def test_the_judge_catches_what_it_must(tmp_path: Path) -> None:
    """Each rule the fuzz cases are held to fails a case that breaks it."""
    path = str(tmp_path / "x.safetensors")
    values = np.array([3.0, -4.0], np.float32)
    right = {"name": "w", "numel": 2, "nan": 0, "inf": 0, "l1": 7.0, "l2": 5.0, "linf": 4.0}
    stdout = json.dumps({"tensors": [right], "checkpoint": {"skipped_tensors": []}})

    def judge(**outcome: object) -> list[str]:
        full = {"path": path, "code": 0, "stdout": stdout, "stderr": ""} | outcome
        return fuzzing.problems(full, lambda p: {"w": values})

    assert judge() == []
    assert judge(code=2, stderr=f"normcli: error: {path}: bad\n", stdout="") == []
    assert judge(code=1, stdout="")
    assert judge(code=2, stderr="normcli: error: bad\n", stdout="")  # names no file
    assert judge(code=2, stderr=f"Exception ignored\nnormcli: error: {path}: x\n", stdout="")
    assert judge(code=2, stderr=f"normcli: error: {path}: internal error: X\n", stdout="")
    assert judge(code=None, exception="hang", stdout="")
    wrong = json.dumps({"tensors": [right | {"l2": 5.0001}], "checkpoint": {"skipped_tensors": []}})
    assert judge(stdout=wrong)
    assert fuzzing.problems(
        {"path": path, "code": 0, "stdout": stdout, "stderr": ""}, lambda p: {"v": values}
    )


def test_a_memory_bomb_is_caught_by_the_child_limit(tmp_path: Path) -> None:
    """The child's address-space limit turns an allocation past it into a failed case."""
    script = tmp_path / "bomb.py"
    limit = fuzzing.MEMORY_LIMIT
    script.write_text(
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        "try:\n    bytearray(2 << 30)\nexcept MemoryError:\n    sys.exit(3)\n"
    )
    import subprocess
    import sys

    assert subprocess.run([sys.executable, str(script)]).returncode == 3


def test_mutations_cover_every_kind_of_edit() -> None:
    rng = random.Random(0)
    seed = fuzz_seeds.seeds()["safetensors"][0]
    for mutation in [*fuzz_mutations._GENERIC, fuzz_mutations.json_number]:
        assert any(mutation(seed, seed.data, rng) != seed.data for _ in range(5)), mutation


def test_some_pytorch_mutants_would_run_a_command(tmp_path: Path) -> None:
    """The rule "nothing executed" is put to the test: mutants calling os.system are made."""
    paths = fuzz_mutations.write_cases("pytorch", tmp_path, CASES, SEED_NUMBER)
    assert sum(b"cposix\nsystem\n" in p.read_bytes() for p in paths) >= 5
