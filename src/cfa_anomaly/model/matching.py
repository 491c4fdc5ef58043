"""The descriptor and the nearest-centre distances as one step, with its backward written out.

Per batch CFA needs the CoordConv 1x1 projection y = W x + W_xy xy + b of every patch, the nearest
memory-bank centres of each y, and their exact squared distances. Autograd through the separate pieces
kept several (patches x channels) copies in float32 and bfloat16 and passed over them more often than
needed; here the chain rule is applied by hand: dL/dy = sum_j g_j 2 (y - c_j) (distances.py), then
dW = dy^T x, and db, dW_xy from dy summed over the batch. The frozen input x gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cfa_anomaly.model.descriptor import CoordConv1x1
from cfa_anomaly.model.distances import (
    SEARCH_COLUMNS,
    CentredBank,
    candidate_centres,
    centre_points,
    chosen_distances_backward,
    chosen_squared_distances,
    fill_search_columns,
    rerank,
    search_count,
    squared_norms,
)


class _DescribeAndMatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, coords: torch.Tensor,
                bank: CentredBank, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (B, P, C) aggregated maps, weight (D, C + 2), bias (D,), coords (P, 2) -> (B*P, k) twice."""
        batch, positions, channels = rows.shape
        dtype = bank.search.dtype  # bfloat16 when the model runs at low precision, else float32
        inputs = rows.reshape(batch * positions, channels).to(dtype)
        # the product fills [:, :D] of the rows the search needs, (N, D + 3): no copy to extend them
        weight_main = F.pad(weight[:, :channels].to(dtype), (0, 0, 0, SEARCH_COLUMNS))
        extended = torch.mm(inputs, weight_main.t())
        dimension = weight.shape[0]
        position_term = torch.addmm(bias, coords, weight[:, channels:].t())  # (P, D), the same for every image
        extended.view(batch, positions, -1)[:, :, :dimension].add_(position_term.to(dtype))
        centred = centre_points(extended[:, :dimension], bank)
        point_norms = squared_norms(centred)
        fill_search_columns(extended, point_norms)
        count = search_count(k, bank.centred.shape[0], dtype != torch.float32)
        indices = candidate_centres(extended, bank, count)
        distances = chosen_squared_distances(centred, bank, indices, point_norms)
        if count > k:
            distances, indices = rerank(distances, indices, k)
        ctx.bank, ctx.shape = bank, (batch, positions)
        ctx.save_for_backward(inputs, centred, indices, coords)
        ctx.mark_non_differentiable(indices)
        return distances, indices

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _unused: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        inputs, centred, indices, coords = ctx.saved_tensors
        batch, positions = ctx.shape
        grad_features = chosen_distances_backward(centred, ctx.bank, indices, grad)  # (B*P, D) float32
        grad_position = grad_features.view(batch, positions, -1).sum(0)  # (P, D)
        grad_main = torch.mm(grad_features.to(inputs.dtype).t(), inputs).float()  # (D, C)
        grad_weight = torch.cat((grad_main, (coords.t() @ grad_position).t()), dim=1)
        return None, grad_weight, grad_position.sum(0), None, None, None


def describe_and_match(layer: CoordConv1x1, aggregated: torch.Tensor, bank: CentredBank,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregated maps (B, C, h, w) -> float32 squared distances (B*h*w, k), ascending, and centre indices.

    Differentiable in the layer's weight and bias. The products run in the bank's search dtype: bfloat16
    (the candidates then re-ranked by exact float32 distances) or float32. Same features as layer(aggregated).
    """
    if aggregated.requires_grad:
        raise ValueError("describe_and_match treats the aggregated maps as frozen; detach them first")
    batch, channels, height, width = aggregated.shape
    rows = aggregated.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # a view if channels-last
    coords = layer.coordinates(height, width, aggregated.device)
    return _DescribeAndMatch.apply(rows, layer.conv.weight.flatten(1), layer.conv.bias, coords, bank, k)
