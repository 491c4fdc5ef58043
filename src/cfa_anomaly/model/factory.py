"""Building a CFA model for a device: shared by training and inference (no training code imported here)."""

from __future__ import annotations

import logging

import torch

from cfa_anomaly.backbones import FeatureExtractor
from cfa_anomaly.config import Config
from cfa_anomaly.errors import CfaError
from cfa_anomaly.model.cfa import CFA
from cfa_anomaly.model.int8_probe import int8_pays
from cfa_anomaly.model.kernels import bfloat16_pays
from cfa_anomaly.runtime import reuse_freed_memory

log = logging.getLogger(__name__)


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
    """model.precision = auto -> mixed where bfloat16 is fast: a GPU with bfloat16, or a CPU whose flags
    announce bfloat16 units and where a probe of the search product (model/kernels.py, once per machine)
    finds bfloat16 faster; else, on a CPU, int8-search where a probe finds the int8 search faster than
    float32's; else float32. mixed and int8-search are close to float32, not exact: an approximate
    nearest-centre search (benchmarks/README.md has how often it misses)."""
    if requested != "auto":
        return requested
    if has_bfloat16_matrix_units(device) and (device.type != "cpu" or bfloat16_pays()):
        return "mixed"
    return "int8-search" if device.type == "cpu" and int8_pays() else "float32"


def build_model(cfg: Config, device: torch.device, precision: str | None = None) -> CFA:
    """Backbone as configured and a freshly initialised descriptor, both seeded (random backbones included).

    precision: the arithmetic to run (float32, mixed, bfloat16, int8-search); default: cfg.model.precision
    resolved for the device; int8-search (a CPU's) on another device runs what auto picks there, with a
    warning. Also has the C library keep freed memory for reuse (runtime.reuse_freed_memory): a third
    faster on a CPU.
    """
    reuse_freed_memory()
    torch.manual_seed(cfg.train.seed)
    extractor = FeatureExtractor(cfg.model.backbone, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    precision = precision or resolve_precision(cfg.model.precision, device)
    if precision == "int8-search" and device.type != "cpu":
        fallback = resolve_precision("auto", device)
        log.warning("model.precision int8-search runs on a CPU only; this %s model runs %s", device.type,
                    fallback)
        precision = fallback
    return CFA(extractor, cfg.model, precision=precision).to(device)
