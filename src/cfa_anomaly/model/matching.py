"""The descriptor and the nearest-centre distances as one step, with its backward written out.

Per batch CFA needs the CoordConv 1x1 projection y = W x + W_xy xy + b of every patch, the nearest
memory-bank centres of each y, and their exact squared distances. Autograd through the separate pieces
kept several (patches x channels) copies in float32 and bfloat16 and passed over them more often than
needed; here the chain rule is applied by hand: dL/dy = sum_j g_j 2 (y - c_j) (distances.py), then
dW = dy^T x, and db, dW_xy from dy summed over the batch. The frozen input x gets no gradient.

x may come as the pooled maps of each backbone layer at its own resolution. CFA resizes them bilinearly
to the stride-4 grid and concatenates them; both that resize R and the projection are linear, so
W [x_1, R x_2, R x_3] = W_1 x_1 + R (W_2 x_2) + R (W_3 x_3): each layer's block of W is applied at the
layer's own resolution and only the D-channel products are resized. For wide_resnet50_2 (layer2 at 1/4
and layer3 at 1/16 of the positions) that is a quarter of the multiply-adds, and the weight gradient
shrinks the same way with the adjoint of R: dW_l = (R^T dy)^T x_l.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cfa_anomaly.model.compiled import Compiled
from cfa_anomaly.model.descriptor import CoordConv1x1, resize_map
from cfa_anomaly.model.distances import CentredBank, pulled_centres, squared_norms
from cfa_anomaly.model.search import nearest_centres

Front = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def grid_rows(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B*h*w, C); a view when the grid is channels-last."""
    return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])


def resize_adjoint(grad: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The transpose of resize_map to `size`: (B, C, H, W) gradient -> (B, C, h, w)."""
    if tuple(grad.shape[-2:]) == tuple(size):
        return grad
    input_size = [*grad.shape[:2], *size]
    return torch.ops.aten.upsample_bilinear2d_backward(grad, list(grad.shape[-2:]), input_size, False)


def layer_inputs(layers: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Each layer's (B*h_l*w_l, C_l) input rows in dtype: views of channels-last maps already in dtype."""
    return [grid_rows(layer).to(dtype) for layer in layers]


def position_shift(bias: torch.Tensor, coords: torch.Tensor, weight_xy: torch.Tensor,
                   offset: torch.Tensor | None = None) -> torch.Tensor:
    """(H*W, D) float32 W_xy xy + b - offset: the part of every image's projection that depends only on
    the position. One small product, made before the front (not inside it: compiled, inductor gathered the
    strided columns of W_xy element by element for every patch, a quarter of the front's time)."""
    base = bias if offset is None else bias - offset.view(-1)
    return torch.addmm(base, coords, weight_xy.t())


def project_layers(weight: torch.Tensor, shift: torch.Tensor, layers: Sequence[torch.Tensor],
                   dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The CoordConv projection of per-layer maps, its position term given as `shift` (position_shift), as
    (B*H*W, D) float32 rows, and each layer's (B*h_l*w_l, C_l) input rows in dtype (the products' dtype)."""
    batch, _, height, width = layers[0].shape
    dimension = weight.shape[0]
    channels = [layer.shape[1] for layer in layers]
    blocks = weight[:, : sum(channels)].to(dtype).split(channels, dim=1)
    inputs = layer_inputs(layers, dtype)
    first = torch.mm(inputs[0], blocks[0].t()).view(batch, height, width, dimension)
    # the position term, then the resized products of the coarser layers, all summed in float32
    total = None
    for rows, block, layer in zip(inputs[1:], blocks[1:], layers[1:]):
        small = torch.mm(rows, block.t()).float().view(batch, *layer.shape[-2:], dimension)
        grid = resize_map(small.permute(0, 3, 1, 2), (height, width)).permute(0, 2, 3, 1)
        total = grid if total is None else total.add_(grid)  # a fresh tensor: added to in place
    shift = shift.view(1, height, width, dimension)
    total = first.float().add_(shift) if total is None else total.add_(shift).add_(first)
    return total.view(-1, dimension), inputs


def describe_front(weight: torch.Tensor, shift: torch.Tensor, layers: Sequence[torch.Tensor],
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory-bound front of the step: (B*H*W, D) float32 features minus the bank's mean centre (in
    shift) and their float32 squared norms. Pure, so torch.compile can fuse it (model.compile).

    The search rows (distances.search_rows) are made after it, outside: compiled together, inductor made one
    kernel that took 15.6 ms per 2 wide_resnet50_2 images on a 2-core Xeon, against 4.5 ms for the features
    and norms alone plus ~2.5 ms for the rows made eagerly (same numbers, bit for bit)."""
    centred, _ = project_layers(weight, shift, layers, dtype)
    return centred, squared_norms(centred)


def gradient_rows(pulled: torch.Tensor, centred: torch.Tensor, coefficient: torch.Tensor, dtype: torch.dtype,
                  positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The features' gradient dL/dy = pulled + coefficient (y - m) (distances.pulled_centres) -> its (H*W, D)
    float32 sum over the batch (the position term's gradient) and itself in dtype, the products' dtype,
    in which the resize adjoints and weight products take it. Pure, so torch.compile can fuse it."""
    if torch.compiler.is_compiling():  # fused by inductor: the float32 gradient is never stored
        grad = pulled.addcmul(centred, coefficient)
    else:  # eagerly into `pulled` (made for this): one (B*H*W, D) float32 tensor fewer at the peak
        grad = pulled.addcmul_(centred, coefficient)
    return grad.view(-1, positions, grad.shape[1]).sum(0), grad.to(dtype)


COMPILED_FRONT = Compiled(describe_front, "describe_front")
COMPILED_BACK = Compiled(gradient_rows, "gradient_rows")


def front_for(compiled: bool) -> Front:
    """The descriptor front to run: compiled by inductor (model.compile) or eager."""
    return COMPILED_FRONT if compiled else describe_front


def back_for(front: Front) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The backward's gradient_rows, compiled when the front is."""
    return COMPILED_BACK if front is COMPILED_FRONT else gradient_rows


class _DescribeAndMatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, bias: torch.Tensor, coords: torch.Tensor,
                layers: tuple[torch.Tensor, ...], bank: CentredBank,
                k: int, front: Front, shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """weight (D, C + 2), bias (D,), coords (H*W, 2), layers (B, C_l, h_l, w_l) with the first on the
        output grid (H, W) and sum C_l = C -> (B*H*W, k) distances and indices. shift: position_shift of
        these, if already made."""
        dtype = bank.product_dtype  # bfloat16 when the model runs at low precision, else float32
        if shift is None:
            shift = position_shift(bias, coords, weight[:, sum(layer.shape[1] for layer in layers):],
                                   bank.offset)
        centred, point_norms = front(weight, shift, layers, dtype)  # p - m
        inputs = layer_inputs(layers, dtype)
        distances, indices = nearest_centres(centred, point_norms, bank, k)[:2]
        ctx.bank, ctx.grids, ctx.back = bank, [tuple(layer.shape[-2:]) for layer in layers], back_for(front)
        ctx.save_for_backward(centred, indices, distances == 0, coords, *inputs)  # == 0: clamped, no gradient
        ctx.mark_non_differentiable(indices)
        return distances, indices

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _unused: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        centred, indices, clamped, coords, *inputs = ctx.saved_tensors
        height, width = ctx.grids[0]
        pulled, coefficient = pulled_centres(ctx.bank, indices, grad, clamped)
        grad_position, grad_features = ctx.back(pulled, centred, coefficient, inputs[0].dtype, height * width)
        dimension = grad_features.shape[1]
        grad_grid = grad_features.view(-1, height, width, dimension).permute(0, 3, 1, 2)
        parts = []
        for rows, size in zip(inputs, ctx.grids):
            grad_rows = grid_rows(resize_adjoint(grad_grid, size)).to(rows.dtype)
            parts.append(torch.mm(grad_rows.t(), rows).float())  # (D, C_l)
        grad_weight = torch.cat((*parts, (coords.t() @ grad_position).t()), dim=1)
        return grad_weight, grad_position.sum(0), None, None, None, None, None, None


def _layers_and_coordinates(layer: CoordConv1x1, maps: torch.Tensor | Sequence[torch.Tensor]
                            ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One aggregated map or per-layer maps -> the maps as a tuple, and the output grid's (H*W, 2)
    coordinates."""
    layers = (maps,) if isinstance(maps, torch.Tensor) else tuple(maps)
    return layers, layer.coordinates(*layers[0].shape[-2:], layers[0].device)


def describe_and_match(layer: CoordConv1x1, maps: torch.Tensor | Sequence[torch.Tensor], bank: CentredBank,
                       k: int, compiled: bool = False, shift: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregated maps (B, C, H, W), or the pooled maps of each backbone layer (the first on the output grid)
    -> float32 squared distances (B*H*W, k), ascending, and centre indices.

    Differentiable in the layer's weight and bias. The products run in the bank's search dtype: bfloat16
    (the candidates then re-ranked by exact float32 distances) or float32. Same features as
    layer(aggregated), or layer(align_maps(maps)) up to rounding. compiled: the memory-bound front through
    torch.compile (model/compiled.py), equal up to float32 rounding. shift: layer_shift(layer, bank, grid)
    when already made (scoring many batches with unchanged weights).
    """
    layers, coords = _layers_and_coordinates(layer, maps)
    if any(grid.requires_grad for grid in layers):
        raise ValueError("describe_and_match treats the aggregated maps as frozen; detach them first")
    return _DescribeAndMatch.apply(layer.conv.weight.flatten(1), layer.conv.bias, coords, layers, bank, k,
                                   front_for(compiled), shift)


def layer_shift(layer: CoordConv1x1, bank: CentredBank, grid: tuple[int, int]) -> torch.Tensor:
    """The (H*W, D) position term of the layer's projection minus the bank's mean centre (position_shift) on
    an H x W output grid; no gradient."""
    with torch.no_grad():
        weight = layer.conv.weight.flatten(1)
        coords = layer.coordinates(*grid, weight.device)
        return position_shift(layer.conv.bias, coords, weight[:, layer.in_channels:], bank.offset)


def described_rows(layer: CoordConv1x1, maps: torch.Tensor | Sequence[torch.Tensor],
                   dtype: torch.dtype) -> torch.Tensor:
    """(B*H*W, D) float32 patch features exactly as describe_and_match computes them in `dtype`; no
    gradient."""
    layers, coords = _layers_and_coordinates(layer, maps)
    weight = layer.conv.weight.flatten(1)
    with torch.no_grad():
        shift = position_shift(layer.conv.bias, coords, weight[:, layer.in_channels:])
        return project_layers(weight, shift, layers, dtype)[0]
