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

_handler: Any = None  # the compiled handler, which must outlive every fault
# the address ranges [start, end) of normcli's own maps, as pairs; (0, 0) is a free slot. A fault
# anywhere else (another library's map, in a program using normcli's API) is not normcli's to
# paper over: the handler then restores the default action, and the fault ends the process.
MAX_MAPS = 4096
_maps = (ctypes.c_uint64 * (2 * MAX_MAPS))()
# the faults in each slot's map since the slot was taken: C integers the handler adds to. Counted
# per map, not per process, so that scans running at once (threads of a program using the API)
# each see their own files' faults, and a map that faulted stays known as such for its life
_faults = (ctypes.c_int64 * MAX_MAPS)()
_slots_lock = threading.Lock()


def register(start: int, length: int) -> int | None:
    """Let the handler answer for [start, start + length); the slot to unregister, or None
    when every slot is taken (the caller then reads without a map)."""
    with _slots_lock:
        for slot in range(MAX_MAPS):
            if _maps[2 * slot + 1] == 0:
                _faults[slot] = 0
                _maps[2 * slot] = start
                _maps[2 * slot + 1] = start + length
                return slot
    return None


def unregister(slot: int) -> None:
    with _slots_lock:
        _maps[2 * slot + 1] = 0
        _maps[2 * slot] = 0


def faults(slot: int) -> int:
    """How many pages of the map in `slot` could not be read (and read as zeros)."""
    return int(_faults[slot])


class _Sigaction(ctypes.Structure):
    """struct sigaction as the C library on Linux lays it out."""

    _fields_ = (
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    )


_previous = _Sigaction()  # the action in place before ours, for the faults that are not ours


@intrinsic
def _pointer(typingctx: Any, address: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen


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
    libc = ctypes.CDLL(None, use_errno=True)
    map_zeros = libc.mmap
    # an address as an integer: the same registers as a pointer, and simple to type in numba
    map_zeros.restype = ctypes.c_size_t
    map_zeros.argtypes = (
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    restore = libc.sigaction  # with addresses as integers, as for mmap
    restore.restype = ctypes.c_int
    restore.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t)
    previous = ctypes.addressof(_previous)
    page_size, counter, maps = mmap.PAGESIZE, ctypes.addressof(_faults), ctypes.addressof(_maps)

    # not cached: the addresses of the counters, the table and the C library differ from one
    # process to the next
    @cfunc(types.void(types.int32, types.voidptr, types.voidptr))
    def on_sigbus(signal: Any, info: Any, context: Any) -> None:
        # siginfo_t on 64-bit Linux: si_signo, si_errno, si_code and padding, then si_addr
        address = carray(info, 3, dtype=np.uint64)[2]
        ranges = carray(_pointer(maps), 2 * MAX_MAPS, dtype=np.uint64)
        for slot in range(MAX_MAPS):
            if ranges[2 * slot] <= address < ranges[2 * slot + 1]:
                map_zeros(
                    address - address % page_size,
                    page_size,
                    _PROT_READ,
                    _MAP_PRIVATE_ANONYMOUS_FIXED,
                    -1,
                    0,
                )
                counts = carray(_pointer(counter), MAX_MAPS, dtype=np.int64)
                counts[slot] += 1
                return
        # not ours: the handler there before (the default: the end of the process) takes the
        # fault, raised again on return
        restore(SIGBUS, previous, 0)

    action = _Sigaction(handler=on_sigbus.address, flags=_SA_SIGINFO | _SA_RESTART)
    if restore(SIGBUS, ctypes.addressof(action), previous) != 0:
        return False
    _handler = on_sigbus
    return True
