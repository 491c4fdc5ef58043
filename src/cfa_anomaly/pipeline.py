"""The jobs behind the commands: train (+ test), test a checkpoint, predict on images."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cfa_anomaly import __version__
from cfa_anomaly.checkpoint import load_state_into, read_checkpoint, save_checkpoint
from cfa_anomaly.config import Config, save_config
from cfa_anomaly.data.dataset import AnomalyDataset, ImageFilesDataset, make_loader
from cfa_anomaly.data.samples import DatasetError, list_images, make_samples
from cfa_anomaly.evaluate import Predictions, compute_test_metrics, predict
from cfa_anomaly.io_utils import atomic_write_json
from cfa_anomaly.model import CFA
from cfa_anomaly.outputs import format_metrics_table, write_heatmaps, write_maps, write_scores_csv
from cfa_anomaly.train import TrainResult, build_model, fit, resolve_device

CHECKPOINT_NAME = "checkpoint.pt"


def _environment() -> dict[str, Any]:
    return {"package_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def _loader(cfg: Config, split: str):
    samples = make_samples(cfg.data.root, cfg.data.category, split)  # raises DatasetError before any model work
    return make_loader(AnomalyDataset(samples, cfg.data.resize, cfg.data.crop), cfg.data.batch_size,
                       cfg.data.num_workers)


def _test_report(cfg: Config, predictions: Predictions, results: dict[str, Any]) -> dict[str, Any]:
    labels = predictions.labels
    return {
        "category": cfg.data.category,
        "backbone": cfg.model.backbone,
        "metrics": results,
        "notes": {"pixel_f1_max": "best F1 over all thresholds: the threshold is fitted on the test set",
                  "aupro": "standard AUPRO: per-region overlap integrated up to pixel FPR 0.3, divided by 0.3"},
        "test": {"images": len(predictions.paths), "defective": int(labels.sum()),
                 "good": int((labels == 0).sum()),
                 "images_per_second": round(predictions.images_per_second, 3)},
    }


def evaluate_and_write(model: CFA, cfg: Config, device: torch.device, output: Path,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the test split; write metrics.json, scores.csv, maps.npz and heatmaps/ into output."""
    loader = _loader(cfg, "test")
    predictions = predict(model, loader, device)
    report = _test_report(cfg, predictions, compute_test_metrics(predictions))
    report.update(extra or {})
    report["config"] = cfg.to_dict()
    report["environment"] = _environment()
    atomic_write_json(output / "metrics.json", report)
    write_scores_csv(output / "scores.csv", predictions)
    write_maps(output / "maps.npz", predictions)
    write_heatmaps(output / "heatmaps", predictions, cfg.data.resize, cfg.data.crop)
    return report


def _train_summary(result: TrainResult, epochs: int) -> dict[str, Any]:
    return {"train": {"images": result.images, "epochs": epochs, "final_loss": result.losses[-1] if result.losses else None,
                      "loss_per_epoch": [round(v, 6) for v in result.losses], "radius": result.radius,
                      "feature_seconds": round(result.feature_seconds, 2),
                      "train_seconds": round(result.train_seconds, 2)}}


def train_and_test(cfg: Config, output: Path, run_test: bool = True) -> dict[str, Any]:
    """Train on train/good, save the checkpoint, then (optionally) test; everything lands in output."""
    device = resolve_device(cfg.train.device)
    train_loader = _loader(cfg, "train")
    if run_test:
        make_samples(cfg.data.root, cfg.data.category, "test")  # fail on a broken test split before training
    model = build_model(cfg, device)
    save_config(cfg, output / "config.yaml")
    result = fit(model, train_loader, cfg, device)
    summary = _train_summary(result, cfg.train.epochs)
    save_checkpoint(model, cfg, output / CHECKPOINT_NAME, extra=summary)
    if not run_test:
        atomic_write_json(output / "train.json", {**summary, "config": cfg.to_dict(), "environment": _environment()})
        return summary
    return evaluate_and_write(model, cfg, device, output, extra=summary)


def load_model(checkpoint: Path, device_name: str | None = None) -> tuple[CFA, Config, torch.device]:
    """Rebuild the model a checkpoint was trained with (backbone from its config) and load its state."""
    cfg, payload = read_checkpoint(checkpoint)
    if device_name:
        cfg.train.device = device_name
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, device)
    load_state_into(model, payload, checkpoint)
    return model.to(device).eval(), cfg, device


def evaluate_checkpoint(checkpoint: Path, output: Path, data_root: str | None = None) -> dict[str, Any]:
    model, cfg, device = load_model(checkpoint)
    if data_root:
        cfg.data.root = data_root
    return evaluate_and_write(model, cfg, device, output, extra={"checkpoint": str(checkpoint)})


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise DatasetError(f"no image files in {item}")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetError(f"input not found: {item}")
    return paths


def predict_images(checkpoint: Path, inputs: Sequence[str | Path], output: Path) -> Predictions:
    """Scores and maps for plain images: scores.csv, maps.npz and heatmaps/ in output."""
    model, cfg, device = load_model(checkpoint)
    paths = collect_images(inputs)
    loader = make_loader(ImageFilesDataset(paths, cfg.data.resize, cfg.data.crop), cfg.data.batch_size,
                         cfg.data.num_workers)
    predictions = predict(model, loader, device, desc="predict")
    write_scores_csv(output / "scores.csv", predictions)
    write_maps(output / "maps.npz", predictions)
    write_heatmaps(output / "heatmaps", predictions, cfg.data.resize, cfg.data.crop)
    return predictions


def print_report(report: dict[str, Any], output: Path) -> None:
    test = report.get("test", {})
    print(f"\n{report.get('category', '')} ({report.get('backbone', '')}): {test.get('images', 0)} test images, "
          f"{test.get('defective', 0)} defective")
    print(format_metrics_table(report["metrics"]))
    print(f"results in {output}")
