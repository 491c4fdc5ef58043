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


def aggregate_maps(maps: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """3x3 average pooling of each map, bilinear resize to the first (stride-4) map, concatenation.

    The result is (B, C, H, W) in shape and channels-last in memory, ready for the descriptor's product,
    in `dtype` if given.
    """
    return align_maps(pool_maps(maps, dtype))


def coordinate_channels(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): x then y, each running linearly from -1 to 1."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y)).unsqueeze(0).expand(batch, -1, -1, -1)


class CoordConv1x1(nn.Module):
    """Append two coordinate channels, then a 1x1 convolution (one weight, no unused parameters).

    Computed as one matrix product over channels-last rows, plus a per-position term for the coordinate
    channels (W_xy @ coords + b, the same for every image): identical to the convolution on the
    concatenated input, without copying the input to append two channels. The output is NCHW in shape
    and channels-last in memory, so flattening it to (patches, channels) costs nothing.
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
        _, _, height, width = x.shape
        weight = self.conv.weight.flatten(1)  # (out, in + 2)
        coords = self.coordinates(height, width, x.device)
        with torch.autocast(x.device.type, enabled=False):  # float32, as in matching.describe_and_match
            position_term = torch.addmm(self.conv.bias, coords, weight[:, self.in_channels:].t())  # (H*W, out)
        rows = F.linear(x.permute(0, 2, 3, 1), weight[:, : self.in_channels])  # (B, H, W, out)
        rows = rows + position_term.view(height, width, -1).to(rows.dtype)
        return rows.permute(0, 3, 1, 2)


class PatchDescriptor(nn.Module):
    """Aggregated backbone features (B, C, H, W) -> target-oriented patch features (B, C // gamma_d, H, W)."""

    def __init__(self, in_channels: int, gamma_d: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels // gamma_d
        self.projection = CoordConv1x1(in_channels, self.out_channels)

    def forward(self, aggregated: torch.Tensor) -> torch.Tensor:
        return self.projection(aggregated)
