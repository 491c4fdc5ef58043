"""Literal references for the model's pieces: written from the method's formulas, in float64 where it matters,
with nothing shared with the code under test. Whole-model references are PlainCFA (model/plain.py), itself
tested against these."""

from __future__ import annotations

import torch

from cfa_anomaly.model.descriptor import CoordConv1x1
from cfa_anomaly.model.distances import centre_bank
from cfa_anomaly.model.matching import describe_and_match
from cfa_anomaly.model.projection import project_centres


def patch_rows(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) patch features -> (B*h*w, D), one row per patch, row by row."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def nearest_reference(points: torch.Tensor, centres: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest float64 squared distances of each point to the centres, ascending, and their indices
    (every distance computed, then sorted); differentiable in the points."""
    distances = (points.double().unsqueeze(1) - centres.double().unsqueeze(0)).pow(2).sum(-1)
    values, indices = torch.sort(distances, dim=1)
    return values[:, :k], indices[:, :k]


def softmin_reference(squared: torch.Tensor) -> torch.Tensor:
    """(N, K) ascending squared distances -> (N,) softmin(d)[0] * d[0] with d the Euclidean distances."""
    distances = squared.double().sqrt()
    return torch.softmax(-distances, dim=1)[:, 0] * distances[:, 0]


def identity_layer(dimension: int) -> CoordConv1x1:
    """A CoordConv 1x1 layer that passes its input through: weight [I, 0], bias 0."""
    layer = CoordConv1x1(dimension, dimension)
    with torch.no_grad():
        layer.conv.weight.zero_()
        layer.conv.weight[:, :dimension, 0, 0] = torch.eye(dimension)
        layer.conv.bias.zero_()
    return layer


def model_search(points: torch.Tensor, centres: torch.Tensor, k: int, search: torch.dtype = torch.float32,
                 projection: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own nearest-centre search (model/matching.py, as training and scoring run it) on given
    points: (N, D) points as a 1 x N map through an identity layer -> (N, k) float32 squared distances,
    ascending, and centre indices. projection: d, for the certified search with a d-dimensional projection
    (model.precision=projected-search)."""
    dimension = points.shape[1]
    grid = points.t().reshape(1, dimension, 1, -1).contiguous(memory_format=torch.channels_last)
    bank = centre_bank(centres, search=search)
    if projection is not None:
        bank = bank._replace(projection=project_centres(bank.centred, bank.norms, bank.order, projection))
    with torch.no_grad():
        return describe_and_match(identity_layer(dimension), grid, bank, k)
