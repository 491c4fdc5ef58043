"""Scoring images with a trained model and computing the test metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from cfa_anomaly import metrics
from cfa_anomaly.aupimo import aupimo_per_image
from cfa_anomaly.console import progress
from cfa_anomaly.errors import CfaError
from cfa_anomaly.inference import Predictor


@dataclass
class Predictions:
    paths: list[str]
    scores: np.ndarray  # (N,) image scores
    maps: np.ndarray  # (N, H, W) smoothed anomaly maps
    images_per_second: float  # backbone through smoothed map, data loading excluded
    labels: np.ndarray | None = None  # (N,) 0 good / 1 defective, when known
    masks: np.ndarray | None = None  # (N, H, W) bool, when known; rows with mask_known False are placeholders
    mask_known: np.ndarray | None = None  # (N,) bool: image i has pixel ground truth; None: all of them do
    kinds: list[str] | None = None  # (N,) defect type ("good" for good images), when known

    def missing_masks(self) -> list[str]:
        """Paths of the defective images without a mask (their defect type has no ground_truth folder)."""
        if self.labels is None or self.mask_known is None:
            return []
        return [p for p, label, known in zip(self.paths, self.labels, self.mask_known) if label == 1 and not known]

    def mask_of(self, index: int) -> np.ndarray | None:
        """The ground-truth mask of image index, or None when it has none."""
        if self.masks is None or (self.mask_known is not None and not self.mask_known[index]):
            return None
        return self.masks[index]

    def pixel_metrics_note(self) -> str | None:
        """Why the pixel metrics are None when some defective images have no mask; None when all have one."""
        missing = self.missing_masks()
        if not missing:
            return None
        defective = int((self.labels == 1).sum()) if self.labels is not None else len(missing)
        return (f"pixel metrics need a mask for every defective test image; {len(missing)} of {defective} have "
                f"none: e.g. {missing[0]}")

    def pixel_masks(self) -> np.ndarray | None:
        """All masks when every image has pixel ground truth (pixel metrics are defined); otherwise None."""
        return None if self.masks is None or self.missing_masks() else self.masks


def predict(predictor: Predictor, loader: DataLoader, desc: str = "test") -> Predictions:
    """Maps and scores for every image of the loader; labels and masks are kept when the loader has them."""
    paths, scores, maps, labels, masks, known, kinds = [], [], [], [], [], [], []
    compute_seconds = 0.0
    for batch in progress(loader, desc=desc, unit="batch"):
        start = time.perf_counter()
        batch_maps, batch_scores = predictor.score_batch(batch["image"])
        compute_seconds += time.perf_counter() - start
        maps.append(batch_maps)
        scores.append(batch_scores)
        paths += list(batch["path"])
        kinds += list(batch.get("defect_type", []))
        if "label" in batch:
            labels.append(np.asarray(batch["label"]))
            masks.append(batch["mask"].numpy())
            known.append(np.asarray(batch["mask_known"], dtype=bool) if "mask_known" in batch
                         else np.ones(len(batch["path"]), dtype=bool))
    count = len(paths)
    return Predictions(
        paths=paths,
        scores=np.concatenate(scores) if scores else np.zeros(0),
        maps=np.concatenate(maps) if maps else np.zeros((0, 0, 0)),
        images_per_second=count / compute_seconds if compute_seconds > 0 else float("nan"),
        labels=np.concatenate(labels) if labels else None,
        masks=np.concatenate(masks).astype(bool) if masks else None,
        mask_known=np.concatenate(known) if known else None,
        kinds=kinds if len(kinds) == count and labels else None,
    )


class EvaluationError(CfaError, ValueError):
    """Scores that cannot be evaluated honestly (e.g. not finite); the message says which images."""


def compute_test_metrics(predictions: Predictions) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC, pixel F1-max (test-fitted threshold) and AUPRO (FPR <= 0.3).

    A metric that is undefined for this test set (e.g. AUROC without defective images) is None;
    the pixel metrics are None unless every defective image has a mask (never computed on a partial set;
    Predictions.pixel_metrics_note says why). Non-finite scores stop here with the names of the images,
    never a NaN in a report.
    """
    if predictions.labels is None or predictions.masks is None:
        raise ValueError("metrics need labels and masks: score a test split, not plain images")
    broken = [p for p, m in zip(predictions.paths, predictions.maps) if not np.isfinite(m).all()]
    if broken:
        raise EvaluationError(f"{len(broken)} test image(s) got non-finite anomaly maps, e.g. {broken[0]}; "
                              "the model is broken (retrain, or check the backbone weights)")
    return metrics.compute_all(predictions.labels, predictions.scores, predictions.pixel_masks(), predictions.maps)


def aupimo_by_image(predictions: Predictions) -> dict[str, float] | None:
    """Each defective image's AUPIMO (aupimo.py) by its path; None where the pixel metrics or AUPIMO are
    undefined."""
    masks = predictions.pixel_masks()
    if predictions.labels is None or masks is None:
        return None
    values = aupimo_per_image(predictions.labels, masks, predictions.maps)
    if values is None:
        return None
    return {path: round(float(value), 6) for path, value in zip(predictions.paths, values) if value == value}


def per_kind_metrics(predictions: Predictions) -> dict[str, dict[str, float | int | None]] | None:
    """Per defect type: its image count, image AUROC (that type against the good images) and pixel AUROC
    (its images and the good ones; None unless each of its images has a mask). None without types."""
    if predictions.kinds is None or predictions.labels is None or predictions.masks is None:
        return None
    kinds = np.asarray(predictions.kinds)
    good = predictions.labels == 0
    known = predictions.mask_known if predictions.mask_known is not None else np.ones(len(kinds), bool)
    table: dict[str, dict[str, float | int | None]] = {}
    for kind in sorted(set(kinds[~good])):
        chosen = good | ((kinds == kind) & ~good)
        pixel = None
        if known[chosen].all():
            pixel = metrics.pixel_auroc(predictions.masks[chosen], predictions.maps[chosen])
        table[str(kind)] = {"images": int(((kinds == kind) & ~good).sum()), "good_images": int(good.sum()),
                            "image_auroc": metrics.image_auroc(predictions.labels[chosen], predictions.scores[chosen]),
                            "pixel_auroc": pixel}
    return table
