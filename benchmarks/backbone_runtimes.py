"""The frozen backbone alone in torch, OpenVINO (f32) and ONNX Runtime (not a test).

    python benchmarks/backbone_runtimes.py                  # wide_resnet50_2, random weights, batch 4
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/backbone_runtimes.py              # the same with kernels held to AVX2

Whether inference would gain from running the backbone (the largest part of a float32 inference) in another
runtime: the model's own torch path (batch norms folded, convolutions packed for oneDNN: what CFA.aggregate
runs under model.compile auto), and the same network exported to OpenVINO (f32 inference precision) and to
ONNX Runtime (CPU session, torch's thread count), each runtime in its own process (their thread pools spin
after a call and would slow the next runtime's), rounds alternating, --calls timed calls per process, best
of all; images prepared up front. Equality: each runtime's three maps against torch's, the largest
difference relative to the map's largest value. OpenVINO's convolution kernels are listed from its compiled
graph (their names say which instruction set ran: its oneDNN honours ONEDNN_MAX_CPU_ISA); ONNX Runtime's
kernels (MLAS) have no such cap, so under an emulation its figure is that of this CPU's own kernels.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine_line

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cfa_anomaly.backbones import FeatureExtractor

RUNTIMES = ("torch", "openvino-f32", "onnxruntime")


class Maps(torch.nn.Module):
    """The extractor's maps as a tuple (what the exporters take)."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.extractor(images))


def openvino_runner(module: torch.nn.Module, images: torch.Tensor) -> tuple[Callable[[], list], str]:
    """OpenVINO f32 on torch's thread count, and its convolution kernels by count."""
    import openvino as ov

    model = ov.convert_model(module, example_input=images)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                      "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()
    infos = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    kernels = collections.Counter(info["primitiveType"].astype(str) for info in infos
                                  if info["layerType"].astype(str) == "Convolution")
    array = images.numpy()

    def run() -> list:
        outputs = request.infer({0: array})
        return [np.array(outputs[i]) for i in range(3)]

    return run, ", ".join(f"{name} x{count}" for name, count in kernels.most_common())


def onnxruntime_runner(module: torch.nn.Module, images: torch.Tensor) -> Callable[[], list]:
    import onnxruntime

    buffer = io.BytesIO()
    torch.onnx.export(module, (images,), buffer, dynamo=False, input_names=["images"], opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    array = images.numpy()
    return lambda: session.run(None, {"images": array})


def runner(name: str, backbone: str, batch: int) -> tuple[Callable[[], list], str]:
    """One runtime's call on seeded random images, and a note (OpenVINO's kernels)."""
    torch.manual_seed(0)  # the same random weights in every process
    extractor = FeatureExtractor(backbone, pretrained=False)
    images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    if name == "openvino-f32":
        return openvino_runner(Maps(extractor).eval(), images)  # unfolded: exporters fold batch norms
    if name == "onnxruntime":
        return onnxruntime_runner(Maps(extractor).eval(), images), ""
    extractor.fold = True  # as CFA runs it (model.compile auto): folded, packed convolutions
    channels_last = images.contiguous(memory_format=torch.channels_last)

    def torch_maps() -> list:
        with torch.inference_mode():
            return [grid.contiguous().numpy() for grid in extractor(channels_last)]

    return torch_maps, ""


def child(name: str, backbone: str, batch: int, calls: int, maps_file: Path) -> None:
    """Time `calls` calls after a warm-up; save the maps; print the best seconds and the note as JSON."""
    run, note = runner(name, backbone, batch)
    maps = run()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    np.savez(maps_file, *maps)
    print(json.dumps({"seconds": best, "note": note}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--single", choices=RUNTIMES, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--maps", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        child(args.single, args.backbone, args.batch, args.calls, args.maps)
        return
    print(machine_line(("torch", "openvino", "onnxruntime")))
    best, notes = dict.fromkeys(RUNTIMES, float("inf")), {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for name in RUNTIMES:
                command = [sys.executable, __file__, "--single", name, "--backbone", args.backbone, "--batch",
                           str(args.batch), "--calls", str(args.calls), "--maps", f"{folder}/{name}.npz"]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                best[name] = min(best[name], result["seconds"])
                notes[name] = result["note"]
        maps = {name: np.load(f"{folder}/{name}.npz") for name in RUNTIMES}
        for name in RUNTIMES:
            difference = max(float(np.abs(maps[name][key] - want).max() / np.abs(want).max())
                             for key, want in maps["torch"].items())
            print(f"{name}: {1000 * best[name] / args.batch:.1f} ms per image (best of {args.rounds} x "
                  f"{args.calls} calls, batch {args.batch}), x{best['torch'] / best[name]:.2f} torch's speed; "
                  f"largest map difference {difference:.1e} of the largest value"
                  + (f"; convolution kernels: {notes[name]}" if notes[name] else ""))


if __name__ == "__main__":
    main()
