"""A SIGBUS handler that makes reading through memory maps safe (Linux, with numba).

A mapped page that cannot be read - its file cut short since it was mapped (a checkpoint
rewritten in place while it is read), or a read error of the disk or network - is a SIGBUS,
which ends the process. The handler compiled here maps a page of zeros over the faulting page,
so the read goes on, and counts the fault against that map; the readers check their maps' counts
after every chunk and turn a fault into an error naming the file. Until the handler is
installed, files are read with positioned reads, which report such failures themselves.

It answers only for the address ranges of normcli's own maps (register); any other SIGBUS goes
to the handler that was there before (by default, the end of the process). The handler never
touches the Python interpreter: it is native code (a numba cfunc) calling the C library, so it
runs safely on a thread that does not hold the GIL.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
from collections.abc import Callable
from typing import Any

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types  # type: ignore[attr-defined]  # carray is public, unlisted
from numba.extending import intrinsic as numba_intrinsic

# numba calls an intrinsic without the typing context it is declared with, which mypy cannot
# follow: the intrinsics it makes are typed as Any
intrinsic: Callable[[Callable[..., Any]], Any] = numba_intrinsic

SIGBUS = 7 if sys.platform == "linux" else 0
_SA_SIGINFO, _SA_RESTART = 4, 0x10000000
_PROT_READ, _MAP_PRIVATE_ANONYMOUS_FIXED = 1, 0x02 | 0x20 | 0x10
# the address ranges [start, end) of normcli's own maps, as pairs; (0, 0) is a free slot. A fault
# anywhere else (another library's map, in a program using normcli's API) is not normcli's to
# paper over: the handler then restores the default action, and the fault ends the process.
MAX_MAPS = 4096


class _Sigaction(ctypes.Structure):
    """struct sigaction as the C library on Linux lays it out."""

    _fields_ = (
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    )


class _State(ctypes.Structure):
    """All the handler knows, in one block of C memory: the page size, the maps' ranges, the
    faults in each slot's map since the slot was taken, and the action in place before ours
    (for the faults that are not ours). Faults are counted per map, not per process, so that
    scans running at once (threads of a program using the API) each see their own files'
    faults, and a map that faulted stays known as such for its life."""

    _fields_ = (
        ("page_size", ctypes.c_uint64),
        ("maps", ctypes.c_uint64 * (2 * MAX_MAPS)),
        ("faults", ctypes.c_int64 * MAX_MAPS),
        ("previous", _Sigaction),
    )


# The compiled handler finds the state by this symbol name, resolved when its code is loaded,
# rather than by an address written into the code: the code is then the same in every process,
# and numba's cache keeps it (compiling it took 0.1-0.3 s of every big job's start).
_SYMBOL = "normcli_sigbus_state"
_MAPS_AT, _FAULTS_AT = _State.maps.offset, _State.faults.offset
_PREVIOUS_AT = _State.previous.offset
_state = _State(page_size=mmap.PAGESIZE)
_handler: Any = None  # the compiled handler, which must outlive every fault
_slots_lock = threading.Lock()


def register(start: int, length: int) -> int | None:
    """Let the handler answer for [start, start + length); the slot to unregister, or None
    when every slot is taken (the caller then reads without a map)."""
    maps = _state.maps
    with _slots_lock:
        for slot in range(MAX_MAPS):
            if maps[2 * slot + 1] == 0:
                _state.faults[slot] = 0
                maps[2 * slot] = start
                maps[2 * slot + 1] = start + length
                return slot
    return None


def unregister(slot: int) -> None:
    with _slots_lock:
        _state.maps[2 * slot + 1] = 0
        _state.maps[2 * slot] = 0


def faults(slot: int) -> int:
    """How many pages of the map in `slot` could not be read (and read as zeros)."""
    return int(_state.faults[slot])


@intrinsic
def _pointer(typingctx: Any, address: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen


@intrinsic
def _state_address(typingctx: Any) -> Any:
    """The address of the state, as an integer: the symbol, declared in the compiled code."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        module = builder.module
        try:
            state = module.get_global(_SYMBOL)
        except KeyError:
            state = ir.GlobalVariable(module, ir.IntType(8), name=_SYMBOL)
            state.linkage = "external"
        return builder.ptrtoint(state, ir.IntType(64))

    return types.uint64(), codegen


# the C library's functions, linked by name; addresses are passed as integers: the same
# registers as pointers, and simple to type in numba
_map_zeros: Any = types.ExternalFunction(
    "mmap",
    types.uint64(types.uint64, types.uint64, types.int32, types.int32, types.int32, types.int64),
)
_sigaction: Any = types.ExternalFunction(
    "sigaction", types.int32(types.int32, types.uint64, types.uint64)
)


def _on_sigbus(signal: Any, info: Any, context: Any) -> None:
    # siginfo_t on 64-bit Linux: si_signo, si_errno, si_code and padding, then si_addr
    address = carray(info, 3, dtype=np.uint64)[2]
    state = _state_address()
    page_size = carray(_pointer(state), 1, dtype=np.uint64)[0]
    ranges = carray(_pointer(state + _MAPS_AT), 2 * MAX_MAPS, dtype=np.uint64)
    counts = carray(_pointer(state + _FAULTS_AT), MAX_MAPS, dtype=np.int64)
    for slot in range(MAX_MAPS):
        if ranges[2 * slot] <= address < ranges[2 * slot + 1]:
            page = address - address % page_size
            _map_zeros(page, page_size, _PROT_READ, _MAP_PRIVATE_ANONYMOUS_FIXED, -1, 0)
            counts[slot] += 1
            return
    # not ours: the handler there before (the default: the end of the process) takes the
    # fault, raised again on return
    _sigaction(SIGBUS, state + _PREVIOUS_AT, 0)


def install() -> bool:
    """Install the handler (once, for the whole process); whether it is in place. Only on
    64-bit Linux, whose siginfo_t and struct sigaction the handler knows.

    A process-wide effect of using normcli as a library: the first scan big enough for the
    compiled kernels installs it (kernels.load). It answers only for normcli's own maps; a
    SIGBUS anywhere else goes to the handler that was there before (by default, the end of the
    process), as if normcli's were not there. It stays installed until the process ends."""
    global _handler
    if _handler is not None:
        return True
    if not SIGBUS or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    llvmlite.binding.add_symbol(_SYMBOL, ctypes.addressof(_state))
    signature = types.void(types.int32, types.voidptr, types.voidptr)
    try:
        handler = cfunc(signature, cache=True)(_on_sigbus)
    except RuntimeError:  # no folder numba may cache in: compiled in this process
        handler = cfunc(signature)(_on_sigbus)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigaction.restype = ctypes.c_int
    libc.sigaction.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    action = _Sigaction(handler=handler.address, flags=_SA_SIGINFO | _SA_RESTART)
    previous = ctypes.addressof(_state) + _PREVIOUS_AT
    if libc.sigaction(SIGBUS, ctypes.addressof(action), previous) != 0:
        return False
    _handler = handler
    return True
