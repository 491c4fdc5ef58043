"""What a runtime needs to know about a trained model besides its weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cfa_anomaly.config import Config, config_from_dict
from cfa_anomaly.data.images import image_to_tensor


@dataclass(frozen=True)
class ModelCard:
    """Preprocessing, decision threshold and provenance of a trained model (a checkpoint or an export)."""

    resize: int  # images are squashed to resize x resize ...
    crop: int  # ... then centre-cropped to crop x crop, the graph's input size
    threshold: float | None  # decision threshold from held-out normal images; None: no decision
    threshold_source: str
    backbone: str
    precision: str  # the arithmetic the model was trained with (resolved, never auto)
    backbone_weights_sha256: str
    package_version: str
    category: str
    config: dict[str, Any]  # the full training config (Config.to_dict)
    # Optional (older checkpoints and exports lack them): the pixel threshold for outlines and defect masks, and
    # the held-out normal images' scores, from which another image threshold quantile can be taken.
    pixel_threshold: float | None = None
    pixel_threshold_source: str = "none stored: outlines at the image threshold"
    holdout_scores: tuple[float, ...] | None = None
    keep_aspect: bool = False  # the short side is resized to `resize` instead of squashing to a square

    @classmethod
    def of(cls, cfg: Config, threshold: dict[str, Any] | None, precision: str, weights_sha256: str,
           version: str) -> ModelCard:
        """threshold: the record pipeline.holdout_threshold makes (stored with the checkpoint)."""
        threshold = threshold or {}
        pixel = threshold.get("pixel") or {}
        scores = threshold.get("holdout_scores")
        return cls(resize=cfg.data.resize, crop=cfg.data.crop, threshold=threshold.get("value"),
                   threshold_source=threshold.get("source", "none"), backbone=cfg.model.backbone,
                   precision=precision, backbone_weights_sha256=weights_sha256, package_version=version,
                   category=cfg.data.category, config=cfg.to_dict(), pixel_threshold=pixel.get("value"),
                   pixel_threshold_source=pixel.get("source", cls.pixel_threshold_source),
                   holdout_scores=None if scores is None else tuple(float(v) for v in scores),
                   keep_aspect=cfg.data.keep_aspect)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> ModelCard:
        """Rebuild from to_dict's output; a missing required key or an unknown key is a ValueError naming
        `source` (the optional keys may be missing: exports made before they existed)."""
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        given = set(values) if isinstance(values, dict) else set()
        if not isinstance(values, dict) or not required <= given <= names:
            raise ValueError(f"{source}: the model card must have the keys {sorted(required)} (optional: "
                             f"{sorted(names - required)}); missing {sorted(required - given)}, "
                             f"unknown {sorted(given - names)}")
        scores = values.get("holdout_scores")
        return cls(**{**values, "holdout_scores": None if scores is None else tuple(scores)})

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, crop, crop) float32 in 0..1, the geometry the model was trained with."""
        return image_to_tensor(rgb, self.resize, self.crop, self.keep_aspect)

    def training_config(self) -> Config:
        """The training config as a Config (validated)."""
        return config_from_dict(self.config)
