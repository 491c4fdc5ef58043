"""The memory bank C: the mean descriptor feature at every position, optionally compressed by k-means."""

from __future__ import annotations

import torch

from cfa_anomaly.model.distances import squared_distances


def mean_feature_bank(feature_sum: torch.Tensor, count: int) -> torch.Tensor:
    """(D, H, W) sum of descriptor features over `count` images -> (H*W, D) bank of per-position means."""
    if count < 1:
        raise ValueError("the memory bank needs at least one training image")
    mean = feature_sum / count
    return mean.flatten(1).transpose(0, 1).contiguous()


def kmeans(points: torch.Tensor, n_clusters: int, iterations: int = 100, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns (n_clusters, D) centres. Deterministic for a seed."""
    n_points = points.shape[0]
    if not 1 <= n_clusters <= n_points:
        raise ValueError(f"k-means needs 1 <= n_clusters <= {n_points}, got {n_clusters}")
    points = points.float()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    first = int(torch.randint(n_points, (1,), generator=generator))
    centres = [points[first]]
    closest = squared_distances(points, points[first: first + 1]).squeeze(1)
    for _ in range(1, n_clusters):
        weights = closest.clamp_min(0).cpu().double()
        if float(weights.sum()) <= 0:
            index = int(torch.randint(n_points, (1,), generator=generator))
        else:
            index = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(points[index])
        closest = torch.minimum(closest, squared_distances(points, points[index: index + 1]).squeeze(1))
    centres_t = torch.stack(centres)
    for _ in range(iterations):
        assignment = squared_distances(points, centres_t).argmin(dim=1)
        sums = torch.zeros_like(centres_t).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=n_clusters).unsqueeze(1).to(points.dtype)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centres_t)  # empty cluster: keep centre
        if torch.allclose(updated, centres_t):
            centres_t = updated
            break
        centres_t = updated
    return centres_t


def build_memory_bank(feature_sum: torch.Tensor, count: int, gamma_c: int, iterations: int, seed: int) -> torch.Tensor:
    """Per-position mean bank, compressed to H*W // gamma_c k-means centres when gamma_c > 1."""
    bank = mean_feature_bank(feature_sum, count)
    if gamma_c > 1:
        bank = kmeans(bank, bank.shape[0] // gamma_c, iterations=iterations, seed=seed)
    return bank
