"""Building a CFA model for a device: shared by training and inference (no training code imported here)."""

from __future__ import annotations

import torch

from cfa_anomaly.backbones import FeatureExtractor
from cfa_anomaly.config import Config
from cfa_anomaly.errors import CfaError
from cfa_anomaly.model.cfa import CFA
from cfa_anomaly.model.precision import plan_for
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


def build_model(cfg: Config, device: torch.device, precision: str | None = None) -> CFA:
    """Backbone as configured and a freshly initialised descriptor, both seeded (random backbones included).

    precision: the arithmetic to run (float32, mixed, bfloat16, int8-search, projected-search); default:
    cfg.model.precision resolved for the device (model/precision.py plan_for). Also has the C library keep
    freed memory for reuse (runtime.reuse_freed_memory): a third faster on a CPU.
    """
    reuse_freed_memory()
    torch.manual_seed(cfg.train.seed)
    extractor = FeatureExtractor(cfg.model.backbone, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    return CFA(extractor, cfg.model, precision=plan_for(cfg.model, device, precision)).to(device)
