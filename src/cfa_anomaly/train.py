"""Fitting CFA: one frozen-backbone pass over the training images, memory bank, then a fixed schedule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from cfa_anomaly.config import Config
from cfa_anomaly.console import progress
from cfa_anomaly.errors import CfaError
from cfa_anomaly.io_utils import atomic_write
from cfa_anomaly.model import CFA
from cfa_anomaly.model.cfa import Layers
from cfa_anomaly.model.memory_bank import build_memory_bank
from cfa_anomaly.runtime import synchronize


class TrainingError(CfaError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    radius: float = 0.0
    feature_seconds: float = 0.0  # the one-time frozen-backbone pass
    bank_seconds: float = 0.0  # the one-time memory-bank initialisation
    compile_seconds: float = 0.0  # the one-time torch.compile of the step (model.compile), 0 when eager
    train_seconds: float = 0.0  # the epochs
    images: int = 0


def cache_features(model: CFA, loader: DataLoader, device: torch.device) -> Layers:
    """Run the frozen backbone once per training image; its pooled maps (CFA.aggregate) kept on the device.

    One (N, C_l, h_l, w_l) tensor per entry of CFA.aggregate's list, in its dtype (bfloat16 when the
    descriptor runs in bfloat16). Progress bars (console.progress) show on a terminal only, never under -q.
    """
    count = len(loader.dataset) if hasattr(loader, "dataset") else sum(len(b["image"]) for b in loader)
    cache: Layers = []
    filled = 0
    with torch.no_grad():  # not inference_mode: the cache must be usable as an autograd input later
        for batch in progress(loader, desc="features", unit="batch"):
            layers = model.aggregate(batch["image"].to(device))
            if not cache:  # allocated once, filled in place: peak memory is the cache itself
                cache = [torch.empty((count, *grid.shape[1:]), dtype=grid.dtype, device=device,
                                     memory_format=torch.channels_last) for grid in layers]
            for stored, grid in zip(cache, layers):
                stored[filled: filled + len(grid)] = grid
            filled += len(layers[0])
    if not cache or filled != count:
        raise TrainingError(f"the training loader gave {filled} images, expected {count}")
    return cache


def select_images(cached: Layers, index: torch.Tensor | slice) -> Layers:
    """The cached maps of some training images (a slice or an index tensor), every layer."""
    return [grid[index] for grid in cached]


# patch feature values (images x positions x channels) per forward and backward pass of the training step
STEP_ELEMENTS = 1 << 24


def make_optimizer(params: list[torch.nn.Parameter], cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW with AMSGrad, as the paper trains; fused into one kernel per step on a CPU or a CUDA GPU: the
    same update up to float32 rounding, and on a 2-core Xeon 2.2-2.6 ms per step for wide_resnet50_2's
    descriptor against 7.5-13 ms for torch's default (a pass over all 3.2 M parameters per elementwise op)."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True,
                             fused=fused)


def micro_batches(batch: Layers, dimension: int) -> list[Layers]:
    """A training batch split into parts of at most STEP_ELEMENTS patch feature values each (whole images).

    The step's float32 features, their gradient and the search rows grow with the part, and they set the
    peak memory of training: for wide_resnet50_2 at 224 px a batch of 4 is 22.5 M values, 90 MB per float32
    copy, so it runs as two parts of 2; small backbones run whole. The loss is a mean over the patches, so
    the parts' losses weighted by their share of the batch sum to the batch's loss, and their gradients to
    its gradient (up to float32 rounding).
    """
    count, _, height, width = batch[0].shape
    size = max(1, min(count, STEP_ELEMENTS // (height * width * dimension)))
    return [[grid[start: start + size] for grid in batch] for start in range(0, count, size)]


def batch_loss_backward(model: CFA, batch: Layers) -> torch.Tensor:
    """The batch's training loss, its gradient accumulated into the parameters part by part
    (micro_batches). A part whose loss is not finite stops it: that loss is returned, for the caller to stop
    training (the gradients are then incomplete and must not be applied)."""
    count = batch[0].shape[0]
    total = torch.zeros(())
    for part in micro_batches(batch, model.descriptor.out_channels):
        loss = model.loss(part) * (part[0].shape[0] / count)
        if not torch.isfinite(loss):
            return loss.detach()
        loss.backward()
        total = total + loss.detach().cpu()
    return total


@torch.no_grad()
def init_memory_bank(model: CFA, cached: Layers, batch_size: int, cfg: Config) -> None:
    """Mean untrained-descriptor feature at each position over all training images (k-means if
    gamma_c > 1).

    The descriptor is linear in the pooled maps (bilinear resizes, then a 1x1 projection plus a position
    term), so the mean of its features over the images is its feature of the images' mean maps: one
    description in float32 instead of one per image, the same bank up to float32 rounding, with no
    per-batch (B*H*W, D) feature tensors on top of the cache (~0.3 GB at the training peak before).
    """
    if cached[0].shape[0] < 1:
        raise TrainingError("the memory bank needs at least one training image")
    means = [mean_map(grid, batch_size) for grid in cached]
    mean = model.describe(means, torch.float32)[0]  # (D, H, W)
    model.memory_bank = build_memory_bank(mean, 1, cfg.model.gamma_c, cfg.model.kmeans_iters, cfg.train.seed)


def mean_map(grid: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, C, h, w) cached maps -> (1, C, h, w) float32 mean over the images, channels-last; summed a batch
    at a time (no float32 copy of the whole cache)."""
    total = torch.zeros((1, *grid.shape[1:]), dtype=torch.float32, device=grid.device)
    total = total.contiguous(memory_format=torch.channels_last)
    for start in range(0, grid.shape[0], batch_size):
        total += grid[start: start + batch_size].sum(0, keepdim=True, dtype=torch.float32)
    return total / grid.shape[0]


class EpochObserver(Protocol):
    """Called after every epoch (e.g. validation.ValidationTracker); its state is kept for --resume."""

    def __call__(self, epoch: int, loss: float) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


STATE_FORMAT = "cfa-anomaly-train-state-v1"


def save_training_state(path: Path, model: CFA, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        epoch: int, losses: list[float], cfg: Config,
                        observer: dict[str, Any] | None = None) -> None:
    """Everything needed to continue after `epoch` completed epochs, written atomically."""
    payload = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "losses": list(losses),
        "config": cfg.to_dict(),
        "backbone_weights_sha256": model.extractor.weights_hash(),
        "state": {k: v.detach().cpu() for k, v in model.learned_state().items()},
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "observer": observer or {},
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def read_training_state(path: Path) -> dict[str, Any]:
    """A saved training state (weights_only: no code runs), or a TrainingError naming the file."""
    if not path.is_file():
        raise TrainingError(f"no training state to resume from: {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"cannot read training state {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a cfa-anomaly training state")
    return payload


def fit(model: CFA, loader: DataLoader, cfg: Config, device: torch.device, state_path: Path | None = None,
        resume: dict[str, Any] | None = None, observer: EpochObserver | None = None) -> TrainResult:
    """Train for cfg.train.epochs epochs and end with the final model (no selection on test data).

    state_path: after every epoch the training state is written there (atomically), so a killed run can
    go on with `resume` (a read_training_state payload) and end with the same model as an uninterrupted one.
    observer: called after every epoch with (epoch, mean loss), e.g. to validate; its state is saved too.
    """
    result = TrainResult()
    start = time.perf_counter()
    cached = cache_features(model, loader, device)
    synchronize(device)
    result.images = cached[0].shape[0]
    result.feature_seconds = time.perf_counter() - start

    start = time.perf_counter()
    params = list(model.descriptor.parameters()) + list(model.loss_fn.parameters())
    optimizer = make_optimizer(params, cfg, device)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    first_epoch = 0
    if resume is None:
        init_memory_bank(model, cached, cfg.data.batch_size, cfg)
        synchronize(device)
    else:
        if resume.get("backbone_weights_sha256") != model.extractor.weights_hash():
            raise TrainingError("the saved training state was made with other backbone weights; cannot resume")
        model.load_learned_state(resume["state"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        first_epoch, result.losses = int(resume["epoch"]), list(resume["losses"])
        if observer is not None:
            observer.load_state_dict(resume.get("observer") or {})
    result.bank_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model.warm_up(micro_batches(select_images(cached, slice(0, cfg.data.batch_size)),
                                model.descriptor.out_channels)[0])
    result.compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model.descriptor.train()
    bar = progress(range(first_epoch, cfg.train.epochs), desc="train", unit="epoch", initial=first_epoch,
                   total=cfg.train.epochs)
    for epoch in bar:
        order = torch.randperm(result.images, generator=generator)
        total, batches = 0.0, 0
        for first in range(0, len(order), cfg.data.batch_size):
            batch = select_images(cached, order[first: first + cfg.data.batch_size].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss_backward(model, batch)
            if not torch.isfinite(loss):
                kept = f"; the state after epoch {epoch} is kept in {state_path}" if state_path and epoch else ""
                raise TrainingError(f"the loss became {loss.item()} in epoch {epoch + 1}; lower train.lr{kept}")
            optimizer.step()
            total += loss.item()
            batches += 1
        result.losses.append(total / max(batches, 1))
        bar.set_postfix(loss=f"{result.losses[-1]:.4g}", radius=f"{model.loss_fn.radius.item():.3g}")
        if observer is not None:
            observer(epoch + 1, result.losses[-1])
        if state_path is not None:
            save_training_state(state_path, model, optimizer, generator, epoch + 1, result.losses, cfg,
                                observer.state_dict() if observer is not None else None)
    model.eval()
    synchronize(device)
    result.radius = float(model.loss_fn.radius.detach())
    result.train_seconds = time.perf_counter() - start
    if not math.isfinite(result.radius):
        raise TrainingError("the learned radius is not finite; lower train.lr")
    return result
