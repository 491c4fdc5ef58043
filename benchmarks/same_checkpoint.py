"""The fast torch path against the plain float32 graph on the same checkpoint, on the shared real data.

    python benchmarks/same_checkpoint.py [--backbone mobilenet_v2] [--set model.last_stage_bfloat16=true]

For each shared set (grid, hazelnut): the category's config trained for 30 epochs with the given overrides
(`cfa train` as pipeline.train_and_test runs it), then the test split scored by the checkpoint's fast path
(its trained precision) and by its plain float32 graph (model/plain.py, what the exports equal), and the
two compared: map correlation, largest map difference relative to the largest value, largest metric
delta. This is tests/test_export_real.py's fast-path check (correlation >= 0.9999, metrics within 0.005,
maps within 0.02) as a measurement; benchmarks/speed.py's accuracy compares separately trained models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import machine_line

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cfa_anomaly.config import load_config  # noqa: E402
from cfa_anomaly.evaluate import compute_test_metrics, predict  # noqa: E402
from cfa_anomaly.inference import Predictor  # noqa: E402
from cfa_anomaly import runfiles  # noqa: E402
from cfa_anomaly.pipeline import train_and_test  # noqa: E402
from cfa_anomaly.run_data import split_loader  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SETS = {"grid": "mvtec_ad", "hazelnut": "hazelnut_toy"}
CONFIGS = REPO / "configs" / "anomaly" / "unsupervised" / "cfa"


def compare(category: str, backbone: str, overrides: list[str], epochs: int) -> str:
    cfg = load_config(CONFIGS / f"{category}.yaml",
                      [f"data.root={SHARED / SETS[category]}", f"model.backbone={backbone}",
                       f"train.epochs={epochs}", "train.device=cpu", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        train_and_test(cfg, Path(tmp) / "run", run_test=False)
        checkpoint = Path(tmp) / "run" / runfiles.CHECKPOINT
        scored = {}
        for graph in ("plain", "fast"):
            predictions = predict(Predictor.from_checkpoint(checkpoint, device="cpu", graph=graph),
                                  split_loader(cfg, "test"), desc=graph)
            scored[graph] = (predictions, compute_test_metrics(predictions))
    (plain, plain_metrics), (fast, fast_metrics) = scored["plain"], scored["fast"]
    correlation = np.corrcoef(plain.maps.ravel(), fast.maps.ravel())[0, 1]
    largest = np.abs(fast.maps - plain.maps).max() / np.abs(plain.maps).max()
    delta = max(abs(fast_metrics[k] - v) for k, v in plain_metrics.items() if v is not None)
    return (f"  {category:9} map correlation {correlation:.6f}, largest map difference {largest:.4f}, "
            f"max metric delta {delta:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: nothing to measure")
    print(machine_line())
    print(f"{args.backbone}, {args.epochs} epochs, overrides {args.set or 'none'}: fast path against the "
          "plain graph of the same checkpoint")
    for category in SETS:
        print(compare(category, args.backbone, args.set, args.epochs), flush=True)


if __name__ == "__main__":
    main()
