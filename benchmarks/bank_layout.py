"""The search product with the bank as a transposed view, a contiguous copy, and packed (model/kernels.py).

    python benchmarks/bank_layout.py [--repeats 5] [--skip-accuracy]

1. TFLOP/s of the (512 x (D + 3)) @ ((D + 3) x centres) product for the backbones' shapes at 224 px, in
   bfloat16 (mixed, bfloat16) and float32, each layout available here, interleaved, best of --repeats
   (counted on the D + 3 useful columns: the packed layout pads them to a multiple of 32); and which
   layout the probe picks on this machine.
2. Equivalence on the shared real data: the default config (mixed where the CPU has bfloat16 units) with
   mobilenet_v2, trained and tested with each layout forced: metric deltas and map correlation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_line

from cfa_anomaly.model import kernels

REPO = Path(__file__).resolve().parents[1]
# (backbone, descriptor width D = channels at strides 4, 8, 16, centres at 224 px: the 56 x 56 grid)
SHAPES = [("wide_resnet50_2", 1792, 3136), ("efficientnet_b5", 40 + 64 + 176, 3136),
          ("mobilenet_v2", 24 + 32 + 96, 3136)]


def tflops(left: torch.Tensor, right: torch.Tensor, packed: bool, inner: int, centres: int,
           repeats: int) -> float:
    """TFLOP/s of one search product (kernels.search_operands), counted on the inner useful columns."""
    kernels.search_product(left, right, packed)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            kernels.search_product(left, right, packed)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2.0 * left.shape[0] * inner * centres / best / 1e12


def available(dtype: torch.dtype) -> list[str]:
    return [layout for layout in kernels.LAYOUTS
            if layout != "packed" or kernels.bank_packing_available(torch.device("cpu"), dtype)]


def accuracy(layout: str) -> dict[str, dict[str, float]]:
    """Metrics and maps of grid and hazelnut with the layout forced, in a child process (clean caches)."""
    code = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(REPO / 'src')!r})
from cfa_anomaly.config import load_config
from cfa_anomaly.pipeline import train_and_test
from pathlib import Path
import tempfile
out = {{}}
for name, root in (("grid", "mvtec_ad"), ("hazelnut", "hazelnut_toy")):
    cfg = load_config({str(REPO / 'configs/anomaly/unsupervised/cfa')!r} + f"/{{name}}.yaml",
                      [f"data.root={str(REPO.parent / 'shared/data')}/{{root}}",
                       "model.backbone=mobilenet_v2", "train.device=cpu", "evaluation.panels=false"])
    folder = Path(tempfile.mkdtemp())
    report = train_and_test(cfg, folder)
    maps = np.load(folder / "maps.npz")["maps"].astype(np.float32)
    np.save(f"/tmp/bank_layout_{{name}}_{layout}.npy", maps)
    out[name] = {{**report["metrics"], "precision": report["precision"]}}
print(json.dumps(out))
"""
    env = {**os.environ, kernels.ENV_LAYOUT: layout}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    print("| backbone | dtype | shape | view TFLOP/s | contiguous TFLOP/s | packed TFLOP/s | probe picks |")
    print("|---|---|---|---|---|---|---|")
    for backbone, width, centres in SHAPES:
        inner = width + 3  # the search rows' three extra columns
        for dtype in (torch.bfloat16, torch.float32):
            operands = kernels.search_operands(512, inner, centres, dtype)  # the layouts available here
            speeds = dict.fromkeys(operands, 0.0)
            for _ in range(2):  # interleaved
                for layout, [(left, right)] in operands.items():
                    speed = tflops(left, right, layout == "packed", inner, centres, args.repeats)
                    speeds[layout] = max(speeds[layout], speed)
            picked, _ = kernels.probe_layout(512, inner, centres, dtype)
            name = str(dtype).split(".")[-1]
            cells = " | ".join(f"{speeds[layout]:.2f}" if layout in speeds else "-"
                               for layout in kernels.LAYOUTS)
            print(f"| {backbone} | {name} | 512x{inner}x{centres} | {cells} | {picked} |")
    if args.skip_accuracy or not (REPO.parent / "shared" / "data").is_dir():
        return
    results = {layout: accuracy(layout) for layout in available(torch.bfloat16)}
    print("\nmobilenet_v2, default config (30 epochs), each layout forced, against the view:")
    for name in results["view"]:
        view = results["view"][name]
        a = np.load(f"/tmp/bank_layout_{name}_view.npy").ravel()
        metrics = " ".join(f"{k}={v:.4f}" for k, v in view.items() if isinstance(v, float))
        print(f"  {name}: precision {view['precision']}; view {metrics}")
        for layout in list(results)[1:]:
            other = results[layout][name]
            deltas = {k: abs(view[k] - other[k]) for k in view if isinstance(view[k], float)}
            b = np.load(f"/tmp/bank_layout_{name}_{layout}.npy").ravel()
            print(f"    {layout}: largest metric delta {max(deltas.values()):.4f}; "
                  f"map correlation {np.corrcoef(a, b)[0, 1]:.6f}")


if __name__ == "__main__":
    main()
