"""The fused training step end to end: train.fit against plain autograd on the method's formulas.

The reference is written from the method spec (docs: cfa-method.md), in plain float32 torch: the aligned
maps, a CoordConv 1x1 as a convolution on the maps with their x, y channels appended, the memory bank as
the mean untrained feature at each position, a dense matrix of squared distances, the K + J smallest by
sorting, and L = (1/nu) mean relu(d_k - r^2) + (1/nu) mean relu(r^2 - d_j - alpha), trained by AdamW
(amsgrad). No custom autograd Function, no sparse op, no search.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cfa_anomaly.train as train
from cfa_anomaly.config import Config, load_config
from cfa_anomaly.model import CFA
from cfa_anomaly.model.descriptor import CoordConv1x1, align_maps, coordinate_channels
from cfa_anomaly.model.distances import (
    centre_bank,
    chosen_distances_backward,
    chosen_squared_distances,
)
from cfa_anomaly.model.matching import describe_and_match
from cfa_anomaly.train import (
    batch_loss_backward,
    cache_features,
    fit,
    init_memory_bank,
    make_optimizer,
    micro_batches,
)

IMAGES, BATCH = 12, 4  # one epoch = 3 optimizer steps
PARAMETERS = ("descriptor.projection.conv.weight", "descriptor.projection.conv.bias", "loss_fn.radius")


class TinyBackbone(nn.Module):
    """Stands in for a frozen CNN: fixed random 3x3 convolutions + ReLU on the image sampled at strides
    4, 8 and 16 (8 channels each). Its maps vary from patch to patch as a real backbone's do, so patches
    lie about as far from their nearest centres, relative to their norms, as on real images."""

    def __init__(self, channels: tuple[int, ...] = (8, 8, 8)) -> None:
        super().__init__()
        self.name = "tiny"
        self.channels = list(channels)
        generator = torch.Generator().manual_seed(0)
        self.kernels = [torch.randn(c, 3, 3, 3, generator=generator) for c in channels]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [torch.relu(F.conv2d(images[..., ::stride, ::stride] - 0.5, kernel, padding=1))
                for stride, kernel in zip((4, 8, 16), self.kernels)]


def tiny_config(**overrides: str) -> Config:
    values = {"data.batch_size": str(BATCH), "train.epochs": "1", "train.device": "cpu", **overrides}
    return load_config(None, [f"{key}={value}" for key, value in values.items()])


def plain_features(weight: torch.Tensor, bias: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """CoordConv 1x1 as the spec says it: append the x, y channels, then a 1x1 convolution; (B*H*W, D)."""
    batch, _, height, width = aligned.shape
    inputs = torch.cat((aligned, coordinate_channels(batch, height, width, aligned)), dim=1)
    return F.conv2d(inputs, weight, bias).permute(0, 2, 3, 1).reshape(-1, weight.shape[0])


def plain_loss(features: torch.Tensor, bank: torch.Tensor, radius: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The coupled-hypersphere loss on a dense distance matrix, sorted ascending."""
    K, J = cfg.model.K, cfg.model.J
    distances = (features.unsqueeze(1) - bank.unsqueeze(0)).pow(2).sum(-1)
    nearest = torch.sort(distances, dim=1).values[:, : K + J]
    r2 = radius.pow(2)
    attraction = torch.relu(nearest[:, :K] - r2).mean() / cfg.model.nu
    repulsion = torch.relu(r2 - nearest[:, K: K + J] - cfg.model.alpha).mean() / cfg.model.nu
    return attraction + repulsion


def plain_training(initial: dict[str, torch.Tensor], aligned: torch.Tensor, cfg: Config
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """One epoch in plain autograd from the initial state, batches in fit's order; (parameters, bank,
    mean loss)."""
    params = {name: initial[name].clone().requires_grad_(True) for name in PARAMETERS}
    weight, bias, radius = params.values()
    with torch.no_grad():  # the mean untrained feature at each position: (H*W, D)
        bank = plain_features(weight, bias, aligned).view(len(aligned), -1, weight.shape[0]).mean(0)
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  amsgrad=True)
    order = torch.randperm(len(aligned), generator=torch.Generator().manual_seed(cfg.train.seed))
    losses = []
    for first in range(0, len(order), BATCH):
        batch = aligned[order[first: first + BATCH]]
        loss = plain_loss(plain_features(weight, bias, batch), bank, radius, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {name: value.detach() for name, value in params.items()}, bank, sum(losses) / len(losses)


@pytest.mark.parametrize("per_layer", [True, False], ids=["per-layer", "aligned"])
@pytest.mark.parametrize("radius_init", ["1e-5", "0.5"], ids=["paper-radius", "both-hinges-active"])
@pytest.mark.parametrize("seed", [0, 1])
def test_three_fused_training_steps_equal_plain_autograd_in_float32(seed, radius_init, per_layer):
    """train.fit (fused step, float32) and the plain reference from the same state and data agree on every
    parameter after 3 AdamW steps within 1e-6 absolute: 0.1% of one step (lr 1e-3). Measured worst
    difference over 100 such runs (seeds 0-24, both radii and paths, 2026-11-30): 3e-8, a few float32 ulps.
    radius 0.5 puts r^2 among the distances, so the repulsion hinge and the radius gradient take part.
    AdamW's step hardly depends on a gradient's scale, so the losses are compared too (and the gradients
    themselves in the next test)."""
    torch.manual_seed(seed)
    cfg = tiny_config(**{"train.seed": str(seed), "model.radius_init": radius_init,
                         "model.per_layer_projection": str(per_layer).lower()})
    model = CFA(TinyBackbone(), cfg.model, precision="float32")
    images = torch.rand(IMAGES, 3, 32, 32)
    initial = copy.deepcopy(model.learned_state())

    result = fit(model, [{"image": images[:7]}, {"image": images[7:]}], cfg, torch.device("cpu"))
    aligned = align_maps(model.aggregate(images)).float()
    expected, bank, mean_loss = plain_training(initial, aligned, cfg)

    torch.testing.assert_close(model.memory_bank, bank, rtol=0, atol=1e-6)
    assert result.losses == [pytest.approx(mean_loss, rel=1e-5)]
    trained = model.learned_state()
    for name in PARAMETERS:
        assert (trained[name] - initial[name]).abs().max() > 1e-4, f"{name} did not move"
        torch.testing.assert_close(trained[name], expected[name], rtol=0, atol=1e-6, msg=name)
    if radius_init == "0.5":  # the repulsion hinge was active: the check covers its gradient
        with torch.no_grad():
            nearest = torch.sort(torch.cdist(plain_features(initial[PARAMETERS[0]], initial[PARAMETERS[1]],
                                                            aligned), bank).pow(2), dim=1).values
        assert (nearest[:, cfg.model.K: cfg.model.K + cfg.model.J] < 0.25 - cfg.model.alpha).any()


def loss_gradients(model: CFA, images: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = model.loss(model.aggregate(images))
    loss.backward()
    return loss.item(), [param.grad.clone() for param in (model.descriptor.projection.conv.weight,
                                                          model.descriptor.projection.conv.bias,
                                                          model.loss_fn.radius)]


@pytest.mark.parametrize("per_layer", [True, False], ids=["per-layer", "aligned"])
@pytest.mark.parametrize("radius_init", ["1e-5", "0.5"], ids=["paper-radius", "both-hinges-active"])
def test_fused_loss_and_gradients_equal_plain_autograd_in_float32(radius_init, per_layer):
    """CFA.loss (the fused step) on a batch of 4, bank of 12 images: loss within 1e-5 relative, each
    gradient within 1e-5 of its largest element. Measured (seeds 0-19, both radii and paths): loss 2.6e-7,
    gradients 1.0e-6 relative."""
    torch.manual_seed(0)
    cfg = tiny_config(**{"model.radius_init": radius_init, "model.per_layer_projection": str(per_layer).lower()})
    model = CFA(TinyBackbone(), cfg.model, precision="float32")
    images = torch.rand(IMAGES, 3, 32, 32)
    init_memory_bank(model, cache_features(model, [{"image": images}], torch.device("cpu")), BATCH, cfg)
    loss, grads = loss_gradients(model, images[:BATCH])

    params = {name: value.detach().clone().requires_grad_(True)
              for name, value in model.learned_state().items() if name in PARAMETERS}
    weight, bias, radius = params.values()
    aligned = align_maps(model.aggregate(images[:BATCH])).float()
    expected = plain_loss(plain_features(weight, bias, aligned), model.memory_bank, radius, cfg)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for name, grad in zip(PARAMETERS, grads):
        reference = params[name].grad
        assert reference.abs().max() > 0, name
        torch.testing.assert_close(grad, reference, rtol=0, atol=1e-5 * reference.abs().max().item(), msg=name)


@pytest.mark.parametrize("radius_init", ["1e-5", "0.5"], ids=["paper-radius", "both-hinges-active"])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_precision_gradients_are_within_five_percent_of_float32(seed, radius_init):
    """The `mixed` step (maps, weight and products in bfloat16; distances, loss and gradients in float32)
    against the float32 step, same state and bank (12 images), one batch of 4: loss within 0.5% and each
    parameter's gradient within 5% in L2 norm. bfloat16 keeps 8 significant bits (0.4%), and the gradient
    2 (p - c_j) is a difference of nearby points, so p's rounding grows by |p| / |p - c_j|.
    Measured 2026-11-30 on this setup (seeds 0-7, both radii): weight 0.9-2.5%, bias 1.0-2.2%, radius
    0-1.1%, loss 7e-6 to 2.3e-3; on the real grid images with mobilenet_v2 at the start of training
    (bank of 8 images, one batch of 4): weight 0.9%, bias 1.3%. With the bank made of the batch itself the
    bias gradient is a near-cancelling sum (its mean over the bank's images is ~0) and differs by up to 58%."""
    torch.manual_seed(seed)
    cfg = tiny_config(**{"model.radius_init": radius_init})
    reference = CFA(TinyBackbone(), cfg.model, precision="float32")
    mixed = CFA(TinyBackbone(), cfg.model, precision="mixed")
    mixed.load_state_dict(reference.state_dict())
    images = torch.rand(IMAGES, 3, 32, 32)
    init_memory_bank(reference, cache_features(reference, [{"image": images}], torch.device("cpu")), BATCH, cfg)
    mixed.memory_bank = reference.memory_bank.clone()

    loss32, grads32 = loss_gradients(reference, images[:BATCH])
    loss16, grads16 = loss_gradients(mixed, images[:BATCH])
    assert mixed.aggregate(images)[0].dtype == torch.bfloat16  # the low-precision path really ran
    assert loss16 == pytest.approx(loss32, rel=0.005)
    for name, exact, low in zip(PARAMETERS, grads32, grads16):
        assert exact.norm() > 0, name
        relative = ((low - exact).norm() / exact.norm()).item()
        assert relative < 0.05, (name, relative)


# --------------------------------------------------------------------------- the clamp at zero
def near_centre_points(generator: torch.Generator, count: int = 64, dimension: int = 20):
    """Centres far from their mean and points 1e-5 from some of them: |p - c|^2 ~ 2e-9, far below the
    float32 rounding of |p - m|^2 - 2 (p - m).(c - m) + |c - m|^2 (~1e-6 here), so about half of those
    distances come out negative and are clamped at 0."""
    centres = 3.0 * torch.randn(count, dimension, generator=generator)
    points = centres[:40] + 1e-5 * torch.randn(40, dimension, generator=generator)
    return points, centres


def test_a_distance_clamped_at_zero_passes_no_gradient():
    """The step's exact distances (chosen_squared_distances) and their gradient in the points
    (chosen_distances_backward), as _DescribeAndMatch runs them."""
    generator = torch.Generator().manual_seed(0)
    points, centres = near_centre_points(generator)
    indices = torch.stack((torch.arange(40), torch.randint(40, 64, (40,), generator=generator)), dim=1)
    bank = centre_bank(centres)
    centred = points - bank.offset
    distances = chosen_squared_distances(centred, bank, indices)
    clamped = distances == 0
    assert 5 <= int(clamped.sum()) <= 35 and not clamped[:, 1].any()  # the case under test does occur

    # only the clamped distances carry an upstream gradient: none may reach the points
    gradient = chosen_distances_backward(centred, bank, indices, clamped.float(), clamped)
    assert torch.equal(gradient, torch.zeros_like(gradient))

    # with weights on every distance: the float64 gradient with the clamped pairs left out (their share,
    # 2e-5 per pair, is below this tolerance: the check above is the one that sees it)
    weights = torch.randn(40, 2, generator=generator)
    gradient = chosen_distances_backward(centred, bank, indices, weights, clamped)
    exact = 2.0 * (points.double().unsqueeze(1) - centres.double()[indices])  # (40, 2, D)
    expected = (exact * (weights.double() * ~clamped).unsqueeze(-1)).sum(1)
    torch.testing.assert_close(gradient.double(), expected, rtol=0, atol=1e-4)


def test_the_fused_step_passes_no_gradient_through_a_clamped_distance():
    """describe_and_match on maps whose features sit 1e-5 from bank centres: the clamped distances (0 in the
    forward) give the descriptor no gradient."""
    torch.manual_seed(0)
    layer = CoordConv1x1(8, 20)
    maps = torch.relu(torch.randn(2, 8, 5, 4) + 1.0).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        features = layer(maps).permute(0, 2, 3, 1).reshape(-1, 20)
    centres = torch.cat((features + 1e-5 * torch.randn_like(features), features + 1.0))
    distances, _ = describe_and_match(layer, maps, centre_bank(centres), 2)
    clamped = distances.detach() == 0
    assert 5 <= int(clamped.sum()) <= 35  # of 40 patches: the case under test does occur
    (distances * clamped).sum().backward()
    for param in layer.parameters():
        assert torch.equal(param.grad, torch.zeros_like(param)), "a clamped distance passed a gradient"


def test_a_batch_split_into_parts_gives_the_whole_batch_loss_and_gradient(monkeypatch):
    """batch_loss_backward on 3 images as one part and as 3 parts of one (STEP_ELEMENTS lowered to one
    image's features), float32: the same loss and gradients up to rounding."""
    torch.manual_seed(0)
    cfg = tiny_config(**{"model.radius_init": "0.5"})
    model = CFA(TinyBackbone(), cfg.model, precision="float32")
    cached = cache_features(model, [{"image": torch.rand(IMAGES, 3, 32, 32)}], torch.device("cpu"))
    init_memory_bank(model, cached, BATCH, cfg)
    batch = [grid[:3] for grid in cached]
    parameters = [model.descriptor.projection.conv.weight, model.descriptor.projection.conv.bias,
                  model.loss_fn.radius]
    results = []
    for elements in (1 << 30, 8 * 8 * model.descriptor.out_channels):  # whole; one 8 x 8 image per part
        monkeypatch.setattr(train, "STEP_ELEMENTS", elements)
        model.zero_grad()
        loss = batch_loss_backward(model, batch)
        results.append((loss.item(), [param.grad.clone() for param in parameters],
                        len(micro_batches(batch, model.descriptor.out_channels))))
    (whole, whole_grads, whole_parts), (split, split_grads, split_parts) = results
    assert (whole_parts, split_parts) == (1, 3)
    assert split == pytest.approx(whole, rel=1e-6)
    for name, a, b in zip(PARAMETERS, split_grads, whole_grads):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * b.abs().max().item(), msg=name)


def test_the_fused_optimizer_takes_torchs_default_adamw_steps():
    cfg = tiny_config()
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 66, 1, 1, generator=generator), torch.randn(64, generator=generator)]
    grads = [[torch.randn(t.shape, generator=generator) for t in start] for _ in range(3)]
    fused_params = [nn.Parameter(t.clone()) for t in start]
    default_params = [nn.Parameter(t.clone()) for t in start]
    fused = make_optimizer(fused_params, cfg, torch.device("cpu"))
    default = torch.optim.AdamW(default_params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                amsgrad=True)
    for step in grads:
        for params, optimizer in ((fused_params, fused), (default_params, default)):
            for param, grad in zip(params, step):
                param.grad = grad.clone()
            optimizer.step()
    assert fused.param_groups[0]["fused"] and not default.param_groups[0]["fused"]
    for a, b, first in zip(fused_params, default_params, start):
        assert not torch.equal(a, first)  # they moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
