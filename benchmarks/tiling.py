"""Tiled against squashed scoring on a generated high-resolution set with small defects.

    python benchmarks/tiling.py --size 2048 --tile 256 --epochs 10 --output runs/tiling

Generates a synthetic texture category of `--size` px images whose defects are those of a 128 px image
(8-16 px across: synthetic.generate_dataset's defect_scale), trains mobilenet_v2 twice on it, squashed
(the whole image resized to 224) and tiled (`data.tile`), and scores both on the test images' full
resolution: each model's maps mapped back onto the input's own pixels (Predictor.input_maps) against the
full-resolution masks. Prints pixel AUROC, AUPRO, the at-threshold pixel F1 and image AUROC of each, and
the tiled model's tiles per second.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cfa_anomaly import metrics
from cfa_anomaly.config import load_config
from cfa_anomaly.data.images import read_mask
from cfa_anomaly.data.samples import make_samples
from cfa_anomaly.data.synthetic import generate_dataset
from cfa_anomaly.inference import Predictor
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test


def full_resolution_figures(predictor: Predictor, root: Path, category: str) -> dict[str, float | None]:
    samples = make_samples(str(root), category, "test")
    start = time.perf_counter()
    result = predictor.predict([s.image for s in samples])
    seconds = time.perf_counter() - start
    maps = np.stack(result.input_maps)
    masks = np.stack([read_mask(s.mask) if s.mask is not None else np.zeros(maps.shape[1:], bool) for s in samples])
    labels = np.asarray([s.label for s in samples])
    outlines = np.stack(result.defect_masks())
    hits = int((outlines & masks).sum())
    f1 = 2 * hits / max(int(outlines.sum()) + int(masks.sum()), 1)
    grid = predictor.card.grid
    tiles = len(samples) * (grid.count if grid else 1)
    return {"image_auroc": metrics.image_auroc(labels, result.scores), "pixel_auroc": metrics.pixel_auroc(masks, maps),
            "aupro": metrics.aupro(masks, maps), "pixel_f1_max": metrics.pixel_f1_max(masks, maps),
            "pixel_f1_at_threshold": f1, "good_flagged": int(result.decisions[labels == 0].sum()),
            "good": int((labels == 0).sum()), "model_inputs_per_second": tiles / seconds,
            "images_per_second": len(samples) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=12, help="normal images (a third held out)")
    parser.add_argument("--output", type=Path, default=Path("runs/tiling"))
    args = parser.parse_args()
    torch.manual_seed(0)
    category = f"texture{args.size}"
    data = args.output / "data"
    if not (data / category).is_dir():
        generate_dataset(data, category=category, kind="texture", n_train=args.train, n_test_good=4,
                         n_test_per_defect=2, image_size=args.size, seed=0, defect_scale=128 / args.size)
    common = [f"data.root={data}", f"data.category={category}", "model.backbone=mobilenet_v2",
              f"train.epochs={args.epochs}", "data.holdout_fraction=0.34", "evaluation.panels=false",
              "evaluation.cross_fit_below=0"]  # 5 more tiled trainings would dominate the run's time
    settings = {"squashed": ["data.resize=224", "data.crop=224"],
                "tiled": [f"data.resize={args.size}", f"data.crop={args.size}", f"data.tile={args.tile}",
                          f"data.tile_overlap={args.overlap}"]}
    table = {}
    for name, extra in settings.items():
        run = args.output / name
        if not (run / runfiles.CHECKPOINT).is_file():
            run.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            train_and_test(load_config(None, common + extra), run, run_test=False)
            print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        predictor = Predictor.from_checkpoint(run / runfiles.CHECKPOINT, device="cpu")
        table[name] = full_resolution_figures(predictor, data, category)
        print(name, json.dumps(table[name]), flush=True)
    (args.output / "tiling.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
