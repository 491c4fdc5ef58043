"""The typed result of scoring images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFECTIVE, GOOD = "defective", "good"


def decision_label(score: float, threshold: float | None) -> str | None:
    """"defective" when the score reaches the threshold, else "good"; None without a threshold."""
    if threshold is None:
        return None
    return DEFECTIVE if score >= threshold else GOOD


@dataclass
class InferenceResult:
    """Scores, maps and decisions for N images, in the order given."""

    sources: list[str]  # file paths, or "<image i>" for images passed in memory
    scores: np.ndarray  # (N,) float32 image scores (the maximum of each map)
    maps: np.ndarray  # (N, crop, crop) float32 anomaly maps on the model's input grid
    input_maps: list[np.ndarray]  # the maps on each input's own (H_i, W_i) pixels
    threshold: float | None  # the held-out decision threshold; None when the model has none
    decisions: np.ndarray | None  # (N,) bool, score >= threshold (defective); None without a threshold
    pixel_threshold: float | None = None  # pixels whose map value reaches it are outlined as defective

    def __len__(self) -> int:
        return len(self.sources)

    def defect_masks(self) -> list[np.ndarray] | None:
        """Per input, on its own pixels: (H_i, W_i) bool, map >= pixel threshold; None without one."""
        if self.pixel_threshold is None:
            return None
        return [m >= self.pixel_threshold for m in self.input_maps]
