"""Checkpoints: learned state (descriptor, radius, memory bank) and the full config, loaded without code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cfa_anomaly import __version__
from cfa_anomaly.config import Config, ConfigError, config_from_dict
from cfa_anomaly.errors import CfaError
from cfa_anomaly.io_utils import atomic_write
from cfa_anomaly.model import CFA
from cfa_anomaly.model.factory import build_model, resolve_device
from cfa_anomaly.model.precision import resolve_precision
from cfa_anomaly.thresholds import Thresholds

FORMAT = "cfa-anomaly-checkpoint-v1"


class CheckpointError(CfaError, ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(model: CFA, cfg: Config, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write atomically: a crash mid-write never leaves a broken file at path."""
    payload = {
        "format": FORMAT,
        "version": __version__,
        "config": cfg.to_dict(),
        "backbone_channels": list(model.extractor.channels),
        "backbone_weights_sha256": model.extractor.weights_hash(),
        "precision": model.precision,  # resolved (never auto): inference runs it again on any machine
        "state": {k: v.detach().cpu() for k, v in model.learned_state().items()},
        "extra": extra or {},
    }
    atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def read_checkpoint(path: Path) -> tuple[Config, dict[str, Any]]:
    """The config and raw payload of a checkpoint (weights_only: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or foreign files raise many types
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cfa-anomaly checkpoint")
    try:
        cfg = config_from_dict(payload["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its config is invalid: {err}") from err
    return cfg, payload


def load_state_into(model: CFA, payload: dict[str, Any], path: Path) -> None:
    """Load learned state, checking it was made with this backbone."""
    if list(model.extractor.channels) != list(payload["backbone_channels"]):
        raise CheckpointError(
            f"{path} was made with backbone channels {payload['backbone_channels']}, "
            f"but {model.extractor.name} gives {model.extractor.channels}"
        )
    saved_hash = payload.get("backbone_weights_sha256")
    if saved_hash and saved_hash != model.extractor.weights_hash():
        raise CheckpointError(
            f"{path} was trained with other {model.extractor.name} weights (sha256 {saved_hash[:12]}...) than the "
            "ones loaded now; its descriptor only fits those: point model.weights at the same file"
        )
    try:
        model.load_learned_state(payload["state"])
    except (ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: {err}") from err


def saved_precision(payload: dict[str, Any], cfg: Config, device: torch.device) -> str:
    """The arithmetic the model was trained with; checkpoints from before it was stored resolve auto here."""
    return payload.get("precision") or resolve_precision(cfg.model.precision, device)


def saved_thresholds(payload: dict[str, Any]) -> Thresholds:
    """The held-out thresholds stored with a checkpoint (older checkpoints' records included)."""
    return Thresholds.from_dict(payload.get("extra", {}).get("threshold"))


def restore_model(path: Path, device_name: str = "auto",
                  precision: str | None = None) -> tuple[CFA, Config, dict[str, Any]]:
    """The trained model of a checkpoint on a device (default: a GPU when there is one), in eval mode,
    with its config and raw payload. precision: default the one it was trained with."""
    cfg, payload = read_checkpoint(path)
    cfg.train.device = device_name
    device = resolve_device(device_name)
    model = build_model(cfg, device, precision or saved_precision(payload, cfg, device))
    load_state_into(model, payload, Path(path))
    return model.to(device).eval(), cfg, payload
