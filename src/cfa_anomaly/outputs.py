"""What a run leaves behind: run folders, metrics table, score CSV, maps, panels, GIF and plots."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from cfa_anomaly import viz
from cfa_anomaly.config import EvaluationConfig
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
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"output path {folder} is a file, not a folder; choose another")
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


def write_scores_csv(path: Path, predictions: Predictions, threshold: float | None = None) -> None:
    """path, score, decision at the held-out threshold (when there is one), label (when known)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    has_labels = predictions.labels is not None
    writer.writerow(["path", "score", "decision", *(["label"] if has_labels else [])])
    for index, image_path in enumerate(predictions.paths):
        score = float(predictions.scores[index])
        decision = "" if threshold is None else ("defective" if score >= threshold else "good")
        row: list[Any] = [image_path, f"{score:.6g}", decision]
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


def cropped_rgb(path: str | Path, resize: int, crop: int) -> np.ndarray:
    """The image as the model saw it: (crop, crop, 3) uint8."""
    tensor = image_to_tensor(read_rgb(Path(path)), resize, crop)
    return (tensor.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def panel_name(path: str | Path) -> str:
    """<parent folder>/<stem>: unique within an MVTec-style test split (defect type / image)."""
    source = Path(path)
    return f"{source.parent.name}/{source.stem}"


def write_visuals(output: Path, predictions: Predictions, resize: int, crop: int, threshold: float | None,
                  evaluation: EvaluationConfig, title: str) -> dict[str, str]:
    """Panels (one per image), and for labelled data a GIF, ROC curves and a score histogram."""
    written: dict[str, str] = {}
    names = [panel_name(p) for p in predictions.paths]
    labelled = predictions.labels is not None
    scale = (float(predictions.maps.min()), float(predictions.maps.max()))  # shared by all images

    def render(i: int) -> np.ndarray:
        return viz.render_panel(cropped_rgb(predictions.paths[i], resize, crop), predictions.maps[i],
                                float(predictions.scores[i]), threshold, scale,
                                predictions.masks[i] if labelled else None, title=names[i])

    rendered: dict[int, np.ndarray] = {}
    if evaluation.panels:
        rendered = {i: render(i) for i in range(len(names))}
        viz.write_panels(output / "panels", list(rendered.values()), names)
        written["panels"] = "panels/"
    if not labelled:
        return written
    order = viz.gif_order(predictions.labels, evaluation.gif_good_frames, evaluation.gif_max_frames)
    frames = [rendered[i] if i in rendered else render(i) for i in order]  # panels are rendered once
    viz.write_gif(output / f"{title}.gif", frames, max_width=evaluation.gif_width)
    viz.plot_roc(output / "roc.png", predictions.labels, predictions.scores, predictions.masks, predictions.maps,
                 title=title)
    viz.plot_score_histogram(output / "score_histogram.png", predictions.labels, predictions.scores, threshold,
                             title=title)
    written.update({"gif": f"{title}.gif", "roc": "roc.png", "histogram": "score_histogram.png"})
    return written
