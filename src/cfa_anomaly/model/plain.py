"""The plain inference graph: the exact CFA forward pass in ordinary ops, the reference and the export path.

backbone -> 3x3-pooled maps -> CoordConv 1x1 descriptor -> squared distances to every memory-bank centre
(one dense product) -> the K nearest (topk) -> softmin score -> bilinear upsampling -> Gaussian blur ->
image score = the map's maximum. No custom autograd Function, no sparse op, no bfloat16: every step is
float32 and traceable, so torch.onnx, OpenVINO and TorchScript take it as it is, and the fast path
(model/matching.py, bfloat16 candidates re-ranked exactly) is tested against it.

The descriptor is applied as the trained model applies it: per backbone layer at the layer's own
resolution with only its products resized (model.per_layer_projection, the default; equal to projecting
the resized, concatenated maps since both steps are linear), or to the aligned maps. All distances are
taken from the bank's mean centre m, which keeps the float32 products' rounding small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cfa_anomaly.model.cfa import CFA
from cfa_anomaly.model.descriptor import align_maps, pool_maps, resize_map
from cfa_anomaly.model.scorer import anomaly_maps, softmin_scores
from cfa_anomaly.runtime import true_float32_convolutions


class PlainCFA(nn.Module):
    """A trained CFA as one float32 graph: images (N, 3, crop, crop) in 0..1 -> (maps (N, crop, crop),
    scores (N,)). The normalisation of the backbone is inside. Built for one crop size."""

    def __init__(self, model: CFA, crop: int) -> None:
        super().__init__()
        if model.memory_bank.shape[0] == 0:
            raise ValueError("the memory bank is empty: train the model or load a checkpoint first")
        device = model.memory_bank.device
        self.extractor = model.extractor
        self.per_layer = model.per_layer
        self.K = model.cfg.K
        self.blur_sigma = model.cfg.blur_sigma
        self.crop = crop
        with torch.no_grad():
            channels = self.extractor.channels
            weight = model.descriptor.projection.conv.weight.detach().float().flatten(1)  # (D, C + 2)
            bias = model.descriptor.projection.conv.bias.detach().float()
            bank = model.memory_bank.detach().float()
            mean = bank.mean(0)
            height = width = self._grid_size(crop)
            coords = model.descriptor.projection.coordinates(height, width, device)  # (H*W, 2)
            # the per-position part of the CoordConv, minus the bank's mean: (1, D, H, W)
            position = torch.addmm(bias - mean, coords, weight[:, sum(channels):].t())
            centred = bank - mean
        blocks = weight[:, : sum(channels)].split(list(channels), dim=1)
        kernels = blocks if self.per_layer else (weight[:, : sum(channels)],)
        for index, kernel in enumerate(kernels):
            self.register_buffer(f"kernel{index}", kernel.contiguous()[:, :, None, None].clone())
        self.layers = len(kernels)
        self.register_buffer("position", position.t().reshape(1, -1, height, width).contiguous())
        self.register_buffer("bank_t", (-2.0 * centred).t().contiguous())  # (D, M)
        self.register_buffer("bank_norms", centred.pow(2).sum(1))  # (M,) |c - m|^2
        self.to(device)

    def _grid_size(self, crop: int) -> int:
        """The stride-4 map's side for this crop (probed: backbones round odd sizes differently)."""
        probe = torch.zeros(1, 3, crop, crop, device=next(iter(self.extractor.buffers())).device)
        with torch.no_grad():
            return int(self.extractor(probe, last_stage_bfloat16=False)[0].shape[-1])

    def describe(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> (N, D, H, W) patch features minus the bank's mean centre."""
        with true_float32_convolutions(images.device):
            pooled = pool_maps(self.extractor(images, last_stage_bfloat16=False))
            size = tuple(pooled[0].shape[-2:])
            maps = pooled if self.per_layer else [align_maps(pooled)]
            total = self.position
            for index, grid in enumerate(maps):
                projected = F.conv2d(grid, getattr(self, f"kernel{index}"))  # the descriptor's 1x1 convolution
                total = total + resize_map(projected, size)
        return total

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.describe(images)
        batch, dimension, height, width = features.shape
        norms = features.pow(2).sum(1).reshape(batch, height * width, 1)  # |p - m|^2, before the one transpose
        rows = features.permute(0, 2, 3, 1).reshape(batch, height * width, dimension)  # (N, H*W, D)
        # |p - c|^2 = |p|^2 + (|c|^2 - 2 p.c): the K smallest of the bracket, then the row's |p|^2 added
        partial = torch.matmul(rows, self.bank_t) + self.bank_norms
        nearest, _ = torch.topk(partial, self.K, dim=2, largest=False, sorted=True)
        squared = (nearest + norms).clamp_min(0.0)
        scores = softmin_scores(squared.reshape(-1, self.K)).reshape(batch, height, width)
        maps = anomaly_maps(scores, (images.shape[-2], images.shape[-1]), self.blur_sigma)
        return maps, maps.flatten(1).amax(dim=1)
