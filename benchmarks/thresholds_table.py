"""The deployable figures of finished runs: per run and pixel-threshold method, the good and defective
images flagged at the held-out image threshold and the outline's pixel F1, next to the test-fitted F1-max.

    python benchmarks/thresholds_table.py runs/grid-mnv2 runs/demo/<time>/synthetic_object ...

Each argument is a run folder holding metrics.json (`cfa train`, `cfa test`, a `cfa benchmark` cell).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(run: Path) -> list[str]:
    report = json.loads((run / "metrics.json").read_text())
    f1_max = report["metrics"].get("pixel_f1_max")
    image = (report.get("threshold") or {}).get("image") or {}
    lines = []
    for method, outcome in (report.get("at_threshold_by_method") or {}).items():
        f1 = outcome.get("pixel_f1")
        ratio = "-" if f1 is None or not f1_max else f"{f1 / f1_max:.2f}"
        used = " (used)" if method == (report.get("at_threshold") or {}).get("pixel_method") else ""
        normals = f"{image.get('images')} + {image['cross_fitted']} cross-fitted" if image.get("cross_fitted") \
            else str(image.get("images"))
        lines.append(f"| {report['category']} | {report['backbone']} | {normals} | "
                     f"{outcome['good_flagged']} | {outcome['defective_flagged']} | {method}{used} | "
                     f"{outcome.get('pixel_relative', 0):.2f} | {f1 if f1 is not None else '-'} | "
                     f"{f1_max:.3f} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.json")
    args = parser.parse_args()
    print("| category | backbone | normal scores | good flagged | defective flagged | pixel method | "
          "r | pixel F1 at it | pixel F1-max (test-fitted) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        print("\n".join(rows(run)))


if __name__ == "__main__":
    main()
