"""Writes the bundled sample checkpoints, byte for byte the same on every run (`make samples`).

A tiny transformer-like model in safetensors and npz, a fine-tuned step of it, a blown-up variant
(one tensor scaled 50x, one NaN) and a bfloat16 copy.

Run: python sample_checkpoints/make_samples.py [DIR]
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

VOCAB, WIDTH, HIDDEN, LAYERS, POSITIONS = 128, 48, 96, 2, 64
SCALED_TENSOR = "model.layers.1.mlp.down_proj.weight"
NAN_TENSOR, NAN_INDEX = "model.layers.0.self_attn.v_proj.weight", (3, 7)
# zip entries carry a timestamp; a fixed one keeps the archive identical run after run
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def base_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + 0.05 * rng.standard_normal(WIDTH)).astype(np.float32)

    model = {"model.embed_tokens.weight": dense(VOCAB, WIDTH)}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}"
        model[f"{prefix}.input_layernorm.weight"] = norm()
        for proj in ("q", "k", "v", "o"):
            model[f"{prefix}.self_attn.{proj}_proj.weight"] = dense(WIDTH, WIDTH)
        model[f"{prefix}.post_attention_layernorm.weight"] = norm()
        model[f"{prefix}.mlp.up_proj.weight"] = dense(HIDDEN, WIDTH)
        model[f"{prefix}.mlp.down_proj.weight"] = dense(WIDTH, HIDDEN)
    model["model.norm.weight"] = norm()
    model["lm_head.weight"] = dense(VOCAB, WIDTH)
    model["model.position_ids"] = np.arange(POSITIONS, dtype=np.int64)
    return model


def finetuned(base: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        name: (t + 1e-3 * rng.standard_normal(t.shape)).astype(t.dtype)
        if t.dtype.kind == "f"
        else t
        for name, t in base.items()
    }


def blown_up(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    result = dict(model)
    result[SCALED_TENSOR] = model[SCALED_TENSOR] * np.float32(50)
    poisoned = model[NAN_TENSOR].copy()
    poisoned[NAN_INDEX] = np.nan
    result[NAN_TENSOR] = poisoned
    return result


SAFETENSORS_NAMES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.int64): "I64",
    np.dtype(ml_dtypes.bfloat16): "BF16",
}


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """The layout the reference writer produces: widest dtype first, then by name; header
    padded with spaces to a multiple of 8 bytes."""
    order = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        header[name] = {
            "dtype": SAFETENSORS_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = b"".join(np.ascontiguousarray(tensors[n]).tobytes() for n in order)
    return struct.pack("<Q", len(text)) + text + data


def npz_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, t in tensors.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, t, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return out.getvalue()


def samples() -> dict[str, bytes]:
    rng = np.random.default_rng(20261126)
    base = base_model(rng)
    tuned = finetuned(base, rng)
    bf16 = {n: t.astype(ml_dtypes.bfloat16) if t.dtype.kind == "f" else t for n, t in base.items()}
    return {
        "base.safetensors": safetensors_bytes(base),
        "base.npz": npz_bytes(base),
        "finetuned.safetensors": safetensors_bytes(tuned),
        "blowup.safetensors": safetensors_bytes(blown_up(tuned)),
        "base-bf16.safetensors": safetensors_bytes(bf16),
    }


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in samples().items():
        (folder / name).write_bytes(data)
        print(f"{folder / name}  {len(data)} bytes")


if __name__ == "__main__":
    main()
