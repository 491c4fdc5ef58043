"""Process and device settings: large CPU tensors served from reused memory, true float32 on a GPU, timing."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

import torch

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


@contextlib.contextmanager
def true_float32_convolutions(device: torch.device) -> Iterator[None]:
    """Inside, cuDNN convolutions on float32 run in float32 rather than TensorFloat-32 (PyTorch's default).

    The float32 path is the plain reference; TF32 keeps only 10 mantissa bits. Restores the setting after.
    A no-op off CUDA.
    """
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        owner, name, value = conv, "fp32_precision", "ieee"
    else:
        owner, name, value = torch.backends.cudnn, "allow_tf32", False
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so that a clock read after it is true); a no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
