"""The training job behind cfa train and a benchmark cell: train on the training images, calibrate the
thresholds on the held-out ones, save the checkpoint, then (optionally) test (run_report.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cfa_anomaly import crossfit, runfiles
from cfa_anomaly.calibration import thresholds_from_holdout
from cfa_anomaly.checkpoint import save_checkpoint
from cfa_anomaly.config import Config, ConfigError, save_config
from cfa_anomaly.data.dataset import training_loader
from cfa_anomaly.data.samples import Sample
from cfa_anomaly.inference import Predictor
from cfa_anomaly.io_utils import atomic_write_json
from cfa_anomaly.model import CFA
from cfa_anomaly.model.factory import build_model, resolve_device
from cfa_anomaly.run_data import check_data
from cfa_anomaly.run_report import environment, evaluate_and_write
from cfa_anomaly.tracking import TrackedEpochs, open_tracker
from cfa_anomaly.train import TrainResult, fit
from cfa_anomaly.validation import ValidationTracker, plot_validation, synthetic_validation_set

log = logging.getLogger(__name__)


def _train_summary(result: TrainResult, epochs: int) -> dict[str, Any]:
    return {"train": {"images": result.images, "epochs": epochs,
                      "final_loss": result.losses[-1] if result.losses else None,
                      "loss_per_epoch": [round(v, 6) for v in result.losses], "radius": result.radius,
                      "feature_seconds": round(result.feature_seconds, 2),
                      "bank_seconds": round(result.bank_seconds, 2),
                      "compile_seconds": round(result.compile_seconds, 2),
                      "train_seconds": round(result.train_seconds, 2)}}


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
    state_path = output / runfiles.TRAIN_STATE
    tracker = _validation_tracker(model, holdout, cfg)
    run = open_tracker(cfg, output)  # train.log: TensorBoard or MLflow, opened before training
    observer = TrackedEpochs(run, tracker) if run is not None else tracker
    result = fit(model, training_loader(train_samples, cfg), cfg, device, state_path=state_path, resume=resume,
                 observer=observer)
    summary = _train_summary(result, cfg.train.epochs)
    if tracker is not None:
        summary["validation"] = _select_by_validation(model, tracker, cfg, output)
    wanted = crossfit.wanted(holdout, train_samples, cfg)
    cross_fitted = crossfit.out_of_fold_scores(train_samples, cfg, device) if wanted else None
    thresholds = thresholds_from_holdout(Predictor.from_model(model, cfg, None), holdout, cfg,  # selected model
                                         cross_fitted, tracker.validation if tracker is not None else None)
    summary["threshold"] = thresholds.to_dict()
    save_checkpoint(model, cfg, output / runfiles.CHECKPOINT, extra=summary)
    state_path.unlink(missing_ok=True)  # the checkpoint supersedes it
    predictor = Predictor.from_model(model, cfg, thresholds)
    atomic_write_json(output / runfiles.TRAIN_SUMMARY, {**summary, "config": cfg.to_dict(),
                                              "environment": environment(predictor)})
    report = evaluate_and_write(predictor, cfg, output, extra=summary) if run_test else summary
    if run is not None:
        run.finish(report.get("metrics") or {}, _tracked_files(output))
    return report


def _tracked_files(output: Path) -> list[Path]:
    """The run's files a tracker keeps: results, plots and the checkpoint, those that exist."""
    names = (runfiles.METRICS, runfiles.TRAIN_SUMMARY, runfiles.ROC, runfiles.HISTOGRAM,
             runfiles.VALIDATION_PLOT, runfiles.CHECKPOINT)
    return [output / name for name in names if (output / name).is_file()]


