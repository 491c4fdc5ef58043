"""The jobs behind the commands: train (+ test), and test a checkpoint or an exported model."""

from __future__ import annotations

import contextlib
import logging
import platform
from pathlib import Path
from typing import Any

import torch

from cfa_anomaly import __version__, crossfit, runfiles
from cfa_anomaly.calibration import outline_overlap, thresholds_from_holdout
from cfa_anomaly.checkpoint import save_checkpoint
from cfa_anomaly.config import Config, ConfigError, save_config
from cfa_anomaly.data.dataset import image_loader, training_loader
from cfa_anomaly.data.folder import dataset_samples
from cfa_anomaly.data.images import unreadable
from cfa_anomaly.data.samples import DatasetError, Sample, Split, folder_samples, split_holdout
from cfa_anomaly.evaluate import Predictions, compute_test_metrics, per_kind_metrics, predict
from cfa_anomaly.inference import Predictor
from cfa_anomaly.io_utils import atomic_write_json, file_sha256
from cfa_anomaly.model import CFA
from cfa_anomaly.model.factory import build_model, resolve_device
from cfa_anomaly.outputs import format_metrics_table, write_maps, write_scores_csv, write_visuals
from cfa_anomaly.thresholds import Thresholds
from cfa_anomaly.train import TrainResult, fit
from cfa_anomaly.validation import ValidationTracker, plot_validation, synthetic_validation_set

CHECKPOINT_NAME = runfiles.CHECKPOINT
TRAIN_STATE_NAME = runfiles.TRAIN_STATE
log = logging.getLogger(__name__)


def _environment(predictor: Predictor | None = None) -> dict[str, Any]:
    """What produced a result: versions, machine and (with a predictor) the exact backbone weights."""
    info: dict[str, Any] = {"package_version": __version__, "torch": torch.__version__,
                            "python": platform.python_version(), "machine": platform.machine()}
    if predictor is not None:
        info["backbone_weights_sha256"] = predictor.card.backbone_weights_sha256
        info["precision"] = predictor.card.precision
        info["engine"] = predictor.name
    return info


def _loader(cfg: Config, split: Split):
    return image_loader(dataset_samples(cfg.data, split), cfg)


def training_split(cfg: Config) -> tuple[list[Sample], list[Sample]]:
    """(training images, held-out normal images for the threshold), as the config asks; in the folder layout
    both come from normal_dir less the images it gives to the test split.

    Images of data.holdout_dir that are also training or test images (the same file, or a copy with the same
    bytes) are refused with a DatasetError naming both files: a threshold taken from them would not be held
    out."""
    samples = dataset_samples(cfg.data, "train")
    if cfg.data.holdout_dir:
        holdout = folder_samples(cfg.data.holdout_dir)
        refuse_shared_images(holdout, {"training": samples, "test": _test_samples_if_any(cfg)})
        return samples, holdout
    return split_holdout(samples, cfg.data.holdout_fraction, cfg.train.seed)


def _test_samples_if_any(cfg: Config) -> list[Sample]:
    """The test split, or [] where there is none (no data.abnormal_dir, no test folder): a broken test split
    is reported by check_data when a run tests."""
    try:
        return dataset_samples(cfg.data, "test")
    except DatasetError as err:
        log.debug("data.holdout_dir not compared with the test images: %s", err)
        return []


def refuse_shared_images(holdout: list[Sample], others: dict[str, list[Sample]]) -> None:
    """A DatasetError when a held-out image is also one of `others` (split name -> samples): by resolved path,
    or by the SHA-256 of its bytes. Only files whose size equals a held-out file's size are read and hashed."""
    held = {sample.image.resolve(): sample.image for sample in holdout}
    sizes: dict[int, list[Path]] = {}
    for path in held.values():
        with contextlib.suppress(OSError):  # an unreadable file is reported by check_data
            sizes.setdefault(path.stat().st_size, []).append(path)
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> str | None:
        if path not in hashes:
            try:
                hashes[path] = file_sha256(path)
            except OSError:
                return None
        return hashes[path]

    for split, samples in others.items():
        for sample in samples:
            other = sample.image
            same_file = held.get(other.resolve())
            if same_file is not None:
                raise DatasetError(f"{same_file} (data.holdout_dir) is also a {split} image: {other} (the same "
                                   "file); held-out images must be neither trained on nor tested on: remove it "
                                   "from data.holdout_dir")
            try:
                size = other.stat().st_size
            except OSError:
                continue
            for candidate in sizes.get(size, []):
                if digest(candidate) is not None and digest(candidate) == digest(other):
                    raise DatasetError(f"{candidate} (data.holdout_dir) has the same bytes (SHA-256) as the {split} "
                                       f"image {other}; held-out images must be neither trained on nor tested on: "
                                       "remove the copy from data.holdout_dir")


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
             "aupro": "standard AUPRO: per-region overlap integrated up to pixel FPR 0.3, divided by 0.3"}
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
    predictions = predict(predictor, _loader(cfg, "test"))
    report = _test_report(cfg, predictions, compute_test_metrics(predictions), predictor)
    report["per_kind"] = per_kind_metrics(predictions)
    report["at_threshold"] = decisions_at_threshold(predictions, thresholds)
    report["at_threshold_by_method"] = outcomes_by_method(predictions, thresholds)
    report["threshold"] = thresholds.to_dict()
    report["geometry"] = predictor.card.geometry
    report.update(extra or {})
    report["config"] = cfg.to_dict()
    report["environment"] = _environment(predictor)
    write_scores_csv(output / runfiles.scores_file(), predictions, thresholds)
    write_maps(output / runfiles.MAPS, predictions, thresholds)
    report["files"] = write_visuals(output, predictions, predictor.preprocess, thresholds,
                                    cfg.evaluation, title=cfg.data.category)
    atomic_write_json(output / runfiles.METRICS, report)  # last: its presence marks a finished run
    return report


def _train_summary(result: TrainResult, epochs: int) -> dict[str, Any]:
    return {"train": {"images": result.images, "epochs": epochs,
                      "final_loss": result.losses[-1] if result.losses else None,
                      "loss_per_epoch": [round(v, 6) for v in result.losses], "radius": result.radius,
                      "feature_seconds": round(result.feature_seconds, 2),
                      "bank_seconds": round(result.bank_seconds, 2),
                      "compile_seconds": round(result.compile_seconds, 2),
                      "train_seconds": round(result.train_seconds, 2)}}


def _bad_files(samples: list[Sample]) -> list[tuple[Path, str]]:
    """(file, reason) for every image or mask of the samples that cannot be read."""
    found = []
    for sample in samples:
        for path in (sample.image, sample.mask):
            reason = unreadable(path) if path is not None else None
            if reason:
                found.append((path, reason))
    return found


def check_data(cfg: Config, run_test: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Index and check the data before any output or model work; returns (training, held-out) samples.

    Unreadable test files always stop the run; unreadable training files too, unless data.skip_bad_images,
    which drops them and lists them in a warning.
    """
    train, holdout = training_split(cfg)
    if run_test:
        test = dataset_samples(cfg.data, "test")
        bad = _bad_files(test)
        if bad:
            raise DatasetError(f"{len(bad)} unreadable test file(s), e.g. {bad[0][0]}: {bad[0][1]}; "
                               "fix or remove them")
        maskless = [s for s in test if not s.mask_known]
        if maskless:  # allowed (image metrics need no masks), but said up front
            kinds = ", ".join(sorted({s.defect_type for s in maskless}))
            log.warning("%d of %d defective test image(s) have no mask (no mask folder for: %s): "
                        "image AUROC only, the pixel metrics stay undefined",
                        len(maskless), sum(s.label for s in test), kinds)
    bad = _bad_files(train + holdout)
    if bad and not cfg.data.skip_bad_images:
        raise DatasetError(f"{len(bad)} unreadable training file(s), e.g. {bad[0][0]}: {bad[0][1]}; fix or "
                           "remove them, or set data.skip_bad_images=true to skip them")
    if bad:
        skipped = {path for path, _ in bad}
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in bad)
        log.warning("skipping %d unreadable training image(s):\n  %s", len(bad), listing)
        train = [s for s in train if s.image not in skipped]
        holdout = [s for s in holdout if s.image not in skipped]
        if not train:
            raise DatasetError("no readable training images left after skipping the bad ones")
    return train, holdout


def _validation_tracker(model: CFA, holdout: list[Sample], cfg: Config) -> ValidationTracker | None:
    """With data.validation=synthetic: the painted validation set of the held-out images and its tracker."""
    if cfg.data.validation is None:
        return None
    if not holdout:
        raise ConfigError("data.validation=synthetic needs held-out normal images: set data.holdout_fraction > 0 "
                          "or data.holdout_dir")
    validation = synthetic_validation_set(holdout, cfg)
    log.info("validating on %d held-out normal images with %d painted defects every %d epochs",
             len(holdout), int(validation.labels.sum()), cfg.train.validate_every)
    return ValidationTracker(model, validation, cfg.train.validate_every, cfg.train.epochs,
                             cfg.train.select == "best-validation", cfg.data.batch_size)


def _select_by_validation(model: CFA, tracker: ValidationTracker, cfg: Config, output: Path) -> dict[str, Any]:
    """Load the selected epoch's state (best-validation), plot the history; the summary for the reports."""
    summary = tracker.summary()
    if cfg.train.select == "best-validation" and tracker.best is not None:
        model.load_learned_state(tracker.best["state"])
        model.eval()
    plot_validation(output / runfiles.VALIDATION_PLOT, summary["history"], summary["selected"]["epoch"],
                    title=f"{cfg.data.category}: validation on synthetic defects")
    return summary


def train_and_test(cfg: Config, output: Path, run_test: bool = True, resume: dict[str, Any] | None = None,
                   split: tuple[list[Sample], list[Sample]] | None = None) -> dict[str, Any]:
    """Train on train/good (less the held-out images), set the threshold, save, then (optionally) test.

    The training state is saved after every epoch (output/train_state.pt) until the final checkpoint is
    written; `resume` (its contents) continues a killed run to the same final model.
    split: the result of check_data when the caller ran it already.
    """
    device = resolve_device(cfg.train.device)
    train_samples, holdout = split if split is not None else check_data(cfg, run_test)
    model = build_model(cfg, device)
    save_config(cfg, output / runfiles.CONFIG)
    state_path = output / TRAIN_STATE_NAME
    tracker = _validation_tracker(model, holdout, cfg)
    result = fit(model, training_loader(train_samples, cfg), cfg, device, state_path=state_path, resume=resume,
                 observer=tracker)
    summary = _train_summary(result, cfg.train.epochs)
    if tracker is not None:
        summary["validation"] = _select_by_validation(model, tracker, cfg, output)
    wanted = crossfit.wanted(holdout, train_samples, cfg)
    cross_fitted = crossfit.out_of_fold_scores(train_samples, cfg, device) if wanted else None
    thresholds = thresholds_from_holdout(Predictor.from_model(model, cfg, None), holdout, cfg,  # selected model
                                         cross_fitted, tracker.validation if tracker is not None else None)
    summary["threshold"] = thresholds.to_dict()
    save_checkpoint(model, cfg, output / CHECKPOINT_NAME, extra=summary)
    state_path.unlink(missing_ok=True)  # the checkpoint supersedes it
    predictor = Predictor.from_model(model, cfg, thresholds)
    atomic_write_json(output / runfiles.TRAIN_SUMMARY, {**summary, "config": cfg.to_dict(),
                                              "environment": _environment(predictor)})
    if not run_test:
        return summary
    return evaluate_and_write(predictor, cfg, output, extra=summary)


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
