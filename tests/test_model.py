"""The CFA parts against independent brute-force computations: descriptor, loss, memory bank, scorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cfa_anomaly.config import Config, ConfigError, ModelConfig, load_config
from cfa_anomaly.model import CFA
from cfa_anomaly.model.descriptor import (
    CoordConv1x1,
    PatchDescriptor,
    align_maps,
    coordinate_channels,
    pool_maps,
)
from cfa_anomaly.model.distances import (
    candidate_centres,
    centre_bank,
    chosen_squared_distances,
    search_rows,
    squared_distances,
)
from cfa_anomaly.model.loss import CoupledHypersphereLoss
from cfa_anomaly.model.matching import describe_and_match, described_rows, layer_shift
from cfa_anomaly.model.memory_bank import build_memory_bank, kmeans, mean_feature_bank
from cfa_anomaly.model.scorer import anomaly_maps, softmin_scores
from cfa_anomaly.train import init_memory_bank, make_optimizer
from reference import model_search, nearest_reference, patch_rows, softmin_reference


class StubExtractor(nn.Module):
    """Stands in for a backbone: fixed random 1x1 projections of the image pooled to strides 4, 8, 16."""

    def __init__(self, channels=(3, 4, 5)):
        super().__init__()
        self.name = "stub"
        self.channels = list(channels)
        gen = torch.Generator().manual_seed(0)
        self.weights = [torch.randn(c, 3, 1, 1, generator=gen) for c in channels]

    def forward(self, images):
        return [F.conv2d(F.avg_pool2d(images, s), w) for s, w in zip((4, 8, 16), self.weights)]


def stub_model(**model_overrides) -> CFA:
    torch.manual_seed(0)
    return CFA(StubExtractor(), ModelConfig(**model_overrides))


# --------------------------------------------------------------------------- descriptor
@pytest.mark.parametrize("gamma_d", [1, 2, 3])
def test_descriptor_output_shape(gamma_d):
    descriptor = PatchDescriptor(12, gamma_d)
    out = descriptor.projection(torch.randn(2, 12, 5, 7))
    assert out.shape == (2, 12 // gamma_d, 5, 7)
    assert descriptor.out_channels == 12 // gamma_d


def test_coordinate_channels_are_x_then_y_from_minus_one_to_one():
    coords = coordinate_channels(3, 4, 6, torch.empty(0))
    assert coords.shape == (3, 2, 4, 6)
    x, y = coords[0, 0], coords[0, 1]
    expected_x = torch.linspace(-1, 1, 6).expand(4, 6)
    expected_y = torch.linspace(-1, 1, 4)[:, None].expand(4, 6)
    torch.testing.assert_close(x, expected_x)
    torch.testing.assert_close(y, expected_y)
    assert x.min() == -1 and x.max() == 1 and y.min() == -1 and y.max() == 1


def test_coordconv_appends_x_then_y_after_the_features():
    conv = CoordConv1x1(4, 2)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.bias.zero_()
        conv.conv.weight[0, 4] = 1.0  # first appended channel
        conv.conv.weight[1, 5] = 1.0  # second appended channel
    out = conv(torch.randn(2, 4, 3, 5))
    torch.testing.assert_close(out, coordinate_channels(2, 3, 5, out))


def test_coordconv_has_no_unused_parameters():
    descriptor = PatchDescriptor(6, 2)
    params = dict(descriptor.named_parameters())
    assert sum(p.numel() for p in params.values()) == 3 * (6 + 2) + 3  # one 1x1 weight (+2 coords) and a bias
    descriptor.projection(torch.randn(2, 6, 4, 4)).pow(2).sum().backward()
    for name, p in params.items():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_pooled_and_aligned_maps_are_pooled_resized_and_concatenated():
    gen = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, c, s, s, generator=gen) for c, s in ((3, 16), (4, 8), (5, 4))]
    out = align_maps(pool_maps(maps))
    assert out.shape == (2, 12, 16, 16)
    torch.testing.assert_close(out[:, :3], F.avg_pool2d(maps[0], 3, 1, 1))
    expected_last = F.interpolate(F.avg_pool2d(maps[2], 3, 1, 1), size=(16, 16), mode="bilinear",
                                  align_corners=False)
    torch.testing.assert_close(out[:, 7:], expected_last)


# --------------------------------------------------------------------------- distances
def test_squared_and_chosen_distances_match_the_reference():
    gen = torch.Generator().manual_seed(2)
    points, centres = torch.randn(40, 7, generator=gen), torch.randn(25, 7, generator=gen)
    reference = (points.double().unsqueeze(1) - centres.double()).pow(2).sum(-1)
    torch.testing.assert_close(squared_distances(points, centres).double(), reference, atol=1e-4, rtol=1e-4)
    indices = torch.randint(0, 25, (40, 4), generator=gen)
    bank = centre_bank(centres)
    chosen = chosen_squared_distances(points - bank.offset, bank, indices)
    torch.testing.assert_close(chosen.double(), reference.gather(1, indices), atol=1e-4, rtol=1e-4)


def test_the_search_finds_the_reference_neighbours_sorted_and_chunks_change_nothing():
    gen = torch.Generator().manual_seed(3)
    points, centres = torch.randn(103, 5, generator=gen), torch.randn(31, 5, generator=gen)
    values, indices = model_search(points, centres, 4)
    ref_values, ref_indices = nearest_reference(points, centres, 4)
    torch.testing.assert_close(values.double(), ref_values, atol=1e-4, rtol=1e-4)
    assert torch.equal(indices, ref_indices)
    assert (values[:, 1:] >= values[:, :-1]).all()
    bank = centre_bank(centres)
    rows = search_rows(points - bank.offset, bank)
    assert torch.equal(candidate_centres(rows, bank, 4, chunk=7), candidate_centres(rows, bank, 4))


# --------------------------------------------------------------------------- loss
BANK_X = [0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0]  # centres on a line, irregular spacing


def hand_loss(points, K, J, r2, nu, alpha, attraction_slice=None, repulsion_slice=None):
    """The paper's loss computed from plain Python lists of sorted squared distances."""
    att, rep = [], []
    for px, py in points:
        d = sorted((px - cx) ** 2 + py ** 2 for cx in BANK_X)
        att += d[attraction_slice or slice(0, K)]
        rep += d[repulsion_slice or slice(K, K + J)]
    loss = sum(max(v - r2, 0.0) for v in att) / len(att) / nu
    if J:
        loss += sum(max(r2 - v - alpha, 0.0) for v in rep) / len(rep) / nu
    return loss


@pytest.mark.parametrize("K, J", [(1, 2), (2, 1), (2, 3), (3, 2), (2, 2)])
def test_loss_matches_hand_computation_with_sorted_neighbours(K, J):
    points = [(0.4, 0.0), (7.0, 1.0), (20.0, -0.5)]
    radius, nu, alpha = math.sqrt(40.0), 0.5, 0.1
    loss_fn = CoupledHypersphereLoss(K=K, J=J, nu=nu, alpha=alpha, radius_init=radius)
    bank = torch.tensor([[x, 0.0] for x in BANK_X])
    features = torch.tensor(points)
    expected = hand_loss(points, K, J, radius ** 2, nu, alpha)
    # the test can tell the right repulsion slice d[K:K+J] from the public code's d[J:]
    wrong = hand_loss(points, K, J, radius ** 2, nu, alpha, repulsion_slice=slice(J, None))
    if K != J:
        assert not math.isclose(wrong, expected, rel_tol=1e-6)
    distances, _ = model_search(features, bank, K + J)  # the model's search, as CFA.loss runs it
    assert loss_fn(distances).item() == pytest.approx(expected, rel=1e-5)


def test_attraction_only_when_j_is_zero():
    points = [(0.4, 0.0), (12.0, 2.0)]
    loss_fn = CoupledHypersphereLoss(K=3, J=0, nu=1e-3, alpha=0.1, radius_init=0.5)
    distances, _ = nearest_reference(torch.tensor(points), torch.tensor([[x, 0.0] for x in BANK_X]), 3)
    loss = loss_fn(distances)
    assert loss.item() == pytest.approx(hand_loss(points, 3, 0, 0.25, 1e-3, 0.1), rel=1e-5)


def test_radius_is_a_parameter_and_receives_gradient():
    loss_fn = CoupledHypersphereLoss(K=2, J=2, radius_init=1e-5)
    assert any(p is loss_fn.radius for p in loss_fn.parameters())
    features = torch.randn(20, 4, requires_grad=True)
    distances, _ = nearest_reference(features, torch.randn(10, 4), 4)
    loss_fn(distances).backward()
    assert loss_fn.radius.grad is not None and loss_fn.radius.grad.item() != 0.0
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_loss_backward_reaches_descriptor_and_radius_once_without_retain_graph():
    model = stub_model(K=2, J=2)
    aggregated = model.aggregate(torch.rand(2, 3, 32, 32))
    model.memory_bank = torch.randn(16, model.descriptor.out_channels)
    params = list(model.descriptor.parameters()) + list(model.loss_fn.parameters())
    for _ in range(2):  # a second backward on a fresh graph must work (no retained state)
        for p in params:
            p.grad = None
        model.loss(aggregated).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_the_model_loss_is_the_loss_of_the_reference_neighbours_of_its_features():
    model = stub_model(K=2, J=3)
    layers = model.aggregate(torch.rand(2, 3, 32, 32))
    model.memory_bank = torch.randn(16, model.descriptor.out_channels)
    features = patch_rows(model.descriptor.projection(align_maps(layers)))
    distances, _ = nearest_reference(features, model.memory_bank, 5)
    expected = model.loss_fn(distances.float())
    torch.testing.assert_close(model.loss(layers), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- memory bank
@pytest.mark.parametrize("batch_size", [2, 5])
def test_init_memory_bank_is_per_position_mean_of_descriptor(batch_size):
    model = stub_model()
    cached = model.aggregate(torch.rand(5, 3, 32, 32))  # per-layer maps; aligned: (5, 12, 8, 8)
    cfg = Config()
    init_memory_bank(model, cached, batch_size, cfg)
    with torch.no_grad():
        features = model.descriptor.projection(align_maps(cached))  # (N, D, H, W)
    n, d, h, w = features.shape
    expected = torch.stack([features[:, :, y, x].mean(0) for y in range(h) for x in range(w)])
    assert model.memory_bank.shape == (h * w, d)
    torch.testing.assert_close(model.memory_bank, expected, atol=1e-5, rtol=1e-5)


def test_the_position_term_is_reused_until_the_weights_or_bank_change():
    model = stub_model()
    cached = model.aggregate(torch.rand(4, 3, 32, 32))
    init_memory_bank(model, cached, 2, Config())
    grid = tuple(cached[0].shape[-2:])
    with torch.no_grad():
        first = model.position_term(model.descriptor.projection, model.prepared_bank(), grid)
        assert model.position_term(model.descriptor.projection, model.prepared_bank(), grid) is first
        scored = model.nearest(cached, 3)
        inside, _ = describe_and_match(model.descriptor.projection, cached, model.prepared_bank(), 3)
    torch.testing.assert_close(scored, inside, rtol=1e-6, atol=1e-6)  # as the step makes it itself
    params = list(model.descriptor.parameters())
    optimizer = make_optimizer(params, Config(), torch.device("cpu"))  # fused: versions are not bumped
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    with torch.no_grad():
        changed = model.position_term(model.descriptor.projection, model.prepared_bank(), grid)
        fresh = layer_shift(model.descriptor.projection, model.prepared_bank(), grid)
    assert changed is not first and not torch.equal(changed, first)
    torch.testing.assert_close(changed, fresh, rtol=0, atol=0)
    model.memory_bank = model.memory_bank + 1.0  # a new bank: a new offset
    with torch.no_grad():
        assert model.position_term(model.descriptor.projection, model.prepared_bank(), grid) is not changed


def test_init_memory_bank_with_gamma_c_compresses_by_kmeans():
    model = stub_model(gamma_c=4)
    cached = model.aggregate(torch.rand(3, 3, 32, 32))
    cfg = Config()
    cfg.model.gamma_c = 4
    init_memory_bank(model, cached, 2, cfg)
    with torch.no_grad():
        full = model.descriptor.projection(align_maps(cached)).mean(0).flatten(1).T
    assert model.memory_bank.shape == (64 // 4, full.shape[1])
    torch.testing.assert_close(model.memory_bank,
                               kmeans(full, 16, iterations=cfg.model.kmeans_iters, seed=cfg.train.seed),
                               atol=1e-5, rtol=1e-5)


def test_mean_feature_bank_rejects_zero_images():
    with pytest.raises(ValueError):
        mean_feature_bank(torch.zeros(2, 3, 3), 0)


def blobs(seed=0, n=20, spread=0.1):
    gen = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    points = torch.cat([m + spread * torch.randn(n, 3, generator=gen) for m in means])
    return points, means


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_well_separated_blob_means(seed):
    points, means = blobs(seed)
    centres = kmeans(points, 4, seed=seed)
    assert centres.shape == (4, 3)
    sample_means = torch.stack([points[i * 20:(i + 1) * 20].mean(0) for i in range(4)])
    # match every blob to its nearest centre: a one-to-one match at the blob's sample mean
    match = torch.cdist(sample_means, centres).argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(centres[match], sample_means, atol=1e-5, rtol=1e-5)


def test_kmeans_is_deterministic_for_a_seed_and_returns_n_clusters():
    points = torch.randn(200, 6, generator=torch.Generator().manual_seed(5))
    a, b = kmeans(points, 12, seed=3), kmeans(points, 12, seed=3)
    assert a.shape == (12, 6)
    assert torch.equal(a, b)
    assert torch.unique(a, dim=0).shape[0] == 12


def test_kmeans_rejects_too_many_clusters():
    with pytest.raises(ValueError):
        kmeans(torch.randn(5, 2), 6)


def test_build_memory_bank_sizes():
    feature_sum = torch.randn(4, 6, 6)
    assert build_memory_bank(feature_sum, 2, 1, 10, 0).shape == (36, 4)
    assert build_memory_bank(feature_sum, 2, 3, 10, 0).shape == (12, 4)


# --------------------------------------------------------------------------- scoring
def test_patch_scores_equal_softmin_weighted_nearest_distance():
    gen = torch.Generator().manual_seed(4)
    features, bank = torch.randn(60, 8, generator=gen), torch.randn(30, 8, generator=gen)
    squared, _ = model_search(features, bank, 3)
    expected = softmin_reference(nearest_reference(features, bank, 3)[0])
    torch.testing.assert_close(softmin_scores(squared).double(), expected, atol=1e-4, rtol=1e-4)


def test_patch_score_is_zero_on_a_centre_and_grows_away_from_it():
    bank = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    squared, _ = model_search(torch.tensor([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0]]), bank, 2)
    scores = softmin_scores(squared)
    assert scores[0].item() == pytest.approx(0.0, abs=1e-3)
    assert scores[0] < scores[1] < scores[2]


def test_anomaly_maps_without_blur_are_bilinear_upsampling():
    grid = torch.rand(2, 4, 4)
    torch.testing.assert_close(anomaly_maps(grid, (16, 16), 0.0),
                               F.interpolate(grid[:, None], size=(16, 16), mode="bilinear",
                                             align_corners=False)[:, 0])


def test_anomaly_maps_blur_keeps_constants_and_spreads_peaks():
    constant = torch.full((1, 8, 8), 3.0)
    torch.testing.assert_close(anomaly_maps(constant, (64, 64), 4.0), torch.full((1, 64, 64), 3.0))
    peak = torch.zeros(1, 16, 16)
    peak[0, 8, 8] = 1.0
    sharp = anomaly_maps(peak, (64, 64), 0.0)
    smooth = anomaly_maps(peak, (64, 64), 4.0)
    assert smooth.max() < sharp.max()
    peak_sharp = torch.tensor(divmod(int(sharp.flatten().argmax()), 64))
    peak_smooth = torch.tensor(divmod(int(smooth.flatten().argmax()), 64))
    assert (peak_sharp - peak_smooth).abs().max() <= 1  # the upsampled peak is a 2x2 plateau: ties


def test_anomaly_maps_blur_equals_a_full_2d_gaussian_kernel_with_reflected_borders():
    from torchvision.transforms.v2.functional import gaussian_blur

    grid = torch.rand(3, 14, 14) * 5
    upsampled = F.interpolate(grid[:, None], size=(56, 56), mode="bilinear", align_corners=False)
    expected = gaussian_blur(upsampled, kernel_size=[33, 33], sigma=[4.0, 4.0])[:, 0]
    torch.testing.assert_close(anomaly_maps(grid, (56, 56), 4.0), expected, rtol=1e-5, atol=1e-5)


def test_model_maps_have_the_input_size_and_score_is_map_max():
    from cfa_anomaly.backbones import FeatureExtractor

    torch.manual_seed(0)
    cfg = load_config(None, ["data.resize=64", "data.crop=64"]).model
    model = CFA(FeatureExtractor("resnet18", pretrained=False), cfg)
    images = torch.rand(2, 3, 64, 96)
    aggregated = align_maps(model.aggregate(images))
    assert aggregated.shape == (2, 64 + 128 + 256, 16, 24)
    with pytest.raises(RuntimeError, match="memory bank"):
        model(images)
    model.memory_bank = patch_rows(model.descriptor.projection(aggregated)).detach()[:50]
    maps, scores = model(images)
    assert maps.shape == (2, 64, 96)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))


@pytest.mark.parametrize(("precision", "dtype", "min_correlation"),
                         [("float32", torch.float32, 0.99999), ("mixed", torch.bfloat16, 0.999)])
def test_per_layer_path_keeps_each_layer_at_its_resolution_and_scores_like_the_plain_path(
        precision, dtype, min_correlation):
    from cfa_anomaly.backbones import FeatureExtractor

    torch.manual_seed(0)
    cfg = load_config(None, ["data.resize=64", "data.crop=64"]).model
    plain_cfg = load_config(None, ["data.resize=64", "data.crop=64",
                                   "model.per_layer_projection=false"]).model
    extractor = FeatureExtractor("resnet18", pretrained=False)
    plain, fast = CFA(extractor, plain_cfg, precision="float32"), CFA(extractor, cfg, precision=precision)
    fast.load_state_dict(plain.state_dict())
    images = torch.rand(2, 3, 64, 96)
    layers = fast.aggregate(images)
    assert [tuple(grid.shape) for grid in layers] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6)]
    assert all(grid.dtype == dtype for grid in layers)
    [aligned] = plain.aggregate(images)
    torch.testing.assert_close(align_maps(layers).float(), aligned, rtol=0.01, atol=0.01)
    plain.memory_bank = fast.memory_bank = patch_rows(plain.describe([aligned])).detach()[::7]
    plain_maps, _ = plain(images)
    fast_maps, _ = fast(images)
    correlation = np.corrcoef(plain_maps.flatten().numpy(), fast_maps.flatten().numpy())[0, 1]
    assert correlation > min_correlation, correlation


def test_blur_wider_than_a_small_crop_is_rejected_up_front():
    with pytest.raises(ConfigError, match="model.blur_sigma"):
        load_config(None, ["data.resize=16", "data.crop=16"])  # sigma 4: radius 16 does not fit a 16 px map
    cfg = load_config(None, ["data.resize=16", "data.crop=16", "model.blur_sigma=1", "model.K=1", "model.J=1"])
    torch.manual_seed(0)
    model = stub_model(**{k: getattr(cfg.model, k) for k in ("K", "J", "blur_sigma")})
    images = torch.rand(1, 3, cfg.data.crop, cfg.data.crop)
    model.memory_bank = patch_rows(model.describe(model.aggregate(images))).detach()
    maps, _ = model(images)
    assert maps.shape == (1, 16, 16)


def test_coordconv_product_form_equals_a_convolution_on_concatenated_coordinates():
    """The product form training and scoring use (matching.described_rows) against the layer's definition,
    a 1x1 convolution of the input with its coordinate channels appended, written out here."""
    torch.manual_seed(0)
    layer = CoordConv1x1(6, 5)
    x = torch.randn(2, 6, 7, 9)
    coords = coordinate_channels(2, 7, 9, x)
    expected = F.conv2d(torch.cat((x, coords), dim=1), layer.conv.weight, layer.conv.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    for layout in (torch.contiguous_format, torch.channels_last):
        rows = described_rows(layer, x.contiguous(memory_format=layout), torch.float32)
        torch.testing.assert_close(rows, patch_rows(expected), rtol=1e-5, atol=1e-5)
