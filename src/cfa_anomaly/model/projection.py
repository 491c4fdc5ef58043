"""A lower bound on every point-centre distance from one narrow product: the certified search's candidates
(model.precision=projected-search, model/search.py).

With m the mean centre and U a (D x d) orthonormal basis of the bank's leading principal directions, write a
centred point p - m as its projection q = (p - m) U plus a residual r_p orthogonal to U, and a centre alike
(b, r_c). Then |p - c|^2 = |q - b|^2 + |r_p - r_c|^2 >= |q - b|^2 + (rho_p - rho_c)^2, with rho the
residuals' lengths (the triangle inequality): one product of width d + 3,

    [q, |q|^2 + rho_p^2, 1, -2 rho_p] . [-2 b, 1, |b|^2 + rho_c^2, rho_c],

gives this bound for every pair. Any orthonormal U keeps it a bound; the bank's leading directions make it
tight where it matters, because a bank of mean features lies close to a low-dimensional subspace (rho_c
small), so that the only slack, 2 rho_p rho_c (1 - cos), is small. d is the smallest multiple of 16 that
leaves at most RESIDUAL_SHARE of the bank's variance outside U (with model/search.py's 24 extra candidates,
every patch of models trained on the shared real sets was then certified, and 95-100% of random-weight
wide_resnet50_2's, 51% in the worst training step; benchmarks/README.md); no projection is made (the
search keeps the full float32 product) where the bound would cost more than MAX_COST of the full product
(small D) or leave more than RESIDUAL_LIMIT out.

The points' side is float32 (the centres' b and rho_c, and the basis's orthonormalisation, float64);
bound_rows gives each row the slack that covers the float32 rounding of its bound, so the bound minus the
slack stays below the true distance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

RESIDUAL_SHARE = 2e-4  # the bank's variance a basis leaves out, at most
RESIDUAL_LIMIT = 1e-3  # ... or at most this at the largest d that pays; else no projection
GRANULE = 16  # d is a multiple of this (or D)
MAX_COST = 0.4  # (D d + (d + 3) M) / ((D + 3) M): above this the search keeps the full product
ROUNDING = 8.0  # the slack's rounding allowance, in units of 2^-24 sqrt(length) of each float32 sum
BOUND_COLUMNS = 3  # appended to q: |q|^2 + rho_p^2, 1, -2 rho_p


class Projection(NamedTuple):
    """A bank's principal subspace, prepared for the bound's product (no gradient)."""

    basis: torch.Tensor  # (D, d) float32, orthonormal columns
    columns: torch.Tensor  # (d + 3, M) float32: -2 b, 1, |b|^2 + rho_c^2, rho_c; centres in search order
    radius: float  # the largest rho_c
    norm: float  # the largest |c - m|^2
    leading: bool = False  # the basis is the first d coordinate axes: q is a slice (model/rotation.py)

    @property
    def dimension(self) -> int:
        return self.basis.shape[1]


def principal_directions(centred: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, D) centred rows -> approximately the `count` leading eigenvalues (descending) of their (D, D)
    Gram matrix and (D, count) float64 orthonormal vectors spanning about their eigenvectors.

    Up to 2 count < D, by subspace iteration in float32 (two passes of the Gram matrix on a seeded random
    start, then Rayleigh-Ritz), the vectors orthonormalised in float64 at the end: on a 2-core CPU the
    float64 eigen decomposition of a 1792 x 1792 matrix took seconds, this about half of one. Approximate
    directions make the bound a little looser, never wrong: any orthonormal basis gives a lower bound."""
    gram = centred.t() @ centred
    dimension = gram.shape[0]
    if 2 * count >= dimension:
        values, vectors = torch.linalg.eigh(gram.double())
        return values.flip(0)[:count], vectors.flip(1)[:, :count]
    width = min(dimension, count + 32)
    start = torch.randn(dimension, width, generator=torch.Generator().manual_seed(0)).to(gram.device)
    basis = torch.linalg.qr(gram @ start).Q
    basis = torch.linalg.qr(gram @ basis).Q
    values, vectors = torch.linalg.eigh((basis.t() @ gram @ basis).double())
    leading = basis.double() @ vectors.flip(1)[:, :count]
    return values.flip(0)[:count], torch.linalg.qr(leading).Q


def cost_share(dimension: int, channels: int, centres: int) -> float:
    """The bound's multiply-adds (projection and product) over the full search product's."""
    return (channels * dimension + (dimension + BOUND_COLUMNS) * centres) / ((channels + 3) * centres)


def largest_dimension(channels: int, centres: int) -> int:
    """The largest multiple of GRANULE whose bound costs at most MAX_COST of the full product (0: none)."""
    largest = int(MAX_COST * (channels + 3) * centres - BOUND_COLUMNS * centres) // (channels + centres)
    return min(channels, largest - largest % GRANULE)


def chosen_dimension(values: torch.Tensor, total: float, limit: int) -> int | None:
    """The smallest multiple of GRANULE (at most limit) whose leading eigenvalues leave at most
    RESIDUAL_SHARE of the variance `total` out; else limit if that leaves at most RESIDUAL_LIMIT out (at
    1e-3, 88-99% of the patches measured were certified with 8 extra candidates), else None: too few rows
    would be."""
    left = total - torch.cumsum(values, 0)
    for dimension in range(GRANULE, limit + 1, GRANULE):
        if left[dimension - 1] <= RESIDUAL_SHARE * total:
            return dimension
    return limit if limit and left[limit - 1] <= RESIDUAL_LIMIT * total else None


def project_centres(centred: torch.Tensor, norms: torch.Tensor, order: torch.Tensor,
                    dimension: int | None = None) -> Projection | None:
    """(M, D) float32 c - m, their (M,) squared norms and the search order -> the bank's Projection, in d
    dimensions (default: chosen_dimension), or None where none pays (largest_dimension, RESIDUAL_LIMIT)."""
    centres, channels = centred.shape
    limit = largest_dimension(channels, centres)
    if dimension is None and limit < GRANULE:
        return None
    dimension = dimension and min(dimension, channels)
    with torch.no_grad():
        values, vectors = principal_directions(centred, dimension or limit)
        if dimension is None:
            dimension = chosen_dimension(values, float(centred.double().pow(2).sum()), limit)
            if dimension is None:
                return None
        return projection_of(centred, norms, order, vectors[:, :dimension].float())


def projection_of(centred: torch.Tensor, norms: torch.Tensor, order: torch.Tensor, basis: torch.Tensor
                  ) -> Projection:
    """The Projection of (M, D) float32 c - m (squared norms (M,), search order (M,)) onto a (D, d) float32
    orthonormal basis: b and rho_c in float64 from the rounded basis, as bound_rows computes q and rho_p."""
    with torch.no_grad():
        rows = centred.double()[order]
        projected = rows @ basis.double()
        squared = rows.pow(2).sum(1)
        residual = (squared - projected.pow(2).sum(1)).clamp_min(0).sqrt()
        ones = torch.ones_like(squared)[:, None]
        columns = torch.cat((-2.0 * projected, ones, squared[:, None], residual[:, None]), dim=1)
        return Projection(basis, columns.t().float().contiguous(), float(residual.max()), float(norms.max()))


def bound_rows(centred_points: torch.Tensor, point_norms: torch.Tensor, projection: Projection
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 p - m and their (N,) squared norms -> the (N, d + 3) rows whose product with
    projection.columns bounds |p - c|^2 from below, and each row's (N,) slack: the bound's product minus
    the slack is at most the true squared distance despite float32 rounding.

    rho_p^2 = |p - m|^2 - |q|^2 (U orthonormal) loses digits when the residual is short; its error e (a
    few float32 roundings of |p - m|^2) moves rho_p by at most sqrt(2) e / max(rho_p, sqrt(e)), and the
    bound by 2 (rho_p + rho_c) times that; the product's own rounding is covered by the second term.
    """
    dimension = projection.dimension
    projected = centred_points[:, :dimension] if projection.leading else centred_points @ projection.basis
    squared = torch.linalg.vector_norm(projected, dim=1, dtype=torch.float32).square_()
    residual_squared = point_norms - squared
    residual = residual_squared.clamp_min(0).sqrt()
    unit = 2.0 ** -24
    error = ROUNDING * unit * math.sqrt(centred_points.shape[1]) * point_norms
    shift = math.sqrt(2.0) * error / torch.maximum(residual_squared, error).clamp_min(1e-30).sqrt()
    total = torch.maximum(point_norms, squared)  # |q|^2 + rho_p^2
    product = ROUNDING * unit * math.sqrt(projection.dimension + BOUND_COLUMNS)
    slack = (2.0 * (residual + shift + projection.radius) * shift
             + product * (total.sqrt() + math.sqrt(projection.norm)) ** 2)
    rows = torch.cat((projected, total[:, None], torch.ones_like(total)[:, None], -2.0 * residual[:, None]),
                     dim=1)
    return rows, slack
