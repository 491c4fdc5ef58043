"""The typed result of scoring images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfa_anomaly.thresholds import DEFECTIVE, GOOD, Thresholds

__all__ = ["DEFECTIVE", "GOOD", "InferenceResult"]


@dataclass
class InferenceResult:
    """Scores, maps and decisions for N images, in the order given."""

    sources: list[str]  # file paths, or "<image i>" for images passed in memory
    scores: np.ndarray  # (N,) float32 image scores (the maximum of each map)
    maps: np.ndarray  # (N, crop, crop) float32 anomaly maps on the model's input grid
    input_maps: list[np.ndarray]  # the maps on each input's own (H_i, W_i) pixels
    thresholds: Thresholds  # the decision and outline thresholds (Thresholds() when the model has none)

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def threshold(self) -> float | None:
        """The image decision threshold; None when the model has none."""
        return self.thresholds.image

    @property
    def pixel_threshold(self) -> float | None:
        return self.thresholds.outline_level

    @property
    def decisions(self) -> np.ndarray | None:
        """(N,) bool, score >= threshold (defective); None without a threshold."""
        return self.thresholds.decide(self.scores)

    def defect_masks(self) -> list[np.ndarray] | None:
        """Per input, on its own pixels: (H_i, W_i) bool, the outline of Thresholds.defect_mask (nothing in
        an image decided good); None without thresholds."""
        if self.thresholds.outline_level is None:
            return None
        return [self.thresholds.defect_mask(m, s) for m, s in zip(self.input_maps, self.scores)]
