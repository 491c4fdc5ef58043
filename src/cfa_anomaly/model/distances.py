"""Squared Euclidean distances between patch features and memory-bank centres, in chunks."""

from __future__ import annotations

import warnings

import torch

# CSR tensors are used only for the k-entries-per-row selection below, a well-covered case.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


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


def _selection(indices: torch.Tensor, values: torch.Tensor, n_centres: int) -> torch.Tensor:
    """A sparse (N, M) CSR matrix with values[n, j] at column indices[n, j]: k entries per row."""
    rows, k = indices.shape
    crow = torch.arange(0, rows * k + 1, k, device=indices.device)
    return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1).contiguous(),
                                   size=(rows, n_centres), check_invariants=False)


class _ChosenSquaredDistances(torch.autograd.Function):
    """|p_n - c_j|^2 for the k chosen centres of each point, without gathering (N, k, D) copies.

    Forward: |p|^2 - 2 p.c_j + |c_j|^2 with the dot products computed only at the chosen pairs (a sampled
    sparse product), on data centred on the mean centre so the cancellation stays small.
    Backward (exact): d/dp |p - c_j|^2 = 2 (p - c_j), i.e. 2 p sum_j g_j - 2 G C with G sparse.
    """

    @staticmethod
    def forward(ctx, points: torch.Tensor, centres: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        offset = centres.mean(0, keepdim=True)
        p, c = points - offset, centres - offset
        pattern = _selection(indices, torch.zeros(indices.shape, dtype=p.dtype, device=p.device), c.shape[0])
        dots = torch.sparse.sampled_addmm(pattern, p, c.transpose(0, 1), beta=0.0).values().view(indices.shape)
        ctx.save_for_backward(points, centres, indices)
        return (p.pow(2).sum(1, keepdim=True) - 2.0 * dots + c.pow(2).sum(1)[indices]).clamp_min_(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        points, centres, indices = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        pulled = _selection(indices, grad.to(points.dtype), centres.shape[0]) @ centres
        return 2.0 * points * grad.sum(1, keepdim=True) - 2.0 * pulled, None, None


def gathered_squared_distances(points: torch.Tensor, centres: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D), (N, k) -> (N, k) float32 squared distances to the chosen centres, differentiable in points.

    The centres are constants (the memory bank), so they get no gradient.
    """
    return _ChosenSquaredDistances.apply(points.float(), centres.detach().float(), indices)
