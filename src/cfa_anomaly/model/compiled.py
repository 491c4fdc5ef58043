"""Optional torch.compile (inductor) of the memory-bound part of the descriptor step (model.compile).

The descriptor's front (model/matching.py describe_front: per-layer products, the bilinear resize of the
coarse layers' products, the sums, the squared norms and the search rows) passes over (B, 56, 56, 1792)
float32 tensors several times; inductor fuses those passes into a few loops. The arithmetic stays
float32 (bfloat16 where the eager path rounds to it), so results agree with the eager path to float32
rounding. Compiling needs a C++ compiler on a CPU and takes seconds once per process and input shape;
when it cannot compile, the step runs eagerly and a warning says why (never different numbers silently).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from cfa_anomaly.errors import CfaError

log = logging.getLogger(__name__)


class CompileError(CfaError, RuntimeError):
    """model.compile = on where torch.compile cannot run; the message says why and what to set."""


@functools.cache
def compiler_missing(device_type: str) -> str | None:
    """Why inductor cannot compile for this device type, or None when it can (checked once)."""
    if device_type != "cpu":
        return f"model.compile is measured on CPUs only; the {device_type} path runs eagerly"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001 - inductor raises several types for a missing compiler
        return f"no C++ compiler for torch.compile ({type(err).__name__}: {err}); install g++ or set CXX"
    return None


# auto compiles only steps whose (patches x channels) feature tensor has at least this many elements: 4
# wide_resnet50_2 images at 224 px are 22.5 M; below a few M the passes are short and the compile not worth it
AUTO_MIN_ELEMENTS = 1 << 23


def compile_enabled(setting: str, device: torch.device, elements: int = AUTO_MIN_ELEMENTS) -> bool:
    """auto: compile where it can (a CPU with a C++ compiler) and the step is large (elements: its feature
    tensor's size); on: compile or raise CompileError; off: never."""
    if setting == "off" or (setting == "auto" and elements < AUTO_MIN_ELEMENTS):
        return False
    reason = compiler_missing(device.type)
    if reason is None:
        return True
    if setting == "on":
        raise CompileError(f"model.compile = on, but {reason}; set model.compile=off or auto")
    return False


class Compiled:
    """fn compiled by torch.compile on first use, falling back to fn itself (logged) if compiling fails.

    fn must be pure (no side effects before it could fail), so a failed compile leaves nothing half done.
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.compiled: Callable[..., Any] | None = None  # made on first use: importing dynamo costs ~0.2 GB
        self.failure: str | None = None

    def __call__(self, *args: Any) -> Any:
        if self.failure is not None or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self.fn(*args)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=False)
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - dynamo and inductor raise many types
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("torch.compile of %s failed, running it eagerly from now on (%s)", self.name,
                        self.failure)
            self.compiled = None
            return self.fn(*args)
