"""Anomaly maps as pictures: one colour scale rule, heat colours, overlays and outlines (numpy only).

Shared by the panels and GIF frames (viz.py) and the HTTP service's map and overlay PNGs, so that a map
looks the same wherever it is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

HEAT_COLOURS = "jet"
OVERLAY_ALPHA = 0.5
PREDICTED_COLOUR = (255, 0, 0)  # outline where the map reaches the pixel threshold
TRUTH_COLOUR = (0, 255, 0)  # outline of a ground-truth mask


@dataclass(frozen=True)
class MapScale:
    """How map values become 8-bit: pixel = 255 * clip((value - low) / (high - low), 0, 1)."""

    method: str  # "threshold": 0 .. 2 x threshold (the threshold is mid-scale); "range": the map's min..max
    low: float
    high: float

    @classmethod
    def of(cls, anomaly_map: np.ndarray, threshold: float | None) -> MapScale:
        """A scale known before other maps are: 0 .. 2 x threshold, so that maps scored one by one are
        comparable; without a (positive) threshold, the map's own range."""
        if threshold is not None and threshold > 0:
            return cls("threshold", 0.0, 2.0 * float(threshold))
        return cls("range", float(anomaly_map.min()), float(anomaly_map.max()))

    def to_uint8(self, anomaly_map: np.ndarray) -> np.ndarray:
        span = self.high - self.low
        unit = (np.asarray(anomaly_map, np.float32) - self.low) / span if span > 0 else np.zeros_like(anomaly_map)
        return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@lru_cache(maxsize=1)
def _heat_table() -> np.ndarray:
    """(256, 3) uint8: the heat colour of each 8-bit map value (matplotlib's colour map, no figure)."""
    from matplotlib import colormaps

    return (colormaps[HEAT_COLOURS](np.arange(256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def heat_colours(map_uint8: np.ndarray) -> np.ndarray:
    """(H, W) uint8 map -> (H, W, 3) uint8 heat colours."""
    return _heat_table()[map_uint8]


def heat_overlay(rgb: np.ndarray, map_uint8: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """An (H, W, 3) uint8 image under the heat colours of an (H, W) uint8 map, blended with alpha."""
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat_colours(map_uint8).astype(np.float32)
    return (blend + 0.5).astype(np.uint8)


def outline(region: np.ndarray, width: int = 2) -> np.ndarray:
    """The inner border (width pixels) of a boolean region: where to draw its outline."""
    region = np.asarray(region, bool)
    if not region.any():
        return region
    inner = ndimage.binary_erosion(region, iterations=width, border_value=0)
    return region & ~inner


def draw_outline(rgb: np.ndarray, region: np.ndarray, colour: tuple[int, int, int], width: int = 2) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 image with the region's outline drawn in colour."""
    drawn = rgb.copy()
    drawn[outline(region, width)] = colour
    return drawn
