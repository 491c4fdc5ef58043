"""The fused descriptor + nearest-centre step against autograd through the plain pieces, and its helpers."""

from __future__ import annotations

import platform

import pytest
import torch

from cfa_anomaly.model.descriptor import CoordConv1x1, align_maps
from cfa_anomaly.model.distances import (
    candidate_centres,
    centre_bank,
    int8_key,
    quantize_rows,
    search_rows,
    smallest_columns,
)
from cfa_anomaly.model.matching import describe_and_match, described_rows
from cfa_anomaly.runtime import reuse_freed_memory


def layer_and_inputs(seed: int, channels: int = 24, out: int = 20, size: tuple[int, int] = (6, 7)):
    """A CoordConv layer, channels-last ReLU-like maps (B=3) and a bank of centres near its outputs."""
    torch.manual_seed(seed)
    layer = CoordConv1x1(channels, out)
    maps = torch.relu(torch.randn(3, channels, *size) + 1.0).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        described = layer(maps).permute(0, 2, 3, 1).reshape(-1, out)
    centres = described[torch.randperm(described.shape[0])[:50]] + 0.3 * torch.randn(50, out)
    return layer, maps, centres


def plain_reference(layer: CoordConv1x1, maps: torch.Tensor, centres: torch.Tensor, k: int):
    """Autograd through the layer and a dense float64 distance matrix; k nearest by sorting."""
    features = layer(maps).permute(0, 2, 3, 1).reshape(-1, centres.shape[1]).double()
    distances = (features.unsqueeze(1) - centres.double().unsqueeze(0)).pow(2).sum(-1)
    values, indices = torch.sort(distances, dim=1)
    return values[:, :k], indices[:, :k]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_step_equals_autograd_through_the_plain_layer_in_float32(seed):
    k = 5
    layer, maps, centres = layer_and_inputs(seed)
    weights = torch.randn(maps.shape[0] * maps.shape[2] * maps.shape[3], k, dtype=torch.float64)

    values, indices = describe_and_match(layer, maps, centre_bank(centres), k)
    (values.double() * weights).sum().backward()
    fused_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()

    ref_values, ref_indices = plain_reference(layer, maps, centres, k)
    (ref_values * weights).sum().backward()
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values.double(), ref_values.detach(), rtol=1e-4, atol=1e-4)
    for fused, param in zip(fused_grads, layer.parameters()):
        torch.testing.assert_close(fused.double(), param.grad.double(), rtol=1e-3, atol=1e-3)


def pyramid_and_bank(seed: int, sizes=((6, 7), (3, 4), (2, 2), (6, 7)), channels: int = 8):
    """A CoordConv layer, per-layer ReLU-like maps at several resolutions (the first is the output grid,
    the last one as fine as it) and a bank of centres near the layer's outputs on the aligned maps."""
    torch.manual_seed(seed)
    layers = [torch.relu(torch.randn(3, channels, *size) + 1.0).contiguous(memory_format=torch.channels_last)
              for size in sizes]
    layer = CoordConv1x1(channels * len(sizes), 20)
    with torch.no_grad():
        described = layer(align_maps(layers)).permute(0, 2, 3, 1).reshape(-1, 20)
    centres = described[torch.randperm(described.shape[0])[:50]] + 0.3 * torch.randn(50, 20)
    return layer, layers, centres


@pytest.mark.parametrize("seed", [0, 1])
def test_per_layer_products_equal_the_product_of_the_aligned_maps_with_gradients(seed):
    """Projecting each layer at its own resolution, then resizing, is the plain path: values and gradients."""
    k = 5
    layer, layers, centres = pyramid_and_bank(seed)
    weights = torch.randn(3 * 6 * 7, k, dtype=torch.float64)

    values, indices = describe_and_match(layer, layers, centre_bank(centres), k)
    (values.double() * weights).sum().backward()
    fused_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()

    ref_values, ref_indices = plain_reference(layer, align_maps(layers), centres, k)
    (ref_values * weights).sum().backward()
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values.double(), ref_values.detach(), rtol=1e-4, atol=1e-4)
    for fused, param in zip(fused_grads, layer.parameters()):
        torch.testing.assert_close(fused.double(), param.grad.double(), rtol=1e-3, atol=1e-3)


def test_described_rows_are_the_features_whose_distances_the_fused_step_returns():
    layer, layers, centres = pyramid_and_bank(2)
    rows = described_rows(layer, layers, torch.float32)
    with torch.no_grad():
        plain = layer(align_maps(layers)).permute(0, 2, 3, 1).reshape(-1, 20)
    torch.testing.assert_close(rows, plain, rtol=1e-5, atol=1e-5)
    bank = centre_bank(centres, torch.bfloat16)
    values, indices = describe_and_match(layer, layers, bank, 3)
    low_rows = described_rows(layer, layers, torch.bfloat16).double()
    exact = (low_rows.unsqueeze(1) - centres.double()[indices]).pow(2).sum(-1)
    torch.testing.assert_close(values.double(), exact, rtol=1e-4, atol=1e-4)


def test_fused_step_in_bfloat16_returns_exact_distances_of_nearly_the_same_neighbours():
    k = 5
    layer, maps, centres = layer_and_inputs(3)
    fast_values, fast_indices = describe_and_match(layer, maps, centre_bank(centres, torch.bfloat16), k)
    ref_values, ref_indices = plain_reference(layer, maps, centres, k)
    assert fast_values.dtype == torch.float32
    assert torch.all(fast_values[:, 1:] >= fast_values[:, :-1])
    assert (fast_indices[:, 0] == ref_indices[:, 0]).float().mean() >= 0.95
    torch.testing.assert_close(fast_values.double(), ref_values.detach(), rtol=0.05, atol=0.05)


def test_fused_step_refuses_maps_that_require_a_gradient():
    layer, maps, centres = layer_and_inputs(0)
    with pytest.raises(ValueError, match="frozen"):
        describe_and_match(layer, maps.requires_grad_(True), centre_bank(centres), 3)


@pytest.mark.parametrize("search", [torch.float32, torch.bfloat16, torch.int8], ids=str)
def test_shuffled_search_returns_indices_of_the_original_centres(search):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 8, generator=generator)
    points = centres[[5, 17, 33]] + 1e-3
    bank = centre_bank(centres, search=search)
    assert not torch.equal(bank.order, torch.arange(40))  # the search rows really are shuffled
    rows = search_rows(points - bank.offset, bank)
    assert candidate_centres(rows, bank, 1)[:, 0].tolist() == [5, 17, 33]


def test_int8_rows_are_within_half_a_step_of_the_points_and_use_the_full_range():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 33, generator=generator) * torch.logspace(-3, 3, 50)[:, None]
    rows[7] = 0.0
    quantized = quantize_rows(rows)
    assert quantized.values.dtype == torch.int8 and quantized.scales.shape == (50, 1)
    error = (quantized.values.float() * quantized.scales - rows).abs()
    assert torch.all(error <= quantized.scales * 0.5 * (1 + 1e-5))
    assert torch.all(quantized.values[7] == 0)
    peaks = quantized.values.abs().amax(1)
    assert torch.all((peaks == 127) | (torch.arange(50) == 7))


def test_int8_key_ranks_centres_like_the_exact_distance():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(300, 48, generator=generator) + 2.0
    picks = torch.randint(0, 300, (200,), generator=generator)
    points = centres[picks] + 0.3 * torch.randn(200, 48, generator=generator)
    bank = centre_bank(centres, search=torch.int8)
    rows = search_rows(points - bank.offset, bank)
    assert rows.dtype == torch.float32  # an int8 search rounds each chunk of rows as it comes
    key = int8_key(quantize_rows(rows), bank)  # columns in the search order, |p - m|^2 left out
    exact = torch.cdist(points.double(), centres.double()[bank.order]).pow(2)
    offset = (points - bank.offset).double().pow(2).sum(1, keepdim=True)
    relative = ((key.double() + offset - exact).abs() / exact.amax(1, keepdim=True)).max()
    assert relative < 0.02, relative  # int8 rounding: a few per mille of the row's distances
    assert torch.equal(key.argmin(1), exact.argmin(1))


def test_the_int8_search_refuses_a_gpu_bank():
    with pytest.raises(ValueError, match="CPU only"):
        centre_bank(torch.randn(4, 3, device="meta"), search=torch.int8)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reuse_freed_memory_takes_effect_on_glibc():
    assert reuse_freed_memory() is True
    assert reuse_freed_memory() is True  # idempotent


@pytest.mark.parametrize("low_precision", [False, True])
def test_search_product_of_extended_rows_is_the_squared_distance(low_precision):
    generator = torch.Generator().manual_seed(1)
    centres = torch.relu(torch.randn(60, 32, generator=generator) + 3.0)  # a large common offset
    points = (centres[:20] + 0.3 * torch.randn(20, 32, generator=generator)).bfloat16().float()
    bank = centre_bank(centres, torch.bfloat16 if low_precision else torch.float32)
    key = (search_rows(points - bank.offset, bank) @ bank.search.t()).double()
    exact = torch.cdist(points.double(), centres.double()[bank.order]).square()
    if not low_precision:
        torch.testing.assert_close(key, exact, rtol=1e-4, atol=1e-4)
        return
    # bfloat16 (8-bit mantissa): rounding of c - m enters the dot product, and the output is rounded
    # relative to itself, i.e. to the distance; the old key was rounded relative to |p - m|^2 instead
    unit = 2.0**-8
    shifted = (centres - bank.offset)[bank.order].double()
    bound = 2 * unit * ((points - bank.offset).double().abs() @ shifted.abs().t()) + unit * exact
    assert torch.all((key - exact).abs() <= bound)
    # |c - m|^2 enters as two bfloat16 numbers, together nearly as exact as float32
    bias = bank.norms[bank.order]
    split = bank.search[:, -2].float() + bank.search[:, -1].float()
    assert torch.all((split - bias).abs() <= 2.0**-15 * bias.abs())


@pytest.mark.parametrize("columns", [3136, 4096, 100], ids=["3136", "4096", "not-grouped"])
@pytest.mark.parametrize("count", [3, 7, 10])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_grouped_smallest_columns_find_the_values_topk_finds(columns, count, dtype):
    key = torch.randn(64, columns, generator=torch.Generator().manual_seed(count)).to(dtype)
    expected = torch.topk(key, count, dim=1, largest=False, sorted=True).indices
    found = smallest_columns(key, count)
    assert torch.equal(key.gather(1, found), key.gather(1, expected))  # same values, ascending


def test_grouped_smallest_columns_with_many_ties_give_distinct_columns():
    key = torch.randint(0, 5, (64, 3136), generator=torch.Generator().manual_seed(0)).bfloat16()
    found = smallest_columns(key, 10)
    expected = torch.topk(key, 10, dim=1, largest=False, sorted=True).indices
    assert torch.equal(key.gather(1, found), key.gather(1, expected))
    assert (found.sort(dim=1).values.diff(dim=1) > 0).all()
