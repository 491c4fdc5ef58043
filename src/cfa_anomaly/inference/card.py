"""What a runtime needs to know about a trained model besides its weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cfa_anomaly.config import Config, config_from_dict


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

    @classmethod
    def of(cls, cfg: Config, threshold: dict[str, Any] | None, precision: str, weights_sha256: str,
           version: str) -> ModelCard:
        threshold = threshold or {}
        return cls(resize=cfg.data.resize, crop=cfg.data.crop, threshold=threshold.get("value"),
                   threshold_source=threshold.get("source", "none"), backbone=cfg.model.backbone,
                   precision=precision, backbone_weights_sha256=weights_sha256, package_version=version,
                   category=cfg.data.category, config=cfg.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> ModelCard:
        """Rebuild from to_dict's output; a missing or extra key is a ValueError naming `source`."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) != names:
            given = set(values) if isinstance(values, dict) else set()
            raise ValueError(f"{source}: the model card must have the keys {sorted(names)}; "
                             f"missing {sorted(names - given)}, unknown {sorted(given - names)}")
        return cls(**values)

    def training_config(self) -> Config:
        """The training config as a Config (validated)."""
        return config_from_dict(self.config)
