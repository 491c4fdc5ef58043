"""The search product with the bank as a transposed view and as a contiguous copy (model/kernels.py).

    python benchmarks/bank_layout.py [--repeats 5] [--skip-accuracy]

1. TFLOP/s of the (512 x (D + 3)) @ ((D + 3) x centres) product for the backbones' shapes at 224 px, in
   bfloat16 (mixed, bfloat16) and float32, each layout, interleaved, best of --repeats; and which layout
   the probe picks on this machine.
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


def tflops(inner: int, centres: int, dtype: torch.dtype, layout: str, repeats: int,
           chunk: int = 512) -> float:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(chunk, inner, generator=generator).to(dtype)
    bank = torch.randn(centres, inner, generator=generator).to(dtype)
    operand = bank.t().contiguous() if layout == "contiguous" else bank.t()
    torch.mm(rows, operand)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(rows, operand)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2.0 * chunk * inner * centres / best / 1e12


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
    print("| backbone | dtype | shape | view TFLOP/s | contiguous TFLOP/s | probe picks |")
    print("|---|---|---|---|---|---|")
    for backbone, width, centres in SHAPES:
        inner = width + 3  # the search rows' three extra columns
        for dtype in (torch.bfloat16, torch.float32):
            speeds = {layout: 0.0 for layout in kernels.LAYOUTS}
            for _ in range(2):  # interleaved
                for layout in kernels.LAYOUTS:
                    speed = tflops(inner, centres, dtype, layout, args.repeats)
                    speeds[layout] = max(speeds[layout], speed)
            picked, _ = kernels.probe_layout(512, inner, centres, dtype)
            name = str(dtype).split(".")[-1]
            print(f"| {backbone} | {name} | 512x{inner}x{centres} | {speeds['view']:.2f} | "
                  f"{speeds['contiguous']:.2f} | {picked} |")
    if args.skip_accuracy or not (REPO.parent / "shared" / "data").is_dir():
        return
    results = {layout: accuracy(layout) for layout in kernels.LAYOUTS}
    print("\nmobilenet_v2, default config (30 epochs), each layout forced:")
    for name in results["view"]:
        view, contiguous = results["view"][name], results["contiguous"][name]
        deltas = {k: abs(view[k] - contiguous[k]) for k in view if isinstance(view[k], float)}
        a = np.load(f"/tmp/bank_layout_{name}_view.npy").ravel()
        b = np.load(f"/tmp/bank_layout_{name}_contiguous.npy").ravel()
        metrics = " ".join(f"{k}={v:.4f}" for k, v in view.items() if isinstance(v, float))
        print(f"  {name}: precision {view['precision']}; view {metrics}; largest metric delta "
              f"{max(deltas.values()):.4f}; map correlation {np.corrcoef(a, b)[0, 1]:.6f}")


if __name__ == "__main__":
    main()
