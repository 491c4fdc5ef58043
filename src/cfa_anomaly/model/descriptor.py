"""The patch descriptor: pool and align the backbone's maps, then a CoordConv 1x1 projection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def pool_maps(maps: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """3x3 average pooling of each backbone map at its own resolution; channels-last, in `dtype` if given."""
    pooled = []
    for feature in maps:
        feature = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)
        pooled.append(feature.to(dtype or feature.dtype, memory_format=torch.channels_last))
    return pooled


def resize_map(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W), bilinear as in CFA's aggregation; the same tensor when h, w = H, W."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


def align_maps(pooled: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pooled maps -> each resized (in float32) to the first map's size and concatenated: (B, C, H, W),
    channels-last."""
    size = tuple(pooled[0].shape[-2:])
    rows = [resize_map(grid.float(), size).to(grid.dtype).permute(0, 2, 3, 1) for grid in pooled]
    return torch.cat(rows, dim=-1).permute(0, 3, 1, 2)


def coordinate_channels(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): x then y, each running linearly from -1 to 1."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y)).unsqueeze(0).expand(batch, -1, -1, -1)


class CoordConv1x1(nn.Module):
    """Append two coordinate channels, then a 1x1 convolution (one weight, no unused parameters).

    forward is the definition, a convolution over the concatenated input. Training and scoring compute the
    same as one matrix product over channels-last rows plus a per-position term for the coordinate channels
    (model/matching.py), and the export graph per backbone layer (model/plain.py); both are tested against
    this definition.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)

    @staticmethod
    def coordinates(height: int, width: int, device: torch.device) -> torch.Tensor:
        """(H*W, 2) float32 (x, y) of every position, row by row."""
        return coordinate_channels(1, height, width, torch.empty(0, device=device))[0].flatten(1).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, out, H, W): the 1x1 convolution of x with its coordinate channels appended."""
        coords = coordinate_channels(x.shape[0], x.shape[2], x.shape[3], x)
        return self.conv(torch.cat((x, coords), dim=1))


class PatchDescriptor(nn.Module):
    """The descriptor's parameters: a CoordConv 1x1 projection of the aggregated backbone features (C
    channels) to target-oriented patch features (C // gamma_d); the model applies it (CFA.describe)."""

    def __init__(self, in_channels: int, gamma_d: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels // gamma_d
        self.projection = CoordConv1x1(in_channels, self.out_channels)

