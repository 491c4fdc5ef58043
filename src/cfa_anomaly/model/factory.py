"""Building a CFA model for a device: shared by training and inference (no training code imported here)."""

from __future__ import annotations

import torch

from cfa_anomaly.backbones import FeatureExtractor
from cfa_anomaly.config import Config
from cfa_anomaly.errors import CfaError
from cfa_anomaly.model.cfa import CFA
from cfa_anomaly.model.kernels import bfloat16_pays
from cfa_anomaly.runtime import reuse_freed_memory


class DeviceError(CfaError, ValueError):
    """A device that was asked for but is not there; the message says what to use instead."""


def resolve_device(name: str) -> torch.device:
    """auto -> a CUDA device when there is one, else the CPU; cuda[:N] only where CUDA is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def has_bfloat16_matrix_units(device: torch.device) -> bool:
    """bfloat16 products at full speed: AVX512-BF16 or AMX on a CPU, a bf16-capable GPU."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str, device: torch.device) -> str:
    """model.precision = auto -> mixed where bfloat16 is fast, else float32: on a CPU, where the flags
    announce bfloat16 units and a probe of the search product (model/kernels.py, once per machine) finds
    bfloat16 faster. mixed is close to float32, not exact: an approximate nearest-centre search
    (benchmarks/README.md has how often it misses)."""
    if requested != "auto":
        return requested
    if not has_bfloat16_matrix_units(device):
        return "float32"
    return "mixed" if device.type != "cpu" or bfloat16_pays() else "float32"


def build_model(cfg: Config, device: torch.device, precision: str | None = None) -> CFA:
    """Backbone as configured and a freshly initialised descriptor, both seeded (random backbones included).

    precision: the arithmetic to run (float32, mixed, bfloat16); default: cfg.model.precision resolved for
    the device. Also has the C library keep freed memory for reuse (runtime.reuse_freed_memory): a third
    faster on a CPU.
    """
    reuse_freed_memory()
    torch.manual_seed(cfg.train.seed)
    extractor = FeatureExtractor(cfg.model.backbone, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    precision = precision or resolve_precision(cfg.model.precision, device)
    return CFA(extractor, cfg.model, precision=precision).to(device)
