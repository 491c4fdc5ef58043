"""Pictures of a run: per-image panels, a GIF per category, ROC curves and a score histogram."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import roc_curve

from cfa_anomaly import heatmap
from cfa_anomaly.io_utils import atomic_write
from cfa_anomaly.thresholds import DEFECTIVE, GOOD, Thresholds

PANEL_DPI = 100


def _save_figure(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=PANEL_DPI))
    plt.close(fig)


def _write_png(path: Path, image: np.ndarray) -> None:
    """A PNG written atomically; compression level 3: about as small as the default, several times faster."""
    atomic_write(path, lambda handle: Image.fromarray(image).save(handle, format="PNG", compress_level=3))


PANEL_TILE = 240  # pixels per view of a panel (about the size matplotlib drew them)
PANEL_GAP = 8
TITLE_HEIGHT = 24
CAPTION_HEIGHT = 18


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _resized(values: np.ndarray, tile: int, resample: Image.Resampling) -> np.ndarray:
    """An (H, W) float map, (H, W) mask or (H, W, 3) image at tile x tile pixels."""
    if values.shape[:2] == (tile, tile):
        return values
    if values.dtype == bool:
        return np.asarray(Image.fromarray(values).resize((tile, tile), Image.Resampling.NEAREST))
    if values.ndim == 2:  # a float map: resampled in float ('F' mode), as it is drawn
        return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((tile, tile), resample))
    return np.asarray(Image.fromarray(values).resize((tile, tile), resample))


def panel_caption(score: float, thresholds: Thresholds, title: str) -> str:
    """The panel's title line: its score and the decision at the image threshold."""
    label = thresholds.label(score)
    if label is None:
        decision = "no threshold"
    else:
        decision = f"{'DEFECT' if label == DEFECTIVE else 'good'} (threshold {thresholds.image:.3g})"
    return f"{title}  score {score:.3g}: {decision}"


def render_panel(image: np.ndarray, anomaly_map: np.ndarray, score: float, thresholds: Thresholds,
                 scale: tuple[float, float], mask: np.ndarray | None = None, title: str = "",
                 mask_missing: bool = False) -> np.ndarray:
    """One row: input | heatmap overlay | predicted outline | ground truth. Returns an RGB uint8 array.

    image: (H, W, 3) uint8; anomaly_map: (H, W); scale: the (low, high) colour range. thresholds decide the
    image and draw the predicted outline (Thresholds.defect_mask: none in an image decided good). mask
    None: no ground-truth column, unless mask_missing (a test image without a mask):
    an empty column labelled "no mask", so the panels of one category keep one layout.
    Composed with numpy and PIL, no figure (speed: benchmarks/panels.py).
    """
    tile = PANEL_TILE
    rgb = _resized(np.asarray(image, np.uint8), tile, Image.Resampling.BILINEAR)
    level_map = _resized(np.asarray(anomaly_map, np.float32), tile, Image.Resampling.BILINEAR)
    heat = heatmap.heat_overlay(rgb, heatmap.MapScale("fixed", *scale).to_uint8(level_map))
    outline = thresholds.defect_mask(level_map, score)
    views = [("input", rgb), ("anomaly map", heat)]
    if outline is None:
        views.append(("no threshold", rgb))
    else:
        caption = "predicted defect" if thresholds.label(score) != GOOD else "predicted defect: none"
        views.append((caption, heatmap.draw_outline(rgb, outline, heatmap.PREDICTED_COLOUR)))
    if mask is not None:
        views.append(("ground truth", heatmap.draw_outline(rgb, _resized(np.asarray(mask, bool), tile,
                                                                         Image.Resampling.NEAREST), heatmap.TRUTH_COLOUR)))
    elif mask_missing:
        views.append(("ground truth", None))

    width = len(views) * tile + (len(views) + 1) * PANEL_GAP
    canvas = Image.new("RGB", (width, TITLE_HEIGHT + CAPTION_HEIGHT + tile + PANEL_GAP), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, TITLE_HEIGHT / 2), panel_caption(score, thresholds, title), fill="black",
              font=_font(14), anchor="mm")
    top = TITLE_HEIGHT + CAPTION_HEIGHT
    for index, (caption, pixels) in enumerate(views):
        left = PANEL_GAP + index * (tile + PANEL_GAP)
        draw.text((left + tile / 2, TITLE_HEIGHT + CAPTION_HEIGHT / 2), caption, fill="black", font=_font(12),
                  anchor="mm")
        if pixels is None:
            draw.text((left + tile / 2, top + tile / 2), "no mask", fill="grey", font=_font(12), anchor="mm")
        else:
            canvas.paste(Image.fromarray(pixels), (left, top))
    return np.asarray(canvas)


def panel_view_box(index: int, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Where view `index` (0 input, 1 anomaly map, 2 predicted outline, 3 truth) of a panel render_panel
    drew lies, as (left, top, right, bottom); None when a picture of `size` (width, height) is no such
    panel or has no such view."""
    left, top = PANEL_GAP + index * (PANEL_TILE + PANEL_GAP), TITLE_HEIGHT + CAPTION_HEIGHT
    width, height = size
    if height != top + PANEL_TILE + PANEL_GAP or width < left + PANEL_TILE + PANEL_GAP:
        return None
    return left, top, left + PANEL_TILE, top + PANEL_TILE


def write_panels(folder: Path, panels: Sequence[np.ndarray], names: Sequence[str]) -> list[Path]:
    """Each rendered panel as folder/<name>.png."""
    paths = []
    for panel, name in zip(panels, names):
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_png(path, panel)
        paths.append(path)
    return paths


def gif_order(labels: np.ndarray, good_frames: int = 3, max_frames: int = 30) -> list[int]:
    """Indices for the GIF: defective images first, then a few good ones, capped in total."""
    defective = [i for i, label in enumerate(labels) if label == 1]
    good = [i for i, label in enumerate(labels) if label == 0][: min(good_frames, max_frames)]
    return defective[: max_frames - len(good)] + good


def write_gif(path: Path, frames: Sequence[np.ndarray], max_width: int = 640, seconds_per_frame: float = 1.0) -> None:
    """An animated GIF, frames downscaled to max_width so it stays small enough for a README."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    resized = []
    for frame in frames:
        image = Image.fromarray(frame)
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        resized.append(np.asarray(image))
    height = max(f.shape[0] for f in resized)
    width = max(f.shape[1] for f in resized)
    padded = [np.pad(f, ((0, height - f.shape[0]), (0, width - f.shape[1]), (0, 0)), constant_values=255)
              for f in resized]
    data = iio.imwrite("<bytes>", np.stack(padded), extension=".gif", duration=int(seconds_per_frame * 1000),
                       loop=0)
    atomic_write(path, lambda handle: handle.write(data))


def plot_roc(path: Path, labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray | None,
             title: str) -> None:
    """Image ROC (and pixel ROC when masks are given: pass None when pixel metrics are undefined)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if 0 < labels.sum() < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label="image")
    if masks is not None and maps is not None and 0 < masks.sum() < masks.size:
        step = max(masks.size // 2_000_000, 1)  # subsample very large pixel sets for plotting only
        fpr, tpr, _ = roc_curve(masks.ravel()[::step], maps.ravel()[::step])
        ax.plot(fpr, tpr, label="pixel")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_score_histogram(path: Path, labels: np.ndarray, scores: np.ndarray, threshold: float | None,
                         title: str) -> None:
    """Image scores of good vs defective test images, with the decision threshold."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    bins = np.linspace(float(scores.min()), float(scores.max()) + 1e-12, 25)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="defective", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label="threshold (held-out normals)")
    ax.set_xlabel("image score")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_curves(path: Path, x: Sequence[float], curves: dict[str, Sequence[float | None]], marker: float | None,
                title: str, xlabel: str, ylabel: str) -> None:
    """Named curves over x (None values left out), with a dashed vertical line at marker."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, values in curves.items():
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    if marker is not None:
        ax.axvline(marker, color="black", linestyle="--", linewidth=1, label="selected")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save_figure(fig, path)
