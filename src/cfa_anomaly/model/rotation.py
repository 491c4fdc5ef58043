"""Scoring in the memory bank's principal axes (model.precision=projected-search, no gradient).

The certified search (model/search.py) bounds every point-centre distance from the point's coordinates q in
the bank's principal subspace U (model/projection.py), which costs one (N x D x d) product per batch on top
of the descriptor's. Distances do not change under a rotation, so with Q an orthonormal (D x D) basis whose
first d columns span U, scoring can run on the rotated descriptor Q^T (W x + b - m) and the rotated bank
Q^T (c - m): q is then the first d coordinates of every described patch, and that product is gone. The
distances equal the unrotated ones up to float32 rounding (tests/test_projected_search.py). The rotated
bank is made once per bank (~0.5 s at D = 1792 on a 2-core CPU), the rotated layer again whenever the
weights change (~0.1 s, as in a validation pass after each epoch), against ~17 ms per wide_resnet50_2 image
of the product they save. Training keeps the unrotated descriptor: AdamW's per-coordinate steps are not
rotation invariant, so a rotated training would be another model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cfa_anomaly.model.descriptor import CoordConv1x1
from cfa_anomaly.model.distances import CentredBank, centre_bank
from cfa_anomaly.model.projection import projection_of


class RotatedBank(NamedTuple):
    """A bank in its principal axes, made once per bank."""

    rotation: torch.Tensor  # Q: (D, D) float64 orthonormal, its first d columns spanning the bank's basis
    bank: CentredBank  # centres Q^T (c - m), with a Projection on the first d axes
    source: CentredBank  # the unrotated bank


class RotatedLayer(NamedTuple):
    """The descriptor layer in a bank's principal axes, made again when the weights change."""

    layer: CoordConv1x1  # weight Q^T W, bias Q^T (b - m)
    weight: torch.Tensor  # the unrotated weight and bias it was made from (copies: compared by value)
    bias: torch.Tensor
    bank: RotatedBank


def complete_basis(basis: torch.Tensor) -> torch.Tensor:
    """(D, d) orthonormal columns -> a (D, D) float64 orthonormal matrix whose first d columns span them."""
    return torch.linalg.qr(basis.double(), mode="complete").Q


def rotate_bank(bank: CentredBank) -> RotatedBank:
    """A bank with a Projection in its principal axes (~0.5 s at D = 1792, M = 3136 on a 2-core CPU)."""
    if bank.projection is None:
        raise ValueError("only a bank with a Projection (model.precision=projected-search) is rotated")
    with torch.no_grad():
        rotation = complete_basis(bank.projection.basis)
        rotated = centre_bank((bank.centred.double() @ rotation).float())
        axes = torch.eye(rotated.centred.shape[1], bank.projection.dimension, device=rotated.centred.device)
        projection = projection_of(rotated.centred, rotated.norms, rotated.order, axes)._replace(leading=True)
        return RotatedBank(rotation, rotated._replace(projection=projection), bank)


def rotate_layer(layer: CoordConv1x1, rotated: RotatedBank) -> RotatedLayer:
    """The descriptor layer in the rotated bank's axes (~0.1 s at D = 1792)."""
    with torch.no_grad():
        weight, bias = layer.conv.weight.detach(), layer.conv.bias.detach()
        turned = CoordConv1x1(layer.in_channels, weight.shape[0]).to(weight.device)
        turned.requires_grad_(False)
        rotation = rotated.rotation
        turned.conv.weight.copy_((rotation.t() @ weight.double().flatten(1)).view_as(weight))
        turned.conv.bias.copy_(rotation.t() @ (bias - rotated.source.offset.view(-1)).double())
        return RotatedLayer(turned, weight.clone(), bias.clone(), rotated)


def current_layer(cached: RotatedLayer | None, layer: CoordConv1x1, rotated: RotatedBank) -> bool:
    """Whether `cached` was made from this layer's present weights for this rotated bank."""
    return (cached is not None and cached.bank is rotated
            and torch.equal(cached.weight, layer.conv.weight) and torch.equal(cached.bias, layer.conv.bias))
