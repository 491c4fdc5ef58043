"""AUPIMO of this project (cfa_anomaly.aupimo: every distinct map value a threshold, the ends of the FPR range
interpolated) against anomalib's (anomalib.metrics.pimo.functional.aupimo_scores: thresholds binned linearly
between the maps' minimum and maximum, 300,000 by default, integrated between the bins nearest the range's
ends) on the same maps: a model trained on each shared real set, its test maps scored once and given to both.

    python benchmarks/aupimo_vs_anomalib.py [--epochs 10] [--bins 300000]

anomalib runs in its own virtual environment (.venv-anomalib, made by benchmarks/vs_anomalib.py on first
use). Prints each defective image's AUPIMO from both and their largest and mean differences.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = REPO.parent / "shared" / "data"
SETS = {"grid": "mvtec_ad", "hazelnut": "hazelnut_toy"}
ANOMALIB_SIDE = """
import json, sys
import numpy as np, torch
from anomalib.metrics.pimo.functional import aupimo_scores
data = np.load(sys.argv[1])
result = aupimo_scores(torch.from_numpy(data["maps"]).double(), torch.from_numpy(data["masks"]),
                       num_thresholds=int(sys.argv[2]), force=True)
print(json.dumps({"aupimo": result[4].tolist(), "points": int(result[5])}))
"""


def test_maps(category: str, epochs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, masks, maps) of the test split, from a model trained on the set (float32, mobilenet_v2)."""
    from cfa_anomaly import runfiles
    from cfa_anomaly.config import load_config
    from cfa_anomaly.evaluate import predict
    from cfa_anomaly.inference import Predictor
    from cfa_anomaly.pipeline import train_and_test
    from cfa_anomaly.run_data import split_loader

    cfg = load_config(REPO / "configs/anomaly/unsupervised/cfa" / f"{category}.yaml",
                      [f"data.root={SHARED / SETS[category]}", "model.backbone=mobilenet_v2",
                       f"train.epochs={epochs}", "model.precision=float32", "train.device=cpu",
                       "evaluation.cross_fit_below=0"])
    with tempfile.TemporaryDirectory() as folder:
        train_and_test(cfg, Path(folder), run_test=False)
        predictor = Predictor.from_checkpoint(Path(folder) / runfiles.CHECKPOINT, device="cpu")
        predictions = predict(predictor, split_loader(cfg, "test"))
    return predictions.labels, predictions.pixel_masks(), predictions.maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bins", type=int, default=300_000, help="anomalib's num_thresholds")
    args = parser.parse_args()
    from machine import machine_line
    from vs_anomalib import anomalib_python

    from cfa_anomaly.aupimo import aupimo_per_image

    print(machine_line())
    python = anomalib_python()
    for category in SETS:
        labels, masks, maps = test_maps(category, args.epochs)
        ours = aupimo_per_image(labels, masks, maps)
        with tempfile.TemporaryDirectory() as folder:
            data = Path(folder) / "maps.npz"
            np.savez(data, maps=maps.astype(np.float64), masks=masks.astype(bool))
            answer = subprocess.run([str(python), "-c", ANOMALIB_SIDE, str(data), str(args.bins)],
                                    capture_output=True, text=True, check=True)
        theirs = json.loads(answer.stdout.strip().splitlines()[-1])
        pairs = [(a, b) for a, b, label in zip(ours, theirs["aupimo"], labels) if label]
        differences = np.array([abs(a - b) for a, b in pairs])
        print(f"{category}: {len(pairs)} defective images, anomalib's integration points "
              f"{theirs['points']}; mean AUPIMO ours {np.mean([a for a, _ in pairs]):.6f}, anomalib "
              f"{np.mean([b for _, b in pairs]):.6f}; per image largest difference {differences.max():.2e}, "
              f"mean {differences.mean():.2e}")


if __name__ == "__main__":
    main()
