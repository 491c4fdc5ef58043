"""More normal scores than a small hold-out gives: out-of-fold scores of the training images.

With the few normal images of a new product or a small set, the hold-out is a handful of images and the
image threshold is their highest score: 2 held-out images flag about 1 good part in 3. With fewer than
`evaluation.cross_fit_below` (20) held-out images, the training images are split into
`evaluation.cross_fit_folds` (k = 5) seeded folds; for each fold a model is trained with the same config on
the other folds and scores the fold's images. These out-of-fold
scores join the held-out scores behind the image threshold (thresholds.Thresholds.cross_fitted counts
them). Their models saw (k - 1) / k of the training images, so they score normal images a little higher
than the final model does: the threshold errs towards fewer false alarms. It costs k more trainings.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cfa_anomaly.config import Config
from cfa_anomaly.data.dataset import image_loader, training_loader
from cfa_anomaly.data.samples import DatasetError, Sample
from cfa_anomaly.evaluate import predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.model.factory import build_model
from cfa_anomaly.train import fit

log = logging.getLogger(__name__)


def wanted(holdout: list[Sample], train: list[Sample], cfg: Config) -> bool:
    """Whether to cross-fit: a hold-out (the outline is calibrated on it) of fewer than cross_fit_below
    images, and enough training images for the folds (else a warning says why not)."""
    folds = cfg.evaluation.cross_fit_folds
    if not holdout or len(holdout) >= cfg.evaluation.cross_fit_below:
        return False
    if len(train) <= folds:
        log.warning("not cross-fitting: %d training images are too few for %d folds (evaluation.cross_fit_folds)",
                    len(train), folds)
        return False
    return True


def folds_of(samples: list[Sample], count: int, seed: int) -> list[list[Sample]]:
    """`count` seeded folds of the samples, as equal in size as can be, each in the samples' order."""
    if not 2 <= count <= len(samples) - 1:
        raise DatasetError(f"evaluation.cross_fit_folds = {count} needs at least {count + 1} training images "
                           f"(there are {len(samples)}): lower it, or set it to 0")
    order = np.random.default_rng([seed, count]).permutation(len(samples))
    return [[samples[i] for i in sorted(part)] for part in np.array_split(order, count)]


def out_of_fold_scores(train: list[Sample], cfg: Config, device: torch.device) -> np.ndarray:
    """Each training image's score by a model trained (same config) without its fold."""
    folds = folds_of(train, cfg.evaluation.cross_fit_folds, cfg.train.seed)
    scores = []
    for index, fold in enumerate(folds):
        others = [s for other in folds if other is not fold for s in other]
        log.info("cross-fitting: fold %d of %d, training on %d images, scoring %d", index + 1, len(folds),
                 len(others), len(fold))
        model = build_model(cfg, device)
        fit(model, training_loader(others, cfg), cfg, device)
        scores.append(predict(Predictor.from_model(model, cfg, None), image_loader(fold, cfg),
                              desc=f"fold {index + 1}").scores)
    return np.concatenate(scores)
