"""Squared Euclidean distances between patch features and memory-bank centres, in chunks."""

from __future__ import annotations

import torch


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) squared distances, clamped at 0 against rounding."""
    cross = points @ centres.transpose(0, 1)
    return (points.pow(2).sum(1, keepdim=True) - 2.0 * cross + centres.pow(2).sum(1).unsqueeze(0)).clamp_min_(0)


def nearest_centres(points: torch.Tensor, centres: torch.Tensor, k: int,
                    chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest squared distances of each point (ascending) and their centre indices, no gradient.

    Rows are processed in chunks so memory stays flat whatever the number of patches.
    """
    values, indices = [], []
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            dist = squared_distances(points[start: start + chunk], centres)
            v, i = torch.topk(dist, k, dim=1, largest=False, sorted=True)
            values.append(v)
            indices.append(i)
    return torch.cat(values), torch.cat(indices)


def gathered_squared_distances(points: torch.Tensor, centres: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D), (N, k) -> (N, k) squared distances to the chosen centres, differentiable in points."""
    chosen = centres[indices]  # (N, k, D)
    return (points.unsqueeze(1) - chosen).pow(2).sum(-1)
