"""What a run leaves behind: run folders, metrics JSON, score CSV, maps and heatmap overlays."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from matplotlib import colormaps

from cfa_anomaly.data.images import image_to_tensor, read_rgb
from cfa_anomaly.evaluate import Predictions
from cfa_anomaly.io_utils import atomic_write, atomic_write_text

METRIC_LABELS: dict[str, str] = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pixel_f1_max": "pixel F1-max (test-fitted threshold)",
    "aupro": "AUPRO (FPR <= 0.3)",
}


class OutputExistsError(FileExistsError):
    """An output folder that already holds results; nothing is overwritten without --overwrite."""


def new_run_dir(base: str | Path, category: str) -> Path:
    """base/category/YYYYmmdd-HHMMSS, with a suffix if that folder exists: never reuses a folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(base) / category / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(base) / category / f"{stamp}-{suffix}"
    folder.mkdir(parents=True)
    return folder


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """An explicit output folder: created if needed; a non-empty one needs overwrite=True."""
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {folder} is not empty; choose another or pass --overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def format_metrics_table(results: dict[str, float | None]) -> str:
    width = max(len(label) for label in METRIC_LABELS.values())
    lines = []
    for key, label in METRIC_LABELS.items():
        value = results.get(key)
        lines.append(f"  {label:<{width}}  {'undefined' if value is None else f'{value:.4f}'}")
    return "\n".join(lines)


def write_scores_csv(path: Path, predictions: Predictions) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    has_labels = predictions.labels is not None
    writer.writerow(["path", "score", *(["label"] if has_labels else [])])
    for index, image_path in enumerate(predictions.paths):
        row: list[Any] = [image_path, f"{predictions.scores[index]:.6g}"]
        if has_labels:
            row.append(int(predictions.labels[index]))
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def write_maps(path: Path, predictions: Predictions) -> None:
    """All maps in one compressed .npz (float16) with their paths and scores."""
    def write(handle):
        np.savez_compressed(handle, maps=predictions.maps.astype(np.float16), scores=predictions.scores,
                            paths=np.asarray(predictions.paths))
    atomic_write(path, write)


def heatmap_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H,W,3) uint8 image and (H,W) map -> uint8 overlay with the jet colour map on a shared scale."""
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0.0, 1.0)
    colours = colormaps["jet"](scaled)[..., :3]
    return (0.5 * rgb / 255.0 + 0.5 * colours).clip(0, 1).__mul__(255).astype(np.uint8)


def write_heatmaps(folder: Path, predictions: Predictions, resize: int, crop: int) -> None:
    """One overlay PNG per image under folder/<parent folder name>/<stem>.png, colour scale shared by all."""
    low, high = float(predictions.maps.min()), float(predictions.maps.max())
    for image_path, anomaly_map in zip(predictions.paths, predictions.maps):
        source = Path(image_path)
        rgb = (image_to_tensor(read_rgb(source), resize, crop).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        target = folder / source.parent.name / f"{source.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        overlay = heatmap_overlay(rgb, anomaly_map, low, high)
        atomic_write(target, lambda handle, image=overlay: handle.write(iio.imwrite("<bytes>", image, extension=".png")))
