"""Pictures of a run: per-image panels, a GIF per category, ROC curves and a score histogram."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import imageio.v3 as iio  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cfa_anomaly.io_utils import atomic_write  # noqa: E402

PANEL_DPI = 100


def _figure_to_array(fig: plt.Figure) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PANEL_DPI)
    plt.close(fig)
    return iio.imread(buffer.getvalue(), extension=".png")[..., :3]


def _save_figure(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=PANEL_DPI))
    plt.close(fig)


def _write_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda handle: handle.write(iio.imwrite("<bytes>", image, extension=".png")))


def render_panel(image: np.ndarray, anomaly_map: np.ndarray, score: float, threshold: float | None,
                 scale: tuple[float, float], mask: np.ndarray | None = None, title: str = "",
                 mask_missing: bool = False) -> np.ndarray:
    """One row: input | heatmap overlay | predicted outline | ground truth. Returns an RGB uint8 array.

    image: (H, W, 3) uint8; anomaly_map: (H, W); scale: the (low, high) colour range shared by a category.
    mask None: no ground-truth column, unless mask_missing (a test image without a mask): an empty column
    labelled "no mask", so the panels of one category keep one layout.
    """
    columns = 4 if mask is not None or mask_missing else 3
    fig, axes = plt.subplots(1, columns, figsize=(2.6 * columns, 3.0))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(image)
    axes[1].imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=scale[0], vmax=scale[1])
    axes[1].set_title("anomaly map", fontsize=9)
    axes[2].imshow(image)
    if threshold is not None and (anomaly_map >= threshold).any():
        axes[2].contour(anomaly_map >= threshold, levels=[0.5], colors="red", linewidths=1.2)
    axes[2].set_title("predicted defect" if threshold is not None else "no threshold", fontsize=9)
    if mask is not None:
        axes[3].imshow(image)
        if mask.any():
            axes[3].contour(mask, levels=[0.5], colors="lime", linewidths=1.2)
        axes[3].set_title("ground truth", fontsize=9)
    elif mask_missing:
        axes[3].text(0.5, 0.5, "no mask", ha="center", va="center", fontsize=9, color="grey",
                     transform=axes[3].transAxes)
        axes[3].set_title("ground truth", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if threshold is None:
        decision = "no threshold"
    else:
        decision = "DEFECT" if score >= threshold else "good"
        decision = f"{decision} (threshold {threshold:.3g})"
    fig.suptitle(f"{title}  score {score:.3g}: {decision}", fontsize=10)
    fig.tight_layout()
    return _figure_to_array(fig)


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
