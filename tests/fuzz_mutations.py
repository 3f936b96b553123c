"""The fuzzer's mutations: seeded edits of a seed's bytes, generic (bit flips, cuts at structural
boundaries, lying integer fields, spliced and renamed records) and per format (safetensors
header numbers, .npy headers, pickle opcodes, JSON values, zip members zipped again)."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

from fuzz_seeds import Seed, _pickle_structure, _zip, json_edit, seeds

# --- mutations -----------------------------------------------------------------------------------

Mutation = Callable[[Seed, bytes, random.Random], bytes]


def flip_bits(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    at = rng.randrange(len(out))
    for i in range(rng.choice([1, 2, 4, 8])):
        if at + i < len(out):
            out[at + i] = rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF])
    return bytes(out)


def truncate(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    points = seed.boundaries or [rng.randrange(len(data))]
    at = rng.choice(points) + rng.choice([-1, 0, 0, 1])
    return (
        data[: max(0, min(at, len(data) - 1))] if rng.random() < 0.9 else data[: rng.randrange(64)]
    )


def set_field(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    if not seed.fields:
        return flip_bits(seed, data, rng)
    at, width = rng.choice(seed.fields)
    if at + width > len(data):
        return data
    top = (1 << (8 * width)) - 1
    old = int.from_bytes(data[at : at + width], "little")
    new = rng.choice(
        [0, 1, top, top >> 1, (top >> 1) + 1, old + 1, old - 1, old * 2, old + 4096, len(data)]
    )
    return data[:at] + (new & top).to_bytes(width, "little") + data[at + width :]


def splice(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """A slice of the file copied over another place (overlapping records, repeated names)."""
    a, b = sorted(rng.randrange(len(data)) for _ in range(2))
    piece = data[a : b + 1][:256]
    at = rng.randrange(len(data))
    return data[:at] + piece + data[at + len(piece) :]


def rename(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """One tensor name made another's (same length: padded or cut), or made invalid UTF-8."""
    if not seed.names:
        return set_bytes(seed, data, rng)
    name = rng.choice(seed.names)
    at = data.find(name)
    if at == -1:
        return data
    if rng.random() < 0.5:
        other = rng.choice(seed.names)
        replacement = (other + b"." * len(name))[: len(name)]
    else:
        replacement = name[:-1] + rng.choice([b"\xff", b"\xc3", b"\x80", b"\x1b", b"\n"])
    return data[:at] + replacement + data[at + len(name) :]


def json_number(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """A number of a safetensors header rewritten (length field kept right): shape x dtype
    mismatches, offsets out of range or overlapping, huge and negative values."""
    if len(data) < 8:
        return data
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = data[8 : 8 + length].decode()
    except UnicodeDecodeError:
        return flip_bits(seed, data, rng)
    spots = [i for i, c in enumerate(header) if c.isdigit() and not header[i - 1].isdigit()]
    if not spots or rng.random() < 0.2:
        for old, new in (("F32", "F16"), ("F16", "F64"), ("I32", "BF16"), ("F64", "F8_E4M3")):
            if old in header and rng.random() < 0.5:
                header = header.replace(old, new, 1)
                break
    else:
        at = rng.choice(spots)
        end = at
        while end < len(header) and header[end].isdigit():
            end += 1
        value = rng.choice(["0", "1", "-1", "18446744073709551616", "4294967296", "1e3", "9" * 30])
        value = rng.choice([value, str(int(header[at:end]) + rng.choice([-4, -1, 1, 4]))])
        header = header[:at] + value + header[end:]
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def npy_header(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    if len(data) < 10:
        return data
    (length,) = struct.unpack("<H", data[8:10])
    header = data[10 : 10 + length].decode("latin1")
    edits = [
        ("<f4", "<f8"),
        ("<f8", ">f4"),
        ("<f4", "|O"),
        ("<f8", "<c16"),
        ("False", "True"),
        ("True", "False"),
        ("(5, 7)", "(5, 700000000)"),
        ("(5, 7)", "(35,)"),
        ("(5, 7)", "(-1, 7)"),
        ("(5, 7)", "()"),
        ("'descr'", "'desc'"),
        ("<f4", "<U4"),
    ]
    old, new = rng.choice(edits)
    header = header.replace(old, new, 1)
    raw = header.encode("latin1")
    return data[:8] + struct.pack("<H", len(raw)) + raw + data[10 + length :]


_PICKLE_OPS = b"()]}tlduaeR.0NJKhqrgp\x85\x86\x87\x88\x89\x94XBCU"


def pickle_edit(seed: Seed, data: bytes, rng: random.Random) -> bytes:
    """An opcode replaced, dropped or repeated; a memo index or a length made huge; or a call
    that would run a command, inserted before the STOP."""
    bounds, fields = _pickle_structure(data)
    if not bounds:
        return flip_bits(seed, data, rng)
    choice = rng.random()
    if choice < 0.15:
        stop = data.rfind(b".")
        command = b"touch " + os.environ.get("NORMCLI_FUZZ_MARKER", "/nonexistent").encode()
        call = b"cposix\nsystem\n(X" + struct.pack("<I", len(command)) + command + b"tR0"
        return data[:stop] + call + data[stop:]
    at = rng.choice(bounds)
    if choice < 0.4:
        return data[:at] + bytes([rng.choice(_PICKLE_OPS)]) + data[at + 1 :]
    if choice < 0.55:
        end = next((b for b in bounds if b > at), len(data))
        op = data[at:end]
        return data[:at] + (op * rng.choice([0, 2, 64])) + data[end:]
    if fields:
        spot, width = rng.choice(fields)
        new = rng.choice([0, -1, 1 << (8 * width - 1), 1 << 20]) % (1 << (8 * width))
        return data[:spot] + new.to_bytes(width, "little") + data[spot + width :]
    return flip_bits(seed, data, rng)


_GENERIC: list[Mutation] = [flip_bits, set_bytes, truncate, set_field, splice, rename]
_BY_KIND: dict[str, list[Mutation]] = {
    "safetensors": [json_number, json_number, json_number],
    "npy": [npy_header, npy_header],
    "pytorch": [pickle_edit, pickle_edit, pickle_edit],
    "torchscript": [pickle_edit, pickle_edit, pickle_edit],
    "gguf": [set_field, set_field, set_field],
    "index": [json_edit] * 6,
    "report": [json_edit] * 6,
}


def _member_mutations(name: str) -> list[Mutation]:
    if name.endswith(".npy"):
        return [npy_header, flip_bits, set_bytes, truncate, splice]
    if name.endswith(".pkl"):
        return [pickle_edit, pickle_edit, flip_bits, truncate]
    return [flip_bits, set_bytes, truncate, splice, rename]


def mutate(seed: Seed, rng: random.Random) -> bytes:
    """One mutant; zip formats get their members edited (and zipped again, CRCs right) half the
    time, their archive's own records the other half."""
    if seed.members and rng.random() < 0.5:
        name = rng.choice(sorted(seed.members))
        member = Seed(seed.kind, "", seed.members[name], names=seed.names)
        if name.endswith(".pkl"):
            member.boundaries, member.fields = _pickle_structure(member.data)
        edited = rng.choice(_member_mutations(name))(member, member.data, rng)
        return _zip({**seed.members, name: edited}, seed.compression)
    mutations = _GENERIC + _BY_KIND.get(seed.kind, [])
    data = seed.data
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(mutations)(seed, data, rng) or data
    return data


def write_cases(kind: str, folder: Path, count: int, seed_number: int) -> list[Path]:
    rng = random.Random(f"{kind}-{seed_number}")
    folder.mkdir(parents=True, exist_ok=True)
    sources = seeds()[kind]
    for seed in sources:
        for name, data in seed.companions.items():
            (folder / name).write_bytes(data)
    paths = []
    for i in range(count):
        seed = sources[i % len(sources)]
        path = folder / f"{kind}-{seed_number}-{i:05d}{seed.suffix}"
        path.write_bytes(mutate(seed, rng))
        paths.append(path)
    return paths
