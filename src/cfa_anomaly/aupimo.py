"""AUPIMO (Bertoldo et al., 2024): how much of each defective image's mask is found while the false
positives on the good images stay in a low, shared range, FPR 1e-5 to 1e-4 on a log scale.

At a threshold t the shared FPR is the mean over the good test images of the share of their pixels at or
above t (the maps have one size, so this is the share of all their pixels), and a defective image's
per-image overlap (PImO) is the share of its mask's pixels at or above t. An image's AUPIMO is the area
under its curve (log10 FPR, PImO), trapezoidal between the thresholds where either changes, over log10 FPR
in [-5, -4] (linear interpolation at the ends), divided by that width: 1 when the whole mask is above every
threshold of the range. Every distinct map value counts as a threshold (no binning). Undefined (None)
without good images, or when their pixels are too few to reach FPR 1e-5 (under 100,000).
"""

from __future__ import annotations

import math

import numpy as np

FPR_RANGE = (1e-5, 1e-4)


def _area(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Area under the polyline (x, y), x non-decreasing, over [low, high]; segments clipped by linear
    interpolation (a segment of zero width adds nothing)."""
    x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
    width = x1 - x0
    a, b = np.maximum(x0, low), np.minimum(x1, high)
    keep = (b > a) & (width > 0)
    x0, x1, y0, y1, a, b, width = (v[keep] for v in (x0, x1, y0, y1, a, b, width))
    ya = y0 + (y1 - y0) * (a - x0) / width
    yb = y0 + (y1 - y0) * (b - x0) / width
    return float(np.sum((b - a) * (ya + yb) * 0.5))


def aupimo_per_image(labels: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                     fpr_range: tuple[float, float] = FPR_RANGE) -> np.ndarray | None:
    """(N,) AUPIMO of each defective image with a non-empty mask, NaN for the others (good images, empty
    masks); None when undefined for the set (no good image, or too few good pixels to reach the range's
    lower end)."""
    labels = np.asarray(labels).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    normal = np.sort(maps[~labels].ravel())
    total = normal.size
    if total == 0 or 1.0 / total > fpr_range[0]:
        return None
    low, high = math.log10(fpr_range[0]), math.log10(fpr_range[1])
    # only thresholds at or above the value with FPR >= the range's upper end matter (one point beyond it)
    reach = min(total, math.ceil(fpr_range[1] * total))
    floor = normal[total - reach]
    top = normal[np.searchsorted(normal, floor, side="left"):]  # with every tie of the floor value
    values = np.full(len(maps), np.nan)
    for index in np.flatnonzero(labels):
        mask = masks[index]
        if not mask.any():
            continue
        inside = np.sort(maps[index][mask])
        thresholds = np.unique(np.concatenate((top, inside[inside >= floor])))[::-1]  # descending t
        above = top.size - np.searchsorted(top, thresholds, side="left")  # good pixels >= t
        found = (inside.size - np.searchsorted(inside, thresholds, side="left")) / inside.size
        positive = above > 0
        x = np.log10(above[positive] / total)
        if x.size == 0 or x[0] > low:  # the curve does not reach down to the range's lower end
            return None
        values[index] = _area(x, found[positive], low, high) / (high - low)
    return values


def aupimo(labels: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> float | None:
    """The mean AUPIMO over the defective images with a mask; None where undefined."""
    values = aupimo_per_image(labels, masks, maps)
    if values is None or np.isnan(values).all():
        return None
    return float(np.nanmean(values))
