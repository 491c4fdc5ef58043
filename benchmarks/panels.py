"""Panel (and GIF frame) drawing speed: numpy/PIL composition against one matplotlib figure per image.

    python benchmarks/panels.py [--images 40] [--data ../shared/data/hazelnut_toy/hazelnut] [--save DIR]

Both draw the same views (input | heat overlay | predicted outline | ground truth) of the same images and
maps at 224 x 224 and write them as PNG. The matplotlib renderer below is the one `cfa test` and
`cfa predict` used before (cfa-anomaly 947c833), kept here only as the reference. The maps are synthetic
blobs (a map's values do not change drawing time); the images are real when --data exists, else noise.
--save writes the first panel of each renderer for a side-by-side look.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
from machine import machine_line

from cfa_anomaly import viz
from cfa_anomaly.data.images import image_to_tensor, read_rgb, tensor_to_rgb
from cfa_anomaly.data.samples import list_images
from cfa_anomaly.io_utils import atomic_write
from cfa_anomaly.thresholds import Thresholds


def matplotlib_panel(image: np.ndarray, anomaly_map: np.ndarray, score: float, threshold: float,
                     scale: tuple[float, float], mask: np.ndarray, title: str) -> np.ndarray:
    """The previous renderer: a 4-column matplotlib figure, saved to PNG at 100 dpi and read back."""
    fig, axes = plt.subplots(1, 4, figsize=(2.6 * 4, 3.0))
    for ax in axes:
        ax.imshow(image)
        ax.set_axis_off()
    axes[1].imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=scale[0], vmax=scale[1])
    if (anomaly_map >= threshold).any():
        axes[2].contour(anomaly_map >= threshold, levels=[0.5], colors="red", linewidths=1.2)
    if mask.any():
        axes[3].contour(mask, levels=[0.5], colors="lime", linewidths=1.2)
    for ax, name in zip(axes, ("input", "anomaly map", "predicted defect", "ground truth")):
        ax.set_title(name, fontsize=9)
    decision = "DEFECT" if score >= threshold else "good"
    fig.suptitle(f"{title}  score {score:.3g}: {decision} (threshold {threshold:.3g})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return iio.imread(buffer.getvalue(), extension=".png")[..., :3]


def inputs(data: Path, count: int, crop: int = 224) -> list[np.ndarray]:
    files = sorted(p for folder in (data / "test").glob("*") if folder.is_dir() for p in list_images(folder))
    if not files:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (crop, crop, 3), dtype=np.uint8) for _ in range(count)]
    return [tensor_to_rgb(image_to_tensor(read_rgb(files[i % len(files)]), 256, crop)) for i in range(count)]


def blob_map(index: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """A smooth map with one bright blob, and a mask of the blob's core."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = rng.uniform(40, size - 40, 2)
    blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 18.0 ** 2))
    return (0.1 + 0.8 * blob).astype(np.float32), blob > 0.7


def time_renderer(render, images: list[np.ndarray], folder: Path) -> float:
    """Seconds per panel: draw and write a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, image in enumerate(images):
        anomaly_map, mask = blob_map(i)
        panel = render(image, anomaly_map, float(anomaly_map.max()), 0.5, (0.0, 1.0), mask, f"test/{i:03d}")
        atomic_write(folder / f"{i:03d}.png", lambda h, p=panel: h.write(iio.imwrite("<bytes>", p, extension=".png"))
                     ) if render is matplotlib_panel else viz.write_panels(folder, [panel], [f"{i:03d}"])
    return (time.perf_counter() - start) / len(images)


def numpy_panel(image: np.ndarray, anomaly_map: np.ndarray, score: float, threshold: float,
                scale: tuple[float, float], mask: np.ndarray | None, title: str) -> np.ndarray:
    """viz.render_panel with the image threshold as the panel's only threshold (outlined there)."""
    return viz.render_panel(image, anomaly_map, score, Thresholds(image=threshold), scale, mask, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/hazelnut_toy/hazelnut")
    parser.add_argument("--save", type=Path, help="folder for one panel of each renderer")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cfa-panels-bench"))
    args = parser.parse_args()
    images = inputs(args.data, args.images)
    numpy_renderer = numpy_panel
    time_renderer(numpy_renderer, images[:2], args.out / "warmup")  # font and colour table loading
    old = time_renderer(matplotlib_panel, images, args.out / "matplotlib")
    new = time_renderer(numpy_renderer, images, args.out / "numpy")
    print(machine_line())
    print(f"{len(images)} panels of 224 x 224 images, drawn and written as PNG")
    print(f"matplotlib figure per image: {old * 1000:.1f} ms/panel")
    print(f"numpy + PIL composition:     {new * 1000:.1f} ms/panel  ({old / new:.1f}x faster)")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        anomaly_map, mask = blob_map(0)
        for name, render in (("matplotlib", matplotlib_panel), ("numpy", numpy_renderer)):
            panel = render(images[0], anomaly_map, float(anomaly_map.max()), 0.5, (0.0, 1.0), mask, "test/000")
            iio.imwrite(args.save / f"{name}.png", panel)


if __name__ == "__main__":
    main()
