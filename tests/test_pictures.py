"""Panels and map pictures drawn with numpy and PIL: colour scale, overlay, outlines and layout."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps

from cfa_anomaly import heatmap, viz
from cfa_anomaly.thresholds import Thresholds

TILE, GAP, TOP = viz.PANEL_TILE, viz.PANEL_GAP, viz.TITLE_HEIGHT + viz.CAPTION_HEIGHT


def tile(panel: np.ndarray, column: int) -> np.ndarray:
    left = GAP + column * (TILE + GAP)
    return panel[TOP: TOP + TILE, left: left + TILE]


def red_pixels(pixels: np.ndarray) -> int:
    return int(np.all(pixels == heatmap.PREDICTED_COLOUR, axis=-1).sum())


def blob(size: int = TILE) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.exp(-((y - size / 2) ** 2 + (x - size / 2) ** 2) / (2 * (size / 8) ** 2)).astype(np.float32)


def test_outline_is_the_inner_border_of_a_region():
    region = np.zeros((20, 20), bool)
    region[5:15, 5:15] = True
    border = heatmap.outline(region, width=2)
    assert border.sum() == 10 * 10 - 6 * 6 and not (border & ~region).any()
    assert not heatmap.outline(np.zeros((8, 8), bool)).any()


def test_map_scale_and_overlay_use_the_panels_colours():
    anomaly_map = np.array([[0.0, 0.5], [1.0, 2.0]], np.float32)
    scale = heatmap.MapScale.of(anomaly_map, threshold=0.5)
    assert (scale.method, scale.low, scale.high) == ("threshold", 0.0, 1.0)
    np.testing.assert_array_equal(scale.to_uint8(anomaly_map), [[0, 128], [255, 255]])
    assert heatmap.MapScale.of(anomaly_map, None) == heatmap.MapScale("range", 0.0, 2.0)
    rgb = np.full((2, 2, 3), 100, np.uint8)
    levels = scale.to_uint8(anomaly_map)
    expected = 0.5 * 100 + 0.5 * colormaps["jet"](levels)[..., :3] * 255
    assert np.abs(heatmap.heat_overlay(rgb, levels).astype(float) - expected).max() <= 1.0


def panel_at(image, anomaly_map, score, image_threshold, pixel_threshold, mask=None):
    thresholds = Thresholds(image=image_threshold, pixel=pixel_threshold)
    return viz.render_panel(image, anomaly_map, score, thresholds, (0.0, 1.0), mask, title="x")


def test_panel_outlines_where_the_map_reaches_the_pixel_threshold():
    image = np.full((TILE, TILE, 3), 128, np.uint8)
    anomaly_map = blob()
    mask = anomaly_map > 0.8
    panel = panel_at(image, anomaly_map, 1.0, 0.9, 0.5, mask)
    assert panel.shape == (TOP + TILE + GAP, 4 * TILE + 5 * GAP, 3)
    predicted = tile(panel, 2)
    assert red_pixels(predicted) > 0
    assert not np.all(predicted == heatmap.PREDICTED_COLOUR, axis=-1)[anomaly_map < 0.5].any()
    wider = panel_at(image, anomaly_map, 1.0, 0.9, 0.2, mask)
    assert red_pixels(tile(wider, 2)) > red_pixels(predicted)  # a lower level: a longer outline
    # nothing reaches the pixel level: the pixels that made the decision (>= the image threshold)
    decision_only = panel_at(image, anomaly_map, 1.0, 0.9, 1.5, mask)
    assert 0 < red_pixels(tile(decision_only, 2)) < red_pixels(predicted)
    good = panel_at(image, anomaly_map * 0.8, 0.8, 0.9, 0.5, mask)  # decided good: no outline at all
    assert red_pixels(tile(good, 2)) == 0
    truth = tile(panel, 3)
    assert np.all(truth == heatmap.TRUTH_COLOUR, axis=-1).sum() > 0
    np.testing.assert_array_equal(tile(panel, 0), image)


@pytest.mark.parametrize("size", [64, 224, 320])
def test_panels_of_any_crop_keep_one_layout(size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    decided = Thresholds(image=0.5)
    with_missing_mask = viz.render_panel(image, blob(size), 1.0, decided, (0.0, 1.0), title="y", mask_missing=True)
    without = viz.render_panel(image, blob(size), 1.0, decided, (0.0, 1.0), title="y")
    assert with_missing_mask.shape == (TOP + TILE + GAP, 4 * TILE + 5 * GAP, 3)
    assert without.shape == (TOP + TILE + GAP, 3 * TILE + 4 * GAP, 3)
    assert red_pixels(tile(without, 2)) > 0  # no pixel threshold given: outlined at the image threshold
