"""Thresholds from data the user has: held-out normal images and defects painted onto them.

The image threshold keeps its meaning, a false-alarm rate on normal parts: it is the conformal quantile
`evaluation.threshold_quantile` of the held-out normal images' scores (thresholds.quantile_threshold),
and the record says what that hold-out supports (Thresholds.statement). The pixel threshold is chosen by
`evaluation.pixel_threshold_method`:

- quantile: `evaluation.pixel_threshold_quantile` (0.999) of the held-out normal images' pixel scores;
  a pixel is outlined when its map value reaches it;
- synthetic-peak (default): from that same level, a pixel is outlined when it reaches a fixed fraction of
  the way up to its image's peak; the fraction is the one with the best pixel F1 on the held-out images
  with the painted defects of the label-free validation (validation.synthetic_validation_set: scratch,
  hole, stain, missing piece, cut-paste; clean copies included). Being relative to each image's peak, it
  carries over from strong painted defects to faint real ones better than an absolute level;
- synthetic-f1: the one map value with the best pixel F1 on those painted images.

Every method's value is kept (Thresholds.pixel_candidates) so `cfa test` reports the outcome of each. No
test image or label is read here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cfa_anomaly import metrics
from cfa_anomaly.config import Config
from cfa_anomaly.data.dataset import image_loader
from cfa_anomaly.data.samples import Sample
from cfa_anomaly.data.synthetic import PAINTED_DEFECTS
from cfa_anomaly.evaluate import predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.thresholds import Thresholds, quantile_threshold
from cfa_anomaly.validation import ValidationSet, synthetic_validation_set

log = logging.getLogger(__name__)


def painted_maps(predictor: Predictor, holdout: Sequence[Sample], cfg: Config,
                 painted: ValidationSet | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(maps, masks) of the held-out images (a tiled model: a few tiles of each), clean and with every
    painted defect kind, on the model's input grid. painted: that set when the caller has it already (the
    label-free validation's, the same images and seeds)."""
    painted = painted if painted is not None else synthetic_validation_set(list(holdout), cfg)
    return predictor.score_tiles(painted.images), painted.masks


RELATIVE_STEPS = np.round(np.arange(0.0, 0.96, 0.05), 2)  # the fractions of the way to the peak tried


def outline_overlap(thresholds: Thresholds, maps: np.ndarray, masks: np.ndarray,
                    scores: np.ndarray | None = None) -> tuple[int, int, int]:
    """(outlined pixels that are defective, outlined pixels, defective pixels) over all images, for the
    outlines `thresholds` draws (Thresholds.defect_mask; scores: the images' scores, default their maps'
    maxima)."""
    hits = marked = 0
    for index, (anomaly_map, mask) in enumerate(zip(maps, masks)):
        outline = thresholds.defect_mask(anomaly_map, None if scores is None else scores[index])
        hits += int((outline & mask).sum())
        marked += int(outline.sum())
    return hits, marked, int(masks.sum())


def pooled_f1(thresholds: Thresholds, maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel F1 over all images of the outlines `thresholds` draws."""
    hits, marked, truth = outline_overlap(thresholds, maps, masks)
    return 2.0 * hits / (marked + truth) if marked + truth else 0.0


def best_relative(base: Thresholds, maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """(fraction of the way to each image's peak, pixel F1) with the best F1 on the painted images."""
    scored = [(pooled_f1(replace(base, pixel_relative=float(r)), maps, masks), float(r)) for r in RELATIVE_STEPS]
    f1, relative = max(scored, key=lambda item: (item[0], -item[1]))
    return relative, f1


def thresholds_from_holdout(predictor: Predictor, holdout: Sequence[Sample], cfg: Config,
                            cross_fitted: np.ndarray | None = None,
                            painted: ValidationSet | None = None) -> Thresholds:
    """Image and pixel thresholds from held-out normal images (never the test set); cross_fitted:
    out-of-fold scores of training images (crossfit.py) that join the held-out scores for the image
    threshold; painted: the held-out images' painted set where training built it already."""
    if not holdout:
        return Thresholds(image_source="none: data.holdout_fraction is 0 and no data.holdout_dir",
                          pixel_source="none: no held-out normal images")
    evaluation = cfg.evaluation
    held = predict(predictor, image_loader(holdout, cfg), desc="holdout")
    count, quantile, pixel_quantile = len(holdout), evaluation.threshold_quantile, evaluation.pixel_threshold_quantile
    normal_level = float(np.quantile(held.maps, pixel_quantile))
    extra = np.zeros(0) if cross_fitted is None else np.asarray(cross_fitted, dtype=np.float64)
    normal_scores = np.concatenate([held.scores, extra])
    also = f" and {len(extra)} out-of-fold scores of training images" if len(extra) else ""
    thresholds = Thresholds(
        image=quantile_threshold(normal_scores, quantile), quantile=quantile,
        image_source=f"quantile {quantile} of the image scores of {count} held-out normal images{also}",
        pixel=normal_level, pixel_method="quantile", pixel_candidates={"quantile": (normal_level, 0.0)},
        pixel_source=f"quantile {pixel_quantile} of the {held.maps.size} pixel scores of {count} held-out "
                     "normal images",
        holdout_scores=tuple(float(v) for v in normal_scores), cross_fitted=len(extra))
    if evaluation.pixel_threshold_method != "quantile":
        maps, masks = painted_maps(predictor, holdout, cfg, painted)
        clean = len(maps) // (len(PAINTED_DEFECTS) + 1)
        views = "normal images" if clean == count else f"tiles of {count} normal images"
        described = f"{clean} held-out {views} and {len(maps) - clean} copies with painted defects"
        level, f1 = metrics.best_f1_threshold(masks, maps)
        relative, relative_f1 = best_relative(thresholds, maps, masks)
        candidates = {**thresholds.pixel_candidates, "synthetic-f1": (level, 0.0),
                      "synthetic-peak": (normal_level, relative)}
        sources = {"synthetic-f1": f"best pixel F1 ({f1:.3f}) on {described}",
                   "synthetic-peak": f"{relative:.2f} of the way from the quantile {pixel_quantile} of the normal "
                                     f"pixel scores to each image's peak: best pixel F1 ({relative_f1:.3f}) on "
                                     f"{described}"}
        method = evaluation.pixel_threshold_method
        thresholds = replace(thresholds, pixel_candidates=candidates).with_method(method)
        thresholds = replace(thresholds, pixel_source=sources[method])
    if thresholds.supported() is False:
        log.warning("%s", thresholds.statement())
    return thresholds
