"""Exported runtimes (ONNX Runtime, OpenVINO, TorchScript) side by side with the torch paths (not a test).

    python benchmarks/runtimes.py                         # speed (wide_resnet50_2) + accuracy (real data)
    python benchmarks/runtimes.py --speed-only --repeats 3
    python benchmarks/runtimes.py --accuracy-only --variants torch-plain openvino-bf16
    python benchmarks/runtimes.py --profile-openvino bf16 # OpenVINO's slowest ops and their kernels

Variants (VARIANTS), all scored through a Predictor: the torch fast path in the precision the checkpoint
stores (what `Predictor.from_checkpoint(ckpt, device="cpu")` runs; mixed on CPUs with bfloat16 units), in
float32 and in bfloat16; the torch plain float32 graph (model/plain.py: the exported graph and the
reference); the exports of that graph in ONNX Runtime (default session options, and 2 intra-op threads),
OpenVINO (f32, bf16, and int8 from NNCF post-training quantisation of the convolutions, calibrated on
training images only, the distance product left in f32 or bf16; skipped with a message when nncf is not
installed) and TorchScript.

Speed: a model with a real memory bank (seeded random images, 1 epoch: 3136 centres of 1792 dimensions for
wide_resnet50_2 at 224 px) is saved, exported and quantised once; then each variant runs in its own fresh
process (peak RSS is that process's own, model loading included), for batch 1 and batch 8, after warm-up,
on tensors prepared up front (decoding and preprocessing excluded). Repeats are interleaved over the
variants and each variant's best run (highest images/s) is shown: a shared machine's speed varies.
Accuracy: per real set, one model (mobilenet_v2, the category's config, 30 epochs; cached), exported,
then the test split scored with every variant: the metrics, their largest delta against torch-plain, the
largest map difference relative to torch-plain's largest map value, and the maps' correlation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from machine import machine_line

from cfa_anomaly.checkpoint import save_checkpoint
from cfa_anomaly.config import Config, load_config
from cfa_anomaly.inference import ModelCard, Predictor
from cfa_anomaly.inference.export import FORMATS, export_checkpoint
from cfa_anomaly.inference.runtimes import INPUT_NAME, OUTPUT_NAMES, read_metadata
from cfa_anomaly.model.factory import build_model
from cfa_anomaly.train import fit

SHARED = REPO.parent / "shared" / "data"
REAL_SETS = {"grid": (SHARED / "mvtec_ad", "grid"), "hazelnut": (SHARED / "hazelnut_toy", "hazelnut")}
CONFIGS = REPO / "configs" / "anomaly" / "unsupervised" / "cfa"
CHECKPOINT = "checkpoint.pt"
INT8_FOLDER = "openvino-int8"
REFERENCE = "torch-plain"
METRICS = ("image_auroc", "pixel_auroc", "pixel_f1_max", "aupro")
GOAL_IMAGES_PER_SECOND, GOAL_DELTA = 15.0, 0.005


# ---------------------------------------------------------------------------------------------- backends
class OnnxRuntimeThreads:
    """ONNX Runtime with explicit session options: intra-op threads, one inter-op thread, ORT_ENABLE_ALL."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = f"onnxruntime {ort.__version__} (CPU, {threads} intra-op threads, ORT_ENABLE_ALL)"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images.numpy())})
        return maps, scores


class OpenVinoInt8:
    """An NNCF-quantised OpenVINO IR (int8 where NNCF put quantisers; the rest in `precision`)."""

    def __init__(self, path: Path, precision: str) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
        self.request = self.compiled.create_infer_request()
        self.name = f"openvino {ov.get_version().split('-')[0]} (CPU, int8 + {precision})"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        results = self.request.infer({INPUT_NAME: np.ascontiguousarray(images.numpy())})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return np.array(by_name[OUTPUT_NAMES[0]]), np.array(by_name[OUTPUT_NAMES[1]])


def export_card(folder: Path) -> ModelCard:
    """The model card an export of `folder`'s checkpoint carries (the int8 IR has none of its own)."""
    return ModelCard.from_dict(read_metadata(folder / "openvino")["card"], str(folder / "openvino"))


def wrapped(backend: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]], folder: Path) -> Predictor:
    return Predictor(backend, export_card(folder))


# name -> (what it is, how to open it from a folder holding checkpoint.pt and its exports)
VARIANTS: dict[str, tuple[str, Callable[[Path], Predictor]]] = {
    "torch-fast": ("Predictor.from_checkpoint(device='cpu'): the stored precision",
                   lambda f: Predictor.from_checkpoint(f / CHECKPOINT, device="cpu")),
    "torch-fast-f32": ("the fast path, precision='float32'",
                       lambda f: Predictor.from_checkpoint(f / CHECKPOINT, device="cpu", precision="float32")),
    "torch-fast-bf16": ("the fast path, precision='bfloat16' (backbone too)",
                        lambda f: Predictor.from_checkpoint(f / CHECKPOINT, device="cpu", precision="bfloat16")),
    "torch-plain": ("graph='plain': model/plain.py in float32, the exported graph (reference)",
                    lambda f: Predictor.from_checkpoint(f / CHECKPOINT, device="cpu", graph="plain")),
    "onnxruntime": ("Predictor.from_export(onnx): default session options",
                    lambda f: Predictor.from_export(f / "onnx")),
    "onnxruntime-2t": ("the ONNX export, 2 intra-op threads set explicitly",
                       lambda f: wrapped(OnnxRuntimeThreads(f / "onnx" / "model.onnx", 2), f)),
    "openvino-f32": ("Predictor.from_export(openvino)", lambda f: Predictor.from_export(f / "openvino")),
    "openvino-bf16": ("Predictor.from_export(openvino, inference_precision='bf16')",
                      lambda f: Predictor.from_export(f / "openvino", inference_precision="bf16")),
    "openvino-int8": ("NNCF post-training int8 (convolutions; the distance MatMul left out), the rest f32",
                      lambda f: wrapped(OpenVinoInt8(f / INT8_FOLDER / "model.xml", "f32"), f)),
    "openvino-int8-bf16": ("NNCF post-training int8 (convolutions; the distance MatMul left out), the rest bf16",
                           lambda f: wrapped(OpenVinoInt8(f / INT8_FOLDER / "model.xml", "bf16"), f)),
    "torchscript": ("Predictor.from_export(torchscript)", lambda f: Predictor.from_export(f / "torchscript")),
}
INT8_VARIANTS = ("openvino-int8", "openvino-int8-bf16")


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------- preparation
def export_all(folder: Path, calibration: list[torch.Tensor] | None) -> None:
    """Export folder/checkpoint.pt to every format; with calibration batches (training images only),
    also quantise the OpenVINO export with NNCF into folder/openvino-int8/."""
    for fmt in FORMATS:
        export_checkpoint(folder / CHECKPOINT, fmt, folder / fmt, overwrite=True)
    if calibration is not None:
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(folder / "openvino" / "model.xml"))
        dataset = nncf.Dataset(calibration, lambda batch: {INPUT_NAME: batch.numpy()})
        # the distance product stays float: int8 |p - c|^2 via p.c loses the neighbours (measured: grid
        # image AUROC 0.91 -> 0.50 with NNCF's defaults)
        quantised = nncf.quantize(model, dataset, subset_size=len(calibration),
                                  ignored_scope=nncf.IgnoredScope(types=["MatMul"]))
        (folder / INT8_FOLDER).mkdir(exist_ok=True)
        ov.save_model(quantised, str(folder / INT8_FOLDER / "model.xml"), compress_to_fp16=False)


def prepare_speed_model(backbone: str, images: int, folder: Path, quantise: bool) -> None:
    """Random-weight backbone, `images` seeded random images, 1 epoch: a checkpoint with a full memory bank."""
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=false", "train.epochs=1",
                             "train.device=cpu"])
    data = torch.rand(images, 3, cfg.data.crop, cfg.data.crop, generator=torch.Generator().manual_seed(0))
    batch = cfg.data.batch_size
    model = build_model(cfg, torch.device("cpu"))
    fit(model, [{"image": data[i: i + batch]} for i in range(0, images, batch)], cfg, torch.device("cpu"))
    save_checkpoint(model, cfg, folder / CHECKPOINT,
                    extra={"threshold": {"value": None, "source": "none: speed benchmark"}})
    print(f"speed model: {backbone} (random weights), memory bank {tuple(model.memory_bank.shape)}, "
          f"precision {model.precision}", flush=True)
    export_all(folder, [data[i: i + 1] for i in range(images)] if quantise else None)


# ------------------------------------------------------------------------------------------------- speed
def time_variant(variant: str, folder: Path, calls: int, crop: int) -> dict[str, Any]:
    """One fresh process: open the variant, then batch 1 and batch 8 after warm-up (latency per call)."""
    predictor = VARIANTS[variant][1](folder)
    images = torch.rand(8, 3, crop, crop, generator=torch.Generator().manual_seed(1))
    out: dict[str, Any] = {"variant": variant, "engine": predictor.name}
    for batch, count, warm in ((1, calls, 2), (8, max(3, calls // 3), 1)):
        x = images[:batch].contiguous()
        for _ in range(warm):
            predictor.score_batch(x)
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            predictor.score_batch(x)
            seconds.append(time.perf_counter() - start)
        per_image_ms = 1000 * np.asarray(seconds) / batch
        out[f"b{batch}"] = {"images_per_second": batch * count / sum(seconds), "calls": count,
                            "p50_ms": float(np.percentile(per_image_ms, 50)),
                            "p95_ms": float(np.percentile(per_image_ms, 95))}
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries the parent's
    high-water mark over fork and exec into it."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_speed(args: argparse.Namespace, variants: list[str]) -> dict[str, dict[str, Any]]:
    """Prepare the model once, then every variant in its own process, repeats interleaved; best run kept."""
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cfa-runtimes-") as tmp:
        folder = Path(tmp)
        prepare_speed_model(args.backbone, args.images, folder, any(v in INT8_VARIANTS for v in variants))
        crop = load_config(None, []).data.crop
        for repeat in range(args.repeats):
            for variant in variants:
                command = [sys.executable, __file__, "--single", variant, "--folder", str(folder),
                           "--calls", str(args.calls), "--crop", str(crop)]
                done = subprocess.run(command, check=False, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"  {variant}: failed (exit {done.returncode}): {done.stderr.strip()[-800:]}", flush=True)
                    continue
                run = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  run {repeat + 1}/{args.repeats} {variant:18} batch 1 {run['b1']['images_per_second']:6.2f} "
                      f"img/s, batch 8 {run['b8']['images_per_second']:6.2f} img/s", flush=True)
                for batch in ("b1", "b8"):
                    kept = best.setdefault(variant, {"engine": run["engine"], "peak_rss_gib": run["peak_rss_gib"]})
                    if batch not in kept or run[batch]["images_per_second"] > kept[batch]["images_per_second"]:
                        kept[batch] = run[batch]
                    kept["peak_rss_gib"] = min(kept["peak_rss_gib"], run["peak_rss_gib"])
    return best


def print_speed(args: argparse.Namespace, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\nspeed: {args.backbone} (random weights), 224 px crop, memory bank 3136 x 1792 (for "
          f"wide_resnet50_2), best of {args.repeats} interleaved runs, each in a fresh process; tensors prepared "
          f"up front (decoding and preprocessing excluded); batch 1: {args.calls} timed calls after 2 warm-up, "
          f"batch 8: {max(3, args.calls // 3)} timed calls after 1 warm-up, latency per image = per-batch "
          "latency / 8; peak RSS (VmHWM) of the variant's process, model loading included\n")
    print("| variant | batch 1 img/s | p50 ms | p95 ms | batch 8 img/s | p50 ms/img | p95 ms/img | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, row in rows.items():
        one, eight = row["b1"], row["b8"]
        print(f"| {variant} | {one['images_per_second']:.2f} | {one['p50_ms']:.0f} | {one['p95_ms']:.0f} | "
              f"{eight['images_per_second']:.2f} | {eight['p50_ms']:.0f} | {eight['p95_ms']:.0f} | "
              f"{row['peak_rss_gib']:.2f} |")
    print()
    for variant, row in rows.items():
        print(f"- {variant}: {row['engine']}")


# ---------------------------------------------------------------------------------------------- accuracy
def trained_set(name: str, backbone: str, epochs: int, cache: Path, retrain: bool) -> tuple[Config, Path]:
    """Train (or reuse the cached) model of a real set; returns its config and folder (holding checkpoint.pt)."""
    from cfa_anomaly.pipeline import train_and_test

    root, category = REAL_SETS[name]
    cfg = load_config(CONFIGS / f"{category}.yaml", [f"data.root={root}", f"data.category={category}",
                                                     f"model.backbone={backbone}", f"train.epochs={epochs}",
                                                     "train.device=cpu"])
    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / f"{name}-{backbone}-{epochs}-{key}"
    if retrain or not (folder / CHECKPOINT).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        train_and_test(cfg, folder, run_test=False)
        print(f"  {name}: trained {backbone}, {epochs} epochs, in {time.perf_counter() - start:.0f} s", flush=True)
    else:
        print(f"  {name}: cached model {folder}", flush=True)
    return cfg, folder


def calibration_batches(cfg: Config) -> list[torch.Tensor]:
    """The training images (the held-out threshold images and the test split excluded), one per batch."""
    from cfa_anomaly.data.dataset import image_loader
    from cfa_anomaly.run_data import training_split

    train, _ = training_split(cfg)
    return [image[None] for batch in image_loader(train, cfg) for image in batch["image"]]


def run_accuracy(args: argparse.Namespace, variants: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Every variant on every real set: metrics, deltas and map agreement against torch-plain."""
    from cfa_anomaly.evaluate import compute_test_metrics, predict
    from cfa_anomaly.run_data import split_loader

    scored = variants if REFERENCE in variants else [REFERENCE, *variants]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in REAL_SETS:
        cfg, folder = trained_set(name, args.accuracy_backbone, args.accuracy_epochs, Path(args.cache), args.retrain)
        quantise = any(v in INT8_VARIANTS for v in scored)
        export_all(folder, calibration_batches(cfg) if quantise else None)
        maps: dict[str, np.ndarray] = {}
        rows: dict[str, dict[str, float]] = {}
        for variant in scored:
            predictions = predict(VARIANTS[variant][1](folder), split_loader(cfg, "test"), desc=variant)
            rows[variant] = {k: float(v) for k, v in compute_test_metrics(predictions).items() if v is not None}
            maps[variant] = predictions.maps.astype(np.float64)
        reference, reference_maps = dict(rows[REFERENCE]), maps[REFERENCE]
        for variant, row in rows.items():
            row["max_delta"] = max(abs(row[k] - reference[k]) for k in METRICS if k in reference)
            row["max_relative_map_difference"] = float(np.abs(maps[variant] - reference_maps).max()
                                                       / np.abs(reference_maps).max())
            row["map_correlation"] = float(np.corrcoef(maps[variant].ravel(), reference_maps.ravel())[0, 1])
        results[name] = rows
    return results


def print_accuracy(args: argparse.Namespace, results: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"\naccuracy: {args.accuracy_backbone} (ImageNet), the category's config, {args.accuracy_epochs} "
          f"epochs, one model per set scored by every variant; deltas and map agreement against {REFERENCE}\n")
    print("| set | variant | image AUROC | pixel AUROC | pixel F1-max | AUPRO | max metric delta | "
          "max rel. map diff | map correlation |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for variant, row in rows.items():
            metrics = " | ".join(f"{row[k]:.4f}" if k in row else "-" for k in METRICS)
            print(f"| {name} | {variant} | {metrics} | {row['max_delta']:.4f} | "
                  f"{row['max_relative_map_difference']:.2e} | {row['map_correlation']:.6f} |")


def print_goal(speed: dict[str, dict[str, Any]], accuracy: dict[str, dict[str, dict[str, float]]]) -> None:
    """Which variants reach the goal: >= 15 images/s (wide_resnet50_2) and every metric within 0.005."""
    print(f"\ngoal: >= {GOAL_IMAGES_PER_SECOND:g} images/s and every metric delta <= {GOAL_DELTA} vs {REFERENCE}")
    for variant, row in sorted(speed.items(), key=lambda item: -max(item[1]["b1"]["images_per_second"],
                                                                     item[1]["b8"]["images_per_second"])):
        rate = max(row["b1"]["images_per_second"], row["b8"]["images_per_second"])
        deltas = [rows[variant]["max_delta"] for rows in accuracy.values() if variant in rows]
        delta = f"largest delta {max(deltas):.4f}" if deltas else "accuracy not measured"
        met = rate >= GOAL_IMAGES_PER_SECOND and bool(deltas) and max(deltas) <= GOAL_DELTA
        print(f"  {variant:18} {rate:6.2f} img/s, {delta}: {'met' if met else 'not met'}")


def profile_openvino(backbone: str, precision: str, images: int) -> None:
    """OpenVINO's per-op profile of the speed model (batch 1): the slowest ops with kernel and precision."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="cfa-runtimes-") as tmp:
        folder = Path(tmp)
        prepare_speed_model(backbone, images, folder, quantise=False)
        compiled = ov.Core().compile_model(str(folder / "openvino" / "model.xml"), "CPU",
                                           {"INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        for _ in range(3):
            request.infer({INPUT_NAME: x})
        total: dict[tuple[str, str], float] = {}
        for info in request.get_profiling_info():
            key = (info.node_type, info.exec_type)
            total[key] = total.get(key, 0.0) + info.real_time.total_seconds() * 1000
        print(f"OpenVINO {precision}, batch 1, last call: ms per (op type, kernel)")
        for (node, kernel), ms in sorted(total.items(), key=lambda item: -item[1])[:15]:
            print(f"  {ms:8.1f}  {node:22} {kernel}")


# ---------------------------------------------------------------------------------------------------- cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing runs per variant; best shown")
    parser.add_argument("--calls", type=int, default=9, help="timed batch-1 calls per run (batch 8: a third)")
    parser.add_argument("--backbone", default="wide_resnet50_2", help="the speed model's backbone")
    parser.add_argument("--images", type=int, default=16, help="random images the speed model's bank is built from")
    parser.add_argument("--accuracy-backbone", default="mobilenet_v2")
    parser.add_argument("--accuracy-epochs", type=int, default=30)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cfa-runtimes-cache"),
                        help="where the real sets' trained models are kept between runs")
    parser.add_argument("--retrain", action="store_true", help="train the real sets' models again")
    parser.add_argument("--profile-openvino", choices=("f32", "bf16"), help="print OpenVINO's slowest ops")
    parser.add_argument("--single", choices=VARIANTS, help=argparse.SUPPRESS)  # child process: time one variant
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, default=224, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(time_variant(args.single, Path(args.folder), args.calls, args.crop)))
        return
    if args.profile_openvino:
        profile_openvino(args.backbone, args.profile_openvino, args.images)
        return

    print(machine_line(("torch", "onnxruntime", "openvino", "nncf")))
    variants = list(dict.fromkeys(args.variants))
    if not nncf_available() and any(v in INT8_VARIANTS for v in variants):
        print("nncf is not installed: the int8 variants are skipped (pip install nncf)")
        variants = [v for v in variants if v not in INT8_VARIANTS]
    speed: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    if not args.accuracy_only:
        speed = run_speed(args, variants)
    if not args.speed_only:
        if SHARED.is_dir():
            accuracy = run_accuracy(args, variants)
        else:
            print(f"accuracy: skipped, {SHARED} is absent")
    if speed:
        print_speed(args, speed)
    if accuracy:
        print_accuracy(args, accuracy)
    if speed:
        print_goal(speed, accuracy)


if __name__ == "__main__":
    main()
