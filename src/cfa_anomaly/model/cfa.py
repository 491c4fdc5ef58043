"""The CFA model: frozen backbone, patch descriptor, memory bank, loss with learned radius, scorer."""

from __future__ import annotations

import torch
import torch.nn as nn

from cfa_anomaly.backbones import FeatureExtractor
from cfa_anomaly.config import ModelConfig
from cfa_anomaly.model import rotation
from cfa_anomaly.model.compiled import compile_enabled
from cfa_anomaly.model.descriptor import CoordConv1x1, PatchDescriptor, align_maps, pool_maps
from cfa_anomaly.model.distances import CentredBank, centre_bank
from cfa_anomaly.model.loss import CoupledHypersphereLoss
from cfa_anomaly.model.matching import describe_and_match, described_rows, layer_shift
from cfa_anomaly.model.precision import PrecisionPlan, named_plan
from cfa_anomaly.model.scorer import anomaly_maps, softmin_scores
from cfa_anomaly.runtime import true_float32_convolutions

Layers = list[torch.Tensor]  # pooled maps (B, C_l, h_l, w_l), channels-last; the first on the output grid


class CFA(nn.Module):
    """Only the descriptor, the radius and the memory bank are state; the backbone is rebuilt from config."""

    def __init__(self, extractor: FeatureExtractor, cfg: ModelConfig,
                 precision: PrecisionPlan | str | None = None) -> None:
        """precision: the plan to run, or its name (float32, mixed, bfloat16, int8-search,
        projected-search); default cfg.precision, where auto means float32 (model/factory.py resolves auto
        for a device)."""
        super().__init__()
        self.cfg = cfg
        if not isinstance(precision, PrecisionPlan):
            name = precision or (cfg.precision if cfg.precision != "auto" else "float32")
            precision = named_plan(name, cfg.last_stage_bfloat16)
        self.plan = precision
        self.extractor = extractor
        extractor.fold = cfg.compile != "off"  # batch norms folded: model.compile
        self.descriptor = PatchDescriptor(sum(extractor.channels), cfg.gamma_d)
        # mixed: the backbone's last stage in bfloat16 where its convolutions are packed (CPU, model.compile)
        extractor.last_stage_bfloat16 = precision.last_stage_bfloat16
        self.per_layer = cfg.per_layer_projection
        self.loss_fn = CoupledHypersphereLoss(cfg.K, cfg.J, cfg.nu, cfg.alpha, cfg.radius_init)
        self.register_buffer("memory_bank", torch.zeros(0, self.descriptor.out_channels))
        self._prepared: tuple[torch.Tensor, int, CentredBank] | None = None
        self._compiled_shape: tuple[int, ...] | None = None  # the batch shape model.compile=auto compiled

    @property
    def precision(self) -> str:
        """The plan's name, as checkpoints and model cards store it."""
        return self.plan.name

    @torch.no_grad()
    def aggregate(self, images: torch.Tensor) -> Layers:
        """Frozen part: images (B,3,H,W) in 0..1 -> pooled maps of the backbone's layers.

        With per_layer_projection (the default) each layer stays at its own resolution: the descriptor
        projects each at its resolution and resizes the products (model/matching.py), a quarter of the
        work for wide_resnet50_2, and the training-feature cache is a quarter of the size. Without it,
        one map, resized and concatenated: (B, C, H/4, W/4), the plain computation. bfloat16 whenever the
        descriptor runs in bfloat16 (mixed, bfloat16). The backbone runs in bfloat16 only under bfloat16,
        else in true float32 (no TF32 on a GPU).
        """
        device = self.memory_bank.device
        bfloat16 = self.plan.backbone == torch.bfloat16
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16)
        with autocast, true_float32_convolutions(device):
            pooled = pool_maps(self.extractor(images), self.plan.features)
        return pooled if self.per_layer else [align_maps(pooled)]

    def describe(self, layers: Layers, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Pooled maps -> (B, D, h, w) float32 patch features, computed as the training and scoring step
        computes them (matching.described_rows), its products in dtype if given; no gradient."""
        batch, _, height, width = layers[0].shape
        dtype = dtype or self.plan.features
        rows = described_rows(self.descriptor.projection, layers, dtype)
        return rows.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def prepared_bank(self) -> CentredBank:
        """The memory bank centred for the search, computed once per bank (and again when it changes)."""
        bank = self.memory_bank
        if bank.shape[0] == 0:
            raise RuntimeError("the memory bank is empty: train the model or load a checkpoint first")
        if self._prepared is None or self._prepared[0] is not bank or self._prepared[1] != bank._version:
            prepared = centre_bank(bank, search=self.plan.search, projected=self.plan.projected)
            self._prepared = (bank, bank._version, prepared)
        return self._prepared[2]

    def compiles(self, layers: Layers) -> bool:
        """Whether the descriptor step's front runs through torch.compile for these maps (model.compile,
        model/compiled.py). on: always. auto: only for the batch shape compiled by warm_up (training's full
        batches, and scoring batches of that shape in the same process): one compile per process, and no
        compile for a few images to score."""
        if self.cfg.compile == "on":
            return compile_enabled("on", self.memory_bank.device)
        return self.cfg.compile == "auto" and tuple(layers[0].shape) == self._compiled_shape

    def nearest(self, layers: Layers, k: int) -> torch.Tensor:
        """Pooled maps -> (B*h*w, k) squared distances of the described patches to their k nearest centres."""
        layer, bank = self.descriptor.projection, self.prepared_bank()
        if bank.projection is not None and not torch.is_grad_enabled():  # scoring: in the bank's axes
            layer, bank = self.rotated(layer, bank)
        shift = self.position_term(layer, bank, tuple(layers[0].shape[-2:]))
        parts = [describe_and_match(layer, part, bank, k, self.compiles(part), shift)[0]
                 for part in self.scoring_parts(layers)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def prepare_scoring(self) -> None:
        """Make now what the first scoring would make (the prepared bank, its rotation under projected-search:
        about a second for wide_resnet50_2 on a 2-core CPU), so that a service's first request does not wait
        for it. A no-op for an untrained model."""
        if self.memory_bank.shape[0]:
            bank = self.prepared_bank()
            if bank.projection is not None:
                self.rotated(self.descriptor.projection, bank)

    def rotated(self, layer: CoordConv1x1, bank: CentredBank) -> tuple[CoordConv1x1, CentredBank]:
        """The descriptor layer and the bank in the bank's principal axes, for scoring with the certified
        search (model/rotation.py): the bank's made again when the bank changes, the layer's when the
        weights do."""
        rotated = self.__dict__.get("_rotated_bank")  # outside the state, like the position term
        if rotated is None or rotated.source is not bank:
            rotated = self.__dict__["_rotated_bank"] = rotation.rotate_bank(bank)
        turned = self.__dict__.get("_rotated_layer")
        if not rotation.current_layer(turned, layer, rotated):
            turned = self.__dict__["_rotated_layer"] = rotation.rotate_layer(layer, rotated)
        return turned.layer, rotated.bank

    def position_term(self, projection: CoordConv1x1, bank: CentredBank, grid: tuple[int, int]) -> torch.Tensor:
        """The descriptor's position term minus the bank's mean centre (matching.layer_shift), a (H*W, D)
        product (~2 ms at 56 x 56 x 1792 on a 2-core Xeon) that scoring batches and a training step's
        micro-batches share: made again only when its inputs change, the bias, the position columns of the
        weight (compared by value, a few thousand numbers: a fused optimizer step changes them without
        bumping their version), the bank or the grid. A constant for the step (its gradient is written out
        in matching._DescribeAndMatch.backward). projection: the descriptor's layer, or its rotation."""
        conv = projection.conv
        inputs = (conv.bias.detach(), conv.weight.detach().flatten(1)[:, projection.in_channels:])
        cached = self.__dict__.get("_position_term")
        if (cached is None or cached[2] is not bank.offset or cached[3] != grid
                or not all(torch.equal(a, b) for a, b in zip(cached[0], inputs))):
            shift = layer_shift(projection, bank, grid)
            cached = ([value.clone() for value in inputs], shift, bank.offset, grid)
            self.__dict__["_position_term"] = cached  # outside the state: not saved, not moved by .to()
        return cached[1]

    def scoring_parts(self, layers: Layers) -> list[Layers]:
        """Without gradients: the batch in parts of the batch shape warm_up compiled under model.compile=auto
        (training's micro-batch, train.micro_batches), so that scoring batches larger than it run compiled
        too (each patch's distances do not depend on the others); else the batch as it is."""
        shape, batch = self._compiled_shape, layers[0].shape[0]  # set by warm_up under auto only
        if (shape is None or torch.is_grad_enabled() or tuple(layers[0].shape[1:]) != shape[1:]
                or batch <= shape[0]):
            return [layers]
        return [[layer[start: start + shape[0]] for layer in layers] for start in range(0, batch, shape[0])]

    def warm_up(self, layers: Layers) -> None:
        """Compile the step for this batch shape now (model.compile), so that its one-time cost is not
        counted as training time. auto compiles where it can and the step is large (wide backbones); a
        no-op when the step runs eagerly."""
        batch, _, height, width = layers[0].shape
        elements = batch * height * width * self.descriptor.out_channels
        if self.cfg.compile == "auto" and compile_enabled("auto", self.memory_bank.device, elements):
            self._compiled_shape = tuple(layers[0].shape)
        if self.compiles(layers):  # forward and backward, without touching the parameters' .grad
            projection = self.descriptor.projection
            count = self.cfg.K + self.cfg.J
            distances, _ = describe_and_match(projection, layers, self.prepared_bank(), count, compiled=True)
            torch.autograd.grad(distances.sum(), [projection.conv.weight])

    def loss(self, layers: Layers) -> torch.Tensor:
        return self.loss_fn(self.nearest(layers, self.cfg.K + self.cfg.J))

    def score_aggregated(self, layers: Layers, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled maps -> (smoothed anomaly maps (B, H, W), image scores (B,) = max of each map)."""
        batch, _, height, width = layers[0].shape
        with torch.no_grad():
            scores = softmin_scores(self.nearest(layers, self.cfg.K))
        maps = anomaly_maps(scores.view(batch, height, width), size, self.cfg.blur_sigma)
        return maps, maps.flatten(1).amax(dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: images (B,3,H,W) in 0..1 -> (anomaly maps (B,H,W), image scores (B,)); no gradients."""
        return self.score_aggregated(self.aggregate(images), tuple(images.shape[-2:]))

    def __getstate__(self) -> dict:
        """Pickles and deep copies leave the caches out, the prepared bank and the position term (made again
        on first use): a packed bank (model/kernels.py) is an opaque oneDNN tensor that cannot be pickled."""
        state = self.__dict__.copy()
        state["_prepared"] = None
        state.pop("_position_term", None)
        state.pop("_rotated_bank", None)
        state.pop("_rotated_layer", None)
        return state

    def learned_state(self) -> dict[str, torch.Tensor]:
        """Everything training produced: descriptor weights, radius, memory bank."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("extractor.")}

    def load_learned_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory_bank = torch.empty_like(state["memory_bank"], device=self.memory_bank.device)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("extractor.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit this model: missing {missing}, unexpected {unexpected}")
