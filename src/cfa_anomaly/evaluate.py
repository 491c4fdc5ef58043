"""Scoring images with a trained model and computing the test metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cfa_anomaly import metrics
from cfa_anomaly.inference import Predictor


@dataclass
class Predictions:
    paths: list[str]
    scores: np.ndarray  # (N,) image scores
    maps: np.ndarray  # (N, H, W) smoothed anomaly maps
    images_per_second: float  # backbone through smoothed map, data loading excluded
    labels: np.ndarray | None = None  # (N,) 0 good / 1 defective, when known
    masks: np.ndarray | None = None  # (N, H, W) bool, when known


def predict(predictor: Predictor, loader: DataLoader, desc: str = "test") -> Predictions:
    """Maps and scores for every image of the loader; labels and masks are kept when the loader has them."""
    paths, scores, maps, labels, masks = [], [], [], [], []
    compute_seconds = 0.0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        start = time.perf_counter()
        batch_maps, batch_scores = predictor.score_batch(batch["image"])
        compute_seconds += time.perf_counter() - start
        maps.append(batch_maps)
        scores.append(batch_scores)
        paths += list(batch["path"])
        if "label" in batch:
            labels.append(np.asarray(batch["label"]))
            masks.append(batch["mask"].numpy())
    count = len(paths)
    return Predictions(
        paths=paths,
        scores=np.concatenate(scores) if scores else np.zeros(0),
        maps=np.concatenate(maps) if maps else np.zeros((0, 0, 0)),
        images_per_second=count / compute_seconds if compute_seconds > 0 else float("nan"),
        labels=np.concatenate(labels) if labels else None,
        masks=np.concatenate(masks).astype(bool) if masks else None,
    )


class EvaluationError(ValueError):
    """Scores that cannot be evaluated honestly (e.g. not finite); the message says which images."""


def compute_test_metrics(predictions: Predictions) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC, pixel F1-max (test-fitted threshold) and AUPRO (FPR <= 0.3).

    A metric that is undefined for this test set (e.g. AUROC without defective images) is None;
    non-finite scores stop here with the names of the images, never a NaN in a report.
    """
    if predictions.labels is None or predictions.masks is None:
        raise ValueError("metrics need labels and masks: score a test split, not plain images")
    broken = [p for p, m in zip(predictions.paths, predictions.maps) if not np.isfinite(m).all()]
    if broken:
        raise EvaluationError(f"{len(broken)} test image(s) got non-finite anomaly maps, e.g. {broken[0]}; "
                              "the model is broken (retrain, or check the backbone weights)")
    return metrics.compute_all(predictions.labels, predictions.scores, predictions.masks, predictions.maps)
