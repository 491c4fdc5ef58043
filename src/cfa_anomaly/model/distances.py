"""Squared Euclidean distances between patch features and memory-bank centres.

Finding the nearest centres is a dense product (patches x centres); the distances that matter (the few
nearest per patch) are then computed exactly in float32 at just those pairs, with an exact gradient,
without materialising (patches x k x channels) copies. All of it works on data centred on the mean
centre m, which keeps the products' rounding small (the features of a ReLU network share a large offset).

The search product runs in float32, bfloat16, or int8 (model.precision=int8-search, for CPUs without
bfloat16 units whose int8 dot products are fast: VNNI, AMX-INT8): points and centres rounded to int8 with
one scale per row, the product summed exactly in int32, and the candidates re-ranked by exact float32
distances like bfloat16's. A float32 bank can also carry a Projection (model.precision=projected-search),
for model/search.py's exact certified search.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cfa_anomaly.model.kernels import bank_layout, pack_bank, padded_width, search_product
from cfa_anomaly.model.projection import Projection, project_centres

# CSR tensors are used only for the k-entries-per-row selection below, a well-covered case.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")  # torch 2.11


SEARCH_COLUMNS = 3  # appended to each centred point for the search: |p - m|^2, 1, 1 (see candidate_centres)


class CentredBank(NamedTuple):
    """The memory bank prepared once for searching and for exact distances (no gradient)."""

    offset: torch.Tensor  # (1, D) float32: the mean centre m
    centred: torch.Tensor  # (M, D) float32: c - m
    norms: torch.Tensor  # (M,) float32: |c - m|^2
    search: torch.Tensor  # (M, W) search dtype: -2 (c - m), zeros, 1, b_hi, b_lo; rows in shuffled order
    search_t: torch.Tensor  # (W, M): search transposed, a view or a contiguous copy (model/kernels.py)
    order: torch.Tensor  # (M,) the centre at each row of search
    packed: torch.Tensor | None = None  # search packed for oneDNN (the "packed" layout), else None
    column_scales: torch.Tensor | None = None  # int8 search: (M,) -2 x each centre's scale, search order
    column_norms: torch.Tensor | None = None  # int8 search: (M,) |c - m|^2 in search order
    projection: Projection | None = None  # certified search: the bound's subspace (model/projection.py)

    @property
    def product_dtype(self) -> torch.dtype:
        """The dtype of the descriptor products that go with this search: bfloat16 with a bfloat16 search,
        else float32 (an int8 search rounds float32 features)."""
        return torch.bfloat16 if self.search.dtype == torch.bfloat16 else torch.float32

    @property
    def width(self) -> int:
        """W, the search rows' width: D + 3, or more with zero columns before the last three (packed); D for
        an int8 search."""
        return self.search.shape[1]


class QuantizedRows(NamedTuple):
    """Rows rounded to int8 with one float32 scale each: row ~ values * scale (quantize_rows)."""

    values: torch.Tensor  # (N, D) int8
    scales: torch.Tensor  # (N, 1) float32


def quantize_rows(rows: torch.Tensor) -> QuantizedRows:
    """(N, D) float32 -> symmetric int8, one scale per row: round(row / s) with s = max |row| / 127, so each
    value is within s / 2 of the row's (an all-zero row gets zeros)."""
    scales = rows.abs().amax(1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny).div_(127.0)
    return QuantizedRows(torch.div(rows, scales).round_().to(torch.int8), scales)


def centre_bank(centres: torch.Tensor, search: torch.dtype = torch.float32, projected: bool = False
                ) -> CentredBank:
    """Prepare (M, D) centres; the search runs in `search` (float32, bfloat16 or int8: the model's
    PrecisionPlan.search); projected (a float32 search): with the bank's Projection too, for the certified
    search (model/certified.py), where one pays (model/projection.py; else the full float32 product runs).

    b = |c - m|^2 is stored as two search-dtype numbers (b_hi + b_lo), so that it enters the
    product as exactly as in float32. The search rows are shuffled (a fixed permutation): torch.topk on
    CPU keeps a heap of the best so far, which is slow when the columns come in an unlucky order (e.g. best
    last: 5x slower); in random order it is refilled seldom. The transposed operand of the search product
    is laid out as this machine's kernels run it fastest (model/kernels.py); only one copy is kept.
    """
    with torch.no_grad():
        centres32 = centres.detach().float()
        offset = centres32.mean(0, keepdim=True)
        centred = centres32 - offset
        norms = centred.pow(2).sum(1)
        dtype = search
        if projected and dtype != torch.float32:
            raise ValueError(f"the certified search runs a float32 bank, not {dtype}")
        if dtype == torch.int8:
            return _int8_bank(offset, centred, norms)
        bias_hi = norms.to(dtype)
        bias_lo = (norms - bias_hi.float()).to(dtype)
        chunk, inner = default_chunk(centres.device), centred.shape[1] + SEARCH_COLUMNS
        layout = bank_layout(centres.device, dtype, chunk, inner, len(centres))
        zeros = centred.new_zeros(len(centres), padded_width(inner, layout) - inner)
        search = torch.cat((-2.0 * centred, zeros, torch.ones_like(norms)[:, None]), dim=1).to(dtype)
        search = torch.cat((search, bias_hi[:, None], bias_lo[:, None]), dim=1)
        order = _search_order(len(centres), centres.device)
        search = search[order]
        search_t = search.t().contiguous() if layout == "contiguous" else search.t()
        packed = pack_bank(search, chunk) if layout == "packed" else None
        projection = project_centres(centred, norms, order) if projected else None
        return CentredBank(offset, centred, norms, search_t.t(), search_t, order, packed,
                           projection=projection)


def _search_order(count: int, device: torch.device) -> torch.Tensor:
    """The fixed shuffle of the bank's rows in the search (centre_bank says why)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(0)).to(device)


def _int8_bank(offset: torch.Tensor, centred: torch.Tensor, norms: torch.Tensor) -> CentredBank:
    """The bank for an int8 search (CPU): each centre c - m rounded to int8 with its own scale, in the
    shuffled order; the key adds each centre's |c - m|^2 and scale outside the product (int8_key)."""
    if centred.device.type != "cpu":
        raise ValueError("the int8 search runs on a CPU only; use model.precision=mixed or float32 on "
                         f"{centred.device.type}")
    quantized = quantize_rows(centred)
    order = _search_order(len(centred), centred.device)
    search = quantized.values[order]
    return CentredBank(offset, centred, norms, search, search.t(), order, None,
                       -2.0 * quantized.scales.view(-1)[order], norms[order])


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) squared distances, clamped at 0 against rounding."""
    cross = points @ centres.transpose(0, 1)
    return (points.pow(2).sum(1, keepdim=True) - 2.0 * cross + centres.pow(2).sum(1).unsqueeze(0)).clamp_min_(0)


def squared_norms(rows: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N,) float32 |row|^2, in one pass."""
    return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float32).square_()


def fill_search_columns(rows: torch.Tensor, point_norms: torch.Tensor) -> torch.Tensor:
    """rows (N, W) holding centred points p - m in their first D columns (and zeros up to W - 3): set the
    last three columns to |p - m|^2, 1, 1."""
    dimension = rows.shape[1] - SEARCH_COLUMNS
    rows[:, dimension] = point_norms.view(-1)
    rows[:, dimension + 1:] = 1.0
    return rows


def search_rows(centred_points: torch.Tensor, bank: CentredBank, point_norms: torch.Tensor | None = None
                ) -> torch.Tensor:
    """(N, D) float32 p - m (and their squared norms) -> the (N, W) rows that candidate_centres searches
    with; for an int8 bank the points themselves (candidate_centres rounds them a chunk at a time)."""
    if bank.search.dtype == torch.int8:
        return centred_points
    norms = squared_norms(centred_points) if point_norms is None else point_norms
    return extended_rows(centred_points, norms, bank.search.dtype, bank.width)


def extended_rows(centred_points: torch.Tensor, point_norms: torch.Tensor, dtype: torch.dtype,
                  width: int | None = None) -> torch.Tensor:
    """(N, D) float32 p - m and (N,) |p - m|^2 -> the (N, W) search rows in the search dtype: p - m, zeros
    (when width W > D + 3), |p - m|^2, 1, 1."""
    count, dimension = centred_points.shape
    width = width or dimension + SEARCH_COLUMNS
    rows = centred_points.new_empty(count, width, dtype=dtype)
    rows[:, :dimension] = centred_points
    if width > dimension + SEARCH_COLUMNS:
        rows[:, dimension: width - SEARCH_COLUMNS] = 0.0
    return fill_search_columns(rows, point_norms)


def candidate_centres(rows: torch.Tensor, bank: CentredBank, count: int,
                      chunk: int | None = None) -> torch.Tensor:
    """(N, count) indices of the nearest centres of each point; rows from search_rows; no gradient.

    One product of the extended rows [p - m, |p - m|^2, 1, 1] and [-2 (c - m), 1, b_hi, b_lo] gives
    |p - m|^2 - 2 (p - m).(c - m) + |c - m|^2 = |p - c|^2, accumulated in float32. Its result is
    rounded to the search dtype, and being the distance itself (not the distance minus a large common
    term) that rounding is small next to the gaps between neighbours: in bfloat16 about 10x fewer
    true neighbours fall outside the candidates than with the shorter key. Chunks of rows keep memory
    flat: by default 512 on a CPU (a chunk's products stay in cache), 8192 on a GPU (fewer, larger launches).
    An int8 bank ranks by int8_key, each chunk of float32 rows rounded to int8 as it comes (no int8 copy of
    all of them, and only a chunk's float32 temporaries).
    """
    chunk = chunk or default_chunk(rows.device)
    found = []
    packed = bank.packed is not None
    right = bank.packed if packed else bank.search_t
    int8 = bank.search.dtype == torch.int8
    with torch.no_grad():
        for start in range(0, rows.shape[0], chunk):
            if int8:
                key = int8_key(quantize_rows(rows[start: start + chunk]), bank)
            else:
                key = search_product(rows[start: start + chunk], right, packed)
            found.append(smallest_columns(key, count))
    return bank.order[torch.cat(found)]


def int8_key(rows: QuantizedRows, bank: CentredBank) -> torch.Tensor:
    """(n, M) float32 |c - m|^2 - 2 (p - m).(c - m) of int8 rows against an int8 bank: the product of the
    int8 values summed exactly in int32 (torch._int_mm: oneDNN's VNNI or AMX-INT8 kernels), times the row's
    and the centre's scales. |p - m|^2, the same for a whole row, is left out: it does not change the order.
    """
    dots = torch._int_mm(rows.values, bank.search_t).float().mul_(bank.column_scales)
    return torch.addcmul(bank.column_norms, dots, rows.scales)


GROUP_SIZE = 16  # columns per group in smallest_columns


def smallest_columns(key: torch.Tensor, count: int) -> torch.Tensor:
    """(N, M) -> (N, count) column indices of each row's `count` smallest values, ascending by value: the
    values torch.topk(largest=False) finds (which of tied values can differ).

    On a CPU, in two steps when M splits into groups of GROUP_SIZE columns: each group's minimum (column g,
    g + M/16, g + 2M/16, ... form group g, so the minimum is an elementwise min of 16 row slices), the
    `count` groups with the smallest minima, then topk over just their columns. Exact: a value among the
    `count` smallest lies in a group whose minimum is at most the count-th smallest value, and fewer than
    `count` groups have a smaller minimum. torch.topk scans every column with a heap (~1 ns per value
    here); this reads them once, vectorised, and sorts 1/16 of them.
    """
    rows, columns = key.shape
    groups = columns // GROUP_SIZE
    if key.device.type != "cpu" or columns % GROUP_SIZE or 4 * count > groups:
        return torch.topk(key, count, dim=1, largest=False, sorted=True).indices
    blocks = key.view(rows, GROUP_SIZE, groups)
    chosen = torch.topk(blocks.amin(1), count, dim=1, largest=False, sorted=False).indices  # (N, count) groups
    values = blocks.gather(2, chosen.unsqueeze(1).expand(-1, GROUP_SIZE, -1)).view(rows, -1)
    picked = torch.topk(values, count, dim=1, largest=False, sorted=True).indices  # (N, count) of 16 * count
    return torch.div(picked, count, rounding_mode="floor") * groups + chosen.gather(1, picked % count)


def default_chunk(device: torch.device) -> int:
    """Rows per search product: 512 on a CPU (a chunk's products stay in cache), 8192 on a GPU."""
    return 512 if device.type == "cpu" else 8192


def _sampled_dots(centred_points: torch.Tensor, bank: CentredBank, crow: torch.Tensor, columns: torch.Tensor
                  ) -> torch.Tensor:
    """The dot products (p - m).(c - m) at just the pairs of a CSR pattern (row pointers crow, centre
    columns), flat in the pattern's order: a sampled sparse product."""
    values = torch.zeros(len(columns), device=columns.device)
    pattern = torch.sparse_csr_tensor(crow, columns, values, size=(len(crow) - 1, bank.centred.shape[0]),
                                      check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, centred_points, bank.centred.transpose(0, 1), beta=0.0).values()


def _pair_distances(dots: torch.Tensor, point_norms: torch.Tensor, centre_norms: torch.Tensor) -> torch.Tensor:
    """|p - m|^2 - 2 (p - m).(c - m) + |c - m|^2 from the dots (overwritten), clamped at 0 against rounding
    (a point on a centre can come out slightly negative); in this one order, so that every caller gets the
    same bits for the same pair."""
    return dots.mul_(-2.0).add_(point_norms).add_(centre_norms).clamp_min_(0)


def chosen_squared_distances(centred_points: torch.Tensor, bank: CentredBank, indices: torch.Tensor,
                             point_norms: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) float32 points minus m, (N, k) centre indices -> (N, k) float32 squared distances.

    |p - m|^2 - 2 (p - m).(c_j - m) + |c_j - m|^2, the dot products computed only at the chosen pairs
    (a sampled sparse product), clamped at 0 against rounding. No gradient here: see
    chosen_distances_backward, which passes none through the clamped ones.
    """
    rows, k = indices.shape
    crow = torch.arange(0, rows * k + 1, k, device=indices.device)
    dots = _sampled_dots(centred_points, bank, crow, indices.reshape(-1)).view(indices.shape)
    if point_norms is None:
        point_norms = squared_norms(centred_points)
    return _pair_distances(dots, point_norms.view(-1, 1), bank.norms[indices])


def masked_nearest(centred_points: torch.Tensor, bank: CentredBank, mask: torch.Tensor, k: int,
                   point_norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, D) float32 points minus m, an (n, M) bool mask of the centres to consider (search order, at least
    k per row) -> the (n, k) squared distances (ascending) and centre indices of each row's k nearest among
    them. The dot products run at the masked pairs only (a row may have any number), each distance computed
    as chosen_squared_distances computes it (_pair_distances), to the bit."""
    pairs = mask.nonzero()
    rows, columns = pairs[:, 0], bank.order[pairs[:, 1]]
    crow = torch.zeros(len(mask) + 1, dtype=torch.long, device=mask.device)
    torch.cumsum(mask.sum(1), 0, out=crow[1:])
    values = _pair_distances(_sampled_dots(centred_points, bank, crow, columns), point_norms[rows],
                             bank.norms[columns])
    spread = torch.full(mask.shape, float("inf"), device=mask.device)
    spread[rows, columns] = values
    distances, indices = torch.topk(spread, k, dim=1, largest=False, sorted=True)
    return distances, indices


def chosen_distances_backward(centred_points: torch.Tensor, bank: CentredBank, indices: torch.Tensor,
                              grad: torch.Tensor, clamped: torch.Tensor) -> torch.Tensor:
    """Exact gradient of sum(grad * chosen distances) in the points: sum_j g_j 2 (p - c_j), (N, D) float32.

    Written as 2 (p - m) sum_j g_j - 2 sum_j g_j (c_j - m); the second sum is a weighted embedding bag.
    clamped: (N, k) bool, where the forward's distance is 0 (chosen_squared_distances clamps a negative
    rounding result there): those pairs pass no gradient, the clamp's derivative below 0.
    """
    pulled, coefficient = pulled_centres(bank, indices, grad, clamped)
    return pulled.addcmul_(centred_points, coefficient)


def pulled_centres(bank: CentredBank, indices: torch.Tensor, grad: torch.Tensor, clamped: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of chosen_distances_backward's gradient -2 sum_j g_j (c_j - m) + c (p - m): the
    (N, D) first term and the (N, 1) coefficient c = 2 sum_j g_j of the points."""
    grad = grad.float().masked_fill(clamped, 0.0)
    pulled = F.embedding_bag(indices, bank.centred, per_sample_weights=grad * -2.0, mode="sum")
    return pulled, 2.0 * grad.sum(1, keepdim=True)


def rerank(distances: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidates by their exact distances and keep the k nearest."""
    distances, order = torch.sort(distances, dim=1)
    return distances[:, :k], indices.gather(1, order[:, :k])


# Candidates a low-precision search keeps beyond k, re-ranked by exact distances (search_count)
EXTRA_CANDIDATES = {torch.bfloat16: 4, torch.int8: 8}


def search_count(k: int, n_centres: int, search: torch.dtype, extra: int | None = None) -> int:
    """Candidates to search for: a bfloat16 or int8 search keeps `extra` more (default EXTRA_CANDIDATES),
    re-ranked by exact distances; a float32 search k.

    With 4 extra, trained models on the real grid and hazelnut images had a true top-3 outside the
    bfloat16 candidates in at most 0.022% of patches, each time by a centre at most 0.5% farther; int8
    rounds coarser and keeps 8 (benchmarks/README.md has both).
    """
    if search == torch.float32:
        return k
    return min(k + (EXTRA_CANDIDATES[search] if extra is None else extra), n_centres)
