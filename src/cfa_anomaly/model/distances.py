"""Squared Euclidean distances between patch features and memory-bank centres, in chunks."""

from __future__ import annotations

import torch


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) squared distances, clamped at 0 against rounding."""
    cross = points @ centres.transpose(0, 1)
    return (points.pow(2).sum(1, keepdim=True) - 2.0 * cross + centres.pow(2).sum(1).unsqueeze(0)).clamp_min_(0)


def nearest_centres(points: torch.Tensor, centres: torch.Tensor, k: int, chunk: int = 512,
                    low_precision: bool = False, extra: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest squared distances of each point (ascending, float32) and their indices; no gradient.

    Exact path: the ranking uses |c|^2 - 2 p.c in one fused float32 product (|p|^2 is constant per row).
    Low-precision path (bfloat16 matrix units): the same product in bfloat16 on data centred on the mean
    centre (smaller magnitudes, smaller rounding) picks k + extra candidates, whose float32 distances
    are then computed exactly and re-ranked, so the returned distances are float32 ones.
    Rows go in small chunks: memory stays flat and the product stays in cache.
    """
    values, indices = [], []
    with torch.no_grad():
        centres32 = centres.float()
        offset = centres32.mean(0, keepdim=True) if low_precision else None
        search = (centres32 - offset).bfloat16() if low_precision else centres32
        search_norms = search.float().pow(2).sum(1).unsqueeze(0).to(search.dtype)
        search_t = search.transpose(0, 1)
        candidates = min(k + extra, centres.shape[0]) if low_precision else k
        for start in range(0, points.shape[0], chunk):
            block = points[start: start + chunk].float()
            query = (block - offset).bfloat16() if low_precision else block
            partial = torch.addmm(search_norms, query, search_t, alpha=-2.0)
            v, i = torch.topk(partial, candidates, dim=1, largest=False, sorted=True)
            if low_precision:
                exact = gathered_squared_distances(block, centres32, i)
                v, order = torch.topk(exact, k, dim=1, largest=False, sorted=True)
                i = i.gather(1, order)
            else:
                v = (v + block.pow(2).sum(1, keepdim=True)).clamp_min_(0)
            values.append(v)
            indices.append(i)
    return torch.cat(values), torch.cat(indices)


def gathered_squared_distances(points: torch.Tensor, centres: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D), (N, k) -> (N, k) squared distances to the chosen centres, differentiable in points."""
    chosen = centres[indices]  # (N, k, D)
    return (points.unsqueeze(1) - chosen).pow(2).sum(-1)
