"""Evaluation metrics for anomaly detection and localization.

All functions take numpy arrays (anything ``np.asarray`` accepts) and return
plain Python floats, or ``None`` when the metric is undefined for the given
ground truth (for example, an AUROC when only one class is present).

Scores and anomaly maps are cast to ``float64`` before use; NaN or infinite
values raise ``ValueError``. Labels and masks must be boolean or 0/1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from cfa_anomaly.aupimo import aupimo

__all__ = ["image_auroc", "pixel_auroc", "pixel_f1_max", "aupro", "compute_all"]

# 8-connectivity for ground-truth regions (MVTec AD convention).
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _as_binary(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a bool array; raise if it holds values other than 0/1."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be boolean or numeric 0/1, got dtype {arr.dtype}")
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0/1 (or bool) values")
    return arr != 0


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a float64 array; raise on NaN/inf."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N,H,W) masks and maps; return (bool masks, float64 maps)."""
    m = _as_binary(masks, "masks")
    s = _as_scores(maps, "maps")
    if m.shape != s.shape:
        raise ValueError(f"masks shape {m.shape} does not match maps shape {s.shape}")
    return m, s


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #
def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Image-level ROC AUC.

    Args:
        labels: per-image ground truth, 1 = anomalous, 0 = normal.
        scores: per-image anomaly scores (higher = more anomalous).

    Returns:
        The AUROC, or ``None`` if only one class is present.
    """
    y = _as_binary(labels, "labels").ravel()
    s = _as_scores(scores, "scores").ravel()
    if y.size != s.size:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) have different lengths")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return None
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Pixel-level ROC AUC over all pixels of all images pooled together.

    Args:
        masks: (N, H, W) ground-truth masks, bool or 0/1.
        maps: (N, H, W) anomaly maps.

    Returns:
        The AUROC, or ``None`` if all pixels belong to a single class.
    """
    m, s = _check_pixel_inputs(masks, maps)
    y = m.ravel()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return None
    return float(roc_auc_score(y, s.ravel()))


def pixel_f1_max(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Best pixel-level F1 score over all thresholds.

    NOTE: this metric is *test-fitted*: the threshold is chosen on the very
    data being evaluated, so it is an optimistic upper bound, not the F1 a
    deployed model with a fixed threshold would reach.

    Args:
        masks: (N, H, W) ground-truth masks, bool or 0/1.
        maps: (N, H, W) anomaly maps.

    Returns:
        max over thresholds of F1, or ``None`` if there is no positive pixel.
    """
    m, s = _check_pixel_inputs(masks, maps)
    if not m.any():
        return None
    return _f1_curve(m, s)[0].max().item()


def _f1_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F1, threshold) at every distinct map value (pixel >= threshold counts as defective)."""
    precision, recall, thresholds = precision_recall_curve(masks.ravel(), maps.ravel())
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)
    return f1[:-1], thresholds  # the curve's last point (recall 0) has no threshold


def best_f1_threshold(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the map value whose pixels at or above it have the best F1 against the masks;
    ValueError without a positive pixel. Used on painted defects only (calibration), never on test images."""
    m, s = _check_pixel_inputs(masks, maps)
    if not m.any():
        raise ValueError("best_f1_threshold needs at least one defective pixel")
    f1, thresholds = _f1_curve(m, s)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Normalised area under the per-region-overlap (PRO) curve (MVTec AD).

    Ground-truth regions are the 8-connected components of each image's mask.
    For a threshold ``t``: FPR is the fraction of all normal pixels (over all
    images) with score >= t; PRO is the mean over all regions of the fraction
    of the region's pixels with score >= t. The PRO-vs-FPR curve, starting at
    (0, 0), is integrated with the trapezoid rule from FPR 0 to ``fpr_limit``
    (interpolating linearly at ``fpr_limit``) and divided by ``fpr_limit``, so
    a perfect model scores 1.0. Tied scores are handled exactly.

    Args:
        masks: (N, H, W) ground-truth masks, bool or 0/1. A 2-D (H, W) input
            is treated as a single image.
        maps: anomaly maps with the same shape as ``masks``.
        fpr_limit: upper FPR integration limit, in (0, 1].

    Returns:
        The normalised AUPRO, or ``None`` if there is no anomalous region or
        no normal pixel.
    """
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr_limit = float(fpr_limit)
    m, s = _check_pixel_inputs(masks, maps)
    if m.ndim == 2:
        m, s = m[None], s[None]
    if m.ndim != 3:
        raise ValueError(f"masks/maps must be (N, H, W) or (H, W), got shape {m.shape}")

    # Global region ids (0 = not in a region), labelled per image.
    region_ids = np.zeros(m.shape, dtype=np.int64)
    n_regions = 0
    for i in range(m.shape[0]):
        lab, k = ndimage.label(m[i], structure=_STRUCTURE_8)
        if k:
            region_ids[i] = np.where(lab > 0, lab + n_regions, 0)
            n_regions += k
    normal = ~m
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        return None

    region_ids = region_ids.ravel()
    sizes = np.bincount(region_ids, minlength=n_regions + 1)
    # Per-pixel PRO contribution: 1 / (region size * number of regions).
    pro_weight = np.zeros(n_regions + 1, dtype=np.float64)
    pro_weight[1:] = 1.0 / (sizes[1:].astype(np.float64) * n_regions)

    # Sort pixels by descending score (the order within ties is irrelevant:
    # only the end of each run of tied scores is kept).
    flat = s.ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    sorted_scores = flat[order]
    run_ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    del sorted_scores

    # False-positive counts as exact integers, PRO as float64 cumsum.
    fp_cum = np.cumsum(normal.ravel()[order], dtype=np.int64)
    fpr = fp_cum[run_ends] / n_normal
    del fp_cum
    pro_cum = pro_weight[region_ids[order]]
    del order
    np.cumsum(pro_cum, out=pro_cum)
    pro = pro_cum[run_ends]
    del pro_cum

    fpr = np.concatenate(([0.0], fpr))
    pro = np.concatenate(([0.0], pro))

    # Keep points with fpr <= limit, and add an interpolated one at the limit.
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:k], pro[:k]
    if k < fpr.size and x[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x = np.append(x, fpr_limit)
        y = np.append(y, y_lim)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) * 0.5))
    return area / fpr_limit


def compute_all(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray,
) -> dict[str, float | None]:
    """Compute every metric of this module.

    Args:
        labels: per-image labels (0/1), scores: per-image anomaly scores,
        masks: (N, H, W) ground-truth masks, or None when the pixel ground truth is not known for every
        image (the pixel metrics are then None), maps: (N, H, W) anomaly maps.

    Returns:
        Dict with keys ``image_auroc``, ``pixel_auroc``, ``pixel_f1_max``,
        ``aupro`` (AUPRO at the default FPR limit of 0.3), ``aupimo`` (mean AUPIMO, aupimo.py); undefined ->
        None.
    """
    if masks is None:
        return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": None, "pixel_f1_max": None,
                "aupro": None, "aupimo": None}
    return {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "pixel_f1_max": pixel_f1_max(masks, maps),
        "aupro": aupro(masks, maps),
        "aupimo": aupimo(labels, masks, maps),
    }
