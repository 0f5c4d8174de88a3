"""Keep freed memory in the process, so that model batches do not fault their memory in again.

A forward of the daily model over 1,024 items allocates and frees some forty tensors of 0.1-2 MB.
glibc serves blocks above its mmap threshold with fresh mappings and unmaps them when they are
freed, and it gives the top of its heap back to the kernel beyond a trim threshold. Its adaptive
threshold did not hold for torch's mix of sizes and threads: on the development machine (a
virtual machine, where a page fault is dear) a forward took 1,200-2,800 minor faults, a third of
its time and more. With both thresholds raised, freed blocks are reused and a forward takes none
(``tests/unit/test_allocator.py``; the README's figures log has the before and after).

The cost is that memory freed after a peak stays with the process (it is reused by the next batch
or training step), up to :data:`TRIM_THRESHOLD` at the top of each heap. Blocks above
:data:`MMAP_THRESHOLD` (the largest glibc accepts) are still mapped and unmapped one by one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap and are reused once freed (glibc's ceiling on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory kept at the top of a heap before any is handed back.
TRIM_THRESHOLD = 512 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt does nothing
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def is_glibc() -> bool:
    """Whether this process runs on glibc, the C library whose thresholds the setting raises."""
    return _glibc() is not None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring); returns
    whether it did: False on other platforms and C libraries, where nothing changes."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return mapped == 1 and trimmed == 1  # mallopt's success
