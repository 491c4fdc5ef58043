"""The nearest-centre search of the fused step (model/matching.py): the k nearest centres of each point and
their exact float32 squared distances, ascending.

A bank without a Projection runs one product with every centre (distances.candidate_centres: float32, or
bfloat16 / int8 with extra candidates re-ranked by exact distances). A bank with one (model.precision=
projected-search) runs the certified search: for each point the count = k + EXTRA centres with the smallest
lower bounds (model/projection.py) and the (count + 1)-th smallest bound B; the candidates' exact float32
distances, re-ranked; and a certificate: if the k-th of them is at most B less the row's rounding slack,
every other centre, whose distance is at least its bound, is no nearer, so the k nearest are exact. Rows
that fail it are searched again with the full float32 product. The result is the exact k nearest either
way, up to float32 rounding like the float32 search's; only the speed depends on how many rows are
certified.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cfa_anomaly.model.distances import (
    CentredBank,
    candidate_centres,
    chosen_squared_distances,
    default_chunk,
    rerank,
    search_count,
    search_rows,
    smallest_columns,
)
from cfa_anomaly.model.projection import Projection, bound_rows

EXTRA = 24  # candidates the certified search keeps beyond k
GUARD = 0.5  # the share of a first chunk's rows the bound must certify for the others to try it


class Found(NamedTuple):
    """The k nearest centres of each point."""

    distances: torch.Tensor  # (N, k) float32 squared distances, ascending
    indices: torch.Tensor  # (N, k) centre indices
    certified: torch.Tensor | None = None  # certified search: (N,) bool, False where the full product ran


def nearest_centres(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int) -> Found:
    """(N, D) float32 p - m and their (N,) squared norms -> the k nearest centres of each point (no
    gradient): certified where the bank has a Projection, else from the bank's search product."""
    if bank.projection is not None:
        return certified_nearest(centred, point_norms, bank, k)
    rows = search_rows(centred, bank, point_norms)
    count = search_count(k, bank.centred.shape[0], bank.search.dtype)
    indices = candidate_centres(rows, bank, count)
    del rows  # (N, W): not kept while the exact distances run
    distances = chosen_squared_distances(centred, bank, indices, point_norms)
    if count > k:
        distances, indices = rerank(distances, indices, k)
    return Found(distances, indices)


def bound_candidates(rows: torch.Tensor, projection: Projection, count: int, chunk: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """bound_rows' (N, d + 3) rows -> each row's `count` centres (search positions) with the smallest bounds
    and the (N,) (count + 1)-th smallest bound, a chunk of rows at a time (a chunk's bounds stay in cache)."""
    found, bounds = [], []
    with torch.no_grad():
        for start in range(0, rows.shape[0], chunk):
            key = torch.mm(rows[start: start + chunk], projection.columns)
            picked = smallest_columns(key, count + 1)
            bounds.append(key.gather(1, picked[:, count:]).view(-1))
            found.append(picked[:, :count])
    return torch.cat(found), torch.cat(bounds)


def certified_nearest(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int,
                      extra: int = EXTRA, chunk: int | None = None) -> Found:
    """The certified search (the module's docstring) on a bank with a Projection; `certified` says which
    rows the bound settled. The first chunk of rows goes first: where the bound certifies fewer than GUARD
    of them (points far from the bank's subspace, as the descriptor of random-weight networks drifted in
    training), the other rows run the full product at once, so a bound that does not fit costs one chunk."""
    chunk = chunk or default_chunk(centred.device)
    head = certified_rows(centred[:chunk], point_norms[:chunk], bank, k, extra, chunk)
    if centred.shape[0] <= chunk:
        return head
    if head.certified.float().mean() >= GUARD:
        rest = certified_rows(centred[chunk:], point_norms[chunk:], bank, k, extra, chunk)
    else:
        rest = exact_nearest(centred[chunk:], point_norms[chunk:], bank, k)
        rest = rest._replace(certified=torch.zeros_like(point_norms[chunk:], dtype=torch.bool))
    return Found(*(torch.cat(pair) for pair in zip(head, rest)))


def certified_rows(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int, extra: int,
                   chunk: int) -> Found:
    """The certified search of these rows, the ones the bound does not certify searched again in full."""
    centres = bank.centred.shape[0]
    count = min(k + extra, centres)
    if count == centres:  # every centre is a candidate: nothing to certify
        indices = torch.arange(centres, device=centred.device).expand(centred.shape[0], -1)
        distances = chosen_squared_distances(centred, bank, indices, point_norms)
        return Found(*rerank(distances, indices, k), torch.ones_like(point_norms, dtype=torch.bool))
    rows, slack = bound_rows(centred, point_norms, bank.projection)
    positions, bound = bound_candidates(rows, bank.projection, count, chunk)
    del rows
    indices = bank.order[positions]
    distances = chosen_squared_distances(centred, bank, indices, point_norms)
    distances, indices = rerank(distances, indices, k)
    certified = distances[:, k - 1] <= bound - slack
    failed = (~certified).nonzero().view(-1)
    if len(failed):
        again = exact_nearest(centred[failed], point_norms[failed], bank, k)
        distances[failed], indices[failed] = again.distances, again.indices
    return Found(distances, indices, certified)


def exact_nearest(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int) -> Found:
    """The k nearest by the bank's full float32 product, their exact distances ascending."""
    indices = candidate_centres(search_rows(centred, bank, point_norms), bank, k)
    return Found(*rerank(chosen_squared_distances(centred, bank, indices, point_norms), indices, k))
