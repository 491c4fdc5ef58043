"""Peak memory and speed of a streamed `cfa predict` on 500 and 5,000 images (not a test).

    python benchmarks/predict_memory.py                  # 5,000 images of 96 px, runs on 500 and on all
    python benchmarks/predict_memory.py --images 20000 --subset 1000 --panels defects

Trains a tiny checkpoint on a generated texture (mobilenet_v2, offline weights, 96 px), writes --images
noisy copies of the generated images into a temporary folder, then runs `cfa predict` in a fresh
subprocess under /usr/bin/time -v twice: on a .txt list of the first --subset images and on the whole
folder. Reports each run's peak RSS, wall time and images/s (end to end: reading, scoring, writing).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cfa_anomaly.config import load_config
from cfa_anomaly.data.samples import IMAGE_EXTENSIONS
from cfa_anomaly.data.synthetic import generate_dataset
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test

SIZE = 96


def train_checkpoint(work: Path) -> tuple[Path, list[Path]]:
    """A 3-epoch checkpoint on a generated 96 px texture, and the generated images."""
    generate_dataset(work / "data", category="texture", kind="texture", image_size=SIZE, seed=3, n_train=16,
                     n_test_good=4, n_test_per_defect=2)
    overrides = [f"data.root={work / 'data'}", "data.category=texture", f"data.resize={SIZE}",
                 f"data.crop={SIZE}", "data.batch_size=8", "data.holdout_fraction=0.2",
                 "model.backbone=mobilenet_v2", "train.epochs=3", "train.device=cpu"]
    train_and_test(load_config(None, overrides), work / "run", run_test=False)
    images = sorted(p for p in (work / "data" / "texture").rglob("*")
                    if p.suffix in IMAGE_EXTENSIONS and "ground_truth" not in p.parts)
    return work / "run" / runfiles.CHECKPOINT, images


def write_copies(sources: list[Path], folder: Path, count: int, seed: int = 0) -> list[Path]:
    """count noisy copies of the source images (Gaussian noise, sigma 4 grey levels) as PNG."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    bases = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in sources]
    paths = []
    for index in range(count):
        noisy = bases[index % len(bases)] + rng.normal(0.0, 4.0, bases[0].shape)
        paths.append(folder / f"img_{index:06d}.png")
        Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def run_predict(checkpoint: Path, inputs: str, output: Path, count: int, panels: str) -> dict[str, float]:
    """`cfa predict` in a fresh process under /usr/bin/time -v: peak RSS (MiB), seconds, images/s."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "cfa_anomaly.cli", "predict", "--checkpoint",
               str(checkpoint), "--device", "cpu", "--panels", panels, "--output", str(output), inputs]
    start = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cfa predict failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    scoring = float(re.search(r"\(([\d.]+) images/s scoring\)", done.stdout).group(1))
    rows = len((output / "scores.csv").read_text().splitlines()) - 1
    assert rows == count, (rows, count)
    return {"images": count, "peak_rss_mib": peak_kib / 1024, "seconds": seconds,
            "images_per_s": count / seconds, "scoring_images_per_s": scoring,
            "map_files": len(list(output.glob("maps.npz"))) + len(list(output.glob("maps/*.npz")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--panels", choices=("none", "defects", "all"), default="none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cfa-predict-memory-") as tmp:
        work = Path(tmp)
        checkpoint, sources = train_checkpoint(work)
        paths = write_copies(sources, work / "images", args.images)
        listing = work / "subset.txt"
        listing.write_text("".join(f"{p}\n" for p in paths[: args.subset]))
        print(f"{args.images} images of {SIZE} px, checkpoint {checkpoint.name} (mobilenet_v2, crop {SIZE}), "
              f"--panels {args.panels}")
        print("| images | peak RSS (MiB) | wall s | images/s (end to end) | images/s (scoring) | map files |")
        print("|---|---|---|---|---|---|")
        for count, inputs in ((args.subset, str(listing)), (args.images, str(work / "images"))):
            result = run_predict(checkpoint, inputs, work / f"out-{count}", count, args.panels)
            print(f"| {count} | {result['peak_rss_mib']:.0f} | {result['seconds']:.1f} | "
                  f"{result['images_per_s']:.1f} | {result['scoring_images_per_s']:.1f} | {result['map_files']} |")


if __name__ == "__main__":
    main()
