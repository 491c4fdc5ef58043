"""Fitting CFA: one frozen-backbone pass over the training images, memory bank, then a fixed schedule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cfa_anomaly.backbones import FeatureExtractor
from cfa_anomaly.config import Config
from cfa_anomaly.model import CFA
from cfa_anomaly.model.memory_bank import build_memory_bank


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    radius: float = 0.0
    feature_seconds: float = 0.0
    train_seconds: float = 0.0
    images: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device = {name!r} but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def has_bfloat16_matrix_units(device: torch.device) -> bool:
    """bfloat16 products at full speed: AVX512-BF16 or AMX on a CPU, a bf16-capable GPU."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str, device: torch.device) -> str:
    """model.precision = auto -> mixed where bfloat16 is fast (equivalent results, see benchmarks/), else float32."""
    if requested != "auto":
        return requested
    return "mixed" if has_bfloat16_matrix_units(device) else "float32"


def build_model(cfg: Config, device: torch.device) -> CFA:
    """Backbone as configured and a freshly initialised descriptor, both seeded (random backbones included)."""
    torch.manual_seed(cfg.train.seed)
    extractor = FeatureExtractor(cfg.model.backbone, pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    return CFA(extractor, cfg.model, precision=resolve_precision(cfg.model.precision, device)).to(device)


def cache_features(model: CFA, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Run the frozen backbone once per training image; (N, C, h, w) aggregated maps kept on the device.

    When the descriptor runs in bfloat16 (model.precision mixed or bfloat16) the cache is kept in
    bfloat16: autocast would cast each batch to it anyway, so this halves memory and changes nothing.
    Progress bars here and elsewhere show on a terminal only (disable=None), not in redirected logs.
    """
    dtype = torch.bfloat16 if model.low_precision else torch.float32
    count = len(loader.dataset) if hasattr(loader, "dataset") else sum(len(b["image"]) for b in loader)
    cache: torch.Tensor | None = None
    filled = 0
    with torch.no_grad():  # not inference_mode: the cache must be usable as an autograd input later
        for batch in tqdm(loader, desc="features", unit="batch", leave=False, disable=None):
            features = model.aggregate(batch["image"].to(device))
            if cache is None:  # allocated once, filled in place: peak memory is the cache itself
                cache = torch.empty((count, *features.shape[1:]), dtype=dtype, device=device,
                                    memory_format=torch.channels_last)
            cache[filled: filled + len(features)] = features
            filled += len(features)
    if cache is None or filled != count:
        raise TrainingError(f"the training loader gave {filled} images, expected {count}")
    return cache


@torch.no_grad()
def init_memory_bank(model: CFA, cached: torch.Tensor, batch_size: int, cfg: Config) -> None:
    """Mean untrained-descriptor feature at each position over all training images (k-means if gamma_c > 1)."""
    total = None
    for start in range(0, cached.shape[0], batch_size):
        part = model.describe(cached[start: start + batch_size]).float().sum(dim=0)
        total = part if total is None else total + part
    model.memory_bank = build_memory_bank(
        total.float(), cached.shape[0], cfg.model.gamma_c, cfg.model.kmeans_iters, cfg.train.seed
    )


def fit(model: CFA, loader: DataLoader, cfg: Config, device: torch.device) -> TrainResult:
    """Train for cfg.train.epochs epochs and keep the final model (no selection on test data)."""
    result = TrainResult()
    start = time.perf_counter()
    cached = cache_features(model, loader, device)
    result.images = cached.shape[0]
    result.feature_seconds = time.perf_counter() - start

    start = time.perf_counter()
    init_memory_bank(model, cached, cfg.data.batch_size, cfg)
    params = list(model.descriptor.parameters()) + list(model.loss_fn.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    model.descriptor.train()
    progress = tqdm(range(cfg.train.epochs), desc="train", unit="epoch", leave=False, disable=None)
    for epoch in progress:
        order = torch.randperm(cached.shape[0], generator=generator)
        total, batches = 0.0, 0
        for first in range(0, len(order), cfg.data.batch_size):
            batch = cached[order[first: first + cfg.data.batch_size].to(cached.device)]
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} in epoch {epoch + 1}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        result.losses.append(total / max(batches, 1))
        progress.set_postfix(loss=f"{result.losses[-1]:.4g}", radius=f"{model.loss_fn.radius.item():.3g}")
    model.eval()
    result.radius = float(model.loss_fn.radius.detach())
    result.train_seconds = time.perf_counter() - start
    if not math.isfinite(result.radius):
        raise TrainingError("the learned radius is not finite; lower train.lr")
    return result
