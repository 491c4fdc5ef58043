"""`cfa predict` with and without reading ahead (--read-workers), end to end on real image files (not a test).

    python benchmarks/read_ahead.py                      # the shared grid (1024 px PNG) and hazelnut (JPEG)
    python benchmarks/read_ahead.py --copies 6 --workers 0 1 2 --repeats 3

Trains a 1-epoch mobilenet_v2 checkpoint per set (offline weights, the set's config otherwise), copies the
set's test images --copies times into a temporary folder, then times `predict_images` with each
--workers value, alternating, best of --repeats (same process, warmed up). Reports images/s end to end
(reading, scoring, writing rows and maps; no panels) and checks that every run wrote the same rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_line

from cfa_anomaly.config import load_config
from cfa_anomaly.data.samples import IMAGE_EXTENSIONS
from cfa_anomaly.inference import Predictor
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.predict import PredictOptions, predict_images

SHARED = REPO.parent / "shared" / "data"
SETS = {"grid": SHARED / "mvtec_ad", "hazelnut": SHARED / "hazelnut_toy"}


def checkpoint_for(category: str, root: Path, work: Path) -> Path:
    """A 1-epoch mobilenet_v2 checkpoint with the category's config (speed, not accuracy, is measured)."""
    config = REPO / "configs" / "anomaly" / "unsupervised" / "cfa" / f"{category}.yaml"
    cfg = load_config(config, [f"data.root={root}", "model.backbone=mobilenet_v2", "train.epochs=1",
                               "data.holdout_fraction=0.2", "train.device=cpu"])
    train_and_test(cfg, work / category, run_test=False)
    return work / category / runfiles.CHECKPOINT


def copies_of_test_images(root: Path, category: str, folder: Path, copies: int) -> int:
    """The category's test images copied `copies` times into folder (file bytes unchanged)."""
    folder.mkdir(parents=True)
    sources = sorted(p for p in (root / category / "test").rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    for copy in range(copies):
        for source in sources:
            shutil.copyfile(source, folder / f"{copy}_{source.parent.name}_{source.name}")
    return copies * len(sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        for category, root in SETS.items():
            if not (root / category).is_dir():
                print(f"{category}: {root / category} is absent, skipped")
                continue
            predictor = Predictor.from_checkpoint(checkpoint_for(category, root, work), device="cpu")
            count = copies_of_test_images(root, category, work / f"{category}-in", args.copies)
            best: dict[int, float] = {}
            rows: dict[int, str] = {}
            predict_images(predictor, [work / f"{category}-in"], work / "warm", PredictOptions(panels="none"))
            for repeat in range(args.repeats):
                for workers in args.workers:
                    out = work / f"{category}-out-{workers}-{repeat}"
                    start = time.perf_counter()
                    predict_images(predictor, [work / f"{category}-in"], out,
                                   PredictOptions(panels="none", read_workers=workers))
                    best[workers] = min(best.get(workers, float("inf")), time.perf_counter() - start)
                    rows[workers] = (out / "scores.csv").read_text()
            same = len(set(rows.values())) == 1
            print(f"{category}: {count} images ({predictor.crop} px crop, batch {predictor.batch_size}), "
                  f"best of {args.repeats}; rows identical across runs: {same}")
            for workers in args.workers:
                print(f"  --read-workers {workers}: {count / best[workers]:6.2f} images/s "
                      f"(x{best[args.workers[0]] / best[workers]:.2f} over --read-workers {args.workers[0]})")


if __name__ == "__main__":
    main()
