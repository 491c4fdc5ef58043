"""The patch descriptor: pool and align the backbone's maps, then a CoordConv 1x1 projection."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def aggregate_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """3x3 average pooling of each map, bilinear resize to the first (stride-4) map, concatenation."""
    size = maps[0].shape[-2:]
    pooled = []
    for feature in maps:
        feature = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)
        if feature.shape[-2:] != size:
            feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
        pooled.append(feature)
    return torch.cat(pooled, dim=1)


def coordinate_channels(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): x then y, each running linearly from -1 to 1."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y)).unsqueeze(0).expand(batch, -1, -1, -1)


class CoordConv1x1(nn.Module):
    """Append two coordinate channels, then a 1x1 convolution (one weight, no unused parameters)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        return self.conv(torch.cat((x, coordinate_channels(batch, height, width, x)), dim=1))


class PatchDescriptor(nn.Module):
    """Aggregated backbone features (B, C, H, W) -> target-oriented patch features (B, C // gamma_d, H, W)."""

    def __init__(self, in_channels: int, gamma_d: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels // gamma_d
        self.projection = CoordConv1x1(in_channels, self.out_channels)

    def forward(self, aggregated: torch.Tensor) -> torch.Tensor:
        return self.projection(aggregated)
