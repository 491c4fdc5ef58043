"""The decision thresholds of a trained model: one value object for the image decision and the outline.

Every consumer (checkpoint, model card, Predictor, `cfa test` and `cfa predict`, panels, the service,
exported models) decides and outlines through a Thresholds, so an image decided "good" never carries a
defect outline and an image decided "defective" always shows where. `calibration.py` builds one from
held-out normal images (and defects painted onto them) without any test label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

from cfa_anomaly.config import ConfigError

DEFECTIVE, GOOD = "defective", "good"


class ThresholdError(ConfigError):
    """A threshold or quantile that cannot be used; the message says which and what to give instead."""


def conformal_rank(count: int, quantile: float) -> int:
    """The 1-based rank k = ceil((count + 1) * quantile) of the order statistic that a new normal score
    exceeds with probability at most 1 - quantile (exchangeable scores); k > count when the hold-out is too
    small to support the quantile."""
    return math.ceil((count + 1) * quantile - 1e-9)


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The conformal quantile of held-out normal scores: their k-th smallest (conformal_rank), or their
    highest when there are too few of them to support `quantile`."""
    if not 0.0 < quantile <= 1.0 or math.isnan(quantile):
        raise ThresholdError(f"quantile {quantile} is invalid: it must be a number in (0, 1]")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if ordered.size == 0:
        raise ThresholdError("no held-out normal scores to take a quantile of")
    rank = min(max(conformal_rank(ordered.size, quantile), 1), ordered.size)
    return float(ordered[rank - 1])


def images_needed(quantile: float) -> float:
    """How many held-out normal images a conformal `quantile` needs: n >= quantile / (1 - quantile)."""
    return math.inf if quantile >= 1.0 else math.ceil(quantile / (1.0 - quantile) - 1e-9)


@dataclass(frozen=True)
class Thresholds:
    """Where an image is decided defective (image score >= `image`) and which of its pixels are outlined,
    with where each came from and the held-out normal scores behind them.

    A pixel of an image decided defective is outlined when its map value reaches that image's level:
    pixel + pixel_relative * (score - pixel), i.e. the fraction `pixel_relative` of the way from the pixel
    threshold up to the image's own peak (0: the pixel threshold itself).
    """

    image: float | None = None
    image_source: str = "none"
    quantile: float | None = None  # the quantile of the held-out scores `image` is, when it is one
    pixel: float | None = None
    pixel_relative: float = 0.0
    pixel_source: str = "none"
    pixel_method: str | None = None  # a calibration method, "given"; None: outlines at the image threshold
    pixel_candidates: dict[str, tuple[float, float]] = field(default_factory=dict)  # method: (pixel, relative)
    # Image scores of the normal images behind the image threshold: the held-out ones, then `cross_fitted`
    # out-of-fold scores of training images (crossfit.py).
    holdout_scores: tuple[float, ...] | None = None
    cross_fitted: int = 0

    # ------------------------------------------------------------------ decisions
    @property
    def outline_level(self) -> float | None:
        """The pixel threshold (models without one: the image threshold)."""
        return self.pixel if self.pixel is not None else self.image

    def pixel_level(self, score: float) -> float | None:
        """The map value a pixel of an image with this score must reach to be outlined."""
        level = self.outline_level
        if level is None or score <= level:
            return level
        return level + self.pixel_relative * (score - level)

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        """(N,) bool, image score >= the image threshold; None without one."""
        return None if self.image is None else np.asarray(scores) >= self.image

    def label(self, score: float) -> str | None:
        """"defective" or "good"; None without an image threshold."""
        decided = self.decide(np.array([score]))
        return None if decided is None else (DEFECTIVE if decided[0] else GOOD)

    def defect_mask(self, anomaly_map: np.ndarray, score: float | None = None) -> np.ndarray | None:
        """The pixels outlined as defective: none in an image decided good; in an image decided defective
        those at or above its pixel level or, where none reaches it, those at or above the image threshold
        (the places that made the decision). Without an image threshold: the pixel level alone. None
        without any threshold. score: the image's score (default: the map's maximum)."""
        anomaly_map = np.asarray(anomaly_map)
        score = float(anomaly_map.max()) if score is None else float(score)
        level = self.pixel_level(score)
        if level is None:
            return None
        if self.image is None:
            return anomaly_map >= level
        if score < self.image:
            return np.zeros(anomaly_map.shape, dtype=bool)
        mask = anomaly_map >= level
        return mask if mask.any() else anomaly_map >= min(self.image, score)

    def with_method(self, method: str) -> Thresholds:
        """The same image threshold with the pixel threshold of another calibration method it stores."""
        if method not in self.pixel_candidates:
            raise ThresholdError(f"no pixel threshold of method {method!r} is stored; stored: "
                                 f"{', '.join(self.pixel_candidates) or 'none'}")
        pixel, relative = self.pixel_candidates[method]
        return replace(self, pixel=pixel, pixel_relative=relative, pixel_method=method,
                       pixel_source=f"calibration method {method}")

    # ------------------------------------------------------------------ what the hold-out supports
    @property
    def normal_count(self) -> int:
        """How many normal scores are behind the image threshold (held-out and cross-fitted)."""
        return len(self.holdout_scores or ())

    def _scores_above(self) -> int | None:
        """How many normal scores lie above the image threshold; None without either."""
        if self.image is None or not self.holdout_scores:
            return None
        return int((np.asarray(self.holdout_scores) > self.image).sum())

    def false_alarm_rate(self) -> float | None:
        """Upper bound on the share of new normal parts decided defective at the image threshold,
        (#held-out scores above it + 1) / (n + 1) for n exchangeable held-out normal scores (exact when the
        threshold is one of them); None without threshold or held-out scores."""
        above = self._scores_above()
        return None if above is None else (above + 1) / (self.normal_count + 1)

    def false_alarm_rate_bound(self, confidence: float = 0.9) -> float | None:
        """The share of good parts flagged that this one hold-out exceeds with probability 1 - confidence:
        the realised rate at the k-th smallest of n held-out scores is Beta(n - k + 1, k) distributed
        (k = n - #scores above the threshold). false_alarm_rate is its mean over hold-outs."""
        above = self._scores_above()
        if above is None:
            return None
        rank = self.normal_count - above
        return 1.0 if rank < 1 else float(stats.beta.ppf(confidence, above + 1, rank))

    def supported(self) -> bool | None:
        """Whether the hold-out is large enough for the quantile it was asked for; None when not a quantile."""
        if self.quantile is None or not self.holdout_scores:
            return None
        return conformal_rank(self.normal_count, self.quantile) <= self.normal_count

    def statement(self) -> str | None:
        """What the hold-out supports, in words, for the run's output and metrics.json."""
        rate = self.false_alarm_rate()
        if rate is None:
            return None
        n, bound = self.normal_count, self.false_alarm_rate_bound()
        spread = f"; with {n} normal scores the rate a deployment sees exceeds {bound:.1%} one time in ten"
        if self.supported() is False:
            return (f"{self._scores_in_words()} cannot support the {self.quantile} quantile (it needs at least "
                    f"{images_needed(self.quantile)}): the threshold is their highest score, and a new normal "
                    f"part scores above it with probability 1/{n + 1}, so expect about {rate:.1%} of good parts "
                    f"flagged{spread}; hold out more normal images (data.holdout_fraction, data.holdout_dir) "
                    "to lower both")
        return f"expected false alarms on good parts: at most {rate:.1%} (from {self._scores_in_words()}){spread}"

    def _scores_in_words(self) -> str:
        held = self.normal_count - self.cross_fitted
        if not self.cross_fitted:
            return f"{held} held-out normal images"
        return (f"the scores of {held} held-out normal images and {self.cross_fitted} out-of-fold scores of "
                "training images")

    # ------------------------------------------------------------------ changed copies
    def with_image(self, value: float, source: str) -> Thresholds:
        if not math.isfinite(value):
            raise ThresholdError(f"threshold {value} is invalid: it must be a finite number")
        return replace(self, image=float(value), image_source=source, quantile=None)

    def with_quantile(self, quantile: float) -> Thresholds:
        """The image threshold at another (conformal) quantile of the stored held-out scores."""
        if not 0.0 < quantile <= 1.0 or math.isnan(quantile):
            raise ThresholdError(f"quantile {quantile} is invalid: it must be a number in (0, 1]")
        if not self.holdout_scores:
            raise ThresholdError("this model stores no held-out normal scores (trained without a hold-out, or "
                                 "before they were stored), so no quantile of them can be taken: give a "
                                 "threshold instead (--threshold X)")
        value = quantile_threshold(np.asarray(self.holdout_scores), quantile)
        return replace(self, image=value, quantile=quantile,
                       image_source=f"quantile {quantile} of {self._scores_in_words()}")

    def with_pixel(self, value: float, source: str) -> Thresholds:
        if not math.isfinite(value):
            raise ThresholdError(f"pixel threshold {value} is invalid: it must be a finite number")
        return replace(self, pixel=float(value), pixel_relative=0.0, pixel_source=source, pixel_method="given")

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """The record checkpoints, model.json and metrics.json hold (from_dict reads it back)."""
        return {"image": {"value": self.image, "source": self.image_source, "quantile": self.quantile,
                          "images": self.normal_count - self.cross_fitted, "cross_fitted": self.cross_fitted,
                          "expected_false_alarm_rate": self.false_alarm_rate(),
                          "false_alarm_rate_90": self.false_alarm_rate_bound(0.9),
                          "supported": self.supported(), "statement": self.statement()},
                "pixel": {"value": self.pixel, "relative_to_peak": self.pixel_relative,
                          "source": self.pixel_source, "method": self.pixel_method,
                          "candidates": {k: list(v) for k, v in self.pixel_candidates.items()}},
                "holdout_scores": None if self.holdout_scores is None else list(self.holdout_scores)}

    @classmethod
    def from_dict(cls, record: dict[str, Any] | None) -> Thresholds:
        """Read to_dict's record, or the older ones: {"value", "source", "quantile", "pixel": {"value",
        "source", "quantile"}, "holdout_scores"} (checkpoints) and a model card's flat keys (exports)."""
        record = record or {}
        scores = record.get("holdout_scores")
        scores = None if scores is None else tuple(float(v) for v in scores)
        image = record.get("image")
        if isinstance(image, dict):
            pixel = record.get("pixel") or {}
            candidates = {str(k): (float(v[0]), float(v[1])) for k, v in (pixel.get("candidates") or {}).items()}
            return cls(image=_number(image.get("value")), image_source=image.get("source", "none"),
                       quantile=image.get("quantile"), pixel=_number(pixel.get("value")),
                       pixel_relative=float(pixel.get("relative_to_peak") or 0.0),
                       pixel_source=pixel.get("source", "none"), pixel_method=pixel.get("method"),
                       pixel_candidates=candidates, holdout_scores=scores,
                       cross_fitted=int(image.get("cross_fitted") or 0))
        if "threshold" in record:  # a model card's flat keys
            pixel_value = _number(record.get("pixel_threshold"))
            return cls(image=_number(record.get("threshold")), image_source=record.get("threshold_source", "none"),
                       pixel=pixel_value, pixel_source=record.get("pixel_threshold_source", "none"),
                       pixel_method=None if pixel_value is None else "quantile", holdout_scores=scores)
        pixel = record.get("pixel") or {}
        return cls(image=_number(record.get("value")), image_source=record.get("source", "none"),
                   quantile=record.get("quantile"), pixel=_number(pixel.get("value")),
                   pixel_source=pixel.get("source", "none"),
                   pixel_method=None if pixel.get("value") is None else "quantile", holdout_scores=scores)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
