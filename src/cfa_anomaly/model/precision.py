"""The arithmetic a model runs in: model.precision resolved once, for a device, into one plan that the model
reads (what the backbone, the descriptor's products and the nearest-centre search compute in)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from cfa_anomaly.config import ModelConfig
from cfa_anomaly.model.kernels import bfloat16_pays
from cfa_anomaly.model.search_probe import faster_search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionPlan:
    """What each part of the model computes in, for one resolved model.precision (never auto)."""

    name: str  # float32, mixed, bfloat16, int8-search or projected-search: stored in checkpoints and cards
    backbone: torch.dtype  # the backbone's autocast dtype (bfloat16 under bfloat16 only)
    features: torch.dtype  # the pooled maps and the descriptor's products
    search: torch.dtype  # the nearest-centre search product (candidates re-ranked exactly unless float32)
    last_stage_bfloat16: bool = False  # mixed with model.last_stage_bfloat16: the backbone's last stages
    projected: bool = False  # the float32 search certified by a projection's lower bound (model/search.py)


F32, BF16 = torch.float32, torch.bfloat16
PLANS = {
    "float32": PrecisionPlan("float32", F32, F32, F32),
    "mixed": PrecisionPlan("mixed", F32, BF16, BF16),
    "bfloat16": PrecisionPlan("bfloat16", BF16, BF16, BF16),
    "int8-search": PrecisionPlan("int8-search", F32, F32, torch.int8),
    "projected-search": PrecisionPlan("projected-search", F32, F32, F32, projected=True),
}


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
    finds bfloat16 faster; else, on a CPU, the faster of int8-search and projected-search where a probe
    (model/search_probe.py) finds it faster than the float32 search; else float32. mixed and int8-search
    are close to float32, not exact: an approximate nearest-centre search; projected-search is exact
    (docs/performance.md)."""
    if requested != "auto":
        return requested
    if has_bfloat16_matrix_units(device) and (device.type != "cpu" or bfloat16_pays()):
        return "mixed"
    if device.type != "cpu":
        return "float32"
    return {"int8": "int8-search", "projected": "projected-search"}.get(faster_search(), "float32")


def plan_for(cfg: ModelConfig, device: torch.device, precision: str | None = None) -> PrecisionPlan:
    """The plan a model built for `device` runs: `precision` if given (a checkpoint's), else cfg.precision
    resolved for the device. int8-search (a CPU's) on another device runs what auto picks there, and
    model.last_stage_bfloat16 applies under mixed only; both with a warning."""
    name = precision or resolve_precision(cfg.precision, device)
    if name == "int8-search" and device.type != "cpu":
        fallback = resolve_precision("auto", device)
        log.warning("model.precision int8-search runs on a CPU only; this %s model runs %s", device.type,
                    fallback)
        name = fallback
    return named_plan(name, cfg.last_stage_bfloat16)


def named_plan(name: str, last_stage_bfloat16: bool = False) -> PrecisionPlan:
    """The plan of a resolved precision name; last_stage_bfloat16 kept under mixed only (with a warning)."""
    if name not in PLANS:
        raise ValueError(f"unknown precision {name!r}: use one of {', '.join(PLANS)}")
    plan = PLANS[name]
    if last_stage_bfloat16 and name != "mixed":
        log.warning("model.last_stage_bfloat16 applies under model.precision=mixed only; this model runs %s, "
                    "so its backbone's last stage runs as the rest of it", name)
    elif last_stage_bfloat16:
        plan = replace(plan, last_stage_bfloat16=True)
    return plan
