"""What a runtime needs to know about a trained model besides its weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cfa_anomaly.config import Config, config_from_dict
from cfa_anomaly.data.images import image_to_tensor
from cfa_anomaly.thresholds import Thresholds
from cfa_anomaly.tiling import TileGrid

LEGACY_THRESHOLD_KEYS = ("threshold", "threshold_source", "pixel_threshold", "pixel_threshold_source",
                         "holdout_scores")  # model cards written before the thresholds were one object


@dataclass(frozen=True)
class ModelCard:
    """Preprocessing, decision threshold and provenance of a trained model (a checkpoint or an export)."""

    resize: int  # images are squashed to resize x resize ...
    crop: int  # ... then centre-cropped to crop x crop, the graph's input size
    backbone: str
    precision: str  # the arithmetic the model was trained with (resolved, never auto)
    backbone_weights_sha256: str
    package_version: str
    category: str
    config: dict[str, Any]  # the full training config (Config.to_dict)
    # The decision and outline thresholds from held-out normal images (none: no decision).
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    keep_aspect: bool = False  # the short side is resized to `resize` instead of squashing to a square
    tile: int = 0  # > 0: the crop x crop image is scored in overlapping tiles of this side (tiling.py)
    tile_overlap: float = 0.25

    @classmethod
    def of(cls, cfg: Config, thresholds: Thresholds | None, precision: str, weights_sha256: str,
           version: str) -> ModelCard:
        return cls(resize=cfg.data.resize, crop=cfg.data.crop, backbone=cfg.model.backbone,
                   precision=precision, backbone_weights_sha256=weights_sha256, package_version=version,
                   category=cfg.data.category, config=cfg.to_dict(), thresholds=thresholds or Thresholds(),
                   keep_aspect=cfg.data.keep_aspect, tile=cfg.data.tile, tile_overlap=cfg.data.tile_overlap)

    @property
    def grid(self) -> TileGrid | None:
        """The tiles of the crop x crop image, or None when the model scores it whole."""
        return TileGrid(self.crop, self.tile, self.tile_overlap) if self.tile else None

    @property
    def input_size(self) -> int:
        """The side of the model graph's input: a tile, or the crop."""
        return self.tile or self.crop

    @property
    def geometry(self) -> str:
        """How an input becomes the model's input, in words (cfa predict's summary, the service's card)."""
        fit = (f"short side resized to {self.resize}" if self.keep_aspect
               else f"resized to {self.resize} x {self.resize}")
        if self.grid is not None:
            return f"{fit}, {self.grid.describe()}"
        if self.crop == self.resize and not self.keep_aspect:
            return f"{fit}, whole image scored"
        return f"{fit}, centre {self.crop} x {self.crop} scored (the border outside it is not inspected)"

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**values, "thresholds": self.thresholds.to_dict(), "geometry": self.geometry}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> ModelCard:
        """Rebuild from to_dict's output; a missing required key or an unknown key is a ValueError naming
        `source` (the optional keys may be missing: exports made before they existed)."""
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields} | {"geometry"}
        required = {f.name for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        given = set(values) if isinstance(values, dict) else set()
        legacy = {key for key in LEGACY_THRESHOLD_KEYS if key in given}
        if not isinstance(values, dict) or not required <= given <= names | legacy:
            raise ValueError(f"{source}: the model card must have the keys {sorted(required)} (optional: "
                             f"{sorted(names - required)}); missing {sorted(required - given)}, "
                             f"unknown {sorted(given - names - legacy)}")
        kept = {k: v for k, v in values.items() if k in names - {"geometry", "thresholds"}}
        if "thresholds" in values:
            thresholds = Thresholds.from_dict(values["thresholds"])
        else:  # an export written before the thresholds were one object: its flat keys
            thresholds = Thresholds.from_dict({key: values[key] for key in legacy} or None)
        return cls(**kept, thresholds=thresholds)

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, crop, crop) float32 in 0..1, the geometry the model was trained with."""
        return image_to_tensor(rgb, self.resize, self.crop, self.keep_aspect)

    def training_config(self) -> Config:
        """The training config as a Config (validated)."""
        return config_from_dict(self.config)
