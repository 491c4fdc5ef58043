"""Process settings that make CPU runs fast: large tensors served from reused memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


@functools.cache
def reuse_freed_memory() -> bool:
    """Have glibc serve large blocks from the heap and keep freed ones for reuse; True if it took effect.

    By default glibc maps every block over 32 MiB fresh from the kernel and unmaps it on free, so each
    training step of CFA (several 45-90 MB tensors per batch) paid for page faults and zeroing again:
    about a third of the step time on a 2-core CPU (benchmarks/README.md). The cost is that the process
    keeps its peak memory instead of returning it to the system. A no-op where the C library is not glibc.
    Called when the toolkit builds a model; idempotent.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
