"""Scoring in the memory bank's principal axes (model.precision=projected-search, no gradient).

The certified search (model/search.py) bounds every point-centre distance from the point's coordinates q in
the bank's principal subspace U (model/projection.py), which costs one (N x D x d) product per batch on top
of the descriptor's. Distances do not change under a rotation, so with Q an orthonormal (D x D) basis whose
first d columns span U, scoring can run on the rotated descriptor Q^T (W x + b - m) and the rotated bank
Q^T (c - m): q is then the first d coordinates of every described patch, and that product is gone. The
rotated weights are made once per model (Q^T W, ~6 GMAC in float64); the distances equal the unrotated
ones up to float32 rounding (tests/test_projected_search.py). Training keeps the unrotated descriptor: AdamW's
per-coordinate steps are not rotation invariant, so a rotated training would be another model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cfa_anomaly.model.descriptor import CoordConv1x1
from cfa_anomaly.model.distances import CentredBank, centre_bank
from cfa_anomaly.model.projection import projection_of


class Rotated(NamedTuple):
    """The descriptor layer and the bank in the bank's principal axes, and what they were made from."""

    layer: CoordConv1x1  # weight Q^T W, bias Q^T (b - m)
    bank: CentredBank  # centres Q^T (c - m), with a Projection on the first d axes
    weight: torch.Tensor  # the descriptor weight and bias rotated (copies: compared by value)
    bias: torch.Tensor
    source: CentredBank  # the unrotated bank


def complete_basis(basis: torch.Tensor) -> torch.Tensor:
    """(D, d) orthonormal columns -> a (D, D) float64 orthonormal matrix whose first d columns span them."""
    return torch.linalg.qr(basis.double(), mode="complete").Q


def rotate(layer: CoordConv1x1, bank: CentredBank) -> Rotated:
    """The layer and the bank (one with a Projection) in the bank's principal axes."""
    if bank.projection is None:
        raise ValueError("only a bank with a Projection (model.precision=projected-search) is rotated")
    with torch.no_grad():
        rotation = complete_basis(bank.projection.basis)
        weight, bias = layer.conv.weight.detach(), layer.conv.bias.detach()
        turned = CoordConv1x1(layer.in_channels, weight.shape[0]).to(weight.device)
        turned.requires_grad_(False)
        turned.conv.weight.copy_((rotation.t() @ weight.double().flatten(1)).view_as(weight))
        turned.conv.bias.copy_(rotation.t() @ (bias - bank.offset.view(-1)).double())
        centred = (bank.centred.double() @ rotation).float()
        rotated = centre_bank(centred)
        axes = torch.eye(centred.shape[1], bank.projection.dimension, device=centred.device)
        projection = projection_of(rotated.centred, rotated.norms, rotated.order, axes)._replace(leading=True)
        return Rotated(turned, rotated._replace(projection=projection), weight.clone(), bias.clone(), bank)


def current(cached: Rotated | None, layer: CoordConv1x1, bank: CentredBank) -> bool:
    """Whether `cached` was made from this layer's present weights and this bank."""
    return (cached is not None and cached.source is bank
            and torch.equal(cached.weight, layer.conv.weight) and torch.equal(cached.bias, layer.conv.bias))
