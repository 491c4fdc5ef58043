"""One line naming the machine a benchmark ran on: date, CPU model, cores, AMX / AVX512-BF16, versions."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import time
from collections.abc import Sequence

import torch


def machine_line(packages: Sequence[str] = ("torch",)) -> str:
    """Date (UTC), CPU model and count, AMX and AVX512-BF16, the given packages' versions, torch threads, and
    the instruction-set caps set (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS: an older
    CPU emulated)."""
    lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    amx = "amx_tile" in flags and torch.cpu._is_amx_tile_supported()
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {fields.get('Model name', '?').strip()}, "
            f"{fields.get('CPU(s)', '?').strip()} CPUs, AMX {'yes' if amx else 'no'}, "
            f"AVX512-BF16 {'yes' if 'avx512_bf16' in flags else 'no'}  {', '.join(versions)}  "
            f"torch threads {torch.get_num_threads()}" + "".join(
                f"  {name}={os.environ[name]}" for name in CAPS if os.environ.get(name)))


CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
