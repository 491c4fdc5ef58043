"""Testing a trained model and reporting it: the test split scored, its metrics and its outcome at the
held-out thresholds, the run's files (metrics.json, scores.csv, maps, panels, plots) and the summary the
commands print."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from cfa_anomaly import __version__, runfiles
from cfa_anomaly.calibration import outline_overlap
from cfa_anomaly.config import Config, ConfigError
from cfa_anomaly.evaluate import Predictions, aupimo_by_image, compute_test_metrics, per_kind_metrics, predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.io_utils import atomic_write_json
from cfa_anomaly.outputs import format_metrics_table, write_maps, write_scores_csv, write_visuals
from cfa_anomaly.run_data import split_loader
from cfa_anomaly.thresholds import Thresholds


def environment(predictor: Predictor | None = None) -> dict[str, Any]:
    """What produced a result: versions, machine and (with a predictor) the exact backbone weights."""
    info: dict[str, Any] = {"package_version": __version__, "torch": torch.__version__,
                            "python": platform.python_version(), "machine": platform.machine()}
    if predictor is not None:
        info["backbone_weights_sha256"] = predictor.card.backbone_weights_sha256
        info["precision"] = predictor.card.precision
        info["engine"] = predictor.name
    return info


def decisions_at_threshold(predictions: Predictions, thresholds: Thresholds) -> dict[str, Any] | None:
    """The outcome at the held-out thresholds: what a deployment would have seen. Images at the image
    threshold; pixels (where every defective image has a mask) as outlined (Thresholds.defect_mask)."""
    decided = thresholds.decide(predictions.scores)
    if decided is None or predictions.labels is None:
        return None
    defective = predictions.labels == 1
    outcome: dict[str, Any] = {
        "threshold": thresholds.image,
        "defective_flagged": f"{int((decided & defective).sum())}/{int(defective.sum())}",
        "good_flagged": f"{int((decided & ~defective).sum())}/{int((~defective).sum())}",
        "accuracy": round(float((decided == defective).mean()), 4),
        "expected_false_alarm_rate": thresholds.false_alarm_rate(),
    }
    masks = predictions.pixel_masks()
    if thresholds.outline_level is not None and masks is not None:
        hits, marked, truth = outline_overlap(thresholds, predictions.maps, masks, predictions.scores)
        precision, recall = hits / max(marked, 1), hits / max(truth, 1)
        outcome.update(pixel_threshold=thresholds.outline_level, pixel_relative=thresholds.pixel_relative,
                       pixel_method=thresholds.pixel_method, pixel_precision=round(precision, 4),
                       pixel_recall=round(recall, 4),
                       pixel_f1=round(2 * precision * recall / (precision + recall), 4) if hits else 0.0)
    return outcome


def outcomes_by_method(predictions: Predictions, thresholds: Thresholds) -> dict[str, Any] | None:
    """decisions_at_threshold for every pixel calibration method the thresholds store (None without)."""
    if not thresholds.pixel_candidates or predictions.labels is None:
        return None
    return {method: decisions_at_threshold(predictions, thresholds.with_method(method))
            for method in thresholds.pixel_candidates}


def _test_report(cfg: Config, predictions: Predictions, results: dict[str, Any],
                 predictor: Predictor) -> dict[str, Any]:
    labels = predictions.labels
    notes = {"pixel_f1_max": "best F1 over all thresholds: the threshold is fitted on the test set (at_threshold "
                             "has the F1 at the pixel threshold from held-out normal images)",
             "aupro": "standard AUPRO: per-region overlap integrated up to pixel FPR 0.3, divided by 0.3",
             "aupimo": "mean AUPIMO: each defective image's mask overlap integrated over the good images' "
                       "pixel FPR 1e-5 to 1e-4 on a log scale (aupimo_per_image has each image's); none "
                       "when the good test images have under 100,000 pixels"}
    pixel_note = predictions.pixel_metrics_note()
    if pixel_note:  # some defective images have no mask: the pixel metrics are None, and this says why
        notes["pixel_metrics"] = pixel_note
    return {
        "category": cfg.data.category,
        "backbone": cfg.model.backbone,
        "precision": predictor.card.precision,
        "metrics": results,
        "notes": notes,
        "test": {"images": len(predictions.paths), "defective": int(labels.sum()),
                 "good": int((labels == 0).sum()),
                 "defective_without_mask": len(predictions.missing_masks()),
                 "images_per_second": round(predictions.images_per_second, 3)},
    }


def evaluate_and_write(predictor: Predictor, cfg: Config, output: Path,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the test split of cfg's data; write metrics.json, scores.csv, maps.npz, panels, GIF and plots
    into output."""
    thresholds = predictor.thresholds
    predictions = predict(predictor, split_loader(cfg, "test"))
    report = _test_report(cfg, predictions, compute_test_metrics(predictions), predictor)
    report["per_kind"] = per_kind_metrics(predictions)
    report["aupimo_per_image"] = aupimo_by_image(predictions)
    report["at_threshold"] = decisions_at_threshold(predictions, thresholds)
    report["at_threshold_by_method"] = outcomes_by_method(predictions, thresholds)
    report["threshold"] = thresholds.to_dict()
    report["geometry"] = predictor.card.geometry
    report.update(extra or {})
    report["config"] = cfg.to_dict()
    report["environment"] = environment(predictor)
    write_scores_csv(output / runfiles.scores_file(), predictions, thresholds)
    write_maps(output / runfiles.MAPS, predictions, thresholds)
    report["files"] = write_visuals(output, predictions, predictor.preprocess, thresholds,
                                    cfg.evaluation, title=cfg.data.category)
    atomic_write_json(output / runfiles.METRICS, report)  # last: its presence marks a finished run
    return report


def evaluate_predictor(predictor: Predictor, output: Path, data_root: str | None = None,
                       source: str | Path | None = None) -> dict[str, Any]:
    """Test a trained model (checkpoint or export) on the test split of the data it was trained on (or, MVTec
    layout, the same category under data_root); source: what it was loaded from, recorded in metrics.json."""
    cfg = predictor.config
    if data_root and cfg.data.layout != "mvtec":
        raise ConfigError(f"--data-root applies to the MVTec layout; this model was trained on the "
                          f"{cfg.data.layout} layout and is tested on its own folders (data.abnormal_dir = "
                          f"{cfg.data.abnormal_dir!r}, data.normal_test_dir = {cfg.data.normal_test_dir!r}): "
                          "leave --data-root out")
    if data_root:
        cfg.data.root = data_root
    return evaluate_and_write(predictor, cfg, output, extra={"model": str(source)} if source else None)


def print_report(report: dict[str, Any], output: Path) -> None:
    """The test results, the command's output: on stdout (progress and warnings go to the log)."""
    test = report.get("test", {})
    print(f"\n{report.get('category', '')} ({report.get('backbone', '')}): {test.get('images', 0)} test images, "
          f"{test.get('defective', 0)} defective")
    print(format_metrics_table(report["metrics"]))
    pixel_note = report.get("notes", {}).get("pixel_metrics")
    if pixel_note:
        print(f"  {pixel_note}")
    for kind, row in (report.get("per_kind") or {}).items():
        pixel = "undefined" if row["pixel_auroc"] is None else f"{row['pixel_auroc']:.4f}"
        image = "undefined" if row["image_auroc"] is None else f"{row['image_auroc']:.4f}"
        print(f"  {kind} ({row['images']} images): image AUROC {image}, pixel AUROC {pixel}")
    at = report.get("at_threshold")
    if at:
        print(f"  at the held-out threshold {at['threshold']:.4g}: defective flagged {at['defective_flagged']}, "
              f"good flagged {at['good_flagged']}")
        statement = (report.get("threshold") or {}).get("image", {}).get("statement")
        if statement:
            print(f"  {statement}")
        if "pixel_f1" in at:
            print(f"  outlines ({at['pixel_method']}, pixel threshold {at['pixel_threshold']:.4g}, "
                  f"{at['pixel_relative']:.2f} of the way to each image's peak): pixel precision "
                  f"{at['pixel_precision']:.3f}, recall {at['pixel_recall']:.3f}, F1 {at['pixel_f1']:.3f}")
    if report.get("geometry"):
        print(f"  geometry: {report['geometry']}")
    print(f"results in {output}")
