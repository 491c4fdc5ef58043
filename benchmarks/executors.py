"""The cost of the Ray executor against the in-process one: `cfa benchmark` over the demo's two synthetic
categories with the demo's settings, once per executor, each a fresh `cfa` process timed from start to end.

    python benchmarks/executors.py                 # local, ray (1 CPU per task), ray (2 CPUs per task)
    python benchmarks/executors.py --epochs 5      # a quicker look

Prints the machine, the wall time of each run, whether its metrics equal the local run's exactly (else the
largest difference: torch's results depend on its thread count, which is the machine's cores locally and
--cpus-per-task on Ray), and the per-image costs each cell's metrics.json records (training, feature
pass, test scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_line

from cfa_anomaly.data.synthetic import generate_dataset

CATEGORIES = ("synthetic_texture", "synthetic_object")
# name: (extra arguments, cells that run at once on this machine)
CORES = os.cpu_count() or 1
VARIANTS = {"local": ([], 1),
            "ray, 1 CPU per task": (["--executor", "ray", "--cpus-per-task", "1"], CORES),
            "ray, 2 CPUs per task": (["--executor", "ray", "--cpus-per-task", "2"], max(1, CORES // 2))}


def run(data: Path, output: Path, epochs: int, extra: list[str]) -> float:
    """One `cfa benchmark` process; its wall time in seconds."""
    sets = ["model.backbone=mobilenet_v2", f"train.epochs={epochs}", "data.holdout_fraction=0.2"]
    command = [sys.executable, "-m", "cfa_anomaly.cli", "-q", "benchmark", "--root", str(data), "--output",
               str(output), "--categories", *CATEGORIES, *[a for s in sets for a in ("--set", s)], *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def largest_difference(results: dict, reference: dict) -> float:
    """The largest absolute difference of any metric of any category from the reference run's."""
    return max(abs(results[c][m] - reference[c][m]) for c in reference for m in reference[c]
               if reference[c][m] is not None)


def cell_costs(output: Path) -> str:
    """Per category: training ms per image and epoch, feature pass ms per image, test images/s."""
    parts = []
    for category in CATEGORIES:
        report = json.loads((output / category / "metrics.json").read_text())
        train = report["train"]
        per_epoch = 1000 * train["train_seconds"] / (train["images"] * train["epochs"])
        parts.append(f"{category}: train {per_epoch:.1f} ms/img/epoch, features "
                     f"{1000 * train['feature_seconds'] / train['images']:.1f} ms/img, test "
                     f"{report['test']['images_per_second']:.1f} img/s")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (the demo's: 30)")
    parser.add_argument("--keep", help="folder for the data and the runs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.keep or scratch)
        for kind, category in zip(("texture", "object"), CATEGORIES):
            if not (base / "data" / category).is_dir():
                generate_dataset(base / "data", category=category, kind=kind, seed=0)
        print(machine_line(("torch", "ray")))
        print(f"cfa benchmark, {', '.join(CATEGORIES)}, mobilenet_v2, {args.epochs} epochs, holdout 0.2")
        reference = None
        for name, (extra, at_once) in VARIANTS.items():
            output = base / name.replace(", ", "-").replace(" ", "_")
            wall = run(base / "data", output, args.epochs, extra)
            summary = json.loads((output / "summary.json").read_text())
            results = summary["results"]
            reference = reference or results
            same = "metrics equal" if results == reference else \
                f"metrics within {largest_difference(results, reference):.1e}"
            cells = sorted((cell["seconds"] for cell in summary["cells"].values()), reverse=True)
            critical = max(cells[0], sum(cells) / at_once)  # the cells' own time, as they ran
            print(f"{name:<22} wall {wall:6.1f} s, cells {' + '.join(f'{s:.1f}' for s in cells)} s, "
                  f"outside the cells {wall - critical:5.1f} s  {same}\n    {cell_costs(output)}")


if __name__ == "__main__":
    main()
