"""The patch descriptor: pool and align the backbone's maps, then a CoordConv 1x1 projection."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def aggregate_maps(maps: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """3x3 average pooling of each map, bilinear resize to the first (stride-4) map, concatenation.

    The result is (B, C, H, W) in shape and channels-last in memory, ready for the descriptor's product;
    in `dtype` if given (each map is converted before the concatenation: the same values, half the copying).
    """
    size = maps[0].shape[-2:]
    pooled = []
    for feature in maps:
        feature = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)
        if feature.shape[-2:] != size:
            feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
        pooled.append(feature.permute(0, 2, 3, 1).to(dtype or feature.dtype))
    return torch.cat(pooled, dim=-1).permute(0, 3, 1, 2)


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
