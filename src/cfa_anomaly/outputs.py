"""What a run leaves behind: run folders, metrics table, score CSV, maps, panels, GIF and plots."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cfa_anomaly import runfiles, viz
from cfa_anomaly.config import EvaluationConfig
from cfa_anomaly.data.images import read_rgb, tensor_to_rgb
from cfa_anomaly.errors import CfaError
from cfa_anomaly.evaluate import Predictions
from cfa_anomaly.heatmap import MapScale
from cfa_anomaly.io_utils import atomic_write, atomic_write_text
from cfa_anomaly.thresholds import Thresholds

METRIC_LABELS: dict[str, str] = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pixel_f1_max": "pixel F1-max (test-fitted threshold)",
    "aupro": "AUPRO (FPR <= 0.3)",
    "aupimo": "AUPIMO (FPR 1e-5 to 1e-4, mean over defective images)",
}


class OutputExistsError(CfaError, FileExistsError):
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


# The one schema of scores.csv (cfa test and cfa predict; scores.jsonl has the same keys). defect_area: the
# outlined fraction of the model's input grid; label: 1 defective / 0 good where known (cfa test), else
# empty; error: why an input could not be scored (cfa predict), else empty.
SCORE_COLUMNS = ("path", "score", "decision", "defect_area", "label", "error")


def score_row(path: str, score: float | None, decision: str | None, area: float | None,
              label: int | None = None, error: str = "") -> list[str]:
    """One scores.csv row in SCORE_COLUMNS' order."""
    return [path, "" if score is None else f"{score:.6g}", decision or "", "" if area is None else f"{area:.4g}",
            "" if label is None else str(int(label)), error]


def write_scores_csv(path: Path, predictions: Predictions, thresholds: Thresholds) -> None:
    """scores.csv of a test: every image's score, decision and outlined area at the thresholds, label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SCORE_COLUMNS)
    for index, image_path in enumerate(predictions.paths):
        score = float(predictions.scores[index])
        outline = thresholds.defect_mask(predictions.maps[index], score)
        label = None if predictions.labels is None else int(predictions.labels[index])
        writer.writerow(score_row(image_path, score, thresholds.label(score),
                                  None if outline is None else float(outline.mean()), label))
    atomic_write_text(path, buffer.getvalue())


def _map_arrays(maps: np.ndarray, scores: np.ndarray, paths: list[str], thresholds: Thresholds,
                masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What a maps file holds: maps (float16, crop grid), scores, paths, and with thresholds the defect
    masks (Thresholds.defect_mask of the float32 maps: given, or taken here), the pixel threshold and the
    fraction of the way to each image's peak it outlines at."""
    arrays = {"maps": maps.astype(np.float16), "scores": np.asarray(scores, np.float32),
              "paths": np.asarray(paths)}
    if thresholds.outline_level is not None:
        if masks is None:
            masks = np.stack([thresholds.defect_mask(m, s) for m, s in zip(maps, scores)])
        arrays.update(defect_masks=masks, pixel_threshold=np.float32(thresholds.outline_level),
                      pixel_relative=np.float32(thresholds.pixel_relative))
    return arrays


def write_maps(path: Path, predictions: Predictions, thresholds: Thresholds) -> None:
    """All maps in one compressed .npz with their paths and scores (and defect masks, see _map_arrays)."""
    arrays = _map_arrays(predictions.maps, predictions.scores, predictions.paths, thresholds)
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def cropped_rgb(path: str | Path, preprocess: Callable[[np.ndarray], torch.Tensor]) -> np.ndarray:
    """The image as the model saw it (preprocess: Predictor.preprocess): (crop, crop, 3) uint8."""
    return tensor_to_rgb(preprocess(read_rgb(Path(path))))


def panel_name(path: str | Path) -> str:
    """<parent folder>/<stem>: unique within an MVTec-style test split (defect type / image)."""
    source = Path(path)
    return f"{source.parent.name}/{source.stem}"


def write_visuals(output: Path, predictions: Predictions, preprocess: Callable[[np.ndarray], torch.Tensor],
                  thresholds: Thresholds, evaluation: EvaluationConfig, title: str) -> dict[str, str]:
    """Panels (one per image; outlines: Thresholds.defect_mask), and for labelled data a GIF, ROC curves and
    a score histogram.

    A test image without a mask gets an empty "no mask" ground-truth column; the pixel ROC is drawn only
    when every defective image has a mask (as the pixel metrics).
    """
    written: dict[str, str] = {}
    names = [panel_name(p) for p in predictions.paths]
    labelled = predictions.labels is not None
    scale = (float(predictions.maps.min()), float(predictions.maps.max()))  # shared by all images

    def render(i: int) -> np.ndarray:
        mask = predictions.mask_of(i) if labelled else None
        return viz.render_panel(cropped_rgb(predictions.paths[i], preprocess), predictions.maps[i],
                                float(predictions.scores[i]), thresholds, scale, mask, title=names[i],
                                mask_missing=labelled and mask is None)

    rendered: dict[int, np.ndarray] = {}
    if evaluation.panels:
        rendered = {i: render(i) for i in range(len(names))}
        viz.write_panels(output / runfiles.PANELS, list(rendered.values()), names)
        written["panels"] = f"{runfiles.PANELS}/"
    if not labelled:
        return written
    order = viz.gif_order(predictions.labels, evaluation.gif_good_frames, evaluation.gif_max_frames)
    frames = [rendered[i] if i in rendered else render(i) for i in order]  # panels are rendered once
    viz.write_gif(output / f"{title}.gif", frames, max_width=evaluation.gif_width)
    viz.plot_roc(output / runfiles.ROC, predictions.labels, predictions.scores, predictions.pixel_masks(),
                 predictions.maps, title=title)  # pixel ROC only when every defective image has a mask
    viz.plot_score_histogram(output / runfiles.HISTOGRAM, predictions.labels, predictions.scores,
                             thresholds.image, title=title)
    written.update({"gif": f"{title}.gif", "roc": runfiles.ROC, "histogram": runfiles.HISTOGRAM})
    return written


# --------------------------------------------------------------------------- streaming outputs (cfa predict)
MAPS_SHARD_SIZE = 256  # maps per maps/shard-NNNNN.npz file of a streamed prediction
PARTIAL_SUFFIX = ".partial"  # a score file under this name is unfinished (the run stopped or is running)


class ScoreRowWriter:
    """scores.csv and/or scores.jsonl written row by row, flushed per batch.

    The files are written as <name>.partial and renamed at close(), so a killed run never leaves a file
    that looks complete. A row has SCORE_COLUMNS (the label empty: inputs to predict have none).
    """

    def __init__(self, output: Path, formats: tuple[str, ...]) -> None:
        self.paths = [output / runfiles.scores_file(kind) for kind in formats]
        self._handles = [open(self._partial(p), "w", newline="", encoding="utf-8")  # noqa: SIM115 (open across batches)
                         for p in self.paths]
        self._csv = {kind: csv.writer(h) for kind, h in zip(formats, self._handles) if kind == "csv"}
        self._kinds = formats
        for writer in self._csv.values():
            writer.writerow(SCORE_COLUMNS)

    @staticmethod
    def _partial(path: Path) -> Path:
        return path.with_name(path.name + PARTIAL_SUFFIX)

    def write(self, path: str, score: float | None, decision: str, area: float | None = None,
              error: str = "") -> None:
        for kind, handle in zip(self._kinds, self._handles):
            if kind == "csv":
                self._csv[kind].writerow(score_row(path, score, decision, area, error=error))
            else:
                record = {"path": path, "score": None if score is None else float(f"{score:.6g}"),
                          "decision": decision or None,
                          "defect_area": None if area is None else float(f"{area:.4g}"),
                          "label": None, "error": error or None}
                handle.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        for handle in self._handles:
            handle.flush()

    def close(self, complete: bool = True) -> None:
        """Close the files; when complete, fsync and rename them to their final names."""
        for path, handle in zip(self.paths, self._handles):
            if complete:
                handle.flush()
                os.fsync(handle.fileno())
            handle.close()
            if complete:
                os.replace(self._partial(path), path)


class MapShardWriter:
    """Anomaly maps (float16, crop grid) with their paths and scores, in shards of at most shard_size.

    A run with at most shard_size maps writes one maps.npz (as `cfa test` does); a longer one writes
    maps/shard-00000.npz, maps/shard-00001.npz, ... Each file is written atomically. Holds at most one
    shard of maps in memory. With thresholds, each file also holds the defect masks.
    """

    def __init__(self, output: Path, shard_size: int = MAPS_SHARD_SIZE,
                 thresholds: Thresholds | None = None) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.output = output
        self.shard_size = shard_size
        self.thresholds = thresholds or Thresholds()
        self.written: list[Path] = []
        self._maps: list[np.ndarray] = []  # float16
        self._masks: list[np.ndarray] = []  # bool, from the float32 map, with thresholds
        self._paths: list[str] = []
        self._scores: list[float] = []

    def add(self, path: str, anomaly_map: np.ndarray, score: float, mask: np.ndarray | None = None) -> None:
        """mask: the image's defect mask, when the caller has it already (else taken here)."""
        if len(self._maps) == self.shard_size:  # lazily, so that exactly shard_size maps stay one maps.npz
            self._write(runfiles.map_shard(self.output, len(self.written)))
        self._maps.append(np.asarray(anomaly_map, dtype=np.float16))
        if self.thresholds.outline_level is not None:
            self._masks.append(self.thresholds.defect_mask(anomaly_map, score) if mask is None else mask)
        self._paths.append(path)
        self._scores.append(float(score))

    def close(self) -> list[Path]:
        """Write what is left (maps.npz when nothing was sharded yet); returns the files written."""
        if self._maps:
            self._write(runfiles.map_shard(self.output, len(self.written)) if self.written
                        else self.output / runfiles.MAPS)
        return self.written

    def _write(self, path: Path) -> None:
        masks = np.stack(self._masks) if self._masks else None
        arrays = _map_arrays(np.stack(self._maps), np.asarray(self._scores), self._paths,
                             self.thresholds, masks)
        atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
        self.written.append(path)
        self._maps, self._masks, self._paths, self._scores = [], [], [], []


class PanelNames:
    """<parent folder>/<stem> per image, made unique within a run: a second a/x (a/x.jpg after a/x.png, or
    two folders named a) becomes a/x-2, so that no panel overwrites another."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, path: str | Path) -> str:
        name, copy = panel_name(path), 1
        candidate = name
        while candidate in self._used:
            copy += 1
            candidate = f"{name}-{copy}"
        self._used.add(candidate)
        return candidate


def write_stream_panel(folder: Path, image: np.ndarray, anomaly_map: np.ndarray, score: float,
                       thresholds: Thresholds, name: str) -> None:
    """One panel (input | heatmap | predicted outline) as folder/<name>.png, drawn right away."""
    scale = MapScale.of(anomaly_map, thresholds.image)  # 0 .. 2 x threshold: streamed panels are comparable
    panel = viz.render_panel(image, anomaly_map, score, thresholds, (scale.low, scale.high), title=name)
    viz.write_panels(folder, [panel], [name])
