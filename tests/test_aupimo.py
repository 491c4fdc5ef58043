"""AUPIMO against a brute-force computation of its definition, and its limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cfa_anomaly.aupimo import FPR_RANGE, aupimo, aupimo_per_image


def brute_force(labels: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> list[float]:
    """Every distinct map value a threshold; the shared FPR as the mean of the good images' own FPRs; the
    area of each (log10 FPR, PImO) polyline over [-5, -4], segment by segment, in plain Python."""
    good = [maps[i] for i in range(len(maps)) if not labels[i]]
    low, high = (math.log10(v) for v in FPR_RANGE)
    results = []
    for i in np.flatnonzero(labels):
        inside = maps[i][masks[i]]
        points = []
        for t in sorted(set(np.unique(maps).tolist()), reverse=True):
            fpr = float(np.mean([(image >= t).mean() for image in good]))
            if fpr > 0:
                points.append((math.log10(fpr), float((inside >= t).mean())))
        area = 0.0
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            a, b = max(x0, low), min(x1, high)
            if x1 > x0 and b > a:
                ya, yb = (y0 + (y1 - y0) * (v - x0) / (x1 - x0) for v in (a, b))
                area += (b - a) * (ya + yb) / 2
        results.append(area / (high - low))
    return results


def scene(seed: int, decimals: int, size: int = 170, good: int = 4, bad: int = 3):
    """Good images of noise, defective ones with a brighter square under their masks; values rounded to
    `decimals` (ties between thresholds, and few enough distinct values for the brute force)."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(good + bad, size, size))
    masks = np.zeros(maps.shape, bool)
    for k in range(good, good + bad):
        y, x = rng.integers(0, size - 30, 2)
        masks[k, y: y + 30, x: x + 30] = True
        maps[k][masks[k]] += rng.uniform(2.0, 4.5)
    labels = np.array([0] * good + [1] * bad)
    return labels, masks, np.round(maps, decimals)


@pytest.mark.parametrize(("seed", "decimals"), [(0, 2), (1, 2), (2, 1)])
def test_aupimo_equals_a_brute_force_computation_of_its_definition(seed, decimals):
    labels, masks, maps = scene(seed, decimals)
    values = aupimo_per_image(labels, masks, maps)
    expected = brute_force(labels, masks, maps)
    np.testing.assert_allclose(values[labels == 1], expected, rtol=0, atol=1e-6)
    assert np.isnan(values[labels == 0]).all()
    assert 0.0 < min(expected) and max(expected) < 1.0  # the cases under test are not trivial
    assert aupimo(labels, masks, maps) == pytest.approx(np.mean(expected), abs=1e-6)


def test_a_mask_above_every_good_pixel_scores_1_and_one_below_them_0():
    labels, masks, maps = scene(3, 3)
    maps[4][masks[4]] = maps.max() + 1.0
    maps[5][masks[5]] = maps.min() - 1.0
    values = aupimo_per_image(labels, masks, maps)
    assert values[4] == pytest.approx(1.0) and values[5] == pytest.approx(0.0)


def test_too_few_good_pixels_or_no_good_image_leave_it_undefined():
    labels, masks, maps = scene(4, 2, size=100)  # 4 x 10,000 good pixels cannot reach FPR 1e-5
    assert aupimo_per_image(labels, masks, maps) is None and aupimo(labels, masks, maps) is None
    labels, masks, maps = scene(4, 2, good=0)
    assert aupimo(labels, masks, maps) is None
