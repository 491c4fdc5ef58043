"""Tests for cfa_anomaly.metrics against independent brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cfa_anomaly.metrics import aupro, compute_all, image_auroc, pixel_auroc, pixel_f1_max


# --------------------------------------------------------------------------- #
# Brute-force references
# --------------------------------------------------------------------------- #
def brute_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Pairwise AUROC: P(pos > neg) + 0.5 P(pos == neg)."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def brute_f1_max(masks: np.ndarray, maps: np.ndarray) -> float:
    y = np.asarray(masks).ravel().astype(bool)
    s = np.asarray(maps, dtype=np.float64).ravel()
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        denom = 2 * tp + fp + fn
        best = max(best, 2 * tp / denom if denom else 0.0)
    return best


def brute_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    regions = []  # list of (image index, boolean region mask)
    for i in range(masks.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, k + 1)]
    normal_scores = maps[~masks]

    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = np.mean(normal_scores >= t)
        pro = np.mean([np.mean(maps[i][reg] >= t) for i, reg in regions])
        points.append((fpr, pro))

    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def blob_masks(rng: np.random.Generator, n: int = 4, h: int = 16, w: int = 16) -> np.ndarray:
    """Random rectangles and discs; the first image is always normal."""
    masks = np.zeros((n, h, w), dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            if rng.random() < 0.5:
                r = rng.integers(1, 4)
                masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                masks[i, cy : cy + rng.integers(1, 5), cx : cx + rng.integers(1, 6)] = True
    return masks


def noisy_maps(rng: np.random.Generator, masks: np.ndarray, quantize: bool) -> np.ndarray:
    maps = masks * 0.6 + rng.random(masks.shape)
    if quantize:  # many ties, across normal and anomalous pixels
        maps = np.round(maps * 5) / 5
    return maps.astype(np.float32)


# --------------------------------------------------------------------------- #
# AUROC
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_pairwise(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=40)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 6, size=40) / 5 + 0.3 * labels  # ties
    assert image_auroc(labels, scores) == pytest.approx(brute_auroc(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_pairwise(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n=3, h=10, w=12)
    maps = noisy_maps(rng, masks, quantize=True)
    assert pixel_auroc(masks, maps) == pytest.approx(brute_auroc(masks, maps), abs=1e-12)


def test_pixel_auroc_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(123)
    masks = blob_masks(rng, n=4, h=20, w=20)
    maps = noisy_maps(rng, masks, quantize=False)
    ref = tm.binary_auroc(torch.from_numpy(maps.astype(np.float64)), torch.from_numpy(masks.astype(np.int64)))
    assert pixel_auroc(masks, maps) == pytest.approx(float(ref), abs=1e-6)


# --------------------------------------------------------------------------- #
# F1-max
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantize", [True, False])
def test_pixel_f1_max_matches_brute_force(seed, quantize):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n=3, h=12, w=12)
    maps = noisy_maps(rng, masks, quantize=quantize)
    assert pixel_f1_max(masks, maps) == pytest.approx(brute_f1_max(masks, maps), abs=1e-12)


def test_pixel_f1_max_perfect():
    masks = blob_masks(np.random.default_rng(0))
    assert pixel_f1_max(masks, masks.astype(float)) == pytest.approx(1.0)


# --------------------------------------------------------------------------- #
# AUPRO
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed, quantize, fpr_limit):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks, quantize=quantize)
    got = aupro(masks, maps, fpr_limit=fpr_limit)
    assert got == pytest.approx(brute_aupro(masks, maps, fpr_limit), abs=1e-10)


def test_aupro_perfect_and_reversed():
    masks = blob_masks(np.random.default_rng(7))
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_hand_computed_two_regions():
    # One row: region A = {0} (size 1), region B = {2,3,4} (size 3), 4 normals.
    masks = np.array([[[1, 0, 1, 1, 1, 0, 0, 0]]])
    maps = np.array([[[0.9, 0.8, 0.7, 0.5, 0.2, 0.6, 0.4, 0.1]]])
    # Curve: (0,0) (0,1/2) (1/4,1/2) (1/4,2/3) (1/2,2/3) ...
    # Area to 0.3: 0.25*0.5 + 0.05*(2/3) -> /0.3 = 19/36.
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(19 / 36, abs=1e-12)
    # Area to 0.5: 0.25*0.5 + 0.25*(2/3) -> /0.5 = 7/12.
    assert aupro(masks, maps, fpr_limit=0.5) == pytest.approx(7 / 12, abs=1e-12)


def test_aupro_uses_8_connectivity_per_image():
    # Diagonal pixels join one region of size 3 under 8-connectivity
    # (4-connectivity would give regions of sizes 1 and 2, and AUPRO 1/2).
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    maps = np.where(mask, 0.0, 0.5)
    maps[0, 0] = 1.0
    # Curve: (0,0) (0,1/3) (1,1/3) (1,1) -> normalised area 1/3.
    assert aupro(mask[None], maps[None]) == pytest.approx(1 / 3, abs=1e-12)
    # Same region in two images: two separate regions, same result.
    masks2 = np.stack([mask, mask])
    maps2 = np.stack([maps, maps])
    assert aupro(masks2, maps2) == pytest.approx(1 / 3, abs=1e-12)
    # 2-D input is treated as a single image.
    assert aupro(mask, maps) == pytest.approx(1 / 3, abs=1e-12)


# --------------------------------------------------------------------------- #
# Undefined cases and input validation
# --------------------------------------------------------------------------- #
def test_undefined_cases_return_none():
    rng = np.random.default_rng(0)
    normal_masks = np.zeros((2, 5, 5), dtype=bool)
    maps = rng.random((2, 5, 5))
    assert image_auroc(np.zeros(4), rng.random(4)) is None
    assert image_auroc(np.ones(4), rng.random(4)) is None
    assert pixel_auroc(normal_masks, maps) is None
    assert pixel_auroc(~normal_masks, maps) is None
    assert pixel_f1_max(normal_masks, maps) is None
    assert aupro(normal_masks, maps) is None
    assert aupro(~normal_masks, maps) is None  # no normal pixel
    out = compute_all(np.zeros(2), rng.random(2), normal_masks, maps)
    assert out == {"image_auroc": None, "pixel_auroc": None, "pixel_f1_max": None, "aupro": None,
                   "aupimo": None}


def test_compute_all_values():
    rng = np.random.default_rng(3)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks, quantize=True)
    labels = masks.reshape(len(masks), -1).any(axis=1).astype(int)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    out = compute_all(labels, scores, masks, maps)
    assert set(out) == {"image_auroc", "pixel_auroc", "pixel_f1_max", "aupro", "aupimo"}
    assert out["aupimo"] is None  # too few good pixels to reach FPR 1e-5 (tests/test_aupimo.py has it)
    assert all(isinstance(v, float) for k, v in out.items() if k != "aupimo")
    assert out["aupro"] == pytest.approx(brute_aupro(masks, maps), abs=1e-10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise(bad):
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, bad, 0.3, 0.4])
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_auroc(labels, scores)
    masks = np.zeros((1, 2, 2), dtype=bool)
    masks[0, 0, 0] = True
    maps = np.zeros((1, 2, 2))
    maps[0, 1, 1] = bad
    for fn in (pixel_auroc, pixel_f1_max, aupro):
        with pytest.raises(ValueError, match="NaN or infinite"):
            fn(masks, maps)


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="different lengths"):
        image_auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match="does not match"):
        pixel_auroc(masks, np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="0/1"):
        pixel_auroc(masks * 255, np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, np.zeros((1, 3, 3)), fpr_limit=0.0)
