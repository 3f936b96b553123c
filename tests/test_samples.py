"""The bundled samples: `make samples` reproduces them byte for byte, and the reference loader
reads what the script wrote."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

SAMPLES = Path(__file__).parent.parent / "sample_checkpoints"
SCRIPT = SAMPLES / "make_samples.py"


def test_the_script_reproduces_every_sample_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], check=True, capture_output=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in SAMPLES.iterdir() if p.suffix != ".py")
    for name in made:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name
        assert (tmp_path / name).stat().st_size < 300_000


def test_the_safetensors_package_reads_the_samples_as_written() -> None:
    script = runpy.run_path(str(SCRIPT))
    blowup = load_file(str(SAMPLES / "blowup.safetensors"))
    tuned = load_file(str(SAMPLES / "finetuned.safetensors"))
    scaled = script["SCALED_TENSOR"]
    np.testing.assert_array_equal(blowup[scaled], tuned[scaled] * np.float32(50))
    assert np.isnan(blowup[script["NAN_TENSOR"]]).sum() == 1
    with np.load(SAMPLES / "base.npz") as npz:
        base = load_file(str(SAMPLES / "base.safetensors"))
        assert set(npz.files) == set(base)
        for name in base:
            np.testing.assert_array_equal(npz[name], base[name])
