"""Squared Euclidean distances between patch features and memory-bank centres.

Finding the nearest centres is a dense product (patches x centres); the distances that matter (the few
nearest per patch) are then computed exactly in float32 at just those pairs, with an exact gradient,
without materialising (patches x k x channels) copies.
"""

from __future__ import annotations

import warnings

import torch

# CSR tensors are used only for the k-entries-per-row selection below, a well-covered case.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) squared distances, clamped at 0 against rounding."""
    cross = points @ centres.transpose(0, 1)
    return (points.pow(2).sum(1, keepdim=True) - 2.0 * cross + centres.pow(2).sum(1).unsqueeze(0)).clamp_min_(0)


def candidate_centres(points: torch.Tensor, centres: torch.Tensor, count: int, low_precision: bool = False,
                      chunk: int = 512) -> torch.Tensor:
    """(N, count) indices of the nearest centres of each point, by a ranking key; no gradient.

    The key |c - m|^2 + 2 m.(c - m) - 2 p.(c - m) equals |p - c|^2 - |p - m|^2 (m: mean centre), so it
    ranks like the distance while its magnitude is that of data centred on m: the rounding of a
    bfloat16 product (low_precision) stays small. Rows go in chunks: flat memory, products in cache.
    """
    with torch.no_grad():
        centres32 = centres.float()
        offset = centres32.mean(0, keepdim=True)
        shifted = centres32 - offset
        bias = shifted.pow(2).sum(1) + 2.0 * (shifted @ offset.squeeze(0))
        dtype = torch.bfloat16 if low_precision else torch.float32
        search_t, bias = shifted.to(dtype).transpose(0, 1), bias.to(dtype).unsqueeze(0)
        found = []
        for start in range(0, points.shape[0], chunk):
            key = torch.addmm(bias, points[start: start + chunk].to(dtype), search_t, alpha=-2.0)
            found.append(torch.topk(key, count, dim=1, largest=False, sorted=True).indices)
    return torch.cat(found)


def _selection(indices: torch.Tensor, values: torch.Tensor, n_centres: int) -> torch.Tensor:
    """A sparse (N, M) CSR matrix with values[n, j] at column indices[n, j]: k entries per row."""
    rows, k = indices.shape
    crow = torch.arange(0, rows * k + 1, k, device=indices.device)
    return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1).contiguous(),
                                   size=(rows, n_centres), check_invariants=False)


class _ChosenSquaredDistances(torch.autograd.Function):
    """|p_n - c_j|^2 for the chosen centres j of each point n.

    Forward: |p - m|^2 - 2 (p - m).(c_j - m) + |c_j - m|^2 (m: mean centre, against cancellation), the dot
    products computed only at the chosen pairs (a sampled sparse product).
    Backward (exact): d/dp |p - c_j|^2 = 2 (p - c_j), i.e. 2 p sum_j g_j - 2 G C with G sparse.
    """

    @staticmethod
    def forward(ctx, points: torch.Tensor, centres: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        offset = centres.mean(0, keepdim=True)
        p, c = points - offset, centres - offset
        pattern = _selection(indices, torch.zeros(indices.shape, dtype=p.dtype, device=p.device), c.shape[0])
        dots = torch.sparse.sampled_addmm(pattern, p, c.transpose(0, 1), beta=0.0).values().view(indices.shape)
        ctx.save_for_backward(points, centres, indices)
        point_norms = torch.linalg.vector_norm(p, dim=1, keepdim=True).square_()
        return dots.mul_(-2.0).add_(point_norms).add_(c.pow(2).sum(1)[indices]).clamp_min_(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        points, centres, indices = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        pulled = _selection(indices, grad.to(points.dtype) * -2.0, centres.shape[0]) @ centres  # -2 sum_j g_j c_j
        return pulled.addcmul_(points, 2.0 * grad.sum(1, keepdim=True)), None, None


def gathered_squared_distances(points: torch.Tensor, centres: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D), (N, k) -> (N, k) float32 squared distances to the chosen centres, differentiable in points.

    The centres are constants (the memory bank), so they get no gradient.
    """
    return _ChosenSquaredDistances.apply(points.float(), centres.detach().float(), indices)


def nearest_centres(points: torch.Tensor, centres: torch.Tensor, k: int, chunk: int = 512,
                    low_precision: bool = False, extra: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest float32 squared distances of each point, ascending, and their centre indices.

    Differentiable in points (the gradient flows through the exact distances of the chosen centres).
    low_precision: the search runs in bfloat16 for k + extra candidates, which are then re-ranked by
    their exact float32 distances, so only near-ties at the k-th place can differ from the plain path.
    """
    count = min(k + extra, centres.shape[0]) if low_precision else k
    indices = candidate_centres(points, centres, count, low_precision, chunk)
    distances = gathered_squared_distances(points, centres, indices)
    if count > k or low_precision:
        distances, order = torch.sort(distances, dim=1)
        distances, indices = distances[:, :k], indices.gather(1, order[:, :k])
    return distances, indices
