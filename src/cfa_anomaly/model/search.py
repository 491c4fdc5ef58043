"""The nearest-centre search of the fused step (model/matching.py): the k nearest centres of each point and
their exact float32 squared distances, ascending.

A bank without a Projection runs one product with every centre (distances.candidate_centres: float32, or
bfloat16 / int8 with extra candidates re-ranked by exact distances). A bank with one (model.precision=
projected-search) runs the certified search: for each point the count = k + EXTRA centres with the smallest
lower bounds (model/projection.py) and the (count + 1)-th smallest bound B; the candidates' exact float32
distances, re-ranked; and a certificate: if the k-th of them is at most B less the row's rounding slack,
every other centre, whose distance is at least its bound, is no nearer, so the k nearest are exact. A row
that fails it is widened: that k-th distance T is at least the row's true k-th, so every centre whose bound
(less slack) is at most T is a candidate and every other one is farther than the k nearest; their exact
distances settle the row (a few dozen centres more on the measured rows, against the thousands of the full
product). Rows with more than WIDE_SHARE of the centres below T are searched with the full float32
product. The result is the exact k nearest either way, up to float32 rounding like the float32 search's;
only the speed depends on how many rows the first candidates settle.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cfa_anomaly.model.distances import (
    CentredBank,
    candidate_centres,
    chosen_squared_distances,
    default_chunk,
    masked_nearest,
    rerank,
    search_count,
    search_rows,
    smallest_columns,
)
from cfa_anomaly.model.projection import Projection, bound_rows

EXTRA = 24  # candidates the certified search keeps beyond k
GUARD = 0.5  # the share of a first chunk's rows the bound must settle for the others to try it
WIDE_SHARE = 1 / 8  # a widened row with more candidates than this share of the centres: the full product


class Found(NamedTuple):
    """The k nearest centres of each point."""

    distances: torch.Tensor  # (N, k) float32 squared distances, ascending
    indices: torch.Tensor  # (N, k) centre indices
    certified: torch.Tensor | None = None  # certified search: (N,) bool, True where the first candidates did
    full: torch.Tensor | None = None  # certified search: (N,) bool, True where the full product ran


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
    rows the first candidates settled, `full` which ones the full product searched. The first chunk of rows
    goes first: where the bound settles fewer than GUARD of them without the full product (points far from
    the bank's subspace, as the descriptor of random-weight networks drifted in training), the other rows
    run the full product at once, so a bound that does not fit costs one chunk."""
    chunk = chunk or default_chunk(centred.device)
    head = certified_rows(centred[:chunk], point_norms[:chunk], bank, k, extra, chunk)
    if centred.shape[0] <= chunk:
        return head
    if (~head.full).float().mean() >= GUARD:
        rest = certified_rows(centred[chunk:], point_norms[chunk:], bank, k, extra, chunk)
    else:
        rest = exact_nearest(centred[chunk:], point_norms[chunk:], bank, k)
        none = torch.zeros_like(point_norms[chunk:], dtype=torch.bool)
        rest = rest._replace(certified=none, full=~none)
    return Found(*(torch.cat(pair) for pair in zip(head, rest)))


def certified_rows(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int, extra: int,
                   chunk: int) -> Found:
    """The certified search of these rows; the ones the first candidates do not certify widened."""
    centres = bank.centred.shape[0]
    count = min(k + extra, centres)
    if count == centres:  # every centre is a candidate: nothing to certify
        indices = torch.arange(centres, device=centred.device).expand(centred.shape[0], -1)
        distances = chosen_squared_distances(centred, bank, indices, point_norms)
        settled = torch.ones_like(point_norms, dtype=torch.bool)
        return Found(*rerank(distances, indices, k), settled, ~settled)
    rows, slack = bound_rows(centred, point_norms, bank.projection)
    positions, bound = bound_candidates(rows, bank.projection, count, chunk)
    indices = bank.order[positions]
    distances = chosen_squared_distances(centred, bank, indices, point_norms)
    distances, indices = rerank(distances, indices, k)
    certified = distances[:, k - 1] <= bound - slack
    full = torch.zeros_like(certified)
    failed = (~certified).nonzero().view(-1)
    if len(failed):
        again = widened_rows(centred[failed], point_norms[failed], bank, k, distances[failed, k - 1], chunk,
                             (rows[failed], slack[failed]))
        distances[failed], indices[failed], full[failed] = again.distances, again.indices, again.full
    return Found(distances, indices, certified, full)


def widened_rows(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int,
                 upper: torch.Tensor, chunk: int, bounds: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> Found:
    """Rows whose first candidates were not certified, and (N,) upper bounds of their k-th distances -> the
    exact k nearest: every centre whose bound less slack is at most the row's upper bound is a candidate
    (all others are farther than the k-th); rows with more than WIDE_SHARE of the centres so run the full
    product (`full`), as do rows with fewer than k (only rounding could do that). bounds: bound_rows of these
    rows, if made already."""
    rows, slack = bounds or bound_rows(centred, point_norms, bank.projection)
    limit = max(k, int(WIDE_SHARE * bank.centred.shape[0]))
    parts = []
    for start in range(0, rows.shape[0], chunk):
        part = slice(start, start + chunk)
        with torch.no_grad():
            key = torch.mm(rows[part], bank.projection.columns).sub_(slack[part, None])
            below = key <= upper[part, None]
        del key
        counts = below.sum(1)
        full = (counts > limit) | (counts < k)  # < k: only where rounding puts a candidate's bound above T
        distances = torch.empty(len(full), k, device=centred.device)
        indices = torch.empty(len(full), k, device=centred.device, dtype=torch.long)
        points, norms = centred[part], point_norms[part]
        narrow, wide = (~full).nonzero().view(-1), full.nonzero().view(-1)
        if len(narrow):
            found = masked_nearest(points[narrow], bank, below[narrow], k, norms[narrow])
            distances[narrow], indices[narrow] = found
        if len(wide):
            found = exact_nearest(points[wide], norms[wide], bank, k)
            distances[wide], indices[wide] = found.distances, found.indices
        parts.append(Found(distances, indices, ~full, full))
    return Found(*(torch.cat(pair) for pair in zip(*parts)))


def exact_nearest(centred: torch.Tensor, point_norms: torch.Tensor, bank: CentredBank, k: int) -> Found:
    """The k nearest by the bank's full float32 product, their exact distances ascending."""
    indices = candidate_centres(search_rows(centred, bank, point_norms), bank, k)
    return Found(*rerank(chosen_squared_distances(centred, bank, indices, point_norms), indices, k))
